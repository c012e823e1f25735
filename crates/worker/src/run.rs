//! One run of the stream worker: the input and output plumbing around the
//! [`Supervisor`](crate::supervisor::Supervisor), which takes every decision.
//!
//! ```text
//! WORKER_STS_SERVICE_URL=http://sts:8000/api/v1/sts/process \
//!   cargo run --release -p dubbing-worker -- --stream-id test
//! ```
//!
//! The loop turns what happens into [`Event`]s — bus messages (errors, warnings, end of
//! stream, state changes), what the source probes saw ([`Liveness`], the announced range),
//! what the joint held back (the source's end of stream), the publications' reports, signals
//! and a 200 ms tick — and carries the [`Action`]s out: connect or drop the source or an
//! output, end the programme, finish the outputs, exit. Metrics and `/status` are updated on
//! the way. Exit codes: [`WorkerError::exit_code`].
//!
//! No URL and no key goes through a launch description (see [`crate::pipeline`]), and every
//! log line, GStreamer's included, is redacted ([`crate::log`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use gst::prelude::*;
use prometheus_client::registry::Registry;
use tracing::{debug, error, info, warn};

use gstdubbing::avoffset::SyncReport;
use gstdubbing::stsbridge::{BreakerReport, FragmentReport, Outcome as FragmentOutcome};

use crate::builder::SourceBin;
use crate::log::{redact, redact_url};
use crate::metrics::{
    KindLabels, LanguageLabels, Metrics, ReasonLabels, StatusLabels, breaker_code,
};
use crate::output::{Publication, Report};
use crate::pipeline::LiveInput;
use crate::settings::Settings;
use crate::source::{Input, Joint};
use crate::status::Board;
use crate::supervisor::{
    Action, Backoff, Config, Event, Liveness, Signal, SourceEnd, SourceView, Supervisor,
    WorkerError, exit_code,
};

/// Shared between the loop, probes and the HTTP handlers.
struct Shared {
    metrics: Metrics,
    board: Arc<Board>,
    stream_id: String,
    languages: Vec<String>,
    /// `avoffset`'s shift: the A/V offset less what the muxers and the caption inserters wait
    /// (their latency, which the sinks add back), see
    /// [`crate::pipeline::Chain::live_shift_ns`].
    shift_ns: u64,
    /// Caption counters already counted in the metrics, per language: shown, late, dropped.
    captions_counted: std::sync::Mutex<Vec<[u64; 3]>>,
    last_delay_ms: AtomicI64,
    /// The pipeline's latency (what the sinks add to every running time), ns.
    latency_ns: AtomicU64,
    /// Stream time of the newest video from the source, ns (`u64::MAX`: none yet).
    source_pos_ns: AtomicU64,
}

impl Shared {
    fn labels(&self, index: usize) -> LanguageLabels {
        LanguageLabels {
            stream_id: self.stream_id.clone(),
            language: self.languages.get(index).cloned().unwrap_or_default(),
        }
    }

    fn liveness(&self) -> &Arc<Liveness> {
        self.board.liveness()
    }
}

/// Runs the worker until the end of the programme, a signal or an error; returns the exit
/// code ([`WorkerError::exit_code`]; 0 when it ends cleanly).
pub fn run(r: &Settings) -> i32 {
    let result = run_result(r);
    match &result {
        Ok(()) => info!(stream_id = %r.stream_id, "finished"),
        Err(e) => error!(
            stream_id = %r.stream_id,
            error = e.label(),
            exit_code = e.exit_code(),
            "{}",
            redact(e.message())
        ),
    }
    exit_code(&result)
}

fn run_result(r: &Settings) -> Result<(), WorkerError> {
    crate::init().map_err(WorkerError::Pipeline)?;
    crate::log::redact_gstreamer_log();
    if let Some(k) = &r.api_key {
        crate::log::add_secret(k.expose());
    }
    crate::log::add_url_secrets(&r.chain.url);
    crate::log::add_url_secrets(r.urls.input.url());
    for o in &r.urls.outputs {
        match gstdubbing::tsoutput::SrtPublish::from_url(o) {
            // SRT: the passphrase and the stream id's credentials (the stream id's path
            // stays readable).
            Ok(srt) => srt.secrets().iter().for_each(|s| crate::log::add_secret(s)),
            Err(_) => crate::log::add_url_secrets(o),
        }
    }
    let mut registry = Registry::default();
    if r.chain.offset_ns != r.requested_offset_ns {
        warn!(
            stream_id = %r.stream_id,
            requested_ms = r.requested_offset_ns / 1_000_000,
            used_ms = r.chain.offset_ns / 1_000_000,
            "WORKER_AV_OFFSET_NS {} ms is below what the chain can deliver (longest fragment {} ms + STS {} ms + source and encoder {} ms + captions {} ms): using {} ms",
            r.requested_offset_ns / 1_000_000,
            r.chain.longest_fragment_ns() / 1_000_000,
            crate::pipeline::MIN_STS_LATENCY_NS / 1_000_000,
            crate::pipeline::DOWNSTREAM_FLOOR_NS / 1_000_000,
            r.chain.video_wait_ns() / 1_000_000,
            r.chain.offset_ns / 1_000_000
        );
    }
    info!(
        stream_id = %r.stream_id,
        offset_ms = r.chain.offset_ns / 1_000_000,
        sts_latency_ms = r.chain.sts_latency_ns() / 1_000_000,
        longest_fragment_ms = r.chain.longest_fragment_ns() / 1_000_000,
        caption_latency_ms = r.chain.video_wait_ns() / 1_000_000,
        "A/V offset"
    );
    let mut board = Board::new(
        &r.stream_id,
        r.chain.offset_ns,
        r.requested_offset_ns,
        &r.chain.target_languages,
        Arc::new(Liveness::new(r.source_timeout)),
    );
    board.sts_protocol = r.chain.protocol.clone();
    let board = Arc::new(board);
    let shared = Arc::new(Shared {
        metrics: Metrics::new(&mut registry),
        board: board.clone(),
        stream_id: r.stream_id.clone(),
        languages: r.chain.target_languages.clone(),
        shift_ns: r.chain.live_shift_ns(),
        captions_counted: std::sync::Mutex::new(vec![[0; 3]; r.chain.target_languages.len()]),
        last_delay_ms: AtomicI64::new(0),
        latency_ns: AtomicU64::new(0),
        source_pos_ns: AtomicU64::new(u64::MAX),
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
    board.set_output(
        if r.urls.is_srt() { "srt" } else { "rtmp" },
        if r.chain.captions { "cea608" } else { "off" },
    );

    // Metrics server and signals on a small runtime of their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| WorkerError::Pipeline(format!("cannot start the runtime: {e}")))?;
    let addr = r.metrics_addr;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| {
            WorkerError::MetricsPort(format!("cannot listen for /metrics on {addr}: {e}"))
        })?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(stream_id = %r.stream_id, "metrics listening on {local}");
    eprintln!("metrics listening on {local}");
    // Prometheus finds the worker through a file while it runs.
    let _discovery = match (&r.metrics_sd, listener.local_addr()) {
        (Some((dir, host)), Ok(a)) => Some(
            crate::metrics::DiscoveryFile::write(dir, &r.stream_id, host, a.port()).map_err(
                |e| {
                    WorkerError::MetricsPort(format!(
                        "cannot write the discovery file in {}: {e}",
                        dir.display()
                    ))
                },
            )?,
        ),
        _ => None,
    };
    rt.spawn(crate::metrics::serve(
        listener,
        crate::metrics::router(registry.clone(), board.clone()),
        crate::metrics::ServeLimits::default(),
    ));
    let (signal_tx, signals) = mpsc::channel();
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        loop {
            let sig = tokio::select! {
                _ = term.recv() => Signal::Terminate,
                _ = int.recv() => Signal::Interrupt,
                _ = hup.recv() => Signal::Hangup,
            };
            if signal_tx.send(sig).is_err() {
                return;
            }
        }
    });

    let result = run_pipeline(r, &shared, &signals);
    if let Err(e) = &result {
        shared
            .metrics
            .errors
            .get_or_create(&KindLabels {
                kind: e.label().into(),
            })
            .inc();
    }
    rt.shutdown_timeout(Duration::from_millis(200));
    result
}

/// The pipeline and its publications, what carries the supervisor's actions out.
struct Plumbing<'a> {
    r: &'a Settings,
    shared: &'a Arc<Shared>,
    bus: gst::Bus,
    input: Input,
    publications: Vec<Publication>,
}

impl Plumbing<'_> {
    /// Carries `action` out; what it leads to (a connection that cannot even start) comes
    /// back as events.
    fn act(
        &mut self,
        action: Action,
        events: &mut VecDeque<Event>,
    ) -> Option<Result<(), WorkerError>> {
        let stream_id = &self.r.stream_id;
        match action {
            Action::ConnectSource { attempt } => {
                self.shared.metrics.source_reconnects.inc();
                self.shared.source_pos_ns.store(u64::MAX, Ordering::Relaxed);
                let (shared, bus) = (self.shared.clone(), self.bus.clone());
                let watch = move |b: &SourceBin| watch_source(b, &shared, &bus);
                if let Err(e) = self.input.connect(attempt, stream_id, watch) {
                    events.push_back(Event::SourceError(e));
                }
            }
            Action::DropSource => self.input.drop_source(),
            Action::EndProgramme => self.input.end(),
            Action::ConnectOutput(i) => {
                self.shared.metrics.output_reconnects.inc();
                if let Some(p) = self.publications.get_mut(i)
                    && let Err(why) = p.connect()
                {
                    events.push_back(Event::OutputFailed { index: i, why });
                }
            }
            Action::DropOutput(i) => {
                if let Some(p) = self.publications.get_mut(i) {
                    p.drop_connection();
                }
            }
            Action::FinishOutputs => {
                // The end of stream has reached the publications: let what they hold get
                // out, then close their RTMP sessions.
                for p in self.publications.iter_mut() {
                    if !p.finish(Duration::from_secs(5)) {
                        warn!(
                            stream_id,
                            "output {}: did not finish its stream in 5 s",
                            p.name()
                        );
                    }
                }
                events.push_back(Event::OutputsFinished);
            }
            Action::Exit(result) => return Some(result),
        }
        None
    }
}

fn run_pipeline(
    r: &Settings,
    shared: &Arc<Shared>,
    signals: &mpsc::Receiver<Signal>,
) -> Result<(), WorkerError> {
    let live = r
        .chain
        .build_live(&r.urls, r.api_key.as_ref().map(|k| k.expose()))
        .map_err(WorkerError::Pipeline)?;
    // The line holds no URL and no key: they are set on the elements.
    debug!(stream_id = %r.stream_id, "pipeline: gst-launch-1.0 {}", live.to_launch_line());
    let crate::builder::LivePipeline {
        pipeline,
        audio_in,
        video_in,
        source: first_source,
        branches,
        publications: outputs,
        ..
    } = live;
    shared.board.set_state(crate::status::State::Starting);

    // The input: source bins behind a joint that makes every generation one stream.
    let joint = Arc::new(Joint::default());
    {
        let liveness = shared.liveness().clone();
        let silent_too_long = move || {
            liveness
                .silent_for(Instant::now())
                .is_some_and(|s| s > liveness.timeout())
        };
        joint
            .attach(&pipeline, &audio_in, &video_in, silent_too_long)
            .map_err(WorkerError::Pipeline)?;
    }
    if matches!(r.urls.input, LiveInput::Rtmp(_)) {
        joint
            .make_live(&audio_in, &video_in, crate::pipeline::RTMP_JITTER)
            .map_err(WorkerError::Pipeline)?;
    }
    let bus = pipeline.bus().expect("a pipeline has a bus");
    watch_source(&first_source, shared, &bus);
    let input = Input::new(
        &pipeline,
        (&audio_in, &video_in),
        &r.urls.input,
        joint.clone(),
        first_source,
        r.chain.stall_fill_after(),
    );

    // One publication per language, fed by its muxer's appsink.
    let mut publications = Vec::new();
    for (output, url) in outputs.iter().zip(&r.urls.outputs) {
        let sink = output
            .app_sink()
            .ok_or_else(|| WorkerError::Pipeline("a publication without its appsink".into()))?;
        publications.push(Publication::start(url, &sink).map_err(WorkerError::Pipeline)?);
    }
    watch_published_delay(&pipeline, shared, &outputs, &publications);
    let inserters: Vec<Option<gst::Element>> = branches
        .iter()
        .map(|b| b.caption_inserter.clone())
        .collect();
    for (i, cc) in inserters.iter().enumerate() {
        if let Some(cc) = cc {
            log_cues(cc, shared, i);
        }
    }

    info!(
        stream_id = %r.stream_id,
        input = %redact_url(r.urls.input.url()),
        outputs = %r.urls.outputs.iter().map(|o| crate::pipeline::LiveUrls::display_output(o)).collect::<Vec<_>>().join(" "),
        languages = %r.chain.target_languages.join(","),
        captions = r.chain.captions,
        original_track = r.chain.original_track,
        "starting"
    );
    // An error comes on the bus.
    let _ = pipeline.set_state(gst::State::Playing);
    let bridges: Vec<gst::Element> = branches
        .iter()
        .filter_map(|b| b.dubbing.as_ref().map(|d| d.bridge.clone()))
        .collect();
    // A message's language: the branch its element belongs to.
    let language_of = |o: &gst::Object| crate::builder::language_of(&branches, o);

    let mut sup = Supervisor::new(
        Config {
            source_timeout: r.source_timeout,
            source_grace: r.source_grace,
            output_grace: r.output_grace,
            end_timeout: Duration::from_nanos(shared.shift_ns) + Duration::from_secs(10),
            outputs: publications.len(),
            backoff: Backoff::DEFAULT,
        },
        Instant::now(),
    );
    let mut plumbing = Plumbing {
        r,
        shared,
        bus: bus.clone(),
        input,
        publications,
    };
    let rtmp_input = matches!(r.urls.input, LiveInput::Rtmp(_));
    let mut events: VecDeque<Event> = VecDeque::new();
    let mut last_poll = Instant::now();
    // The source's announced range, asked once its data flows (`Some(None)`: no end).
    let mut announced: Option<Option<u64>> = None;
    let mut latency_known = false;
    let result = 'run: loop {
        // What happened since the last turn.
        while let Ok(sig) = signals.try_recv() {
            events.push_back(Event::Signal(sig));
        }
        let last_data = shared.liveness().last_data();
        if announced.is_none() && last_data.is_some() {
            announced = Some(plumbing.input.current().and_then(announced_duration));
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
        let at_end = at_range_end(pos, announced.flatten());
        if joint.take_end(Duration::from_millis(300)) {
            // rtmp2src ends its stream when the publisher leaves, crashed or not (the server
            // tells it nothing more): an outage, which MediaMTX ends by stopping the worker
            // (SIGINT) when the publisher really is gone.
            events.push_back(Event::SourceEnded(if rtmp_input {
                SourceEnd::PublisherGone
            } else {
                SourceEnd::Orderly
            }));
        }
        if joint.take_lost() {
            events.push_back(Event::SourceEnded(SourceEnd::AfterSilence));
        }
        let now = Instant::now();
        for (index, p) in plumbing.publications.iter_mut().enumerate() {
            match p.check(now, r.output_timeout) {
                Some(Report::Connected) => events.push_back(Event::OutputConnected { index }),
                Some(Report::Failed(why)) => events.push_back(Event::OutputFailed { index, why }),
                None => {}
            }
        }
        events.push_back(Event::Tick(SourceView {
            last_data,
            at_range_end: at_end,
        }));
        while let Some(event) = events.pop_front() {
            for action in sup.on(event, Instant::now()) {
                if let Some(result) = plumbing.act(action, &mut events) {
                    break 'run result;
                }
            }
        }
        // The source's elements exist now: the latency (the sinks' and the published
        // delay's) is asked again (an RTMP source subscribed before its publisher had none
        // when the pipeline went to PLAYING, and the latency stayed 0).
        if !latency_known && sup.source().is_up() {
            latency_known = true;
            let _ = pipeline.recalculate_latency();
            store_latency(shared, &pipeline, &r.stream_id);
        }
        // At the end of an announced range the source is ending, not stalled.
        plumbing.input.fill(sup.may_fill() && !at_end, &r.stream_id);
        let state = sup.state();
        if shared.board.state() != state {
            shared.board.set_state(state);
        }
        if last_poll.elapsed() >= Duration::from_secs(1) {
            last_poll = Instant::now();
            poll(shared, &pipeline, &bridges, &sup);
            poll_captions(shared, &inserters);
        }

        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else {
            continue;
        };
        on_message(
            &msg,
            &plumbing.input,
            shared,
            &pipeline,
            r,
            &language_of,
            &mut events,
        );
    };
    shared.board.set_state(crate::status::State::Stopping);
    info!(
        stream_id = %r.stream_id,
        published_delay_ms = shared.last_delay_ms.load(Ordering::Relaxed),
        "stopping"
    );
    drop(plumbing);
    crate::pipeline::stop_pipeline(&pipeline, Duration::from_secs(5));
    result
}

/// What a bus message means: events for the supervisor (end of stream, errors of the source or
/// of the rest, a missing track, PLAYING), metrics, `/status` and logs on the way.
fn on_message(
    msg: &gst::Message,
    input: &Input,
    shared: &Shared,
    pipeline: &gst::Pipeline,
    r: &Settings,
    language_of: &dyn Fn(&gst::Object) -> Option<usize>,
    events: &mut VecDeque<Event>,
) {
    match msg.view() {
        gst::MessageView::Eos(_) => events.push_back(Event::PipelineEos),
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
                    debug!(stream_id = %r.stream_id, "earlier source: {}", redact(&text))
                }
                Some(true) => events.push_back(Event::SourceError(redact(&text))),
                None => events.push_back(Event::Failed(WorkerError::Pipeline(format!(
                    "pipeline error: {}",
                    redact(&text)
                )))),
            }
        }
        gst::MessageView::Warning(w) => {
            shared.metrics.bus_warnings.inc();
            let src = msg
                .src()
                .map(|s| s.path_string().to_string())
                .unwrap_or_default();
            if input.owns(&src) == Some(true) && w.error().is::<gst::ResourceError>() {
                events.push_back(Event::SourceTrouble);
            }
            warn!(stream_id = %r.stream_id, "{}", redact(&format!("{} (from {src}: {:?})", w.error(), w.debug())));
        }
        gst::MessageView::Application(a)
            if a.structure()
                .is_some_and(|s| s.name().starts_with("worker/no-")) =>
        {
            let src = msg
                .src()
                .map(|s| s.path_string().to_string())
                .unwrap_or_default();
            // From a source bin being torn down: stale.
            if input.owns(&src) == Some(false) {
                return;
            }
            let what = match a.structure().map(|s| s.name().as_str()) {
                Some("worker/no-audio") => "has no audio track (H.264 + AAC expected)",
                _ => {
                    "has no video track (H.264 + AAC expected; audio-only input is not \
                     supported)"
                }
            };
            shared.metrics.bus_errors.inc();
            events.push_back(Event::Failed(WorkerError::UnsupportedInput(format!(
                "the input {} {what}",
                redact_url(r.urls.input.url())
            ))));
        }
        gst::MessageView::StateChanged(s) if msg.src() == Some(pipeline.upcast_ref()) => {
            info!(stream_id = %r.stream_id, "pipeline {:?} -> {:?}", s.old(), s.current());
            if s.current() == gst::State::Playing {
                events.push_back(Event::Playing);
                store_latency(shared, pipeline, &r.stream_id);
            }
        }
        gst::MessageView::Element(e) => {
            let Some(s) = e.structure() else { return };
            let index = msg.src().and_then(language_of);
            if let Some(f) = FragmentReport::from_structure(s) {
                on_fragment(shared, pipeline, index.unwrap_or(0), &f);
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
            store_latency(shared, pipeline, &r.stream_id);
        }
        _ => {}
    }
}

/// Published delay: what each muxer hands its publication, against when it was captured;
/// only what goes out counts (nothing while the output is down).
fn watch_published_delay(
    pipeline: &gst::Pipeline,
    shared: &Arc<Shared>,
    outputs: &[crate::builder::Publication],
    publications: &[Publication],
) {
    for (i, (output, publication)) in outputs.iter().zip(publications).enumerate() {
        let Some(pad) = output.sink.static_pad("sink") else {
            continue;
        };
        let shared2 = shared.clone();
        // The languages this publication carries: its own, or every one (MPEG-TS).
        let languages: Vec<usize> = if output.kind.is_ts() {
            (0..shared.languages.len()).collect()
        } else {
            vec![i]
        };
        let labels: Vec<LanguageLabels> = languages.iter().map(|&l| shared.labels(l)).collect();
        let weak = pipeline.downgrade();
        let feed = publication.feed();
        // mpegtsmux pushes lists (seven packets a buffer, several buffers a list).
        let probe = gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST;
        pad.add_probe(probe, move |_, info| {
            let pts = match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => b.pts(),
                Some(gst::PadProbeData::BufferList(l)) => l.iter().find_map(|b| b.pts()),
                _ => None,
            };
            if let Some(p) = weak.upgrade()
                && feed.is_open()
                && let (Some(pts), Some(now)) = (pts, p.current_running_time())
            {
                // The muxer's output running time is the input running time + the shift;
                // the appsink hands it over when the clock reaches it plus the pipeline
                // latency (it syncs; the muxer's wait included), not before.
                let rt = pts.nseconds() as i64;
                let captured = rt - shared2.shift_ns as i64;
                let due = rt + shared2.latency_ns.load(Ordering::Relaxed) as i64;
                let sent = (now.nseconds() as i64).max(due);
                let ms = (sent - captured) as f64 / 1e6;
                for (&l, labels) in languages.iter().zip(&labels) {
                    shared2
                        .metrics
                        .published_delay_ms
                        .get_or_create(labels)
                        .set(ms);
                    shared2.board.language(l, |l| {
                        l.last_output = Some((Instant::now(), captured));
                        l.published_delay_ms = Some(ms);
                    });
                }
                if i == 0 {
                    shared2.last_delay_ms.store(ms as i64, Ordering::Relaxed);
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// The probes of one source bin: the source is up while video arrives (its [`Liveness`]) and
/// where it is (for the announced range); an input without audio or video is reported.
fn watch_source(source: &SourceBin, shared: &Arc<Shared>, bus: &gst::Bus) {
    if let Some(pad) = source.video_parse.static_pad("src") {
        let shared2 = shared.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                shared2.liveness().data(Instant::now());
                if let Some(pos) = pad.sticky_event::<gst::event::Segment>(0).and_then(|e| {
                    let seg = e.segment().downcast_ref::<gst::ClockTime>()?.clone();
                    seg.to_stream_time(b.pts()?)
                }) {
                    shared2
                        .source_pos_ns
                        .store(pos.nseconds(), Ordering::Relaxed);
                }
            }
            gst::PadProbeReturn::Ok
        });
    }

    // An input without audio or without video: what the server's description offered,
    // once rtspsrc has all its pads (else nothing is ever published).
    let bus = bus.clone();
    source.on_all_pads(move |src, offered| {
        for (has, missing) in [
            (offered.audio, "worker/no-audio"),
            (offered.video, "worker/no-video"),
        ] {
            if !has {
                let _ = bus.post(
                    gst::message::Application::builder(gst::Structure::new_empty(missing))
                        .src(src)
                        .build(),
                );
            }
        }
    });
}

/// The range an RTSP server announced for what it serves, ns: finite for a file
/// (`npt=0-60`), `None` for a live source (`npt=now-`) or an RTMP input. Asked of the source
/// through the video parser's upstream peer (rtspsrc answers duration queries from the range).
fn announced_duration(source: &SourceBin) -> Option<u64> {
    let sink = source.video_parse.static_pad("sink")?;
    let d = sink.peer_query_duration::<gst::ClockTime>()?.nseconds();
    (d > 0).then_some(d)
}

/// Whether the source's newest video (stream time `pos`) is at the end of its announced range.
fn at_range_end(pos: Option<u64>, duration: Option<u64>) -> bool {
    match (pos, duration) {
        (Some(pos), Some(duration)) => pos + RANGE_END_TOLERANCE_NS >= duration,
        _ => false,
    }
}

const RANGE_END_TOLERANCE_NS: u64 = 2_000_000_000;

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
    } else {
        // Which element does not answer (debugging the published delay).
        let mut failing = Vec::new();
        let mut it = pipeline.iterate_recurse();
        while let Ok(Some(e)) = it.next() {
            for pad in e.src_pads() {
                let mut q = gst::query::Latency::new();
                if !pad.query(&mut q) {
                    failing.push(pad.path_string().to_string());
                }
            }
        }
        debug!(stream_id = %stream_id, "no latency from the pipeline yet; pads that do not answer: {failing:?}");
    }
}

/// Once a second: each bridge's in-flight requests and breaker, the source, and the published
/// delay of outputs that went quiet (it grows while nothing is published).
fn poll(shared: &Shared, pipeline: &gst::Pipeline, bridges: &[gst::Element], sup: &Supervisor) {
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
    let outputs_up = (0..sup.outputs()).all(|i| sup.output(i).is_some_and(|o| o.is_up()))
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

/// Logs each cue as it reaches a caption inserter (debug, `caption cue`): its language, where
/// it goes on the published timeline (running time, ms) and its text (a translation, no
/// secret).
fn log_cues(cc: &gst::Element, shared: &Arc<Shared>, index: usize) {
    let Some(pad) = cc.static_pad("text_sink") else {
        return;
    };
    let stream_id = shared.stream_id.clone();
    let language = shared.labels(index).language;
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(gst::PadProbeData::Buffer(b)) = &info.data
            && let Some(pts) = b.pts()
            && let Some(seg) = pad.sticky_event::<gst::event::Segment>(0)
            && let Some(seg) = seg.segment().downcast_ref::<gst::ClockTime>()
            && let Some(rt) = seg.to_running_time(pts)
            && let Ok(map) = b.map_readable()
        {
            let duration = b.duration().map_or(0, |d| d.mseconds());
            debug!(
                stream_id = %stream_id,
                language = %language,
                start_ms = rt.mseconds(),
                duration_ms = duration,
                text = %String::from_utf8_lossy(&map),
                "caption cue"
            );
        }
        gst::PadProbeReturn::Ok
    });
}

/// Once a second: each caption inserter's counters into `/status` and `worker_captions_total`.
fn poll_captions(shared: &Shared, inserters: &[Option<gst::Element>]) {
    let mut counted = shared
        .captions_counted
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (i, cc) in inserters.iter().enumerate() {
        let Some(cc) = cc else { continue };
        let stats = cc.property::<gst::Structure>("stats");
        let now = ["shown", "late", "dropped"].map(|f| stats.get::<u64>(f).unwrap_or(0));
        let Some(before) = counted.get_mut(i) else {
            continue;
        };
        for (k, status) in ["shown", "late", "dropped"].iter().enumerate() {
            let delta = now[k].saturating_sub(before[k]);
            if delta > 0 {
                shared
                    .metrics
                    .captions
                    .get_or_create(&StatusLabels {
                        stream_id: shared.stream_id.clone(),
                        language: shared.labels(i).language,
                        status: (*status).into(),
                    })
                    .inc_by(delta);
            }
        }
        *before = now;
        shared.board.language(i, |l| l.captions = Some(now));
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
    use super::at_range_end;

    #[test]
    fn the_range_end_is_within_two_seconds() {
        let ns = |x: f64| Some((x * 1e9) as u64);
        assert!(at_range_end(ns(29.97), ns(30.0)));
        assert!(at_range_end(ns(28.1), ns(30.0)));
        assert!(!at_range_end(ns(27.9), ns(30.0)));
        // A live source (no range) or no video yet: never at its end.
        assert!(!at_range_end(ns(29.97), None));
        assert!(!at_range_end(None, ns(30.0)));
    }
}
