//! The stream worker: one live stream pulled over RTSP (or RTMP), dubbed through `dubchunker !
//! stsbridge ! avoffset`, published over RTMP, watched by Prometheus on `/metrics`.
//!
//! ```text
//! WORKER_STS_SERVICE_URL=http://sts:8000/api/v1/sts/process \
//!   cargo run --release -p dubbing-worker -- --stream-id test
//! ```
//!
//! Input `rtsp://MEDIAMTX_HOST:MEDIAMTX_RTSP_PORT/live/<id>/in`, output
//! `rtmp://MEDIAMTX_HOST:MEDIAMTX_RTMP_PORT/live/<id>/out` (both overridable; with several
//! languages one output per language at `…/out/<lang>`, the video demuxed once and sent to
//! each). Exits 0 at the end of the stream or after SIGINT/SIGTERM (EOS first, so the output is
//! finalized), 1 on a pipeline error (an orchestrator restarts it), 2 on bad settings.
//!
//! No URL and no key goes through a launch description (see [`crate::pipeline`]), and every
//! log line, GStreamer's included, is redacted ([`crate::log`]).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use prometheus_client::registry::Registry;
use tracing::{debug, error, info, warn};

use gstdubbing::avoffset::SyncReport;
use gstdubbing::stsbridge::{BreakerReport, FragmentReport, Outcome as FragmentOutcome};

use crate::log::{redact, redact_url};
use crate::metrics::{LanguageLabels, Metrics, ReasonLabels, StatusLabels, breaker_code};
use crate::settings::Settings;
use crate::status::{Board, State};

/// Shared between the bus loop, probes and the metrics poller.
struct Shared {
    metrics: Metrics,
    board: Arc<Board>,
    stream_id: String,
    languages: Vec<String>,
    /// `avoffset`'s shift: the A/V offset less what the muxers wait (their latency, which
    /// the sinks add back), see [`crate::pipeline::Chain::mux_wait_ns`].
    shift_ns: u64,
    got_output: AtomicBool,
    /// Set by a SIGINT/SIGTERM: time of the signal.
    signalled: Mutex<Option<Instant>>,
    last_delay_ms: AtomicI64,
    /// The pipeline's latency (what the sinks add to every running time), ns.
    latency_ns: AtomicU64,
    /// The source sent its end of stream: no more data is expected from it.
    source_ended: AtomicBool,
    /// How long the source had been silent when its end of stream came, ms: an end after an
    /// outage (rtspsrc gives up on a frozen server with an EOS) is not the end of the programme.
    silence_before_eos_ms: AtomicU64,
    /// Stream time of the newest video from the source, ns (`u64::MAX`: none yet).
    source_pos_ns: AtomicU64,
    /// Every publication connected and taking data.
    publications_up: AtomicBool,
}

impl Shared {
    fn labels(&self, index: usize) -> LanguageLabels {
        LanguageLabels {
            stream_id: self.stream_id.clone(),
            language: self.languages.get(index).cloned().unwrap_or_default(),
        }
    }
}

/// Which language an element of the chain (`sts<i>`, `av`, `av<i>`) serves.
fn language_index(name: &str) -> Option<usize> {
    let digits = name.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    if digits.is_empty() {
        Some(0)
    } else {
        digits.parse().ok()
    }
}

/// Runs the worker until the end of the stream, a signal or an error; returns the exit code:
/// 0 done (end of stream, or EOS after SIGINT/SIGTERM), 1 pipeline error, 2 cannot listen
/// for /metrics.
pub fn run(r: &Settings) -> i32 {
    if let Err(e) = crate::init() {
        error!("{e}");
        return 1;
    }
    crate::log::redact_gstreamer_log();
    if let Some(k) = &r.api_key {
        crate::log::add_secret(k.expose());
    }
    crate::log::add_url_secrets(&r.chain.url);
    crate::log::add_url_secrets(r.urls.input.url());
    for o in &r.urls.outputs {
        crate::log::add_url_secrets(o);
    }
    let mut registry = Registry::default();
    if r.chain.offset_ns != r.requested_offset_ns {
        warn!(
            stream_id = %r.stream_id,
            requested_ms = r.requested_offset_ns / 1_000_000,
            used_ms = r.chain.offset_ns / 1_000_000,
            "WORKER_AV_OFFSET_NS {} ms is below what the chain can deliver (longest fragment {} ms + STS {} ms + source and encoder {} ms): using {} ms",
            r.requested_offset_ns / 1_000_000,
            r.chain.longest_fragment_ns() / 1_000_000,
            crate::pipeline::MIN_STS_LATENCY_NS / 1_000_000,
            crate::pipeline::DOWNSTREAM_FLOOR_NS / 1_000_000,
            r.chain.offset_ns / 1_000_000
        );
    }
    info!(
        stream_id = %r.stream_id,
        offset_ms = r.chain.offset_ns / 1_000_000,
        sts_latency_ms = r.chain.sts_latency_ns() / 1_000_000,
        longest_fragment_ms = r.chain.longest_fragment_ns() / 1_000_000,
        "A/V offset"
    );
    let mut board = Board::new(
        &r.stream_id,
        r.chain.offset_ns,
        r.requested_offset_ns,
        &r.chain.target_languages,
    );
    board.sts_protocol = r.chain.protocol.clone();
    let board = Arc::new(board);
    let shared = Arc::new(Shared {
        metrics: Metrics::new(&mut registry),
        board: board.clone(),
        stream_id: r.stream_id.clone(),
        languages: r.chain.target_languages.clone(),
        shift_ns: r.chain.offset_ns - r.chain.mux_wait_ns(),
        got_output: AtomicBool::new(false),
        signalled: Mutex::new(None),
        last_delay_ms: AtomicI64::new(0),
        latency_ns: AtomicU64::new(0),
        source_ended: AtomicBool::new(false),
        silence_before_eos_ms: AtomicU64::new(0),
        source_pos_ns: AtomicU64::new(u64::MAX),
        publications_up: AtomicBool::new(false),
    });
    shared
        .metrics
        .sts_protocol
        .get_or_create(&vec![
            ("stream_id".to_owned(), r.stream_id.clone()),
            ("protocol".to_owned(), r.chain.protocol.clone()),
        ])
        .set(1);
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
        let app = crate::metrics::router(registry.clone(), board.clone());
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
            shared.board.set_state(State::Stopping);
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
                shared.board.set_state(State::Reconnecting);
                warn!(stream_id = %r.stream_id, "cannot connect to the input ({}); retry {attempt}/3 in {wait:?}", redact(&e));
                std::thread::sleep(wait);
            }
            Outcome::ConnectFailed(e) | Outcome::Error(e) => {
                error!(stream_id = %r.stream_id, "{}", redact(&e));
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
pub(crate) fn shutdown(pipeline: &gst::Pipeline, limit: Duration) {
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
    // The description holds no URL and no key; they are set on the elements.
    debug!(stream_id = %r.stream_id, "pipeline: {}", r.chain.live_description());
    let pipeline = match r
        .chain
        .build_live(&r.urls, r.api_key.as_ref().map(|k| k.expose()))
    {
        Ok(p) => p,
        Err(e) => return Outcome::Error(e),
    };
    shared.got_output.store(false, Ordering::SeqCst);
    shared.source_ended.store(false, Ordering::SeqCst);
    shared.source_pos_ns.store(u64::MAX, Ordering::SeqCst);
    shared.board.set_state(State::Starting);

    // The input: source bins behind a joint that makes every generation one stream.
    let joint = Arc::new(crate::source::Joint::default());
    {
        let shared2 = shared.clone();
        let timeout = r.source_timeout;
        let silent_too_long = move || {
            shared2
                .board
                .source_data_at()
                .is_some_and(|t| t.elapsed() > timeout)
        };
        if let Err(e) = joint.attach(&pipeline, silent_too_long) {
            return Outcome::Error(e);
        }
    }
    let mut input = crate::source::Input::new(
        &pipeline,
        &r.urls.input,
        joint.clone(),
        r.source_timeout,
        r.chain.stall_fill_after(),
    );
    let bus = pipeline.bus().unwrap();
    if let Some(bin) = input.current() {
        watch_source(bin, shared, &bus);
    }

    // One publication per language, fed by the muxer's appsink.
    let mut publications = Vec::new();
    for (i, url) in r.urls.outputs.iter().enumerate() {
        let Some(sink) = pipeline
            .by_name(&format!("out{i}"))
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        else {
            return Outcome::Error(format!("no appsink out{i} in the pipeline"));
        };
        match crate::output::Publication::start(url, &sink, r.output_timeout, r.output_grace) {
            Ok(p) => publications.push(p),
            Err(e) => return Outcome::Error(e),
        }
    }

    // Published delay: what each muxer hands its publication, against when it was captured;
    // only what goes out counts (nothing while the output is down).
    for (i, publication) in publications.iter().enumerate() {
        let Some(pad) = pipeline
            .by_name(&format!("out{i}"))
            .and_then(|o| o.static_pad("sink"))
        else {
            continue;
        };
        let shared2 = shared.clone();
        let labels = shared.labels(i);
        let weak = pipeline.downgrade();
        let feed = publication.feed();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            shared2.got_output.store(true, Ordering::SeqCst);
            if let (Some(gst::PadProbeData::Buffer(b)), Some(p)) = (&info.data, weak.upgrade())
                && feed.is_open()
                && let (Some(pts), Some(now)) = (b.pts(), p.current_running_time())
            {
                // The muxer's output running time is the input running time + the shift;
                // the appsink hands it over when the clock reaches it plus the pipeline
                // latency (it syncs; the muxer's wait included), not before.
                let rt = pts.nseconds() as i64;
                let captured = rt - shared2.shift_ns as i64;
                let due = rt + shared2.latency_ns.load(Ordering::Relaxed) as i64;
                let sent = (now.nseconds() as i64).max(due);
                let ms = (sent - captured) as f64 / 1e6;
                shared2
                    .metrics
                    .published_delay_ms
                    .get_or_create(&labels)
                    .set(ms);
                if i == 0 {
                    shared2.last_delay_ms.store(ms as i64, Ordering::Relaxed);
                }
                shared2.board.language(i, |l| {
                    l.last_output = Some((Instant::now(), captured));
                    l.published_delay_ms = Some(ms);
                });
            }
            gst::PadProbeReturn::Ok
        });
    }

    info!(
        stream_id = %r.stream_id,
        input = %redact_url(r.urls.input.url()),
        outputs = %r.urls.outputs.iter().map(|o| redact_url(o)).collect::<Vec<_>>().join(" "),
        languages = %r.chain.target_languages.join(","),
        "starting"
    );
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The error message follows on the bus.
    }
    let bridges: Vec<gst::Element> = (0..r.chain.target_languages.len())
        .filter_map(|i| pipeline.by_name(&format!("sts{i}")))
        .collect();
    let mut last_poll = Instant::now();
    let mut eos_sent_at: Option<Instant> = None;
    let started = Instant::now();
    let mut playing_since: Option<Instant> = None;
    // Last data before the current source outage, if one is going on.
    let mut outage_from: Option<Instant> = None;
    // The source's announced range, asked once its data flows (`Some(None)`: no end).
    let mut announced: Option<Option<u64>> = None;
    let outcome = loop {
        if announced.is_none() && shared.board.source_data_at().is_some() {
            announced = Some(input.current().and_then(announced_duration));
            match announced.flatten() {
                Some(d) => {
                    info!(stream_id = %r.stream_id, "the source announces a range of {:.1} s (a file: it ends there)", d as f64 / 1e9)
                }
                None => debug!(stream_id = %r.stream_id, "the source announces no end (live)"),
            }
        }
        let pos = match shared.source_pos_ns.load(Ordering::Relaxed) {
            u64::MAX => None,
            p => Some(p),
        };
        if eos_sent_at.is_none()
            && !shared.source_ended.load(Ordering::SeqCst)
            && let Some(silent) = shared.board.source_data_at().map(|t| t.elapsed())
            && range_played_out(silent, r.source_timeout, pos, announced.flatten())
        {
            info!(
                stream_id = %r.stream_id,
                "the source sent its whole announced range ({:.1} of {:.1} s) and went silent without an end of stream (no RTCP BYE): the end of the programme; publishing what is held",
                pos.unwrap_or(0) as f64 / 1e9,
                announced.flatten().unwrap_or(0) as f64 / 1e9
            );
            shared.source_ended.store(true, Ordering::SeqCst);
            input.end();
            eos_sent_at = Some(Instant::now());
        }
        let now = Instant::now();
        if eos_sent_at.is_none() && !shared.source_ended.load(Ordering::SeqCst) {
            let silent = shared
                .board
                .source_data_at()
                .map(|t| now.saturating_duration_since(t));
            if joint.take_end(Duration::from_millis(300)) {
                if input.troubled() {
                    warn!(
                        stream_id = %r.stream_id,
                        "source outage: the source ended its stream after a read error (the server closed the connection); reconnecting"
                    );
                    input.lose(now);
                } else {
                    info!(stream_id = %r.stream_id, "the source ended its stream: the end of the programme; publishing what is held");
                    shared.source_ended.store(true, Ordering::SeqCst);
                    input.end();
                    eos_sent_at = Some(now);
                }
            } else if joint.take_lost() && !input.is_down() {
                warn!(
                    stream_id = %r.stream_id,
                    "source outage: the source ended its stream after {} ms without data (gone); reconnecting",
                    silent.unwrap_or_default().as_millis()
                );
                input.lose(now);
            } else if !input.is_down()
                && !input.starting()
                && silent.is_some_and(|s| s > r.source_timeout)
            {
                warn!(stream_id = %r.stream_id, "source: no data for {} ms; reconnecting", silent.unwrap_or_default().as_millis());
                input.lose(now);
            }
            let watch = |b: &gst::Bin| watch_source(b, shared, &bus);
            // At the end of an announced range the source is ending, not stalled.
            let may_stall = !at_range_end(pos, announced.flatten());
            match input.tick(
                now,
                shared.board.source_data_at(),
                may_stall,
                &r.stream_id,
                watch,
            ) {
                Ok(crate::source::InputEvent::Reconnecting) => {
                    shared.metrics.source_reconnects.inc();
                }
                Ok(crate::source::InputEvent::None) => {}
                Err(e) => break Outcome::Error(e),
            }
            // `/status`: a source outage reads "reconnecting" until a source delivers again.
            if playing_since.is_some() {
                let state = if input.is_down() && !input.starting() {
                    State::Reconnecting
                } else {
                    State::Playing
                };
                if shared.board.state() != state {
                    shared.board.set_state(state);
                }
            }
        }
        let mut gave_up = None;
        for p in publications.iter_mut() {
            match p.tick(now, &r.stream_id) {
                crate::output::Event::Reconnecting => {
                    shared.metrics.output_reconnects.inc();
                }
                crate::output::Event::GaveUp(why) => gave_up = Some(why),
                crate::output::Event::None => {}
            }
        }
        if let Some(why) = gave_up {
            shared.metrics.bus_errors.inc();
            break Outcome::Error(why);
        }
        shared
            .publications_up
            .store(publications.iter().all(|p| p.is_up()), Ordering::Relaxed);
        if let Some(since) = playing_since
            && let Some(outage) = watchdog(r, shared, since, &mut outage_from)
        {
            shared.metrics.bus_errors.inc();
            break Outcome::Error(outage);
        }
        if let Some(t) = *shared.signalled.lock().unwrap()
            && eos_sent_at.is_none()
        {
            info!(stream_id = %r.stream_id, "signal: sending EOS to finalize the output");
            input.end();
            eos_sent_at = Some(t);
        }
        // The last `offset` of the stream still has to be published in real time.
        let grace = Duration::from_nanos(shared.shift_ns) + Duration::from_secs(10);
        if let Some(t) = eos_sent_at
            && t.elapsed() > grace
        {
            warn!(stream_id = %r.stream_id, "EOS did not get through in {grace:?}; stopping");
            break Outcome::Done;
        }
        if last_poll.elapsed() >= Duration::from_secs(1) {
            last_poll = Instant::now();
            poll(shared, &pipeline, &bridges);
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                let silent = shared.silence_before_eos_ms.load(Ordering::SeqCst);
                if eos_sent_at.is_none() && silent > r.source_timeout.as_millis() as u64 {
                    break Outcome::Error(format!(
                        "source outage: the source ended its stream after {silent} ms without data (frozen or gone; not an end of the programme)"
                    ));
                }
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
                match input.owns(&src) {
                    // A source bin being torn down: stale.
                    Some(false) => {
                        debug!(stream_id = %r.stream_id, "earlier source: {}", redact(&text));
                        continue;
                    }
                    Some(true)
                        if input.starting()
                            && !shared.got_output.load(Ordering::SeqCst)
                            && started.elapsed() < Duration::from_secs(30) =>
                    {
                        break Outcome::ConnectFailed(text);
                    }
                    Some(true) => {
                        if eos_sent_at.is_none() && !input.is_down() {
                            warn!(stream_id = %r.stream_id, "source outage: {}; reconnecting", redact(&text));
                        }
                        input.lose(Instant::now());
                        continue;
                    }
                    None => break Outcome::Error(format!("pipeline error: {text}")),
                }
            }
            gst::MessageView::Warning(w) => {
                shared.metrics.bus_warnings.inc();
                let src = msg
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default();
                if input.owns(&src) == Some(true) && w.error().is::<gst::ResourceError>() {
                    input.note_trouble();
                }
                warn!(stream_id = %r.stream_id, "{}", redact(&format!("{} (from {src}: {:?})", w.error(), w.debug())));
            }
            gst::MessageView::Application(a)
                if a.structure().is_some_and(|s| s.name() == "worker/no-audio") =>
            {
                shared.metrics.bus_errors.inc();
                break Outcome::Error(format!(
                    "the input {} has no audio track (H.264 + AAC expected)",
                    redact_url(r.urls.input.url())
                ));
            }
            gst::MessageView::Application(a)
                if a.structure().is_some_and(|s| s.name() == "worker/no-video") =>
            {
                shared.metrics.bus_errors.inc();
                break Outcome::Error(format!(
                    "the input {} has no video track (H.264 + AAC expected; audio-only \
                     input is not supported)",
                    redact_url(r.urls.input.url())
                ));
            }
            gst::MessageView::StateChanged(s) if msg.src() == Some(pipeline.upcast_ref()) => {
                info!(stream_id = %r.stream_id, "pipeline {:?} -> {:?}", s.old(), s.current());
                if s.current() == gst::State::Playing {
                    shared.board.set_state(State::Playing);
                    playing_since.get_or_insert_with(Instant::now);
                    store_latency(shared, &pipeline, &r.stream_id);
                }
            }
            gst::MessageView::Element(e) => {
                let Some(s) = e.structure() else { continue };
                let index = msg.src().and_then(|o| language_index(&o.name()));
                if let Some(f) = FragmentReport::from_structure(s) {
                    on_fragment(shared, &pipeline, index.unwrap_or(0), &f);
                } else if let Some(b) = BreakerReport::from_structure(s) {
                    let i = index.unwrap_or(0);
                    shared
                        .metrics
                        .breaker_state
                        .get_or_create(&shared.labels(i))
                        .set(breaker_code(b.state));
                    shared
                        .board
                        .language(i, |l| l.breaker = b.state.as_str().into());
                    warn!(
                        stream_id = %r.stream_id,
                        language = %shared.labels(i).language,
                        "STS circuit breaker {} -> {}",
                        b.previous.as_str(),
                        b.state.as_str()
                    );
                } else if let Some(sync) = SyncReport::from_structure(s) {
                    let d = sync.delta as f64 / 1e6;
                    if index == Some(0) {
                        shared.metrics.av_sync_delta_ms.set(d);
                        shared.board.set_av_delta_ms(d);
                    }
                    debug!(stream_id = %r.stream_id, delta_ms = d, "A/V sync sample");
                }
            }
            gst::MessageView::Latency(_) => {
                let _ = pipeline.recalculate_latency();
                store_latency(shared, &pipeline, &r.stream_id);
            }
            _ => {}
        }
    };
    info!(
        stream_id = %r.stream_id,
        published_delay_ms = shared.last_delay_ms.load(Ordering::Relaxed),
        "stopping"
    );
    if matches!(outcome, Outcome::Done) {
        // The end of stream has reached the publications: let what they hold get out.
        for p in publications.iter_mut() {
            if !p.finish(Duration::from_secs(5)) {
                warn!(stream_id = %r.stream_id, "an output did not finish its stream in 5 s");
            }
        }
    }
    drop(publications);
    shutdown(&pipeline, Duration::from_secs(5));
    outcome
}

/// The probes of one source bin: the source is up while video arrives (and where it is, for
/// the announced range); how long it had been silent when its end of stream came (the joint
/// holds that back for the worker loop to decide, see [`crate::source`]); an input without
/// audio or video is reported.
fn watch_source(bin: &gst::Bin, shared: &Arc<Shared>, bus: &gst::Bus) {
    if let Some(pad) = bin.by_name("vparse").and_then(|e| e.static_pad("src")) {
        let shared2 = shared.clone();
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |pad, info| {
                match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => {
                        shared2.board.source_data(Instant::now());
                        if let Some(pos) =
                            pad.sticky_event::<gst::event::Segment>(0).and_then(|e| {
                                let seg = e.segment().downcast_ref::<gst::ClockTime>()?.clone();
                                seg.to_stream_time(b.pts()?)
                            })
                        {
                            shared2
                                .source_pos_ns
                                .store(pos.nseconds(), Ordering::Relaxed);
                        }
                    }
                    Some(gst::PadProbeData::Event(e)) if e.type_() == gst::EventType::Eos => {
                        let silent = shared2
                            .board
                            .source_data_at()
                            .map_or(0, |t| t.elapsed().as_millis() as u64);
                        shared2
                            .silence_before_eos_ms
                            .store(silent, Ordering::SeqCst);
                        // The joint holds it back; the worker loop decides what it is.
                    }
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            },
        );
    }

    // An input without audio or without video: once rtspsrc has all its pads, both
    // depayloaders must be linked (else nothing is ever published).
    if let (Some(src), Some(adepay), Some(vdepay)) = (
        bin.by_name("src"),
        bin.by_name("adepay"),
        bin.by_name("vdepay"),
    ) {
        let bus = bus.clone();
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
}

/// The range an RTSP server announced for what it serves, ns: finite for a file
/// (`npt=0-60`), `None` for a live source (`npt=now-`) or an RTMP input. Asked of the source
/// through the video parser's upstream peer (rtspsrc answers duration queries from the range).
fn announced_duration(source: &gst::Bin) -> Option<u64> {
    let sink = source.by_name("vparse")?.static_pad("sink")?;
    let d = sink.peer_query_duration::<gst::ClockTime>()?.nseconds();
    (d > 0).then_some(d)
}

/// Whether a source that has gone silent has in fact ended: it announced a finite range, sent
/// all of it (its newest video, stream time `pos`, within [`RANGE_END_TOLERANCE_NS`] of the
/// end: the last frame starts a frame before it and the jitterbuffer may shift it) and has
/// been silent for more than `timeout`. Servers that send no RTCP BYE, or lose it, would
/// otherwise leave the worker waiting out the grace and exiting 1 at the end of a file. A
/// live source (open range) or one that stopped short of its end is never taken for ended.
fn range_played_out(
    silent: Duration,
    timeout: Duration,
    pos: Option<u64>,
    duration: Option<u64>,
) -> bool {
    silent > timeout && at_range_end(pos, duration)
}

/// Whether the source's newest video (stream time `pos`) is at the end of its announced range.
fn at_range_end(pos: Option<u64>, duration: Option<u64>) -> bool {
    match (pos, duration) {
        (Some(pos), Some(duration)) => pos + RANGE_END_TOLERANCE_NS >= duration,
        _ => false,
    }
}

const RANGE_END_TOLERANCE_NS: u64 = 2_000_000_000;

/// The source outage that ends a PLAYING pipeline, if any: no input data for `source_grace`
/// (frozen or gone: never taken for the end of the programme, which comes as an EOS; from
/// `source_timeout` on it is logged as an outage and `/health` is 503). Output outages are
/// the publications' ([`crate::output`]). Off while stopping.
fn watchdog(
    r: &Settings,
    shared: &Shared,
    playing_since: Instant,
    outage_from: &mut Option<Instant>,
) -> Option<String> {
    // Reconnecting: a source outage, which this watches.
    if !matches!(shared.board.state(), State::Playing | State::Reconnecting) {
        return None;
    }
    let now = Instant::now();
    if !shared.source_ended.load(Ordering::SeqCst) {
        let last = shared.board.source_data_at().unwrap_or(playing_since);
        let silent = now.saturating_duration_since(last);
        if silent > r.source_grace {
            return Some(format!(
                "source outage: no data from {} for {} ms, past WORKER_SOURCE_GRACE_MS (frozen or gone; not an end of stream)",
                redact_url(r.urls.input.url()),
                silent.as_millis()
            ));
        }
        match *outage_from {
            None if silent > r.source_timeout => {
                warn!(
                    stream_id = %r.stream_id,
                    "source outage: no data from {} for {} ms (frozen or gone); waiting up to {} ms for it",
                    redact_url(r.urls.input.url()),
                    silent.as_millis(),
                    r.source_grace.as_millis()
                );
                *outage_from = Some(last);
            }
            Some(from) if silent <= r.source_timeout => {
                info!(
                    stream_id = %r.stream_id,
                    outage_ms = last.saturating_duration_since(from).as_millis() as u64,
                    "source back after an outage of {} ms",
                    last.saturating_duration_since(from).as_millis()
                );
                *outage_from = None;
            }
            _ => {}
        }
    }
    None
}

/// Keeps the pipeline's latency for the published delay; logs it when it changes.
fn store_latency(shared: &Shared, pipeline: &gst::Pipeline, stream_id: &str) {
    let mut q = gst::query::Latency::new();
    if pipeline.query(&mut q) {
        let (_, min, _) = q.result();
        let old = shared.latency_ns.swap(min.nseconds(), Ordering::Relaxed);
        if old != min.nseconds() {
            info!(
                stream_id = %stream_id,
                latency_ms = min.mseconds(),
                shift_ms = shared.shift_ns / 1_000_000,
                "pipeline latency (the muxers' wait included), added to avoffset's shift: published {} ms after capture",
                (shared.shift_ns + min.nseconds()) / 1_000_000
            );
        }
    }
}

/// Once a second: each bridge's in-flight requests and breaker, the source, and the published
/// delay of outputs that went quiet (it grows while nothing is published).
fn poll(shared: &Shared, pipeline: &gst::Pipeline, bridges: &[gst::Element]) {
    let now = Instant::now();
    for (i, sts) in bridges.iter().enumerate() {
        let stats = sts.property::<gst::Structure>("stats");
        if let Some((in_flight, breaker)) = gstdubbing::stsbridge::stats_summary(&stats) {
            let labels = shared.labels(i);
            shared
                .metrics
                .inflight
                .get_or_create(&labels)
                .set(in_flight as i64);
            shared
                .metrics
                .breaker_state
                .get_or_create(&labels)
                .set(breaker_code(breaker));
            shared
                .board
                .language(i, |l| l.breaker = breaker.as_str().into());
        }
        // Socket.IO only: the session's state.
        if let Ok(up) = stats.get::<bool>("session-up") {
            shared
                .metrics
                .sts_session_up
                .get_or_create(&shared.labels(i))
                .set(i64::from(up));
            shared.board.language(i, |l| l.session_up = Some(up));
        }
    }
    shared
        .metrics
        .source_up
        .set(i64::from(shared.board.source_up(now)));
    let languages = shared.board.languages();
    let outputs_up = shared.publications_up.load(Ordering::Relaxed)
        && languages.iter().all(|l| {
            l.last_output
                .is_some_and(|(at, _)| now.saturating_duration_since(at) < Duration::from_secs(2))
        });
    shared.metrics.output_up.set(i64::from(outputs_up));
    let running = pipeline.current_running_time().map(|t| t.nseconds() as i64);
    for (i, l) in languages.iter().enumerate() {
        if let (Some((at, captured)), Some(rt)) = (l.last_output, running)
            && now.saturating_duration_since(at) > Duration::from_secs(1)
        {
            let ms = (rt - captured) as f64 / 1e6;
            shared
                .metrics
                .published_delay_ms
                .get_or_create(&shared.labels(i))
                .set(ms);
            shared
                .board
                .language(i, |l| l.published_delay_ms = Some(ms));
        }
    }
}

fn on_fragment(shared: &Shared, pipeline: &gst::Pipeline, index: usize, f: &FragmentReport) {
    let m = &shared.metrics;
    let language = shared.labels(index).language;
    m.fragments
        .get_or_create(&StatusLabels {
            stream_id: shared.stream_id.clone(),
            language: language.clone(),
            status: f.outcome.as_str().into(),
        })
        .inc();
    if let FragmentOutcome::Fallback(reason) = f.outcome {
        m.fallbacks
            .get_or_create(&ReasonLabels {
                stream_id: shared.stream_id.clone(),
                language: language.clone(),
                reason: reason.as_str().into(),
            })
            .inc();
    }
    shared.board.language(index, |l| {
        l.fragments += 1;
        match f.outcome {
            FragmentOutcome::Dubbed => l.dubbed += 1,
            FragmentOutcome::Fallback(_) => l.fallbacks += 1,
            _ => {}
        }
    });
    if f.rtt > 0 {
        m.rtt_ms.observe(f.rtt as f64 / 1e6);
    }
    if let Some(now) = pipeline.current_running_time()
        && f.pts != u64::MAX
    {
        let end = f.pts.saturating_add(if f.duration == u64::MAX {
            0
        } else {
            f.duration
        });
        let lat = now.nseconds() as f64 - end as f64;
        m.chunk_latency_ms.observe((lat / 1e6).max(0.0));
    }
    debug!(
        stream_id = %shared.stream_id,
        language = %language,
        fragment_id = %f.fragment_id,
        sequence_number = f.sequence_number,
        outcome = f.outcome.as_str(),
        reason = f.outcome.reason().map_or("", |r| r.as_str()),
        "fragment"
    );
}

#[cfg(test)]
mod tests {
    use super::{language_index, range_played_out};
    use std::time::Duration;

    #[test]
    fn a_silent_source_past_its_announced_range_has_ended() {
        let s = |x: f64| Duration::from_secs_f64(x);
        let ns = |x: f64| Some((x * 1e9) as u64);
        let timeout = s(5.0);
        // A 30 s file whose last frame (29.97 s) came 5.1 s ago: ended.
        assert!(range_played_out(s(5.1), timeout, ns(29.97), ns(30.0)));
        // Not yet silent for the timeout: maybe a late BYE, wait.
        assert!(!range_played_out(s(4.9), timeout, ns(29.97), ns(30.0)));
        // Frozen 10 s into a 30 s file: an outage, not an end.
        assert!(!range_played_out(s(60.0), timeout, ns(10.0), ns(30.0)));
        // Stopped just short of the tolerance: an outage.
        assert!(!range_played_out(s(60.0), timeout, ns(27.9), ns(30.0)));
        // A live source (no range) or no video yet: never ended by silence.
        assert!(!range_played_out(s(60.0), timeout, ns(29.97), None));
        assert!(!range_played_out(s(60.0), timeout, None, ns(30.0)));
    }

    #[test]
    fn elements_map_to_their_language() {
        assert_eq!(language_index("sts0"), Some(0));
        assert_eq!(language_index("sts12"), Some(12));
        assert_eq!(language_index("av"), Some(0));
        assert_eq!(language_index("av1"), Some(1));
        assert_eq!(language_index("x-y"), None);
    }
}
