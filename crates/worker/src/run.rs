//! The stream worker: one live stream pulled over RTSP (or RTMP), dubbed through `dubchunker !
//! stsbridge ! avoffset`, published over RTMP, watched by Prometheus on `/metrics`.
//!
//! ```text
//! WORKER_STS_SERVICE_URL=http://sts:8000/api/v1/sts/process \
//!   cargo run --release -p dubbing-worker -- --stream-id test
//! ```
//!
//! Input `rtsp://MEDIAMTX_HOST:MEDIAMTX_RTSP_PORT/live/<id>/in`, output
//! `rtmp://MEDIAMTX_HOST:MEDIAMTX_RTMP_PORT/live/<id>/out` (both overridable). Exits 0 at the
//! end of the stream or after SIGINT/SIGTERM (EOS first, so the output is finalized), 1 on a
//! pipeline error (an orchestrator restarts it), 2 on bad settings.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use prometheus_client::registry::Registry;
use tracing::{debug, error, info, warn};

use crate::log::redact;
use crate::metrics::{Metrics, ReasonLabels, StatusLabels, breaker_code};
use crate::settings::{API_KEY_ENV, Settings};

/// Shared between the bus loop, probes and the metrics poller.
struct Shared {
    metrics: Metrics,
    stream_id: String,
    offset_ns: u64,
    got_output: AtomicBool,
    /// Set by a SIGINT/SIGTERM: time of the signal.
    signalled: Mutex<Option<Instant>>,
    last_delay_ms: AtomicI64,
}

/// Runs the worker until the end of the stream, a signal or an error; returns the exit code:
/// 0 done (end of stream, or EOS after SIGINT/SIGTERM), 1 pipeline error, 2 cannot listen
/// for /metrics.
pub fn run(r: &Settings) -> i32 {
    if let Err(e) = crate::init() {
        error!("{e}");
        return 1;
    }
    let mut registry = Registry::default();
    let shared = Arc::new(Shared {
        metrics: Metrics::new(&mut registry),
        stream_id: r.stream_id.clone(),
        offset_ns: r.chain.offset_ns,
        got_output: AtomicBool::new(false),
        signalled: Mutex::new(None),
        last_delay_ms: AtomicI64::new(0),
    });
    let registry = Arc::new(registry);

    // Metrics server and signal handling on a small runtime of their own.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return 1;
        }
    };
    let addr = r.metrics_addr;
    let listener = match rt.block_on(tokio::net::TcpListener::bind(addr)) {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen for /metrics on {addr}: {e}");
            return 2;
        }
    };
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(stream_id = %r.stream_id, "metrics listening on {local}");
    eprintln!("metrics listening on {local}");
    {
        let app = crate::metrics::router(registry.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    {
        let shared = shared.clone();
        rt.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            *shared.signalled.lock().unwrap() = Some(Instant::now());
        });
    }

    // RTSP connect failures: 3 retries with 1, 2, 4 s backoff.
    let mut attempt = 0;
    loop {
        let outcome = run_pipeline(r, &shared);
        match outcome {
            Outcome::ConnectFailed(e)
                if attempt < 3 && shared.signalled.lock().unwrap().is_none() =>
            {
                let wait = Duration::from_secs(1 << attempt);
                attempt += 1;
                warn!(stream_id = %r.stream_id, "cannot connect to the input ({e}); retry {attempt}/3 in {wait:?}");
                std::thread::sleep(wait);
            }
            Outcome::ConnectFailed(e) | Outcome::Error(e) => {
                error!(stream_id = %r.stream_id, "{e}");
                rt.shutdown_timeout(Duration::from_millis(200));
                return 1;
            }
            Outcome::Done => {
                info!(stream_id = %r.stream_id, "finished");
                rt.shutdown_timeout(Duration::from_millis(200));
                return 0;
            }
        }
    }
}

enum Outcome {
    Done,
    ConnectFailed(String),
    Error(String),
}

/// Sets the pipeline to NULL on another thread; gives up after `limit` (rtspsrc teardown can
/// block on a dead server).
fn shutdown(pipeline: &gst::Pipeline, limit: Duration) {
    let p = pipeline.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = p.set_state(gst::State::Null);
        let _ = tx.send(());
    });
    if rx.recv_timeout(limit).is_err() {
        warn!("pipeline shutdown took longer than {limit:?}; leaving it behind");
    }
}

fn run_pipeline(r: &Settings, shared: &Arc<Shared>) -> Outcome {
    let desc = match r.chain.live_description(&r.input, &r.output) {
        Ok(d) => d,
        Err(e) => return Outcome::Error(e),
    };
    debug!(stream_id = %r.stream_id, "pipeline: {desc}");
    let pipeline = match gst::parse::launch(&desc) {
        Ok(p) => match p.downcast::<gst::Pipeline>() {
            Ok(p) => p,
            Err(_) => return Outcome::Error("not a pipeline".into()),
        },
        Err(e) => return Outcome::Error(format!("cannot build the pipeline: {e}")),
    };
    if let (Ok(key), Some(sts)) = (std::env::var(API_KEY_ENV), pipeline.by_name("sts0")) {
        sts.set_property("api-key", key);
    }
    shared.got_output.store(false, Ordering::SeqCst);

    // An input without audio or without video: once rtspsrc has all its pads, both
    // depayloaders must be linked (else nothing is ever published).
    if let (Some(src), Some(adepay), Some(vdepay)) = (
        pipeline.by_name("src"),
        pipeline.by_name("adepay"),
        pipeline.by_name("vdepay"),
    ) {
        let bus = pipeline.bus().unwrap();
        let (adepay, vdepay) = (adepay.downgrade(), vdepay.downgrade());
        src.connect("no-more-pads", false, move |vals| {
            let src = vals[0].get::<gst::Element>().ok()?;
            for (depay, missing) in [(&adepay, "worker/no-audio"), (&vdepay, "worker/no-video")] {
                if let Some(d) = depay.upgrade()
                    && !d.static_pad("sink").is_some_and(|p| p.is_linked())
                {
                    let _ = bus.post(
                        gst::message::Application::builder(
                            gst::Structure::builder(missing)
                                .field("source", src.name().as_str())
                                .build(),
                        )
                        .build(),
                    );
                }
            }
            None
        });
    }

    // Published delay: what the muxer hands the RTMP sink, against when it was captured.
    if let Some(out) = pipeline.by_name("out") {
        let shared2 = shared.clone();
        let weak = pipeline.downgrade();
        out.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                shared2.got_output.store(true, Ordering::SeqCst);
                if let (Some(gst::PadProbeData::Buffer(b)), Some(p)) = (&info.data, weak.upgrade())
                    && let (Some(pts), Some(now)) = (b.pts(), p.current_running_time())
                {
                    // The muxer's output running time is the input running time + offset;
                    // rtmpsink sends it when the clock reaches it (it syncs), not before.
                    let rt = pts.nseconds() as i64;
                    let captured = rt - shared2.offset_ns as i64;
                    let sent = (now.nseconds() as i64).max(rt);
                    let delay = sent - captured;
                    let ms = delay as f64 / 1e6;
                    shared2.metrics.published_delay_ms.set(ms);
                    shared2.last_delay_ms.store(ms as i64, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            });
    }

    info!(stream_id = %r.stream_id, input = %redact(&format!("{:?}", r.input)), output = %r.output, "starting");
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The error message follows on the bus.
    }
    let bus = pipeline.bus().unwrap();
    let sts = pipeline.by_name("sts0");
    let mut last_poll = Instant::now();
    let mut eos_sent_at: Option<Instant> = None;
    let started = Instant::now();
    let outcome = loop {
        if let Some(t) = *shared.signalled.lock().unwrap()
            && eos_sent_at.is_none()
        {
            info!(stream_id = %r.stream_id, "signal: sending EOS to finalize the output");
            pipeline.send_event(gst::event::Eos::new());
            eos_sent_at = Some(t);
        }
        // The last `offset` of the stream still has to be published in real time.
        let grace = Duration::from_nanos(shared.offset_ns) + Duration::from_secs(10);
        if let Some(t) = eos_sent_at
            && t.elapsed() > grace
        {
            warn!(stream_id = %r.stream_id, "EOS did not get through in {grace:?}; stopping");
            break Outcome::Done;
        }
        if last_poll.elapsed() >= Duration::from_secs(1) {
            last_poll = Instant::now();
            if let Some(sts) = &sts {
                let s = sts.property::<gst::Structure>("stats");
                shared
                    .metrics
                    .inflight
                    .set(s.get::<u64>("in-flight").unwrap_or(0) as i64);
                shared.metrics.breaker_state.set(breaker_code(
                    s.get::<&str>("breaker-state").unwrap_or("closed"),
                ));
            }
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                info!(stream_id = %r.stream_id, "end of stream");
                break Outcome::Done;
            }
            gst::MessageView::Error(e) => {
                shared.metrics.bus_errors.inc();
                let src = msg
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default();
                let text = format!("{} (from {src}: {:?})", e.error(), e.debug());
                let from_source = msg.src().is_some_and(|s| {
                    s.name() == "src" || s.path_string().contains("/GstRTSPSrc:src")
                });
                if from_source
                    && !shared.got_output.load(Ordering::SeqCst)
                    && started.elapsed() < Duration::from_secs(30)
                {
                    break Outcome::ConnectFailed(text);
                }
                break Outcome::Error(format!("pipeline error: {text}"));
            }
            gst::MessageView::Warning(w) => {
                shared.metrics.bus_warnings.inc();
                let src = msg
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default();
                warn!(stream_id = %r.stream_id, "{} (from {src}: {:?})", w.error(), w.debug());
            }
            gst::MessageView::Application(a)
                if a.structure().is_some_and(|s| s.name() == "worker/no-audio") =>
            {
                shared.metrics.bus_errors.inc();
                break Outcome::Error(format!(
                    "the input {} has no audio track (H.264 + AAC expected)",
                    redact(&format!("{:?}", r.input))
                ));
            }
            gst::MessageView::Application(a)
                if a.structure().is_some_and(|s| s.name() == "worker/no-video") =>
            {
                shared.metrics.bus_errors.inc();
                break Outcome::Error(format!(
                    "the input {} has no video track (H.264 + AAC expected; audio-only \
                     input is not supported)",
                    redact(&format!("{:?}", r.input))
                ));
            }
            gst::MessageView::StateChanged(s) if msg.src() == Some(pipeline.upcast_ref()) => {
                info!(stream_id = %r.stream_id, "pipeline {:?} -> {:?}", s.old(), s.current());
            }
            gst::MessageView::Element(e) => {
                let Some(s) = e.structure() else { continue };
                match s.name().as_str() {
                    "stsbridge/fragment" => on_fragment(shared, &pipeline, s),
                    "stsbridge/breaker" => {
                        let state = s.get::<&str>("state").unwrap_or("closed");
                        shared.metrics.breaker_state.set(breaker_code(state));
                        warn!(stream_id = %r.stream_id, "STS circuit breaker {} -> {state}", s.get::<&str>("previous").unwrap_or(""));
                    }
                    "avoffset/sync" => {
                        let d = s.get::<i64>("delta").unwrap_or(0) as f64 / 1e6;
                        shared.metrics.av_sync_delta_ms.set(d);
                        debug!(stream_id = %r.stream_id, delta_ms = d, "A/V sync sample");
                    }
                    _ => {}
                }
            }
            gst::MessageView::Latency(_) => {
                let _ = pipeline.recalculate_latency();
            }
            _ => {}
        }
    };
    info!(
        stream_id = %r.stream_id,
        published_delay_ms = shared.last_delay_ms.load(Ordering::Relaxed),
        "stopping"
    );
    shutdown(&pipeline, Duration::from_secs(5));
    outcome
}

fn on_fragment(shared: &Shared, pipeline: &gst::Pipeline, s: &gst::StructureRef) {
    let outcome = s.get::<&str>("outcome").unwrap_or("unknown").to_string();
    let reason = s.get::<&str>("reason").unwrap_or("").to_string();
    let m = &shared.metrics;
    m.fragments
        .get_or_create(&StatusLabels {
            stream_id: shared.stream_id.clone(),
            status: outcome.clone(),
        })
        .inc();
    if outcome == "fallback" {
        m.fallbacks
            .get_or_create(&ReasonLabels {
                stream_id: shared.stream_id.clone(),
                reason: reason.clone(),
            })
            .inc();
    }
    let rtt = s.get::<u64>("rtt").unwrap_or(0);
    if rtt > 0 {
        m.rtt_ms.observe(rtt as f64 / 1e6);
    }
    if let (Ok(pts), Ok(dur), Some(now)) = (
        s.get::<u64>("pts"),
        s.get::<u64>("duration"),
        pipeline.current_running_time(),
    ) && pts != u64::MAX
    {
        let end = pts.saturating_add(if dur == u64::MAX { 0 } else { dur });
        let lat = now.nseconds() as f64 - end as f64;
        m.chunk_latency_ms.observe((lat / 1e6).max(0.0));
    }
    debug!(
        stream_id = %shared.stream_id,
        fragment_id = s.get::<&str>("fragment-id").unwrap_or(""),
        sequence_number = s.get::<u64>("sequence-number").unwrap_or(0),
        outcome = %outcome,
        reason = %reason,
        "fragment"
    );
}
