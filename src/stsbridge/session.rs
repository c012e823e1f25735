//! The Socket.IO session of `stsbridge` as a plain state machine: no sockets, no GStreamer, no
//! clock of its own (every input carries `now`), so every decision is tested with fake time.
//!
//! One session per stream, as the seeds' STS services run it (their spec 016, the echo service
//! of spec 017, the full service of spec 021): connect, `stream:init` → `stream:ready` (which
//! may grant fewer fragments in flight than asked), then `fragment:data` with sequence numbers
//! contiguous from 0, each answered by one `fragment:processed` (in sequence order), which the
//! client acknowledges with a `fragment:ack`; `stream:end` → `stream:complete` at the end.
//!
//! What the machine guarantees:
//! * **Every submitted fragment gets exactly one [`Reply`]**, by its deadline if it was never
//!   sent, or within `timeout` of its last sending: the element's fallback always comes in time.
//! * **Sequence numbers are contiguous per session, from 0.** A number is consumed only by a
//!   `fragment:data` actually emitted. The servers answer strictly in order, so a number they
//!   will never answer (a fragment they refused with an `error`, or a `fragment:processed` that
//!   never comes) blocks every later answer of the session forever: the machine then resets the
//!   session (a new connection, `stream:init` again, numbers from 0) and sends the fragments
//!   still worth sending again.
//! * **Every `fragment:processed` is acknowledged** (`fragment:ack`, status `received`), even
//!   one that comes too late: the echo service counts a fragment in flight until then.
//! * **Backpressure is obeyed without waiting past a deadline**: `slow_down` spaces the next
//!   sending by `recommended_delay_ms`; `pause` holds new fragments until the server says
//!   `none` or the delay runs out; a fragment held past its deadline falls back.
//! * **Disconnects reconnect with backoff** (at once after a session that worked, then
//!   exponentially up to [`RECONNECT_MAX`]); fragments in flight at the disconnect are sent
//!   again in the new session if their deadline allows, else they fall back; a failed connect
//!   fails the fragments waiting for it at once (retryable: the element's retries and breaker
//!   decide).
//! * **`stream:end`** goes out once everything sent is answered (or given up); the wait for
//!   `stream:complete` is bounded by `timeout` (at least [`MIN_SETUP_WAIT`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dubbing_sts_proto::Retry;
use serde::Deserialize;
use serde_json::{Value, json};

use super::response::{Failure, Reason};

/// Longest wait between two connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// First reconnect backoff step (doubles per failed attempt).
pub const RECONNECT_BASE: Duration = Duration::from_millis(200);
/// Wait before trying again after the server refused the session for good (a non-retryable
/// `error` to `stream:init`, e.g. `INVALID_CONFIG` or `AUTH_FAILED`).
pub const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// `slow_down` without a `recommended_delay_ms`.
pub const DEFAULT_SLOW_DOWN: Duration = Duration::from_millis(500);
/// `pause` without a `recommended_delay_ms`: how long new fragments are held at most before one
/// is tried again.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// The least time `stream:ready` and `stream:complete` are waited for, whatever `timeout`
/// (a per-fragment bound of a few hundred ms would make a slow handshake a failure).
pub const MIN_SETUP_WAIT: Duration = Duration::from_secs(2);
/// The contract's bounds on `max_inflight` (stream:init).
pub const MAX_INFLIGHT_RANGE: (u32, u32) = (1, 10);
/// The contract's bounds on `timeout_ms` (stream:init).
pub const TIMEOUT_MS_RANGE: (u64, u64) = (1000, 30_000);
/// The contract's bounds on `chunk_duration_ms` (stream:init).
pub const CHUNK_MS_RANGE: (u64, u64) = (100, 6000);

/// Error codes the servers send that never succeed when repeated as they are.
pub const PERMANENT_CODES: &[&str] = &[
    "AUTH_FAILED",
    "STREAM_NOT_FOUND",
    "INVALID_CONFIG",
    "FRAGMENT_TOO_LARGE",
    "INVALID_SEQUENCE",
    "INVALID_VOICE_PROFILE",
    "UNSUPPORTED_LANGUAGE",
];
/// Error codes of transient trouble.
pub const RETRYABLE_CODES: &[&str] = &[
    "TIMEOUT",
    "MODEL_ERROR",
    "GPU_OOM",
    "QUEUE_FULL",
    "RATE_LIMIT",
    "STREAM_PAUSED",
    "STREAM_NOT_READY",
    "BACKPRESSURE_EXCEEDED",
    "PROCESSING_ERROR",
];

/// Whether an error code (with the server's `retryable` flag) is worth trying again. Codes
/// the contract does not list follow the flag (permanent when absent).
pub fn classify(code: &str, retryable: Option<bool>) -> Retry {
    if PERMANENT_CODES.contains(&code) {
        Retry::Permanent
    } else if RETRYABLE_CODES.contains(&code) || retryable == Some(true) {
        Retry::Retryable
    } else {
        Retry::Permanent
    }
}

/// What every session of the stream shares.
#[derive(Debug, Clone)]
pub struct Config {
    pub stream_id: String,
    pub worker_id: String,
    pub source_language: String,
    pub target_language: String,
    pub voice_profile: String,
    /// Fragments in flight asked for (the server may grant fewer).
    pub max_inflight: u32,
    /// How long a sent fragment waits for its `fragment:processed`; also the bound on the
    /// waits for `stream:ready` and `stream:complete` (at least [`MIN_SETUP_WAIT`]).
    pub timeout: Duration,
}

/// The audio format of a session (`stream:init`'s `config`), from the first fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioConfig {
    /// `pcm_s16le`, `pcm_f32le` or `wav`.
    pub format: &'static str,
    pub sample_rate_hz: u32,
    pub channels: u32,
    pub chunk_duration_ms: u64,
}

/// One fragment's audio as sent (kept for sending again after a reconnect).
#[derive(Debug)]
pub struct WireAudio {
    pub config: AudioConfig,
    pub duration_ms: u64,
    pub data_base64: String,
}

/// The element's handle on a submitted fragment.
pub type Key = u64;

/// A fragment handed to the session.
#[derive(Debug, Clone)]
pub struct Submit {
    pub key: Key,
    pub fragment_id: String,
    /// When the fragment stops being worth sending (its fallback goes out then).
    pub deadline: Instant,
    pub audio: Arc<WireAudio>,
    pub pts_ns: Option<u64>,
}

/// `dubbed_audio` of a `fragment:processed`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AudioIn {
    pub format: String,
    pub sample_rate_hz: u32,
    pub channels: u32,
    #[serde(default)]
    pub duration_ms: f64,
    pub data_base64: String,
}

/// `error` of a `fragment:processed`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ProcessingError {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub retryable: Option<bool>,
}

/// A `fragment:processed` event.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Processed {
    pub fragment_id: String,
    #[serde(default)]
    pub sequence_number: Option<u64>,
    pub status: String,
    #[serde(default)]
    pub dubbed_audio: Option<AudioIn>,
    #[serde(default)]
    pub transcript: Option<String>,
    #[serde(default)]
    pub translated_text: Option<String>,
    #[serde(default)]
    pub processing_time_ms: Option<f64>,
    #[serde(default)]
    pub error: Option<ProcessingError>,
}

/// An `error` event.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorEvent {
    pub code: String,
    pub message: String,
    pub severity: String,
    pub retryable: Option<bool>,
    pub fragment_id: Option<String>,
}

/// A `backpressure` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    None,
    SlowDown,
    Pause,
}

/// What the server said, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    Ready {
        session_id: String,
        max_inflight: Option<u32>,
    },
    /// `fragment:ack` from the server (`queued`).
    Queued {
        fragment_id: String,
    },
    Processed(Box<Processed>),
    Backpressure {
        action: Pressure,
        delay: Option<Duration>,
    },
    Error(ErrorEvent),
    Complete,
}

impl ServerEvent {
    /// Parses an event by name; `None` for events the client has no use for or payloads that
    /// do not fit (the detail of a misfit goes to the log by the caller).
    pub fn parse(name: &str, data: Value) -> Result<Option<ServerEvent>, String> {
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Some(match name {
            "stream:ready" => ServerEvent::Ready {
                session_id: s(&data, "session_id").unwrap_or_default(),
                max_inflight: data
                    .get("max_inflight")
                    .and_then(Value::as_u64)
                    .map(|n| n.min(u64::from(u32::MAX)) as u32),
            },
            "fragment:ack" => match s(&data, "fragment_id") {
                Some(fragment_id) => ServerEvent::Queued { fragment_id },
                None => return Err("fragment:ack without fragment_id".into()),
            },
            "fragment:processed" => ServerEvent::Processed(Box::new(
                serde_json::from_value(data).map_err(|e| format!("fragment:processed: {e}"))?,
            )),
            "backpressure" => ServerEvent::Backpressure {
                action: match data.get("action").and_then(Value::as_str) {
                    Some("pause") => Pressure::Pause,
                    Some("slow_down") => Pressure::SlowDown,
                    _ => Pressure::None,
                },
                delay: data
                    .get("recommended_delay_ms")
                    .and_then(Value::as_f64)
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
                    .map(|ms| Duration::from_millis(ms.min(60_000.0) as u64)),
            },
            "error" => ServerEvent::Error(ErrorEvent {
                code: s(&data, "code").unwrap_or_else(|| "UNKNOWN".into()),
                message: s(&data, "message").unwrap_or_default(),
                severity: s(&data, "severity").unwrap_or_else(|| "error".into()),
                retryable: data.get("retryable").and_then(Value::as_bool),
                fragment_id: s(&data, "fragment_id"),
            }),
            "stream:complete" => ServerEvent::Complete,
            _ => return Ok(None),
        }))
    }
}

/// The answer to a submitted fragment.
#[derive(Debug)]
pub struct Reply {
    pub result: Result<Box<Processed>, Failure>,
    /// How many times the fragment was emitted (0: it never went out).
    pub emitted: u32,
    /// From its last emission to its answer.
    pub rtt: Option<Duration>,
}

/// A connection attempt's number: events of older connections are ignored.
pub type ConnId = u64;

/// What the socket side reports.
#[derive(Debug)]
pub enum Input {
    Submit(Submit),
    /// The element no longer waits for this fragment (flushed): not sent if not sent yet.
    Cancel(Key),
    Connected(ConnId),
    ConnectFailed(ConnId, String),
    Disconnected(ConnId, String),
    Event(ConnId, ServerEvent),
    /// End of stream: `stream:end` once everything sent is answered.
    End,
    /// Flushing seek: the session is closed cleanly and a new one opened for what follows.
    Flush,
    /// The element stops: the session is closed cleanly, for good.
    Close,
}

/// What the socket side must do.
#[derive(Debug, PartialEq)]
pub enum Action {
    Connect(ConnId),
    Disconnect(ConnId),
    Emit {
        conn: ConnId,
        event: &'static str,
        data: Value,
    },
    Reply {
        key: Key,
        reply: ReplyView,
    },
    /// The session went up (stream:ready) or down.
    Up(bool),
    /// `stream:ready` granted this many fragments in flight.
    Granted(u32),
    /// The server refused the session or a fragment for good: an element warning.
    Refused {
        code: String,
        message: String,
    },
}

/// [`Reply`] in actions (kept comparable for tests: the payload by its id).
#[derive(Debug)]
pub struct ReplyView(pub Reply);

impl PartialEq for ReplyView {
    fn eq(&self, other: &Self) -> bool {
        let key = |r: &Reply| match &r.result {
            Ok(p) => Ok(p.fragment_id.clone()),
            Err(f) => Err((f.reason, f.retry)),
        };
        key(&self.0) == key(&other.0) && self.0.emitted == other.0.emitted
    }
}

#[derive(Debug)]
struct Entry {
    submit: Submit,
    emitted: u32,
}

#[derive(Debug)]
struct Sent {
    entry: Entry,
    seq: u64,
    at: Instant,
    /// The server's `fragment:ack` (queued) came.
    queued: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not connected; the next attempt at `retry_at`.
    Down {
        retry_at: Instant,
    },
    Connecting(ConnId),
    Up(ConnId),
    /// Closed for good.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Connected, no `stream:init` sent yet (no fragment told the audio format yet).
    Idle,
    Initializing {
        since: Instant,
    },
    Ready,
    /// `stream:end` sent at `since`.
    Ending {
        since: Instant,
    },
}

/// Counters for `stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// Sessions that reached `stream:ready`.
    pub sessions: u64,
    /// Connections lost or reset while the stream went on.
    pub reconnects: u64,
    /// Fragments emitted again after a reconnect.
    pub resent: u64,
    /// `backpressure` events with `slow_down` or `pause`.
    pub backpressure: u64,
    /// `error` events.
    pub errors: u64,
}

/// The session state machine.
#[derive(Debug)]
pub struct Session {
    cfg: Config,
    link: Link,
    stage: Stage,
    conn: ConnId,
    /// The format of the current session, once a fragment told it.
    audio: Option<AudioConfig>,
    next_seq: u64,
    granted: u32,
    waiting: VecDeque<Entry>,
    sent: VecDeque<Sent>,
    /// Failed connection attempts in a row.
    failures: u32,
    /// No sending before this (slow_down).
    send_after: Option<Instant>,
    /// Paused until this (pause).
    paused_until: Option<Instant>,
    /// `End` came: `stream:end` when nothing is left.
    ending: bool,
    /// The session that worked last ended badly: next reconnect waits for the backoff.
    actions: Vec<Action>,
    stats: SessionStats,
    up: bool,
}

impl Session {
    /// A session that connects at once.
    pub fn new(cfg: Config, now: Instant) -> Self {
        let mut s = Session {
            granted: cfg.max_inflight.max(1),
            cfg,
            link: Link::Down { retry_at: now },
            stage: Stage::Idle,
            conn: 0,
            audio: None,
            next_seq: 0,
            waiting: VecDeque::new(),
            sent: VecDeque::new(),
            failures: 0,
            send_after: None,
            paused_until: None,
            ending: false,
            actions: Vec::new(),
            stats: SessionStats::default(),
            up: false,
        };
        s.pump(now);
        s
    }

    /// The actions decided so far, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Whether the session is closed for good and owes nothing.
    pub fn is_closed(&self) -> bool {
        self.link == Link::Closed && self.waiting.is_empty() && self.sent.is_empty()
    }

    /// Fragments in flight the server granted (the window), capped by what was asked.
    pub fn window(&self) -> usize {
        self.granted.clamp(1, self.cfg.max_inflight.max(1)) as usize
    }

    /// Sequence number the next `fragment:data` of this session gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Submit(s) => self.submit(now, s),
            Input::Cancel(key) => self.waiting.retain(|e| e.submit.key != key),
            Input::Connected(c) if self.link == Link::Connecting(c) => {
                self.link = Link::Up(c);
                self.stage = Stage::Idle;
                self.next_seq = 0;
                self.send_after = None;
                self.paused_until = None;
                self.maybe_init(now);
            }
            Input::ConnectFailed(c, detail) if self.link == Link::Connecting(c) => {
                self.failures += 1;
                self.link = Link::Down {
                    retry_at: now + reconnect_backoff(self.failures),
                };
                let detail = format!("cannot connect to the STS: {detail}");
                self.fail_waiting(Reason::Transport, Retry::Retryable, &detail);
            }
            Input::Disconnected(c, detail) if self.link == Link::Up(c) => {
                self.lost(now, &format!("disconnected: {detail}"), false);
            }
            Input::Event(c, ev) if self.link == Link::Up(c) => self.event(now, ev),
            Input::End => self.ending = true,
            Input::Flush => {
                self.ending = false;
                self.fail_all(Reason::Transport, Retry::Permanent, "flushed");
                if let Link::Up(c) = self.link {
                    self.end_cleanly(c, "flushed");
                    self.stage = Stage::Idle;
                    self.set_up(false);
                    self.link = Link::Down { retry_at: now };
                }
            }
            Input::Close => {
                self.fail_all(Reason::Transport, Retry::Permanent, "stopped");
                match self.link {
                    Link::Up(c) => self.end_cleanly(c, "stopped"),
                    Link::Connecting(c) => self.actions.push(Action::Disconnect(c)),
                    _ => {}
                }
                self.link = Link::Closed;
                self.set_up(false);
            }
            // Events of connections given up already.
            _ => {}
        }
        self.pump(now);
    }

    /// Timers: call when [`next_timer`](Self::next_timer) passes.
    pub fn tick(&mut self, now: Instant) {
        self.pump(now);
    }

    /// The next instant something happens without an input.
    pub fn next_timer(&self) -> Option<Instant> {
        let mut t: Vec<Instant> = Vec::new();
        t.extend(self.waiting.iter().map(|e| e.submit.deadline));
        t.extend(self.sent.iter().map(|s| s.at + self.cfg.timeout));
        match self.stage {
            Stage::Initializing { since } | Stage::Ending { since } => {
                t.push(since + self.setup_wait())
            }
            _ => {}
        }
        if let Link::Down { retry_at } = self.link {
            t.push(retry_at);
        }
        if !self.waiting.is_empty() {
            t.extend(self.send_after);
            t.extend(self.paused_until);
        }
        t.into_iter().min()
    }

    fn submit(&mut self, now: Instant, s: Submit) {
        if self.link == Link::Closed {
            self.reply(
                Entry {
                    submit: s,
                    emitted: 0,
                },
                Err(Failure::new(
                    Reason::Transport,
                    Retry::Permanent,
                    "session closed",
                )),
                None,
            );
            return;
        }
        let format_changed = self
            .audio
            .as_ref()
            .is_some_and(|a| !same_format(a, &s.audio.config));
        if self.audio.is_none() || format_changed {
            self.audio = Some(s.audio.config.clone());
        }
        self.waiting.push_back(Entry {
            submit: s,
            emitted: 0,
        });
        if format_changed && let Link::Up(c) = self.link {
            // A new format is a new session (stream:init carries it).
            self.reset(now, c, "the audio format changed", true);
        }
        self.maybe_init(now);
    }

    fn maybe_init(&mut self, now: Instant) {
        let (Link::Up(conn), Stage::Idle, Some(audio)) = (self.link, self.stage, &self.audio)
        else {
            return;
        };
        let data = json!({
            "stream_id": self.cfg.stream_id,
            "worker_id": self.cfg.worker_id,
            "config": {
                "source_language": self.cfg.source_language,
                "target_language": self.cfg.target_language,
                "voice_profile": self.cfg.voice_profile,
                "chunk_duration_ms": audio.chunk_duration_ms.clamp(CHUNK_MS_RANGE.0, CHUNK_MS_RANGE.1),
                "sample_rate_hz": audio.sample_rate_hz,
                "channels": audio.channels,
                "format": audio.format,
            },
            "max_inflight": self.cfg.max_inflight.clamp(MAX_INFLIGHT_RANGE.0, MAX_INFLIGHT_RANGE.1),
            "timeout_ms": (self.cfg.timeout.as_millis() as u64).clamp(TIMEOUT_MS_RANGE.0, TIMEOUT_MS_RANGE.1),
        });
        self.actions.push(Action::Emit {
            conn,
            event: "stream:init",
            data,
        });
        self.stage = Stage::Initializing { since: now };
    }

    fn event(&mut self, now: Instant, ev: ServerEvent) {
        let Link::Up(conn) = self.link else { return };
        match ev {
            ServerEvent::Ready { max_inflight, .. } => {
                if !matches!(self.stage, Stage::Initializing { .. }) {
                    return;
                }
                self.stage = Stage::Ready;
                self.failures = 0;
                self.stats.sessions += 1;
                self.granted = max_inflight.unwrap_or(self.cfg.max_inflight).max(1);
                self.actions.push(Action::Granted(self.window() as u32));
                self.set_up(true);
            }
            ServerEvent::Queued { fragment_id } => {
                if let Some(s) = self
                    .sent
                    .iter_mut()
                    .find(|s| s.entry.submit.fragment_id == fragment_id)
                {
                    s.queued = true;
                }
            }
            ServerEvent::Processed(p) => {
                // Always acknowledged, even when nobody waits for it any more.
                self.actions.push(Action::Emit {
                    conn,
                    event: "fragment:ack",
                    data: json!({
                        "fragment_id": p.fragment_id,
                        "status": "received",
                        "timestamp": unix_ms(),
                    }),
                });
                let at = self.sent.iter().position(|s| {
                    s.entry.submit.fragment_id == p.fragment_id
                        || p.sequence_number == Some(s.seq) && p.fragment_id.is_empty()
                });
                if let Some(i) = at {
                    let s = self.sent.remove(i).expect("found");
                    let rtt = now.saturating_duration_since(s.at);
                    self.reply(s.entry, Ok(p), Some(rtt));
                }
            }
            ServerEvent::Backpressure { action, delay } => match action {
                Pressure::None => {
                    self.paused_until = None;
                    self.send_after = None;
                }
                Pressure::SlowDown => {
                    self.stats.backpressure += 1;
                    self.paused_until = None;
                    self.send_after = Some(now + delay.unwrap_or(DEFAULT_SLOW_DOWN));
                }
                Pressure::Pause => {
                    self.stats.backpressure += 1;
                    self.paused_until = Some(now + delay.unwrap_or(DEFAULT_PAUSE));
                }
            },
            ServerEvent::Error(e) => self.error(now, conn, e),
            ServerEvent::Complete => {
                if matches!(self.stage, Stage::Ending { .. }) {
                    self.close_link(conn);
                    self.link = Link::Closed;
                    self.stage = Stage::Idle;
                    self.set_up(false);
                }
            }
        }
    }

    fn error(&mut self, now: Instant, conn: ConnId, e: ErrorEvent) {
        self.stats.errors += 1;
        let retry = classify(&e.code, e.retryable);
        let detail = if e.message.is_empty() {
            e.code.clone()
        } else {
            format!("{}: {}", e.code, e.message)
        };
        if let Stage::Initializing { .. } = self.stage {
            // The session was refused.
            if retry == Retry::Permanent {
                self.actions.push(Action::Refused {
                    code: e.code.clone(),
                    message: e.message.clone(),
                });
            }
            self.fail_waiting(
                Reason::StsError,
                retry,
                &format!("stream:init refused: {detail}"),
            );
            self.close_link(conn);
            self.failures += 1;
            let wait = if retry == Retry::Permanent {
                REFUSED_RETRY
            } else {
                reconnect_backoff(self.failures)
            };
            self.link = Link::Down {
                retry_at: now + wait,
            };
            self.stage = Stage::Idle;
            self.set_up(false);
            return;
        }
        // A refused fragment: the one it names, else the oldest one the server did not queue.
        let target = match &e.fragment_id {
            Some(id) => self
                .sent
                .iter()
                .position(|s| &s.entry.submit.fragment_id == id),
            None => self.sent.iter().position(|s| !s.queued),
        };
        let Some(i) = target else {
            if e.severity == "fatal" {
                self.reset(now, conn, &format!("fatal error: {detail}"), false);
            }
            return;
        };
        let s = self.sent.remove(i).expect("found");
        if retry == Retry::Permanent {
            self.actions.push(Action::Refused {
                code: e.code.clone(),
                message: e.message.clone(),
            });
        }
        self.reply(
            s.entry,
            Err(Failure::new(Reason::StsError, retry, detail.clone())),
            None,
        );
        // Its sequence number will never be answered: nothing after it will be either.
        self.reset(
            now,
            conn,
            &format!("sequence number {} refused ({detail})", s.seq),
            true,
        );
    }

    /// The connection is gone: fragments in flight are sent again in the next session.
    fn lost(&mut self, now: Instant, detail: &str, immediate: bool) {
        self.stats.reconnects += 1;
        let was_ready = self.stage == Stage::Ready;
        self.requeue_sent();
        self.stage = Stage::Idle;
        self.set_up(false);
        if self.ending && self.waiting.is_empty() {
            // Nothing left to say: the stream is over.
            self.link = Link::Closed;
            return;
        }
        let wait = if was_ready || immediate {
            Duration::ZERO
        } else {
            self.failures += 1;
            reconnect_backoff(self.failures)
        };
        let _ = detail;
        self.link = Link::Down {
            retry_at: now + wait,
        };
    }

    /// Ends a session that cannot go on (a hole in its sequence numbers, a new format) and
    /// opens the next one.
    fn reset(&mut self, now: Instant, conn: ConnId, detail: &str, immediate: bool) {
        self.close_link(conn);
        self.lost(now, detail, immediate);
    }

    /// `stream:end` (if the session is up), then the disconnect: the server closes the
    /// stream's books instead of seeing a connection drop.
    fn end_cleanly(&mut self, conn: ConnId, reason: &str) {
        if self.stage == Stage::Ready {
            self.actions.push(Action::Emit {
                conn,
                event: "stream:end",
                data: json!({"stream_id": self.cfg.stream_id, "reason": reason}),
            });
        }
        self.close_link(conn);
    }

    fn close_link(&mut self, conn: ConnId) {
        self.actions.push(Action::Disconnect(conn));
    }

    fn requeue_sent(&mut self) {
        while let Some(s) = self.sent.pop_back() {
            self.waiting.push_front(s.entry);
        }
    }

    fn set_up(&mut self, up: bool) {
        if self.up != up {
            self.up = up;
            self.actions.push(Action::Up(up));
        }
    }

    fn reply(&mut self, e: Entry, result: Result<Box<Processed>, Failure>, rtt: Option<Duration>) {
        self.actions.push(Action::Reply {
            key: e.submit.key,
            reply: ReplyView(Reply {
                result,
                emitted: e.emitted,
                rtt,
            }),
        });
    }

    fn fail_waiting(&mut self, reason: Reason, retry: Retry, detail: &str) {
        for e in std::mem::take(&mut self.waiting) {
            self.reply(e, Err(Failure::new(reason, retry, detail)), None);
        }
    }

    fn fail_all(&mut self, reason: Reason, retry: Retry, detail: &str) {
        self.requeue_sent();
        self.fail_waiting(reason, retry, detail);
    }

    /// Everything time decides, then sending what may be sent.
    fn pump(&mut self, now: Instant) {
        // Answers that did not come in time: the session is stuck behind that number.
        if let Some(s) = self.sent.front()
            && s.at + self.cfg.timeout <= now
            && let Link::Up(conn) = self.link
        {
            let s = self.sent.pop_front().expect("front");
            let detail = format!(
                "no fragment:processed within {} ms",
                self.cfg.timeout.as_millis()
            );
            let seq = s.seq;
            self.reply(
                s.entry,
                Err(Failure::new(
                    Reason::Timeout,
                    Retry::Retryable,
                    detail.clone(),
                )),
                None,
            );
            self.reset(now, conn, &format!("sequence number {seq}: {detail}"), true);
        }
        // Fragments never sent whose deadline passed.
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].submit.deadline <= now {
                let e = self.waiting.remove(i).expect("index");
                let why = self.held_because(now);
                self.reply(
                    e,
                    Err(Failure::new(
                        Reason::Deadline,
                        Retry::Permanent,
                        format!("not sent before its deadline: {why}"),
                    )),
                    None,
                );
            } else {
                i += 1;
            }
        }
        match (self.link, self.stage) {
            (Link::Up(conn), Stage::Initializing { since }) if since + self.setup_wait() <= now => {
                let detail = format!(
                    "no stream:ready within {} ms",
                    self.setup_wait().as_millis()
                );
                self.fail_waiting(Reason::Timeout, Retry::Retryable, &detail);
                self.close_link(conn);
                self.failures += 1;
                self.stage = Stage::Idle;
                self.link = Link::Down {
                    retry_at: now + reconnect_backoff(self.failures),
                };
            }
            (Link::Up(conn), Stage::Ending { since }) if since + self.setup_wait() <= now => {
                // No stream:complete in time: the end is ours anyway.
                self.close_link(conn);
                self.link = Link::Closed;
                self.stage = Stage::Idle;
                self.fail_all(Reason::Timeout, Retry::Permanent, "stream ended");
                self.set_up(false);
            }
            (Link::Down { retry_at }, _) if retry_at <= now => {
                if self.ending && self.waiting.is_empty() {
                    self.link = Link::Closed;
                } else {
                    self.conn += 1;
                    self.link = Link::Connecting(self.conn);
                    self.actions.push(Action::Connect(self.conn));
                }
            }
            _ => {}
        }
        self.send(now);
        if self.ending
            && self.waiting.is_empty()
            && self.sent.is_empty()
            && let (Link::Up(conn), Stage::Ready | Stage::Idle) = (self.link, self.stage)
        {
            if self.stage == Stage::Ready {
                self.actions.push(Action::Emit {
                    conn,
                    event: "stream:end",
                    data: json!({"stream_id": self.cfg.stream_id, "reason": "source_ended"}),
                });
                self.stage = Stage::Ending { since: now };
            } else {
                self.close_link(conn);
                self.link = Link::Closed;
                self.set_up(false);
            }
        }
    }

    /// How long `stream:ready` and `stream:complete` are waited for.
    fn setup_wait(&self) -> Duration {
        self.cfg.timeout.max(MIN_SETUP_WAIT)
    }

    fn held_because(&self, now: Instant) -> &'static str {
        match (self.link, self.stage) {
            (Link::Closed, _) => "session closed",
            (Link::Down { .. } | Link::Connecting(_), _) => "not connected",
            (_, Stage::Idle | Stage::Initializing { .. }) => "no stream:ready yet",
            _ if self.paused_until.is_some_and(|t| t > now) => "the server paused the stream",
            _ if self.send_after.is_some_and(|t| t > now) => "the server asked to slow down",
            _ => "the server's window was full",
        }
    }

    fn send(&mut self, now: Instant) {
        let (Link::Up(conn), Stage::Ready) = (self.link, self.stage) else {
            return;
        };
        if self.paused_until.is_some_and(|t| t > now) || self.send_after.is_some_and(|t| t > now) {
            return;
        }
        self.paused_until = None;
        let spaced = self.send_after.take().is_some();
        while self.sent.len() < self.window()
            && let Some(mut e) = self.waiting.pop_front()
        {
            let seq = self.next_seq;
            self.next_seq += 1;
            if e.emitted > 0 {
                self.stats.resent += 1;
            }
            e.emitted += 1;
            let a = &e.submit.audio;
            let mut metadata = serde_json::Map::new();
            if let Some(pts) = e.submit.pts_ns {
                metadata.insert("pts_ns".into(), pts.into());
            }
            self.actions.push(Action::Emit {
                conn,
                event: "fragment:data",
                data: json!({
                    "fragment_id": e.submit.fragment_id,
                    "stream_id": self.cfg.stream_id,
                    "sequence_number": seq,
                    "timestamp": unix_ms(),
                    "audio": {
                        "format": a.config.format,
                        "sample_rate_hz": a.config.sample_rate_hz,
                        "channels": a.config.channels,
                        "duration_ms": a.duration_ms,
                        "data_base64": a.data_base64,
                    },
                    "metadata": metadata,
                }),
            });
            self.sent.push_back(Sent {
                entry: e,
                seq,
                at: now,
                queued: false,
            });
            if spaced {
                // slow_down: one fragment per recommended delay until told otherwise.
                break;
            }
        }
    }
}

fn same_format(a: &AudioConfig, b: &AudioConfig) -> bool {
    a.format == b.format && a.sample_rate_hz == b.sample_rate_hz && a.channels == b.channels
}

/// Backoff before reconnect attempt after `failures` failed ones: 200 ms doubling, at most
/// [`RECONNECT_MAX`].
pub fn reconnect_backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    RECONNECT_BASE
        .saturating_mul(1u32 << exp)
        .min(RECONNECT_MAX)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(8);

    fn cfg(max_inflight: u32) -> Config {
        Config {
            stream_id: "s".into(),
            worker_id: "w".into(),
            source_language: "en".into(),
            target_language: "es".into(),
            voice_profile: "default".into(),
            max_inflight,
            timeout: T,
        }
    }

    fn audio(rate: u32) -> Arc<WireAudio> {
        Arc::new(WireAudio {
            config: AudioConfig {
                format: "wav",
                sample_rate_hz: rate,
                channels: 1,
                chunk_duration_ms: 1000,
            },
            duration_ms: 1000,
            data_base64: "AAAA".into(),
        })
    }

    /// A reply as (key, fragment id or failure class, times emitted).
    type ReplyTag = (Key, Result<String, (Reason, Retry)>, u32);

    /// A session on fake time with helpers to read what it does.
    struct Rig {
        s: Session,
        t0: Instant,
        now: Instant,
        out: Vec<Action>,
    }

    impl Rig {
        fn new(max_inflight: u32) -> Rig {
            let t0 = Instant::now();
            let mut s = Session::new(cfg(max_inflight), t0);
            let out = s.take_actions();
            Rig {
                s,
                t0,
                now: t0,
                out,
            }
        }
        fn at(&mut self, ms: u64) {
            self.now = self.t0 + Duration::from_millis(ms);
            self.s.tick(self.now);
            self.out.extend(self.s.take_actions());
        }
        fn input(&mut self, i: Input) {
            self.s.handle(self.now, i);
            self.out.extend(self.s.take_actions());
        }
        fn ev(&mut self, conn: ConnId, e: ServerEvent) {
            self.input(Input::Event(conn, e));
        }
        fn submit(&mut self, key: Key, deadline_ms: u64) {
            self.submit_rate(key, deadline_ms, 16000);
        }
        fn submit_rate(&mut self, key: Key, deadline_ms: u64, rate: u32) {
            self.input(Input::Submit(Submit {
                key,
                fragment_id: format!("f{key}"),
                deadline: self.t0 + Duration::from_millis(deadline_ms),
                audio: audio(rate),
                pts_ns: Some(key * 1_000_000_000),
            }));
        }
        fn drain(&mut self) -> Vec<Action> {
            std::mem::take(&mut self.out)
        }
        /// Emitted events as (conn, name, sequence_number or fragment id).
        fn emits(&mut self) -> Vec<(ConnId, &'static str, String)> {
            self.drain()
                .into_iter()
                .filter_map(|a| match a {
                    Action::Emit { conn, event, data } => {
                        let tag = match event {
                            "fragment:data" => data["sequence_number"].to_string(),
                            "fragment:ack" => data["fragment_id"].as_str().unwrap().to_owned(),
                            _ => String::new(),
                        };
                        Some((conn, event, tag))
                    }
                    _ => None,
                })
                .collect()
        }
        fn replies(actions: &[Action]) -> Vec<ReplyTag> {
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::Reply { key, reply } => Some((
                        *key,
                        match &reply.0.result {
                            Ok(p) => Ok(p.fragment_id.clone()),
                            Err(f) => Err((f.reason, f.retry)),
                        },
                        reply.0.emitted,
                    )),
                    _ => None,
                })
                .collect()
        }
        /// Connects `conn` and answers stream:init with a grant.
        fn up(&mut self, conn: ConnId, granted: u32) {
            self.input(Input::Connected(conn));
            self.ev(
                conn,
                ServerEvent::Ready {
                    session_id: format!("sess{conn}"),
                    max_inflight: Some(granted),
                },
            );
        }
    }

    fn processed(key: Key, seq: u64) -> ServerEvent {
        ServerEvent::Processed(Box::new(Processed {
            fragment_id: format!("f{key}"),
            sequence_number: Some(seq),
            status: "success".into(),
            dubbed_audio: None,
            transcript: None,
            translated_text: None,
            processing_time_ms: None,
            error: None,
        }))
    }

    fn error(code: &str, fragment: Option<Key>) -> ServerEvent {
        ServerEvent::Error(ErrorEvent {
            code: code.into(),
            message: "boom".into(),
            severity: "error".into(),
            retryable: None,
            fragment_id: fragment.map(|k| format!("f{k}")),
        })
    }

    #[test]
    fn connects_at_once_and_inits_with_the_first_fragment() {
        let mut r = Rig::new(3);
        assert_eq!(r.drain(), vec![Action::Connect(1)]);
        r.input(Input::Connected(1));
        // No format known yet: no stream:init.
        assert!(r.emits().is_empty());
        r.submit(1, 5000);
        let out = r.drain();
        let Action::Emit { event, data, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(*event, "stream:init");
        assert_eq!(data["config"]["format"], "wav");
        assert_eq!(data["config"]["sample_rate_hz"], 16000);
        assert_eq!(data["max_inflight"], 3);
        assert_eq!(data["timeout_ms"], 8000);
        // Nothing is sent before stream:ready.
        assert_eq!(out.len(), 1);
        r.ev(
            1,
            ServerEvent::Ready {
                session_id: "x".into(),
                max_inflight: Some(3),
            },
        );
        let out = r.drain();
        assert!(out.contains(&Action::Up(true)));
        assert!(out.contains(&Action::Granted(3)));
        let Some(Action::Emit { event, data, .. }) = out.last() else {
            panic!()
        };
        assert_eq!(*event, "fragment:data");
        assert_eq!(data["sequence_number"], 0);
        assert_eq!(data["audio"]["format"], "wav");
        assert_eq!(data["metadata"]["pts_ns"], 1_000_000_000u64);
        r.at(300);
        r.ev(1, processed(1, 0));
        let out = r.drain();
        assert_eq!(Rig::replies(&out), vec![(1, Ok("f1".into()), 1)]);
        // Every answer is acknowledged.
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Emit {
                event: "fragment:ack",
                ..
            }
        )));
        let Some(Action::Reply { reply, .. }) =
            out.iter().find(|a| matches!(a, Action::Reply { .. }))
        else {
            panic!()
        };
        assert_eq!(reply.0.rtt, Some(Duration::from_millis(300)));
    }

    #[test]
    fn the_granted_window_caps_what_is_in_flight_and_numbers_are_contiguous() {
        let mut r = Rig::new(4);
        r.drain();
        for k in 1..=5 {
            r.submit(k, 20_000);
        }
        r.up(1, 2);
        let e = r.emits();
        let seqs: Vec<_> = e
            .iter()
            .filter(|e| e.1 == "fragment:data")
            .map(|e| e.2.clone())
            .collect();
        assert_eq!(seqs, ["0", "1"]);
        assert_eq!(r.s.window(), 2);
        r.ev(1, processed(1, 0));
        let e = r.emits();
        assert_eq!(
            e,
            vec![
                (1, "fragment:ack", "f1".into()),
                (1, "fragment:data", "2".into())
            ]
        );
        r.ev(1, processed(2, 1));
        r.ev(1, processed(3, 2));
        let seqs: Vec<_> = r
            .emits()
            .into_iter()
            .filter(|e| e.1 == "fragment:data")
            .map(|e| e.2)
            .collect();
        assert_eq!(seqs, ["3", "4"]);
        // More than the server allows is never asked.
        let mut r = Rig::new(64);
        r.drain();
        r.input(Input::Connected(1));
        r.submit(1, 1000);
        let out = r.drain();
        let Action::Emit { data, .. } = &out[0] else {
            panic!()
        };
        assert_eq!(data["max_inflight"], 10);
    }

    #[test]
    fn a_disconnect_reconnects_at_once_and_resends_from_sequence_zero() {
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 20_000);
        r.submit(2, 20_000);
        r.submit(3, 20_000);
        r.up(1, 3);
        r.ev(1, processed(1, 0));
        r.drain();
        r.at(500);
        r.input(Input::Disconnected(1, "transport close".into()));
        let out = r.drain();
        assert!(out.contains(&Action::Up(false)));
        assert!(out.contains(&Action::Connect(2)), "{out:?}");
        assert!(
            Rig::replies(&out).is_empty(),
            "no fallback while a resend fits"
        );
        // Events of the old connection are ignored from now on.
        r.ev(1, processed(2, 1));
        assert!(r.drain().is_empty());
        r.up(2, 3);
        let e = r.emits();
        assert_eq!(e[0].1, "stream:init");
        let seqs: Vec<_> = e
            .iter()
            .filter(|e| e.1 == "fragment:data")
            .map(|e| (e.0, e.2.clone()))
            .collect();
        assert_eq!(seqs, [(2, "0".to_string()), (2, "1".to_string())]);
        r.ev(2, processed(2, 0));
        r.ev(2, processed(3, 1));
        let rep = Rig::replies(&r.drain());
        assert_eq!(rep, vec![(2, Ok("f2".into()), 2), (3, Ok("f3".into()), 2)]);
        assert_eq!(r.s.stats().reconnects, 1);
        assert_eq!(r.s.stats().resent, 2);
        assert_eq!(r.s.stats().sessions, 2);
    }

    #[test]
    fn in_flight_fragments_fall_back_in_time_when_no_session_comes_back() {
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 1000);
        r.up(1, 3);
        r.drain();
        r.at(100);
        r.input(Input::Disconnected(1, "transport close".into()));
        r.input(Input::ConnectFailed(2, "refused".into()));
        let out = r.drain();
        // A failed connect fails what waits for it at once: retryable, the element decides.
        assert_eq!(
            Rig::replies(&out),
            vec![(1, Err((Reason::Transport, Retry::Retryable)), 1)]
        );
        // Backoff grows, bounded.
        let mut waits = Vec::new();
        let mut last = 100;
        for conn in 3..12 {
            let Some(t) = r.s.next_timer() else { panic!() };
            let ms = (t - r.t0).as_millis() as u64;
            waits.push(ms - last);
            r.at(ms);
            assert_eq!(r.drain(), vec![Action::Connect(conn)]);
            r.input(Input::ConnectFailed(conn, "refused".into()));
            last = ms;
        }
        assert_eq!(waits[..4], [200, 400, 800, 1600]);
        assert!(waits.iter().all(|w| *w <= 5000));
        // A fragment submitted while down waits for the next attempt, then fails with it.
        r.submit(9, last + 60_000);
        r.drain();
        let t = r.s.next_timer().unwrap();
        r.at((t - r.t0).as_millis() as u64);
        let Some(Action::Connect(c)) = r.drain().pop() else {
            panic!()
        };
        r.input(Input::ConnectFailed(c, "refused".into()));
        assert_eq!(
            Rig::replies(&r.drain()),
            vec![(9, Err((Reason::Transport, Retry::Retryable)), 0)]
        );
    }

    #[test]
    fn a_missing_answer_resets_the_session_it_blocks() {
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 60_000);
        r.submit(2, 60_000);
        r.up(1, 3);
        r.ev(
            1,
            ServerEvent::Queued {
                fragment_id: "f1".into(),
            },
        );
        r.drain();
        // The server answers nothing: both are blocked behind sequence number 0.
        r.at(8000);
        let out = r.drain();
        assert_eq!(
            Rig::replies(&out),
            vec![(1, Err((Reason::Timeout, Retry::Retryable)), 1)]
        );
        assert!(out.contains(&Action::Disconnect(1)));
        assert!(out.contains(&Action::Connect(2)));
        r.up(2, 3);
        let seqs: Vec<_> = r
            .emits()
            .into_iter()
            .filter(|e| e.1 == "fragment:data")
            .map(|e| e.2)
            .collect();
        assert_eq!(seqs, ["0"]);
        // A late answer of the old session is still acknowledged? It is ignored: the
        // connection is gone.
        r.ev(2, processed(2, 0));
        assert_eq!(Rig::replies(&r.drain()), vec![(2, Ok("f2".into()), 2)]);
    }

    #[test]
    fn a_refused_fragment_fails_with_its_code_and_the_session_restarts() {
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 60_000);
        r.submit(2, 60_000);
        r.up(1, 3);
        r.ev(
            1,
            ServerEvent::Queued {
                fragment_id: "f1".into(),
            },
        );
        r.drain();
        // No fragment_id: the oldest one the server did not queue.
        r.ev(1, error("QUEUE_FULL", None));
        let out = r.drain();
        assert_eq!(
            Rig::replies(&out),
            vec![(2, Err((Reason::StsError, Retry::Retryable)), 1)]
        );
        assert!(out.contains(&Action::Disconnect(1)));
        r.up(2, 3);
        r.drain();
        r.ev(2, error("FRAGMENT_TOO_LARGE", Some(1)));
        let out = r.drain();
        assert_eq!(
            Rig::replies(&out),
            vec![(1, Err((Reason::StsError, Retry::Permanent)), 2)]
        );
        assert!(out.contains(&Action::Refused {
            code: "FRAGMENT_TOO_LARGE".into(),
            message: "boom".into()
        }));
        assert_eq!(r.s.stats().errors, 2);
    }

    #[test]
    fn a_refused_session_is_a_warning_and_is_tried_again_much_later() {
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 60_000);
        r.input(Input::Connected(1));
        r.ev(1, error("INVALID_CONFIG", None));
        let out = r.drain();
        assert_eq!(
            Rig::replies(&out),
            vec![(1, Err((Reason::StsError, Retry::Permanent)), 0)]
        );
        assert!(out.contains(&Action::Refused {
            code: "INVALID_CONFIG".into(),
            message: "boom".into()
        }));
        assert_eq!(r.s.next_timer(), Some(r.t0 + REFUSED_RETRY));
    }

    #[test]
    fn a_late_or_missing_ready_is_bounded() {
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 60_000);
        r.input(Input::Connected(1));
        r.drain();
        // Late but in time: the fragment goes.
        r.at(3000);
        r.ev(
            1,
            ServerEvent::Ready {
                session_id: "x".into(),
                max_inflight: None,
            },
        );
        assert_eq!(r.emits().last().unwrap().1, "fragment:data");
        // Never: the waiting fragments fail at the bound, the session is tried again.
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 60_000);
        r.input(Input::Connected(1));
        r.drain();
        r.at(8000);
        let out = r.drain();
        assert_eq!(
            Rig::replies(&out),
            vec![(1, Err((Reason::Timeout, Retry::Retryable)), 0)]
        );
        assert!(out.contains(&Action::Disconnect(1)));
        r.at(8200);
        assert_eq!(r.drain(), vec![Action::Connect(2)]);
    }

    #[test]
    fn pause_holds_new_fragments_and_they_fall_back_at_their_deadline() {
        let mut r = Rig::new(3);
        r.drain();
        r.submit(0, 100);
        r.up(1, 3);
        r.ev(1, processed(0, 0));
        r.drain();
        r.ev(
            1,
            ServerEvent::Backpressure {
                action: Pressure::Pause,
                delay: Some(Duration::from_secs(2)),
            },
        );
        r.submit(1, 700);
        r.submit(2, 5000);
        assert!(r.emits().iter().all(|e| e.1 != "fragment:data"));
        r.at(700);
        let out = r.drain();
        assert_eq!(
            Rig::replies(&out),
            vec![(1, Err((Reason::Deadline, Retry::Permanent)), 0)]
        );
        // The pause ends by itself after its delay.
        r.at(2000);
        let e = r.emits();
        assert_eq!(e, vec![(1, "fragment:data", "1".into())]);
        // Or when the server says so.
        r.ev(
            1,
            ServerEvent::Backpressure {
                action: Pressure::Pause,
                delay: None,
            },
        );
        r.submit(3, 9000);
        assert!(r.emits().is_empty());
        r.ev(
            1,
            ServerEvent::Backpressure {
                action: Pressure::None,
                delay: None,
            },
        );
        assert_eq!(r.emits(), vec![(1, "fragment:data", "2".into())]);
    }

    #[test]
    fn slow_down_spaces_the_sending() {
        let mut r = Rig::new(5);
        r.drain();
        r.submit(0, 100);
        r.up(1, 5);
        r.ev(1, processed(0, 0));
        r.drain();
        r.ev(
            1,
            ServerEvent::Backpressure {
                action: Pressure::SlowDown,
                delay: Some(Duration::from_millis(300)),
            },
        );
        r.submit(1, 10_000);
        r.submit(2, 10_000);
        assert!(r.emits().is_empty());
        r.at(299);
        assert!(r.emits().is_empty());
        r.at(300);
        assert_eq!(r.emits(), vec![(1, "fragment:data", "1".into())]);
        r.at(301);
        assert_eq!(r.emits(), vec![(1, "fragment:data", "2".into())]);
    }

    #[test]
    fn the_end_waits_for_answers_then_for_complete_within_a_bound() {
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 60_000);
        r.up(1, 3);
        r.drain();
        r.input(Input::End);
        assert!(r.emits().iter().all(|e| e.1 != "stream:end"));
        r.ev(1, processed(1, 0));
        let e = r.emits();
        assert_eq!(e.last().unwrap().1, "stream:end");
        r.ev(1, ServerEvent::Complete);
        let out = r.drain();
        assert!(out.contains(&Action::Disconnect(1)));
        assert!(r.s.is_closed());
        assert_eq!(r.s.next_timer(), None);
        // Without stream:complete: closed after `timeout`.
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 60_000);
        r.up(1, 3);
        r.ev(1, processed(1, 0));
        r.input(Input::End);
        r.drain();
        r.at(7999);
        assert!(!r.s.is_closed());
        r.at(8000);
        assert!(r.drain().contains(&Action::Disconnect(1)));
        assert!(r.s.is_closed());
    }

    #[test]
    fn flush_and_close_end_the_session_cleanly() {
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 60_000);
        r.up(1, 3);
        r.drain();
        r.input(Input::Flush);
        let out = r.drain();
        let Some(Action::Emit {
            event: "stream:end",
            data,
            ..
        }) = out.iter().find(|a| matches!(a, Action::Emit { .. }))
        else {
            panic!("{out:?}")
        };
        assert_eq!(data["reason"], "flushed");
        assert_eq!(
            Rig::replies(&out),
            vec![(1, Err((Reason::Transport, Retry::Permanent)), 1)]
        );
        assert!(out.contains(&Action::Disconnect(1)));
        assert!(out.contains(&Action::Connect(2)));
        r.up(2, 3);
        r.submit(2, 60_000);
        assert_eq!(r.emits().last().unwrap().2, "0");
        r.input(Input::Close);
        let out = r.drain();
        assert!(out.contains(&Action::Disconnect(2)));
        assert_eq!(
            Rig::replies(&out),
            vec![(2, Err((Reason::Transport, Retry::Permanent)), 1)]
        );
        assert!(r.s.is_closed());
        r.submit(3, 60_000);
        assert_eq!(
            Rig::replies(&r.drain()),
            vec![(3, Err((Reason::Transport, Retry::Permanent)), 0)]
        );
    }

    #[test]
    fn a_new_audio_format_is_a_new_session() {
        let mut r = Rig::new(3);
        r.drain();
        r.submit(1, 60_000);
        r.up(1, 3);
        r.ev(1, processed(1, 0));
        r.drain();
        r.submit_rate(2, 60_000, 48000);
        let out = r.drain();
        assert!(out.contains(&Action::Disconnect(1)));
        assert!(out.contains(&Action::Connect(2)));
        r.input(Input::Connected(2));
        let out = r.drain();
        let Action::Emit {
            event: "stream:init",
            data,
            ..
        } = &out[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(data["config"]["sample_rate_hz"], 48000);
    }

    #[test]
    fn events_parse_from_the_servers_json() {
        let p = ServerEvent::parse(
            "fragment:processed",
            json!({"fragment_id": "a", "stream_id": "s", "sequence_number": 3, "status": "failed",
                   "dubbed_audio": null, "processing_time_ms": 5,
                   "error": {"code": "GPU_OOM", "message": "m", "stage": "tts", "retryable": true}}),
        )
        .unwrap()
        .unwrap();
        let ServerEvent::Processed(p) = p else {
            panic!()
        };
        assert_eq!(p.error.unwrap().code, "GPU_OOM");
        assert_eq!(
            ServerEvent::parse(
                "backpressure",
                json!({"action": "slow_down", "recommended_delay_ms": 500})
            )
            .unwrap(),
            Some(ServerEvent::Backpressure {
                action: Pressure::SlowDown,
                delay: Some(Duration::from_millis(500))
            })
        );
        assert_eq!(ServerEvent::parse("other", json!({})).unwrap(), None);
        assert!(ServerEvent::parse("fragment:processed", json!({"x": 1})).is_err());
        assert_eq!(classify("STREAM_PAUSED", Some(false)), Retry::Retryable);
        assert_eq!(classify("AUTH_FAILED", Some(true)), Retry::Permanent);
        assert_eq!(classify("MALFORMED_DATA", Some(false)), Retry::Permanent);
        assert_eq!(classify("NEW_THING", Some(true)), Retry::Retryable);
    }
}
