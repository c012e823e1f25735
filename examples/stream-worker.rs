//! The stream worker: one live stream pulled over RTSP (or RTMP), dubbed through `dubchunker !
//! stsbridge ! avoffset`, published over RTMP, watched by Prometheus on `/metrics`.
//!
//! ```text
//! WORKER_STS_SERVICE_URL=http://sts:8000/api/v1/sts/process \
//!   cargo run --release --example stream-worker -- --stream-id test
//! ```
//!
//! Input `rtsp://MEDIAMTX_HOST:MEDIAMTX_RTSP_PORT/live/<id>/in`, output
//! `rtmp://MEDIAMTX_HOST:MEDIAMTX_RTMP_PORT/live/<id>/out` (both overridable). Exits 0 at the
//! end of the stream or after SIGINT/SIGTERM (EOS first, so the output is finalized), 1 on a
//! pipeline error (an orchestrator restarts it), 2 on bad settings.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use clap::Parser;
use gst::prelude::*;
use gstdubbing::pipeline::{Chain, LiveInput, validate_stream_id};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::{debug, error, info, warn};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Dubs one live stream: RTSP/RTMP in, STS, RTMP out, /metrics"
)]
struct Args {
    /// Stream id: letters, digits, '_' and '-'. Used in the default URLs and metric labels.
    #[arg(long, env = "WORKER_STREAM_ID")]
    stream_id: String,
    /// Input URL (rtsp:// or rtmp://). Default: rtsp://HOST:RTSP_PORT/live/<id>/in.
    #[arg(long)]
    input: Option<String>,
    /// Output URL (rtmp://). Default: rtmp://HOST:RTMP_PORT/live/<id>/out.
    #[arg(long)]
    output: Option<String>,
    #[arg(long, env = "MEDIAMTX_HOST", default_value = "localhost")]
    mediamtx_host: String,
    #[arg(long, env = "MEDIAMTX_RTSP_PORT", default_value_t = 8554)]
    mediamtx_rtsp_port: u16,
    #[arg(long, env = "MEDIAMTX_RTMP_PORT", default_value_t = 1935)]
    mediamtx_rtmp_port: u16,
    /// STS endpoint, e.g. http://sts:8000/api/v1/sts/process.
    #[arg(long, env = "WORKER_STS_SERVICE_URL")]
    sts_url: Option<String>,
    /// `dub` (default) or `passthrough` (no STS: original audio, still through the elements).
    #[arg(long, default_value = "dub")]
    sts_mode: String,
    /// Per-attempt STS timeout, ms.
    #[arg(long, env = "WORKER_STS_TIMEOUT_MS", default_value_t = 8000)]
    sts_timeout_ms: u64,
    #[arg(long, env = "WORKER_STS_MAX_RETRIES", default_value_t = 2)]
    sts_max_retries: u32,
    /// Fragment duration, ms.
    #[arg(long, env = "WORKER_FRAGMENT_TARGET_DUR", default_value_t = 1000)]
    fragment_target_dur: u64,
    /// A/V offset, ns.
    #[arg(long, env = "WORKER_AV_OFFSET_NS", default_value_t = 6_000_000_000)]
    av_offset_ns: u64,
    #[arg(long, env = "WORKER_SOURCE_LANGUAGE", default_value = "en")]
    source_language: String,
    #[arg(long, env = "WORKER_TARGET_LANGUAGE", default_value = "es")]
    target_language: String,
    /// Port of GET /metrics (0: any free port, printed at startup).
    #[arg(long, env = "WORKER_METRICS_PORT", default_value_t = 8000)]
    metrics_port: u16,
    /// Address /metrics binds to (0.0.0.0 in containers).
    #[arg(long, env = "WORKER_METRICS_BIND", default_value = "127.0.0.1")]
    metrics_bind: std::net::IpAddr,
    /// Log JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// The API key is read from the environment only (never a flag: command lines are visible).
const API_KEY_ENV: &str = "WORKER_STS_API_KEY";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    stream_id: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    stream_id: String,
    reason: String,
}

struct Metrics {
    fragments: Family<StatusLabels, Counter>,
    fallbacks: Family<ReasonLabels, Counter>,
    bus_errors: Counter,
    bus_warnings: Counter,
    inflight: Gauge,
    av_sync_delta_ms: Gauge<f64, AtomicU64>,
    breaker_state: Gauge,
    rtt_ms: Histogram,
    chunk_latency_ms: Histogram,
    published_delay_ms: Gauge<f64, AtomicU64>,
}

impl Metrics {
    fn new(registry: &mut Registry) -> Metrics {
        let buckets = || {
            [
                50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0,
                10000.0,
            ]
            .into_iter()
        };
        let m = Metrics {
            fragments: Family::default(),
            fallbacks: Family::default(),
            bus_errors: Counter::default(),
            bus_warnings: Counter::default(),
            inflight: Gauge::default(),
            av_sync_delta_ms: Gauge::default(),
            breaker_state: Gauge::default(),
            rtt_ms: Histogram::new(buckets()),
            chunk_latency_ms: Histogram::new(buckets()),
            published_delay_ms: Gauge::default(),
        };
        registry.register(
            "worker_audio_fragments",
            "Audio fragments out of stsbridge, by outcome",
            m.fragments.clone(),
        );
        registry.register(
            "worker_fallback",
            "Fragments that went out as fallback audio, by reason",
            m.fallbacks.clone(),
        );
        registry.register(
            "worker_gst_bus_errors",
            "Error messages on the pipeline bus",
            m.bus_errors.clone(),
        );
        registry.register(
            "worker_gst_bus_warnings",
            "Warning messages on the pipeline bus",
            m.bus_warnings.clone(),
        );
        registry.register(
            "worker_inflight_fragments",
            "STS requests in flight",
            m.inflight.clone(),
        );
        registry.register(
            "worker_av_sync_delta_ms",
            "A/V delta at the output of avoffset (audio - video position), ms",
            m.av_sync_delta_ms.clone(),
        );
        registry.register(
            "worker_sts_breaker_state",
            "STS circuit breaker: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        registry.register(
            "worker_sts_rtt_ms",
            "Round-trip time of STS requests, ms",
            m.rtt_ms.clone(),
        );
        registry.register(
            "worker_chunk_end_to_end_latency_ms",
            "From the end of a fragment's capture to its dubbed audio leaving stsbridge, ms",
            m.chunk_latency_ms.clone(),
        );
        registry.register(
            "worker_published_delay_ms",
            "How far behind its input the published stream is (wall clock), ms",
            m.published_delay_ms.clone(),
        );
        m
    }
}

fn breaker_code(state: &str) -> i64 {
    match state {
        "open" => 2,
        "half-open" => 1,
        _ => 0,
    }
}

/// Settings checked and resolved; exit code 2 on any problem.
struct Resolved {
    stream_id: String,
    input: LiveInput,
    output: String,
    chain: Chain,
}

fn resolve(args: &Args) -> Result<Resolved, String> {
    validate_stream_id(&args.stream_id)?;
    let id = &args.stream_id;
    let input = args.input.clone().unwrap_or_else(|| {
        format!(
            "rtsp://{}:{}/live/{id}/in",
            args.mediamtx_host, args.mediamtx_rtsp_port
        )
    });
    let output = args.output.clone().unwrap_or_else(|| {
        format!(
            "rtmp://{}:{}/live/{id}/out",
            args.mediamtx_host, args.mediamtx_rtmp_port
        )
    });
    let input = LiveInput::parse(&input)?;
    let url = match args.sts_mode.as_str() {
        "passthrough" => String::new(),
        "dub" => {
            let u = args.sts_url.clone().ok_or(
                "no STS URL: set WORKER_STS_SERVICE_URL or --sts-url (or --sts-mode passthrough)",
            )?;
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("STS URL {u:?} is not an http(s):// URL"));
            }
            u
        }
        m => return Err(format!("--sts-mode {m:?}: use dub or passthrough")),
    };
    if !(100..=10_000).contains(&args.fragment_target_dur) {
        return Err(format!(
            "WORKER_FRAGMENT_TARGET_DUR {} ms is outside 100..10000",
            args.fragment_target_dur
        ));
    }
    if args.sts_timeout_ms < 100 {
        return Err(format!(
            "WORKER_STS_TIMEOUT_MS {} is below 100",
            args.sts_timeout_ms
        ));
    }
    let chain = Chain {
        url,
        stream_id: id.clone(),
        source_language: args.source_language.clone(),
        target_languages: vec![args.target_language.clone()],
        chunk_duration_ns: args.fragment_target_dur * 1_000_000,
        timeout_ns: args.sts_timeout_ms * 1_000_000,
        max_retries: args.sts_max_retries,
        offset_ns: args.av_offset_ns,
        ..Default::default()
    };
    chain.live_description(&input, &output)?;
    Ok(Resolved {
        stream_id: id.clone(),
        input,
        output,
        chain,
    })
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() {
    let args = Args::parse();
    init_logging(args.log_json);
    let resolved = match resolve(&args) {
        Ok(r) => r,
        Err(e) => {
            error!("bad settings: {e}");
            eprintln!("stream-worker: {e}");
            std::process::exit(2);
        }
    };
    std::process::exit(run(&args, resolved));
}

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

fn run(args: &Args, r: Resolved) -> i32 {
    if let Err(e) = gst::init() {
        error!("cannot initialize GStreamer: {e}");
        return 1;
    }
    if let Err(e) = gstdubbing::plugin_register_static() {
        error!("cannot register the dubbing plugin: {e}");
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
    let addr = std::net::SocketAddr::new(args.metrics_bind, args.metrics_port);
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
        let registry = registry.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                            .into_response(),
                        Err(_) => (
                            [(axum::http::header::CONTENT_TYPE, "text/plain")],
                            "encoding error".to_string(),
                        )
                            .into_response(),
                    }
                }
            }),
        );
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
        let outcome = run_pipeline(&r, &shared);
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

fn run_pipeline(r: &Resolved, shared: &Arc<Shared>) -> Outcome {
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

    // An input without audio: once rtspsrc has all its pads, the audio depayloader must be
    // linked.
    if let (Some(src), Some(adepay)) = (pipeline.by_name("src"), pipeline.by_name("adepay")) {
        let bus = pipeline.bus().unwrap();
        let adepay = adepay.downgrade();
        src.connect("no-more-pads", false, move |vals| {
            let src = vals[0].get::<gst::Element>().ok()?;
            if let Some(a) = adepay.upgrade()
                && !a.static_pad("sink").is_some_and(|p| p.is_linked())
            {
                let _ = bus.post(
                    gst::message::Application::builder(
                        gst::Structure::builder("worker/no-audio")
                            .field("source", src.name().as_str())
                            .build(),
                    )
                    .build(),
                );
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

/// Input URLs may carry credentials (rtsp://user:pass@host): never log them.
fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(['/', '"', ' ']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}
