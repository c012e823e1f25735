//! Every decision the worker takes, in plain Rust: [`Supervisor::on`] takes what happened
//! ([`Event`]) and the time, and returns what to do ([`Action`]). No GStreamer, no clock of its
//! own: the tests drive it with made-up times. [`crate::run`] turns bus messages, probes,
//! signals and its 200 ms tick into events and carries the actions out on the pipeline.
//!
//! The source and each output are a [`Reconnect`] machine (one [`Backoff`]: 1, 2, 4, 8, then
//! 10 s), the first connection included: a connection that fails or stops delivering is torn
//! down and tried again until it has been down for its grace.
//!
//! # The worker's behaviour
//!
//! Phases: **starting** (until the source first delivers and the pipeline plays),
//! **running**, **ending** (end of stream sent into the pipeline: the last `offset` of the
//! programme is published in real time), **finishing** (the end of stream reached the
//! publications: they send what they hold and close their RTMP sessions), **done**.
//!
//! | phase | event | condition | actions | next |
//! |---|---|---|---|---|
//! | starting | source error (cannot connect) | | drop source; retry after the backoff | starting |
//! | starting | tick | source down for `WORKER_SOURCE_GRACE_MS` since the start | exit 4 (source unreachable) | done |
//! | starting | tick | a retry is due | connect source | starting |
//! | starting | signal (TERM, INT, HUP) | nothing delivered yet | exit 0 | done |
//! | starting, running | tick | source delivers | (source up) | running |
//! | running | tick | silent > `WORKER_SOURCE_TIMEOUT_MS`, announced range played out | end the programme | ending |
//! | running | tick | silent > `WORKER_SOURCE_TIMEOUT_MS` | drop source (fill with silence); reconnect after the backoff | running (reconnecting) |
//! | running | tick | a reconnected source brings nothing for `WORKER_SOURCE_TIMEOUT_MS` | drop source; next attempt | running (reconnecting) |
//! | running | tick | source down for `WORKER_SOURCE_GRACE_MS` (from its last data) | exit 5 (source outage) | done |
//! | running | source error, or end of stream after a silence | | drop source; reconnect | running (reconnecting) |
//! | running | source end of stream | after a read error, or an RTMP publisher gone without its end-of-sequence | drop source; reconnect | running (reconnecting) |
//! | running | source end of stream | orderly | end the programme | ending |
//! | starting, running | signal (TERM, INT, HUP) | data was delivered | end the programme | ending |
//! | any but done | output failed | | drop output; reconnect after the backoff | (same) |
//! | any but done | tick | an output down for `WORKER_OUTPUT_GRACE_MS` | exit 6 (output outage) | done |
//! | ending | pipeline end of stream | | finish the outputs | finishing |
//! | ending | tick | no end of stream `offset + 10 s` after it was sent | finish the outputs | finishing |
//! | finishing | outputs finished | | exit 0 | done |
//! | any | failure (no audio or no video track, pipeline error) | | exit 7 or 1 | done |
//!
//! A signal while ending or finishing changes nothing (the end is on its way, bounded).
//! Exit codes: [`WorkerError::exit_code`].

use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Why the worker stops with an error; each has its exit code and metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerError {
    /// A setting is invalid (exit 2).
    Settings(String),
    /// The metrics port cannot be bound (exit 3).
    MetricsPort(String),
    /// The source never delivered within `WORKER_SOURCE_GRACE_MS` of the start (exit 4).
    SourceUnreachable(String),
    /// The source stopped delivering for longer than `WORKER_SOURCE_GRACE_MS` (exit 5).
    SourceOutage(String),
    /// An output could not publish for longer than `WORKER_OUTPUT_GRACE_MS` (exit 6).
    OutputOutage(String),
    /// The input is not H.264 + AAC: no audio or no video track (exit 7).
    UnsupportedInput(String),
    /// GStreamer cannot be set up, or an error outside the source and the outputs (exit 1).
    Pipeline(String),
}

impl WorkerError {
    /// The process exit code (documented in `--help` and the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkerError::Pipeline(_) => 1,
            WorkerError::Settings(_) => 2,
            WorkerError::MetricsPort(_) => 3,
            WorkerError::SourceUnreachable(_) => 4,
            WorkerError::SourceOutage(_) => 5,
            WorkerError::OutputOutage(_) => 6,
            WorkerError::UnsupportedInput(_) => 7,
        }
    }

    /// The `kind` label of `worker_errors_total`.
    pub fn label(&self) -> &'static str {
        match self {
            WorkerError::Pipeline(_) => "pipeline",
            WorkerError::Settings(_) => "settings",
            WorkerError::MetricsPort(_) => "metrics_port",
            WorkerError::SourceUnreachable(_) => "source_unreachable",
            WorkerError::SourceOutage(_) => "source_outage",
            WorkerError::OutputOutage(_) => "output_outage",
            WorkerError::UnsupportedInput(_) => "unsupported_input",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            WorkerError::Pipeline(m)
            | WorkerError::Settings(m)
            | WorkerError::MetricsPort(m)
            | WorkerError::SourceUnreachable(m)
            | WorkerError::SourceOutage(m)
            | WorkerError::OutputOutage(m)
            | WorkerError::UnsupportedInput(m) => m,
        }
    }
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for WorkerError {}

/// The exit code of a run's result: 0, or the error's.
pub fn exit_code(result: &Result<(), WorkerError>) -> i32 {
    result.as_ref().map_or_else(WorkerError::exit_code, |_| 0)
}

/// The waits between connection attempts: `first`, doubling, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// 1, 2, 4, 8, then 10 s.
    pub const DEFAULT: Backoff = Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(10),
    };

    /// The wait before attempt `attempt` (0-based) of a reconnection.
    pub fn wait(&self, attempt: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max)
    }
}

/// Where one connection (the source, or one output) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// An attempt started at `since`; `outage`: since when the connection has been missing
    /// (`None`: the first attempt, nothing lost yet).
    Connecting {
        since: Instant,
        attempt: u32,
        outage: Option<Instant>,
    },
    /// Delivering since `since`.
    Up { since: Instant },
    /// Nothing connected since `outage`; the next attempt at `retry`.
    Down {
        outage: Instant,
        retry: Instant,
        attempt: u32,
    },
}

/// One connection's reconnection machine, shared by the source and the outputs.
#[derive(Debug, Clone)]
pub struct Reconnect {
    link: Link,
    backoff: Backoff,
    grace: Duration,
    /// The connection was up at least once.
    ever_up: bool,
    /// The first attempt counts against the grace (the source: unreachable); else only
    /// outages do (an output connects when the first data comes, and reports its failures).
    first_counts: bool,
}

impl Reconnect {
    /// A first attempt starting at `now`; given up once down for longer than `grace`.
    pub fn new(now: Instant, backoff: Backoff, grace: Duration, first_counts: bool) -> Reconnect {
        Reconnect {
            link: Link::Connecting {
                since: now,
                attempt: 0,
                outage: None,
            },
            backoff,
            grace,
            ever_up: false,
            first_counts,
        }
    }

    pub fn link(&self) -> Link {
        self.link
    }

    pub fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    pub fn is_down(&self) -> bool {
        matches!(self.link, Link::Down { .. })
    }

    pub fn ever_up(&self) -> bool {
        self.ever_up
    }

    /// The connection delivers: up. Returns how long the outage it ends lasted, if any.
    pub fn up(&mut self, now: Instant) -> Option<Duration> {
        let outage = match self.link {
            Link::Up { .. } => return None,
            Link::Connecting { outage, .. } => outage,
            Link::Down { outage, .. } => Some(outage),
        };
        self.link = Link::Up { since: now };
        self.ever_up = true;
        outage.map(|o| now.saturating_duration_since(o))
    }

    /// The connection failed or stopped delivering; missing since `since` (its last data,
    /// or `now`). The next attempt after the backoff. Returns whether it was up (a new
    /// outage); nothing changes if it is already down.
    pub fn lost(&mut self, now: Instant, since: Instant) -> bool {
        let (attempt, outage, was_up) = match self.link {
            Link::Down { .. } => return false,
            Link::Up { .. } => (0, since.min(now), true),
            // The first attempt's failure: retried after the first wait, as after an outage;
            // missing since the start if the first attempt counts, else from now on.
            Link::Connecting {
                outage: None,
                since: started,
                ..
            } => (0, if self.first_counts { started } else { since }, false),
            Link::Connecting {
                attempt,
                outage: Some(outage),
                ..
            } => (attempt + 1, outage, false),
        };
        self.link = Link::Down {
            outage,
            retry: now + self.backoff.wait(attempt),
            attempt,
        };
        was_up
    }

    /// Whether an attempt is due: if so it is started (connecting from `now`).
    pub fn attempt_due(&mut self, now: Instant) -> Option<u32> {
        match self.link {
            Link::Down {
                outage,
                retry,
                attempt,
            } if now >= retry => {
                self.link = Link::Connecting {
                    since: now,
                    attempt,
                    outage: Some(outage),
                };
                Some(attempt)
            }
            _ => None,
        }
    }

    /// How long the connection has been missing, if it is (the first attempt counts from
    /// its start if `first_counts`).
    pub fn missing_for(&self, now: Instant) -> Option<Duration> {
        let from = match self.link {
            Link::Up { .. } => return None,
            Link::Connecting {
                outage: Some(o), ..
            } => o,
            Link::Connecting { since, .. } if self.first_counts => since,
            Link::Connecting { .. } => return None,
            Link::Down { outage, .. } => outage,
        };
        Some(now.saturating_duration_since(from))
    }

    /// Missing for longer than the grace.
    pub fn past_grace(&self, now: Instant) -> bool {
        self.missing_for(now).is_some_and(|d| d > self.grace)
    }
}

/// Whether the source delivers: when it last did, against `WORKER_SOURCE_TIMEOUT_MS`. The one
/// home of the source's liveness: `/health`, `/status`, `worker_source_up` and the
/// supervisor's outage decision all read it.
#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    last_data: std::sync::Mutex<Option<Instant>>,
}

impl Liveness {
    pub fn new(timeout: Duration) -> Liveness {
        Liveness {
            timeout,
            last_data: std::sync::Mutex::new(None),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Source data arrived at `at`.
    pub fn data(&self, at: Instant) {
        *self.last_data.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    pub fn last_data(&self) -> Option<Instant> {
        *self.last_data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long the source has been silent (`None`: it never delivered).
    pub fn silent_for(&self, now: Instant) -> Option<Duration> {
        self.last_data().map(|t| now.saturating_duration_since(t))
    }

    /// Delivering: data within the timeout.
    pub fn up(&self, now: Instant) -> bool {
        self.silent_for(now).is_some_and(|s| s <= self.timeout)
    }
}

/// The signals the worker handles; each ends the programme cleanly (exit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
    Hangup,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
        }
    }
}

/// How the source's end of stream came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnd {
    /// The source ended its stream: the end of the programme (unless it had trouble reading
    /// first).
    Orderly,
    /// An RTMP publisher left without ending its stream (no end-of-sequence): a crash, an
    /// outage.
    PublisherGone,
    /// After a silence longer than the source timeout (rtspsrc giving up on a dead server).
    AfterSilence,
}

/// What the source looks like at a tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceView {
    /// When it last delivered ([`Liveness::last_data`]).
    pub last_data: Option<Instant>,
    /// Its newest video is at the end of the range it announced (a file served over RTSP).
    pub at_range_end: bool,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The loop's tick (≈ 200 ms).
    Tick(SourceView),
    /// The pipeline is PLAYING.
    Playing,
    /// The current source's end of stream, held back by the joint.
    SourceEnded(SourceEnd),
    /// An error from the current source (cannot connect, connection lost).
    SourceError(String),
    /// A read warning from the current source (a server that closed the connection): its
    /// end of stream that may follow is not the end of the programme.
    SourceTrouble,
    /// Output `index` cannot publish.
    OutputFailed {
        index: usize,
        why: String,
    },
    /// Output `index` is publishing.
    OutputConnected {
        index: usize,
    },
    Signal(Signal),
    /// The end of stream reached every sink.
    PipelineEos,
    /// The outputs sent what they held and closed.
    OutputsFinished,
    /// Something the worker cannot go on with.
    Failed(WorkerError),
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Build and link a new source (attempt `attempt` of a reconnection).
    ConnectSource {
        attempt: u32,
    },
    /// Tear the current source down; its audio time is filled with silence meanwhile.
    DropSource,
    /// The end of the programme: end of stream into the pipeline, the rest published.
    EndProgramme,
    ConnectOutput(usize),
    DropOutput(usize),
    /// Let the outputs send what they hold and close their sessions.
    FinishOutputs,
    Exit(Result<(), WorkerError>),
}

/// Where the worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Ending { since: Instant },
    Finishing,
    Done,
}

/// What `/status` shows as `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connecting to the source, prerolling.
    Starting,
    /// Running, the source delivering.
    Playing,
    /// A source outage: reconnecting (or the first connection being retried).
    Reconnecting,
    /// Ending: publishing what is held, then exiting.
    Stopping,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Playing => "playing",
            State::Reconnecting => "reconnecting",
            State::Stopping => "stopping",
        }
    }
}

/// The supervisor's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// No source data for this long is an outage (`WORKER_SOURCE_TIMEOUT_MS`).
    pub source_timeout: Duration,
    /// A source missing for longer ends the run (`WORKER_SOURCE_GRACE_MS`).
    pub source_grace: Duration,
    /// An output missing for longer ends the run (`WORKER_OUTPUT_GRACE_MS`).
    pub output_grace: Duration,
    /// How long the end of stream may take to reach the sinks (the offset + 10 s).
    pub end_timeout: Duration,
    pub outputs: usize,
    pub backoff: Backoff,
}

/// The worker's decisions; see the module docs for its table.
#[derive(Debug)]
pub struct Supervisor {
    config: Config,
    phase: Phase,
    playing: bool,
    source: Reconnect,
    /// The current source reported trouble reading.
    source_troubled: bool,
    outputs: Vec<Reconnect>,
}

impl Supervisor {
    /// A run starting at `now`: the source's and the outputs' first attempts are on (the
    /// worker builds them with the pipeline).
    pub fn new(config: Config, now: Instant) -> Supervisor {
        Supervisor {
            source: Reconnect::new(now, config.backoff, config.source_grace, true),
            outputs: (0..config.outputs)
                .map(|_| Reconnect::new(now, config.backoff, config.output_grace, false))
                .collect(),
            config,
            phase: Phase::Starting,
            playing: false,
            source_troubled: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn source(&self) -> &Reconnect {
        &self.source
    }

    pub fn output(&self, index: usize) -> Option<&Reconnect> {
        self.outputs.get(index)
    }

    /// How many outputs there are (one per RTMP publication, one for SRT).
    pub fn outputs(&self) -> usize {
        self.outputs.len()
    }

    /// Whether the audio may be filled when it falls behind (a stall): not while the first
    /// connection is on, nor once the programme ends.
    pub fn may_fill(&self) -> bool {
        self.source.ever_up() && matches!(self.phase, Phase::Running | Phase::Starting)
    }

    /// `/status` `state`.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Ending { .. } | Phase::Finishing | Phase::Done => State::Stopping,
            _ if self.source.is_down()
                || (self.source.ever_up()
                    && matches!(self.source.link(), Link::Connecting { .. })) =>
            {
                State::Reconnecting
            }
            Phase::Running if self.playing => State::Playing,
            _ => State::Starting,
        }
    }

    /// Takes `event`, which happened at `now`; returns what to do, in order.
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Done {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match event {
            Event::Tick(view) => self.tick(view, now, &mut actions),
            Event::Playing => {
                self.playing = true;
                if self.phase == Phase::Starting && self.source.is_up() {
                    self.phase = Phase::Running;
                }
            }
            Event::SourceEnded(end) => {
                if !self.watching_source() {
                    return actions;
                }
                match end {
                    SourceEnd::Orderly if !self.source_troubled => {
                        info!(
                            "the source ended its stream: the end of the programme; publishing what is held"
                        );
                        self.end_programme(now, &mut actions);
                    }
                    SourceEnd::Orderly => self.source_lost(
                        now,
                        now,
                        "the source ended its stream after a read error (the server closed the connection)",
                        &mut actions,
                    ),
                    SourceEnd::PublisherGone => self.source_lost(
                        now,
                        now,
                        "the RTMP publisher left without ending its stream (no end-of-sequence: it crashed or lost its connection)",
                        &mut actions,
                    ),
                    SourceEnd::AfterSilence => self.source_lost(
                        now,
                        now,
                        "the source ended its stream after a silence (gone)",
                        &mut actions,
                    ),
                }
            }
            Event::SourceError(why) => {
                if self.watching_source() {
                    let first = !self.source.ever_up();
                    let what = if first {
                        format!("cannot connect to the input ({why})")
                    } else {
                        why
                    };
                    self.source_lost(now, now, &what, &mut actions);
                }
            }
            Event::SourceTrouble => self.source_troubled = true,
            Event::OutputFailed { index, why } => {
                if let Some(o) = self.outputs.get_mut(index)
                    && !o.is_down()
                {
                    if o.lost(now, now) {
                        warn!(
                            output = index,
                            "output outage: {why}; reconnecting for up to {} ms",
                            self.config.output_grace.as_millis()
                        );
                    } else {
                        warn!(output = index, "output: cannot publish: {why}");
                    }
                    actions.push(Action::DropOutput(index));
                }
            }
            Event::OutputConnected { index } => {
                if let Some(o) = self.outputs.get_mut(index)
                    && let Some(outage) = o.up(now)
                {
                    info!(
                        output = index,
                        outage_ms = outage.as_millis() as u64,
                        "output republished after an outage of {} ms (a new RTMP session from a keyframe)",
                        outage.as_millis()
                    );
                }
            }
            Event::Signal(sig) => match self.phase {
                Phase::Starting | Phase::Running if !self.source.ever_up() => {
                    info!("{}: nothing was published yet; exiting", sig.name());
                    self.exit(Ok(()), &mut actions);
                }
                Phase::Starting | Phase::Running => {
                    info!(
                        "{}: sending EOS to finalize the output (publishing what is held)",
                        sig.name()
                    );
                    self.end_programme(now, &mut actions);
                }
                _ => info!("{}: already ending", sig.name()),
            },
            Event::PipelineEos => {
                if matches!(
                    self.phase,
                    Phase::Ending { .. } | Phase::Running | Phase::Starting
                ) {
                    info!("end of stream");
                    self.phase = Phase::Finishing;
                    actions.push(Action::FinishOutputs);
                }
            }
            Event::OutputsFinished => {
                if self.phase == Phase::Finishing {
                    self.exit(Ok(()), &mut actions);
                }
            }
            Event::Failed(e) => self.exit(Err(e), &mut actions),
        }
        actions
    }

    /// Whether the source's events count: not once the programme ends.
    fn watching_source(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Running)
    }

    fn exit(&mut self, result: Result<(), WorkerError>, actions: &mut Vec<Action>) {
        self.phase = Phase::Done;
        actions.push(Action::Exit(result));
    }

    fn end_programme(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.phase = Phase::Ending { since: now };
        actions.push(Action::EndProgramme);
    }

    /// The source is missing since `since`: dropped, reconnected after the backoff.
    fn source_lost(&mut self, now: Instant, since: Instant, why: &str, actions: &mut Vec<Action>) {
        let was_up = self.source.is_up();
        if self.source.is_down() {
            return;
        }
        self.source.lost(now, since);
        let retry = match self.source.link() {
            Link::Down { retry, .. } => retry.saturating_duration_since(now).as_millis(),
            _ => 0,
        };
        if was_up {
            warn!(
                "source outage: {why}; reconnecting (waiting up to {} ms for it)",
                self.config.source_grace.as_millis()
            );
        } else if self.source.ever_up() {
            warn!("source: {why}; next attempt in {retry} ms");
        } else {
            warn!("{why}; retry in {retry} ms");
        }
        actions.push(Action::DropSource);
    }

    fn tick(&mut self, view: SourceView, now: Instant, actions: &mut Vec<Action>) {
        let silent = view.last_data.map(|t| now.saturating_duration_since(t));
        if self.watching_source() {
            self.tick_source(view, silent, now, actions);
        }
        if self.phase == Phase::Done {
            return;
        }
        // Outputs, in every phase but done.
        for i in 0..self.outputs.len() {
            if self.outputs[i].past_grace(now) {
                let d = self.outputs[i].missing_for(now).unwrap_or_default();
                self.exit(
                    Err(WorkerError::OutputOutage(format!(
                        "output outage: output {i} down for {} ms, past WORKER_OUTPUT_GRACE_MS",
                        d.as_millis()
                    ))),
                    actions,
                );
                return;
            }
            if let Some(attempt) = self.outputs[i].attempt_due(now) {
                info!(output = i, "output: reconnecting (attempt {})", attempt + 1);
                actions.push(Action::ConnectOutput(i));
            }
        }
        if let Phase::Ending { since } = self.phase
            && now.saturating_duration_since(since) > self.config.end_timeout
        {
            warn!(
                "EOS did not get through in {:?}; stopping",
                self.config.end_timeout
            );
            self.phase = Phase::Finishing;
            actions.push(Action::FinishOutputs);
        }
    }

    fn tick_source(
        &mut self,
        view: SourceView,
        silent: Option<Duration>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let timeout = self.config.source_timeout;
        match self.source.link() {
            Link::Up { .. } => {
                let silent = silent.unwrap_or_default();
                if silent > timeout && view.at_range_end {
                    info!(
                        "the source sent its whole announced range and went silent without an end of stream (no RTCP BYE): the end of the programme; publishing what is held"
                    );
                    self.end_programme(now, actions);
                    return;
                }
                if silent > timeout {
                    let last = view.last_data.unwrap_or(now);
                    self.source_lost(
                        now,
                        last,
                        &format!("no data for {} ms (frozen or gone)", silent.as_millis()),
                        actions,
                    );
                }
            }
            Link::Connecting { since, outage, .. } => {
                if view.last_data.is_some_and(|t| t >= since) {
                    if let Some(o) = self.source.up(now) {
                        info!(
                            outage_ms = o.as_millis() as u64,
                            "source back after an outage of {} ms",
                            o.as_millis()
                        );
                    }
                    self.source_troubled = false;
                    if self.playing && self.phase == Phase::Starting {
                        self.phase = Phase::Running;
                    }
                } else if outage.is_some() && now.saturating_duration_since(since) > timeout {
                    self.source_lost(
                        now,
                        now,
                        &format!(
                            "no data {} ms after reconnecting",
                            now.saturating_duration_since(since).as_millis()
                        ),
                        actions,
                    );
                }
            }
            Link::Down { .. } => {}
        }
        if self.source.past_grace(now) {
            let d = self.source.missing_for(now).unwrap_or_default();
            let e = if self.source.ever_up() {
                WorkerError::SourceOutage(format!(
                    "source outage: no data for {} ms, past WORKER_SOURCE_GRACE_MS (frozen or gone; not an end of stream)",
                    d.as_millis()
                ))
            } else {
                WorkerError::SourceUnreachable(format!(
                    "the source delivered nothing in {} ms (WORKER_SOURCE_GRACE_MS): unreachable",
                    d.as_millis()
                ))
            };
            self.exit(Err(e), actions);
            return;
        }
        if let Some(attempt) = self.source.attempt_due(now) {
            self.source_troubled = false;
            actions.push(Action::ConnectSource { attempt });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config() -> Config {
        Config {
            source_timeout: ms(5000),
            source_grace: ms(30_000),
            output_grace: ms(30_000),
            end_timeout: ms(15_800),
            outputs: 1,
            backoff: Backoff::DEFAULT,
        }
    }

    /// A supervisor and a fake clock.
    struct Run {
        s: Supervisor,
        t0: Instant,
        now: Instant,
        last_data: Option<Instant>,
        at_range_end: bool,
    }

    impl Run {
        fn new(config: Config) -> Run {
            let t0 = Instant::now();
            Run {
                s: Supervisor::new(config, t0),
                t0,
                now: t0,
                last_data: None,
                at_range_end: false,
            }
        }

        fn at(&self, ms_: u64) -> Instant {
            self.t0 + ms(ms_)
        }

        /// Advances to `to_ms` in 200 ms ticks; the source delivering if `delivering`.
        /// Returns every action, with when.
        fn run_to(&mut self, to_ms: u64, delivering: bool) -> Vec<(u64, Action)> {
            let mut out = Vec::new();
            while self.now < self.at(to_ms) {
                self.now = (self.now + ms(200)).min(self.at(to_ms));
                if delivering {
                    self.last_data = Some(self.now);
                }
                let view = SourceView {
                    last_data: self.last_data,
                    at_range_end: self.at_range_end,
                };
                let t = self.now.duration_since(self.t0).as_millis() as u64;
                for a in self.s.on(Event::Tick(view), self.now) {
                    out.push((t, a));
                }
            }
            out
        }

        fn on(&mut self, e: Event) -> Vec<Action> {
            self.s.on(e, self.now)
        }
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let waits: Vec<u64> = (0..7).map(|a| Backoff::DEFAULT.wait(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(Backoff::DEFAULT.wait(u32::MAX).as_secs(), 10);
    }

    #[test]
    fn a_reconnect_machine_backs_off_and_gives_up_after_its_grace() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(t0, Backoff::DEFAULT, ms(10_000), true);
        assert_eq!(
            r.up(t0 + ms(100)),
            None,
            "a first connection ends no outage"
        );
        assert!(r.lost(t0 + ms(5000), t0 + ms(4000)), "was up");
        assert!(!r.lost(t0 + ms(5100), t0 + ms(5100)), "already down");
        assert_eq!(r.missing_for(t0 + ms(5000)), Some(ms(1000)));
        assert_eq!(r.attempt_due(t0 + ms(5900)), None);
        assert_eq!(r.attempt_due(t0 + ms(6000)), Some(0));
        // The attempt fails: the next after 2 s, the outage still counted from 4 s.
        r.lost(t0 + ms(6500), t0 + ms(6500));
        assert_eq!(r.attempt_due(t0 + ms(8400)), None);
        assert_eq!(r.attempt_due(t0 + ms(8500)), Some(1));
        assert!(!r.past_grace(t0 + ms(14_000)));
        assert!(r.past_grace(t0 + ms(14_001)));
        assert_eq!(r.up(t0 + ms(9000)), Some(ms(5000)));
        assert!(!r.past_grace(t0 + ms(60_000)));
    }

    #[test]
    fn a_source_that_delivers_plays_and_ends_with_the_programme() {
        let mut r = Run::new(config());
        assert_eq!(r.s.state(), State::Starting);
        assert!(r.run_to(1000, true).is_empty());
        assert_eq!(r.s.state(), State::Starting, "not PLAYING yet");
        assert!(r.on(Event::Playing).is_empty());
        assert!(r.on(Event::OutputConnected { index: 0 }).is_empty());
        assert_eq!(r.s.state(), State::Playing);
        assert_eq!(r.s.phase(), Phase::Running);
        assert!(r.run_to(45_000, true).is_empty());
        assert_eq!(
            r.on(Event::SourceEnded(SourceEnd::Orderly)),
            vec![Action::EndProgramme]
        );
        assert_eq!(r.s.state(), State::Stopping);
        // Silence after the end is no outage.
        assert!(r.run_to(50_000, false).is_empty());
        assert_eq!(r.on(Event::PipelineEos), vec![Action::FinishOutputs]);
        assert_eq!(r.on(Event::OutputsFinished), vec![Action::Exit(Ok(()))]);
        assert!(r.run_to(100_000, false).is_empty(), "done");
    }

    #[test]
    fn a_silent_source_is_reconnected_with_backoff_and_given_up_after_the_grace() {
        let mut r = Run::new(config());
        r.run_to(1000, true);
        r.on(Event::Playing);
        r.run_to(20_000, true);
        // Frozen from 20 s: an outage past the 5 s timeout.
        let a = r.run_to(25_000, false);
        assert!(a.is_empty(), "{a:?}");
        let a = r.run_to(25_200, false);
        assert_eq!(a, vec![(25_200, Action::DropSource)]);
        assert_eq!(r.s.state(), State::Reconnecting);
        // Attempts at +1 s, then each failing after 5 s silent, +1 s, +2 s, ...
        let a = r.run_to(50_000, false);
        let connects: Vec<u64> = a
            .iter()
            .filter(|(_, a)| matches!(a, Action::ConnectSource { .. }))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(connects, vec![26_200, 33_400, 42_600]);
        // Gone for the grace (30 s from its last data at 20 s): exit 5.
        let a = r.run_to(50_200, false);
        match &a[..] {
            [(50_200, Action::Exit(Err(e)))] => {
                assert_eq!(e.exit_code(), 5);
                assert_eq!(e.label(), "source_outage");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_source_back_within_the_grace_plays_on() {
        let mut r = Run::new(config());
        r.run_to(1000, true);
        r.on(Event::Playing);
        r.run_to(20_000, true);
        assert_eq!(
            r.on(Event::SourceError("gone".into())),
            vec![Action::DropSource]
        );
        assert_eq!(r.s.state(), State::Reconnecting);
        let a = r.run_to(21_000, false);
        assert_eq!(a, vec![(21_000, Action::ConnectSource { attempt: 0 })]);
        assert_eq!(r.s.state(), State::Reconnecting, "until it delivers");
        r.run_to(22_000, true);
        assert_eq!(r.s.state(), State::Playing);
        assert!(r.run_to(60_000, true).is_empty());
    }

    #[test]
    fn a_short_stall_is_no_outage() {
        let mut r = Run::new(config());
        r.run_to(1000, true);
        r.on(Event::Playing);
        r.run_to(20_000, true);
        assert!(r.run_to(24_000, false).is_empty());
        assert!(r.run_to(30_000, true).is_empty());
        assert_eq!(r.s.state(), State::Playing);
    }

    #[test]
    fn the_first_connection_is_retried_then_unreachable() {
        let mut r = Run::new(Config {
            source_grace: ms(5000),
            ..config()
        });
        assert_eq!(r.s.state(), State::Starting);
        assert_eq!(
            r.on(Event::SourceError("refused".into())),
            vec![Action::DropSource]
        );
        assert_eq!(r.s.state(), State::Reconnecting);
        let a = r.run_to(6000, false);
        match &a[..] {
            [
                (1000, Action::ConnectSource { attempt: 0 }),
                (5200, Action::Exit(Err(WorkerError::SourceUnreachable(_)))),
            ] => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_signal_before_any_data_exits_at_once_and_after_it_ends_the_programme() {
        // SIGTERM while connecting: nothing to publish, exit 0.
        let mut r = Run::new(config());
        r.on(Event::SourceError("refused".into()));
        r.run_to(1500, false);
        assert_eq!(
            r.on(Event::Signal(Signal::Terminate)),
            vec![Action::Exit(Ok(()))]
        );
        // SIGHUP mid-stream: the same clean end as SIGTERM.
        let mut r = Run::new(config());
        r.run_to(1000, true);
        r.on(Event::Playing);
        r.run_to(20_000, true);
        assert_eq!(
            r.on(Event::Signal(Signal::Hangup)),
            vec![Action::EndProgramme]
        );
        assert!(
            r.on(Event::Signal(Signal::Terminate)).is_empty(),
            "already ending"
        );
        // The end of stream never comes: finished anyway after the end timeout.
        let a = r.run_to(36_000, false);
        assert_eq!(a, vec![(36_000, Action::FinishOutputs)]);
        assert_eq!(r.on(Event::OutputsFinished), vec![Action::Exit(Ok(()))]);
    }

    #[test]
    fn an_end_after_trouble_or_a_gone_publisher_is_an_outage() {
        for (trouble, end) in [
            (true, SourceEnd::Orderly),
            (false, SourceEnd::PublisherGone),
            (false, SourceEnd::AfterSilence),
        ] {
            let mut r = Run::new(config());
            r.run_to(1000, true);
            r.on(Event::Playing);
            r.run_to(18_000, true);
            if trouble {
                r.on(Event::SourceTrouble);
            }
            assert_eq!(
                r.on(Event::SourceEnded(end)),
                vec![Action::DropSource],
                "{end:?}"
            );
            // The publisher is back 4 s later: playing on.
            let a = r.run_to(22_000, false);
            assert!(
                a.iter()
                    .any(|(_, a)| matches!(a, Action::ConnectSource { .. })),
                "{a:?}"
            );
            r.run_to(40_000, true);
            assert_eq!(r.s.state(), State::Playing);
        }
    }

    #[test]
    fn a_file_that_ends_without_bye_ends_the_programme() {
        let mut r = Run::new(config());
        r.run_to(1000, true);
        r.on(Event::Playing);
        r.run_to(30_000, true);
        r.at_range_end = true;
        let a = r.run_to(35_200, false);
        assert_eq!(a, vec![(35_200, Action::EndProgramme)]);
    }

    #[test]
    fn an_output_is_reconnected_and_given_up_after_its_grace() {
        let mut r = Run::new(Config {
            output_grace: ms(5000),
            ..config()
        });
        r.run_to(1000, true);
        r.on(Event::Playing);
        assert!(r.on(Event::OutputConnected { index: 0 }).is_empty());
        r.run_to(20_000, true);
        assert_eq!(
            r.on(Event::OutputFailed {
                index: 0,
                why: "frozen".into()
            }),
            vec![Action::DropOutput(0)]
        );
        let a = r.run_to(21_000, true);
        assert_eq!(a, vec![(21_000, Action::ConnectOutput(0))]);
        assert_eq!(
            r.on(Event::OutputFailed {
                index: 0,
                why: "refused".into()
            }),
            vec![Action::DropOutput(0)]
        );
        let a = r.run_to(26_000, true);
        match &a[..] {
            [
                (23_000, Action::ConnectOutput(0)),
                (25_200, Action::Exit(Err(e))),
            ] => {
                assert_eq!(e.exit_code(), 6)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_outputs_first_failure_counts_from_the_failure() {
        // The first data comes 6 s after the start (the offset): an output that fails then
        // has its whole grace from then.
        let mut r = Run::new(Config {
            output_grace: ms(5000),
            ..config()
        });
        r.run_to(1000, true);
        r.on(Event::Playing);
        r.run_to(6800, true);
        assert_eq!(
            r.on(Event::OutputFailed {
                index: 0,
                why: "refused".into()
            }),
            vec![Action::DropOutput(0)]
        );
        let a = r.run_to(11_600, true);
        assert!(
            !a.iter().any(|(_, a)| matches!(a, Action::Exit(_))),
            "{a:?}"
        );
        let a = r.run_to(12_000, true);
        assert!(
            matches!(a.last(), Some((12_000, Action::Exit(Err(_))))),
            "{a:?}"
        );
    }

    #[test]
    fn liveness_is_the_timeout() {
        let l = Liveness::new(ms(2000));
        let t0 = Instant::now();
        assert!(!l.up(t0));
        l.data(t0);
        assert!(l.up(t0 + ms(2000)));
        assert!(!l.up(t0 + ms(2001)));
        assert_eq!(l.silent_for(t0 + ms(700)), Some(ms(700)));
    }

    #[test]
    fn exit_codes_are_distinct() {
        let all = [
            WorkerError::Pipeline(String::new()),
            WorkerError::Settings(String::new()),
            WorkerError::MetricsPort(String::new()),
            WorkerError::SourceUnreachable(String::new()),
            WorkerError::SourceOutage(String::new()),
            WorkerError::OutputOutage(String::new()),
            WorkerError::UnsupportedInput(String::new()),
        ];
        let mut codes: Vec<i32> = all.iter().map(WorkerError::exit_code).collect();
        codes.sort();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7]);
        let mut labels: Vec<&str> = all.iter().map(WorkerError::label).collect();
        labels.dedup();
        assert_eq!(labels.len(), 7);
        assert_eq!(exit_code(&Ok(())), 0);
    }
}
