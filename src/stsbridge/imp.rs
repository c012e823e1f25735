//! # stsbridge
//!
//! Sends each incoming buffer (one fragment, usually from `dubchunker`) to a speech-to-speech
//! translation service (STS) over HTTP/JSON and pushes the dubbed audio downstream with the
//! fragment's own PTS, DURATION and sample count. The live stream never stalls, never goes
//! silent and never loses a sample: a fragment without a usable answer in time goes out as its
//! fallback (the original audio by default).
//!
//! ```text
//! cargo run -p dubbing-sts-server -- --mode tone --port 8000 &
//! gst-launch-1.0 audiotestsrc num-buffers=250 samplesperbuffer=960 \
//!   ! audio/x-raw,format=S16LE,rate=48000,channels=2 \
//!   ! dubchunker ! stsbridge url=http://127.0.0.1:8000/api/v1/sts/process \
//!   ! wavenc ! filesink location=dubbed.wav
//! ```
//!
//! ## Wire contract
//! `POST url` with a JSON body (`fragment_id`, `stream_id`, `sequence_number`, `audio`,
//! `config`, `timeout_ms`), `X-Request-ID` and, with `api-key`, `Authorization: Bearer`. See
//! `docs/sts-api.md`.
//!
//! With `protocol=socketio`, one Socket.IO session per element instance at `url` (the
//! server's base URL), as the seeds' STS services speak it (`docs/sts-asyncapi.yaml`):
//! connected at READY→PAUSED, `stream:init` with the first fragment, `fragment:data` /
//! `fragment:processed` / `fragment:ack`, `stream:end` after EOS, closed on flush and
//! PAUSED→READY. The session's decisions are [`super::session`] (a state machine tested with
//! fake time); the socket glue is [`super::sio`]. Only the transport differs: the queue,
//! deadlines, retries, breaker and rendering below are the same for both.
//!
//! ```text
//! cargo run -p dubbing-sts-server -- --mode echo --port 8000 &
//! gst-launch-1.0 audiotestsrc num-buffers=250 samplesperbuffer=960 \
//!   ! audio/x-raw,format=S16LE,rate=48000,channels=2 \
//!   ! dubchunker ! stsbridge protocol=socketio url=http://127.0.0.1:8000 \
//!   ! wavenc ! filesink location=dubbed.wav
//! ```
//!
//! ## Ordering, pipelining and deadlines
//! Up to `max-in-flight` requests run at once on the plugin's tokio runtime (HTTP keep-alive is
//! reused); a source pad task pushes the fragments strictly in input order, serialized events
//! in between exactly where they arrived. A full window blocks the chain until the oldest
//! pending fragment resolves or reaches its deadline.
//!
//! In a live pipeline a fragment's deadline is its running time + the upstream latency +
//! `latency` (minus a small margin for downstream). Without a good answer by then the fallback
//! goes out on time; an answer that comes later is discarded and counted (`late-responses`,
//! a `stsbridge/late-response` message). The source pad task waits for the earliest pending
//! deadline on the pipeline clock (a single-shot clock id, unscheduled when an answer
//! arrives, on flush and on state changes), so the pipeline's clock decides: a `TestClock`
//! in tests, and no deadline passes while PAUSED. The request tasks keep wall-clock timers
//! (`timeout`, backoff: network time is wall time) and get the deadline mapped to wall time
//! as their budget for retries.
//! In a non-live pipeline (files) the element waits for the answer, retries included, then
//! falls back; its deadline is only a safety net (every attempt's timeout plus backoff), in
//! wall time: a file has no clock running time to wait for.
//! Retries use exponential backoff with jitter, honour `Retry-After` and never start past the
//! deadline.
//!
//! ## Failures
//! Retryable failures (transport errors, timeouts, 5xx, 429, the codes TIMEOUT, MODEL_ERROR,
//! GPU_OOM, QUEUE_FULL, RATE_LIMIT, unusable answers) are retried up to `max-retries` times and
//! counted by a circuit breaker: after `breaker-threshold` in a row it opens and fragments fall
//! back at once without requests; after `breaker-cooldown` (on the pipeline clock) one probe
//! goes out. Non-retryable
//! ones (400, 401, INVALID_* codes) fall back at once and leave the breaker alone. A failure of
//! one fragment is never an element error: it is a fallback, a counter in `stats` and a
//! `stsbridge/fragment` element message.
//!
//! ## What the answers become
//! The dubbed audio may come at any rate from 8 to 192 kHz with 1 to 8 channels: it is
//! converted to the stream's format (`rubato`; a mono mix spread to every channel when the
//! counts differ). `wire-rate` / `wire-channels` send the fragments in another format (16 kHz
//! mono is what speech recognizers take, 6× less traffic than 48 kHz stereo). Bad base64, bad
//! JSON, an unsupported format or a body above `max-response-size` is a fallback (reason
//! `invalid_output`).
//!
//! Translated speech is usually longer than the speech it replaces. With `overflow=compress`
//! (the default) or `shift`, a dub's speech runs on into the following fragments' time, ahead
//! of their own dub, so no sentence loses its end; two dubs never overlap. Past `max-backlog`
//! the queued speech is time-compressed with its pitch kept, up to `max-tempo`, then trimmed
//! with a fade-out (`compress`), or trimmed (`shift`). Speech that runs on into a fragment that
//! falls back plays to its end over the original ducked by `fallback-gain`, then the original
//! comes back. At the end of the stream the queue is compressed into the last fragment.
//! `overflow=trim` cuts every dub at its fragment's end, as earlier versions did. In every mode
//! the output keeps the input's timestamps and sample counts exactly; speech only moves into
//! later fragments that have not gone out yet, so nothing adds latency. With `loudness-match`
//! each dub is brought to the EBU R128 loudness of the original it replaces (smoothed, within
//! `max-gain`, true peak at most −1 dBTP). Seams between dubbed and fallback audio are smoothed
//! over `crossfade`.
//!
//! ## Subtitles
//! `text_src` (`text/x-raw, format=utf8`) carries each dub's translation, timestamped where its
//! speech plays, with GAP events in between for sparse-stream muxers. `text_src` is pushed
//! from its own task through a queue of 64 items, so a subtitle consumer that is slow or never
//! reads never holds up the audio: when that queue is full the oldest text buffer or GAP is
//! dropped and counted (`text-dropped` in `stats`); the stream-start, caps, segment and EOS
//! events always go out. Put a `queue` after each pad before a muxer.
//! `avoffset` has a `text_sink`/`text_src` pair that shifts it with the rest.
//!
//! ## Bus messages
//! * `stsbridge/fragment` per fragment ([`FragmentReport`]): `sequence-number`, `fragment-id`,
//!   `pts`, `duration`, `outcome` (dubbed, fallback, bypass, passthrough, gap), `reason`,
//!   `detail`, `rtt`, `attempts`, `transcript`, `translated-text`, `processing-time`,
//!   `fitted-frames`, `speech-start` / `speech-end` (where its speech plays) and `tempo`.
//! * `stsbridge/breaker` on each breaker transition: `state`, `previous`,
//!   `consecutive-failures`.
//! * `stsbridge/late-response` per answer that came after its fragment went out
//!   ([`LateReport`]): `sequence-number`, `fragment-id`, `outcome` and `reason` it would have
//!   had, `rtt`, `attempts`.
//!
//! The API key is write-only: it never appears in logs, `gst-inspect-1.0`, `gst-launch-1.0 -v`
//! or pipeline dumps.
//!
//! ## Threads, state and locks
//! * The **streaming thread** (sink pad chain, events, queries) owns `sink`: caps, segment,
//!   sequence numbers, the HTTP client, upstream latency.
//! * **Request tasks** (one per fragment sent, on the tokio runtime) touch only `shared`:
//!   they deliver their answer to the queue and update the breaker and the counters (and
//!   read `settings` to post a breaker transition or a late answer). With Socket.IO they hand
//!   their fragment to the session and wait for its reply. A flush or PAUSED→READY aborts
//!   them; `stop` waits (bounded) until each one's end signals `shared.idle`.
//! * The **session task** (Socket.IO only, one per element, on the tokio runtime) owns the
//!   session state machine and the client; it talks to the rest through a channel, and to
//!   the element only through `session_notice` (the queue's window, a warning), taking no
//!   lock of the element but `settings` (a leaf) there. `stop` closes it and waits for its end
//!   (bounded), aborting it when it does not end cleanly in time.
//! * The **source pad task** owns `output` (seams, the speech queue, loudness, the text
//!   position) and pushes what the queue gives it; the text goes into the text queue first
//!   (never waiting), then the audio goes out. It alone waits on the pipeline clock (live
//!   deadlines) and expires those fragments.
//! * The **text pad task** pushes what the text queue ([`TextQueue`]) gives it on `text_src`.
//!
//! The queues ([`FragmentQueue`], [`TextQueue`]) keep their locks and condition variables to
//! themselves. The other
//! locks are `settings`, `sink`, `output`, `shared.breaker` and `shared.stats`.
//!
//! **Lock order: no lock is ever taken while another is held.** Every lock is a leaf, taken
//! for a short copy or update and released before the next one; none is held while posting a
//! bus message, pushing, querying a peer or waiting (the queue's waits, and `stop`'s wait on
//! `shared.idle` under `shared.stats`, release their lock; the clock wait holds none).
//! Settings are copied once per fragment, so a property change applies from the next one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use dubbing_sts_proto::StsConfig;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use parking_lot::Mutex;

use super::breaker::{Admission, Breaker, BreakerState, Transition};
use super::client::{self, Answer, ClientConfig, Job, Observer, Secret, redact_url};
use super::convert::Format;
use super::mix::{Signal, db_to_gain};
use super::output::{Mode, Output, Plan, Rendered, SpeechStats};
use super::overflow::{Placed, Policy};
use super::queue::{
    Cancel, Deadline, Delivery, Fragment, FragmentQueue, Incoming, Item, Next, Skip, State,
};
use super::report::{self, BreakerReport, FragmentReport, LateReport, Outcome, STATS_STRUCTURE};
use super::response::{Dubbed, Reason};
use super::retry::{give_up_after, live_deadline};
use super::sio::{self, ConnectConfig, Notice, SessionHandle, SioJob};
use super::text::{TEXT_QUEUE_CAPACITY, TextQueue};
use super::{Fallback, Overflow, Protocol, WireFormat, session};
use crate::runtime::RUNTIME;
use crate::timeline::ns_to_frames;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "stsbridge",
        gst::DebugColorFlags::empty(),
        Some("Speech-to-speech translation bridge"),
    )
});

const SECOND: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
use super::{
    DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD, DEFAULT_CROSSFADE, DEFAULT_FALLBACK_GAIN,
    DEFAULT_LATENCY, DEFAULT_MAX_BACKLOG, DEFAULT_MAX_GAIN, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_RESPONSE_SIZE, DEFAULT_MAX_RETRIES, DEFAULT_MAX_TEMPO, DEFAULT_ORIGINAL_MIX,
    DEFAULT_TIMEOUT, MAX_LATENCY, MAX_MAX_RETRIES, MAX_ORIGINAL_MIX, MAX_TIMEOUT, MIN_TIMEOUT,
};
/// Kept from `latency` for the elements downstream (at most half of it).
const DEADLINE_MARGIN: u64 = 100 * MS;

#[derive(Debug, Clone)]
struct Settings {
    url: String,
    api_key: Secret,
    api_key_file: String,
    stream_id: String,
    source_language: String,
    target_language: String,
    voice_profile: String,
    timeout: u64,
    max_retries: u32,
    max_in_flight: u32,
    latency: u64,
    fallback: Fallback,
    fallback_gain: f64,
    original_mix: f64,
    crossfade: u64,
    bypass: bool,
    breaker_threshold: u32,
    breaker_cooldown: u64,
    max_response_size: u64,
    post_messages: bool,
    tls_ca_file: String,
    /// Rate the audio is sent at (0: the stream's).
    wire_rate: u32,
    /// Channels the audio is sent with (0: the stream's).
    wire_channels: u32,
    overflow: Overflow,
    max_backlog: u64,
    max_tempo: f64,
    loudness_match: bool,
    max_gain: f64,
    protocol: Protocol,
    wire_format: WireFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: String::new(),
            api_key: Secret::default(),
            api_key_file: String::new(),
            stream_id: String::new(),
            source_language: "en".into(),
            target_language: "es".into(),
            voice_profile: "default".into(),
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            latency: DEFAULT_LATENCY,
            fallback: Fallback::Original,
            fallback_gain: DEFAULT_FALLBACK_GAIN,
            original_mix: DEFAULT_ORIGINAL_MIX,
            crossfade: DEFAULT_CROSSFADE,
            bypass: false,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            max_response_size: DEFAULT_MAX_RESPONSE_SIZE,
            post_messages: true,
            tls_ca_file: String::new(),
            wire_rate: 0,
            wire_channels: 0,
            overflow: Overflow::default(),
            max_backlog: DEFAULT_MAX_BACKLOG,
            max_tempo: DEFAULT_MAX_TEMPO,
            loudness_match: true,
            max_gain: DEFAULT_MAX_GAIN,
            protocol: Protocol::Http,
            wire_format: WireFormat::Wav,
        }
    }
}

impl Settings {
    fn fallback_signal(&self) -> Signal {
        match self.fallback {
            Fallback::Original => Signal::Original { gain: 1.0 },
            Fallback::Silence => Signal::Silence,
            Fallback::Ducked => Signal::Original {
                gain: db_to_gain(self.fallback_gain),
            },
        }
    }

    fn dub_signal(&self) -> Signal {
        let original_gain = if self.original_mix.is_finite() {
            db_to_gain(self.original_mix)
        } else {
            0.0
        };
        Signal::Dub { original_gain }
    }

    /// How a fragment of `payload` is rendered.
    fn plan(&self, payload: &Payload, last: bool) -> Plan {
        let mode = Mode::from(self.overflow);
        let frames = |ns: u64| ns_to_frames(ns, payload.rate) as usize;
        Plan {
            mode,
            policy: Policy {
                max_backlog: frames(self.max_backlog),
                max_tempo: if mode == Mode::Compress {
                    self.max_tempo
                } else {
                    1.0
                },
                fade: frames(self.crossfade),
                window: frames(10 * MS),
            },
            dub: self.dub_signal(),
            fallback: self.fallback_signal(),
            under: match self.fallback {
                Fallback::Silence => 0.0,
                Fallback::Original | Fallback::Ducked => db_to_gain(self.fallback_gain),
            },
            crossfade: frames(self.crossfade),
            discont: payload.buffer.flags().contains(gst::BufferFlags::DISCONT),
            last,
            loudness: self.loudness_match.then_some(self.max_gain),
        }
    }

    /// The format fragments are sent in, for a stream of format `stream`.
    fn wire_format(&self, stream: Format) -> Format {
        let pick = |wire: u32, own: u32| if wire == 0 { own } else { wire };
        Format::new(
            pick(self.wire_rate, stream.rate),
            pick(self.wire_channels, stream.channels),
        )
    }

    /// What every request of the stream shares; `api_key` is the stream's (from `api-key` or
    /// `api-key-file`). With a key, credentials in the URL are not sent: one `Authorization`
    /// header, the bearer.
    fn client_config(&self, api_key: &Secret) -> ClientConfig {
        ClientConfig {
            url: if api_key.is_empty() {
                self.url.clone()
            } else {
                client::without_credentials(&self.url)
            },
            api_key: api_key.clone(),
            timeout: Duration::from_nanos(self.timeout),
            max_retries: self.max_retries,
            max_response_size: self.max_response_size,
        }
    }

    fn sts_config(&self) -> StsConfig {
        StsConfig {
            source_language: self.source_language.clone(),
            target_language: self.target_language.clone(),
            voice_profile: self.voice_profile.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    fragments: u64,
    requests: u64,
    dubbed: u64,
    fallbacks: BTreeMap<Reason, u64>,
    retries: u64,
    in_flight: u64,
    max_in_flight: u64,
    /// Request tasks alive (spawned, not yet dropped): what `stop` waits for. A task stops
    /// counting `in_flight` once it has its answer, before it frees its window slot.
    tasks: u64,
    rtt_last: u64,
    rtt_sum: u64,
    rtt_count: u64,
    rtt_max: u64,
    late_responses: u64,
    bypassed: u64,
    passthrough: u64,
    gaps: u64,
    fitted: u64,
    speech: SpeechStats,
}

impl Stats {
    fn count(&mut self, outcome: Outcome, fitted: bool) {
        self.fragments += 1;
        match outcome {
            Outcome::Dubbed => self.dubbed += 1,
            Outcome::Bypass => self.bypassed += 1,
            Outcome::Passthrough => self.passthrough += 1,
            Outcome::Gap => self.gaps += 1,
            Outcome::Fallback(r) => *self.fallbacks.entry(r).or_default() += 1,
        }
        if fitted {
            self.fitted += 1;
        }
    }

    fn to_structure(&self, breaker: (BreakerState, u32, u64)) -> gst::Structure {
        let (state, failures, opened) = breaker;
        let total_fallbacks: u64 = self.fallbacks.values().sum();
        let mut b = gst::Structure::builder(STATS_STRUCTURE)
            .field("fragments", self.fragments)
            .field("requests", self.requests)
            .field("dubbed", self.dubbed)
            .field("fallbacks", total_fallbacks);
        for r in Reason::ALL {
            b = b.field(
                format!("fallbacks-{}", r.as_str().replace('_', "-")),
                self.fallbacks.get(&r).copied().unwrap_or(0),
            );
        }
        b.field("retries", self.retries)
            .field(report::stats_field::IN_FLIGHT, self.in_flight)
            .field("max-in-flight", self.max_in_flight)
            .field(report::stats_field::BREAKER_STATE, state.as_str())
            .field("breaker-failures", failures)
            .field("breaker-opened", opened)
            .field("rtt-last", self.rtt_last)
            .field(
                "rtt-avg",
                self.rtt_sum.checked_div(self.rtt_count).unwrap_or(0),
            )
            .field("rtt-max", self.rtt_max)
            .field("late-responses", self.late_responses)
            .field("bypassed", self.bypassed)
            .field("passthrough", self.passthrough)
            .field("gaps", self.gaps)
            .field("fitted", self.fitted)
            .field("overflow", self.speech.overflow_ns)
            .field("compressed", self.speech.compressed_ns)
            .field("trimmed", self.speech.trimmed_ns)
            .field("max-backlog", self.speech.max_backlog_ns)
            .field("max-tempo-used", self.speech.max_tempo.max(1.0))
            .field("loudness-gain", self.speech.gain_db)
            .build()
    }
}

/// What the queue keeps of a fragment besides its state.
#[derive(Debug)]
struct Payload {
    id: String,
    buffer: gst::Buffer,
    rate: u32,
    channels: usize,
}

type Queue = FragmentQueue<Payload, Answer, gst::Event>;

/// State shared with the request tasks.
#[derive(Debug, Default)]
struct Shared {
    queue: Queue,
    breaker: Mutex<Option<Breaker>>,
    stats: Mutex<Stats>,
    /// Signalled (with `stats`) when the last request task ends.
    idle: parking_lot::Condvar,
}

/// Counts a request task as in flight from its spawning until it has its answer
/// ([`InFlight::answered`], before it frees its window slot, so that the next fragment's task
/// never counts beside it), and as alive until its future is dropped (it ended, or an abort
/// dropped it).
struct InFlight {
    shared: Arc<Shared>,
    answered: bool,
}

impl InFlight {
    fn new(shared: Arc<Shared>) -> Self {
        {
            let mut s = shared.stats.lock();
            s.tasks += 1;
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        }
        InFlight {
            shared,
            answered: false,
        }
    }

    fn answered(&mut self) {
        if !std::mem::replace(&mut self.answered, true) {
            self.shared.stats.lock().in_flight -= 1;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.shared.stats.lock();
        if !self.answered {
            s.in_flight -= 1;
        }
        s.tasks -= 1;
        if s.tasks == 0 {
            self.shared.idle.notify_all();
        }
    }
}

/// Bound on waiting for aborted requests to end at PAUSED→READY (an abort takes effect at the
/// task's next poll; a runtime worker busy elsewhere may delay it).
const STOP_JOIN: Duration = Duration::from_millis(200);

/// The time the breaker's cooldown is measured in: `element`'s clock (the pipeline clock), else
/// the system clock (monotonic, the pipeline's default clock) before it has one.
fn breaker_clock_time(element: Option<&super::StsBridge>) -> Duration {
    let clock = element
        .and_then(|e| e.clock())
        .unwrap_or_else(gst::SystemClock::obtain);
    Duration::from_nanos(clock.time().nseconds())
}

/// The request task's view of the element: breaker, counters, bus.
struct Obs {
    shared: Arc<Shared>,
    element: glib::WeakRef<super::StsBridge>,
}

impl Obs {
    fn with_breaker<R>(
        &self,
        f: impl FnOnce(&mut Breaker, Duration) -> (R, Option<Transition>),
    ) -> R {
        let element = self.element.upgrade();
        let now = breaker_clock_time(element.as_ref());
        let (r, t) = {
            let mut b = self.shared.breaker.lock();
            match b.as_mut() {
                Some(b) => f(b, now),
                None => f(&mut Breaker::new(0, Duration::ZERO), now),
            }
        };
        if let (Some(t), Some(el)) = (t, element) {
            el.imp().breaker_transition(t);
        }
        r
    }
}

impl Observer for Obs {
    fn attempt_started(&self) {
        self.shared.stats.lock().requests += 1;
    }

    fn attempt_finished(&self, rtt: Duration) {
        let ns = rtt.as_nanos() as u64;
        let mut s = self.shared.stats.lock();
        s.rtt_last = ns;
        s.rtt_sum += ns;
        s.rtt_count += 1;
        s.rtt_max = s.rtt_max.max(ns);
    }

    fn succeeded(&self, probe: bool) {
        self.with_breaker(|b, _| ((), b.on_success(probe)))
    }

    fn failed_retryable(&self, probe: bool) -> bool {
        self.with_breaker(|b, now| {
            let t = b.on_failure(now, probe);
            (b.allows_retry(probe), t)
        })
    }

    fn failed_permanent(&self, probe: bool) {
        self.with_breaker(|b, _| {
            b.release_probe(probe);
            ((), None)
        })
    }

    fn retrying(&self, _delay: Duration) {
        self.shared.stats.lock().retries += 1;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct LatencyInfo {
    /// Whether upstream answered a latency query yet.
    known: bool,
    live: bool,
    upstream_min: gst::ClockTime,
}

/// Streaming-thread state (sink side).
#[derive(Debug)]
struct SinkState {
    info: Option<gst_audio::AudioInfo>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    next_seq: u64,
    stream_id: String,
    client: Option<reqwest::Client>,
    /// The Socket.IO session (`protocol=socketio`).
    session: Option<Arc<SessionHandle>>,
    /// The key of this stream (`api-key`, or read from `api-key-file` at start).
    api_key: Secret,
    latency: LatencyInfo,
}

impl Default for SinkState {
    fn default() -> Self {
        SinkState {
            info: None,
            segment: gst::FormattedSegment::new(),
            next_seq: 0,
            stream_id: String::new(),
            client: None,
            session: None,
            api_key: Secret::default(),
            latency: LatencyInfo::default(),
        }
    }
}

/// Source-pad-task state.
#[derive(Debug, Default)]
struct OutputState {
    output: Output,
    /// End of what went out on the text pad (ns), once anything did.
    text_position: Option<u64>,
    /// A refused certificate was reported on the bus (once per stream).
    cert_warned: bool,
}

/// A fragment the chain function accepted, before it is queued.
struct Accepted {
    seq: u64,
    rate: u32,
    channels: u32,
    frames: usize,
    skip: Option<Skip>,
    /// When the fragment stops waiting for its answer (the queue's decision).
    deadline: Deadline,
    /// The same deadline in wall time, the request task's budget for retries (network
    /// timeouts are wall time).
    request_deadline: Instant,
    client: Option<reqwest::Client>,
    session: Option<Arc<SessionHandle>>,
    stream_id: String,
    api_key: Secret,
}

/// How a resolved fragment goes out.
struct Resolution<'a> {
    outcome: Outcome,
    detail: String,
    dub: Option<&'a Dubbed>,
    attempts: u32,
    rtt: u64,
}

impl<'a> Resolution<'a> {
    fn of(state: &'a State<Answer>, bypass: bool) -> Self {
        let plain = |outcome| Resolution {
            outcome,
            detail: String::new(),
            dub: None,
            attempts: 0,
            rtt: 0,
        };
        if bypass {
            // The operator's switch wins over whatever came back.
            return plain(Outcome::Bypass);
        }
        match state {
            State::Skipped(Skip::Gap) => plain(Outcome::Gap),
            State::Skipped(Skip::Bypass) => plain(Outcome::Bypass),
            State::Skipped(Skip::Passthrough) => plain(Outcome::Passthrough),
            State::Skipped(Skip::BreakerOpen) => plain(Outcome::Fallback(Reason::BreakerOpen)),
            State::Answered(a) => {
                let (outcome, detail, dub) = match &a.result {
                    Ok(d) => (Outcome::Dubbed, String::new(), Some(d)),
                    Err(e) => (Outcome::Fallback(e.reason), e.detail.clone(), None),
                };
                Resolution {
                    outcome,
                    detail,
                    dub,
                    attempts: a.attempts,
                    rtt: a.rtt.map_or(0, |r| r.as_nanos() as u64),
                }
            }
            State::Pending | State::Expired => Resolution {
                detail: "no usable answer before the deadline".into(),
                ..plain(Outcome::Fallback(Reason::Deadline))
            },
        }
    }
}

/// What the text pad's task pushes.
enum TextOut {
    Event(gst::Event),
    Buffer(gst::Buffer),
}

pub struct StsBridge {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    textpad: gst::Pad,
    /// Between the source pad task and the text pad's own task.
    text: TextQueue<TextOut>,
    settings: Mutex<Settings>,
    sink: Mutex<SinkState>,
    output: Mutex<OutputState>,
    shared: Arc<Shared>,
    /// PLAYING: the pipeline clock runs for us (live deadlines wait on it).
    playing: AtomicBool,
}

impl StsBridge {
    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.shared.queue.check()?;
        let settings = self.settings.lock().clone();
        let latency = self.latency_info();
        let accepted = self.accept(&buffer, &settings, latency)?;

        let generation = self.shared.queue.wait_for_room(Incoming {
            sending: accepted.skip.is_none(),
            live: latency.live,
        })?;
        let mut skip = accepted.skip;
        let mut probe = false;
        if skip.is_none() {
            match self.admit() {
                Admission::Reject => skip = Some(Skip::BreakerOpen),
                Admission::Probe => probe = true,
                Admission::Allow => {}
            }
        }
        let client = match (skip, &accepted.client) {
            (None, None) => return Err(gst::FlowError::Flushing),
            (None, Some(c)) => Some(c.clone()),
            (Some(_), _) => None,
        };

        let id = uuid::Uuid::new_v4().to_string();
        self.shared.queue.push_fragment(
            generation,
            Fragment {
                seq: accepted.seq,
                deadline: accepted.deadline,
                state: skip.map_or(State::Pending, State::Skipped),
                payload: Payload {
                    id: id.clone(),
                    buffer: buffer.clone(),
                    rate: accepted.rate,
                    channels: accepted.channels as usize,
                },
            },
        )?;
        if let Some(client) = client {
            // Queued first, so that even an instant answer finds its fragment.
            self.send(client, &settings, &accepted, id, probe, generation, buffer);
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Checks a buffer against the caps and decides whether it is sent.
    fn accept(
        &self,
        buffer: &gst::Buffer,
        settings: &Settings,
        latency: LatencyInfo,
    ) -> Result<Accepted, gst::FlowError> {
        let mut sink = self.sink.lock();
        let Some(info) = sink.info.clone() else {
            drop(sink);
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ("stsbridge received audio before its caps")
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let bpf = info.bpf() as usize;
        if !buffer.size().is_multiple_of(bpf) {
            drop(sink);
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                (
                    "buffer of {} bytes is not a whole number of {}-byte audio frames",
                    buffer.size(),
                    bpf
                )
            );
            return Err(gst::FlowError::Error);
        }
        let frames = buffer.size() / bpf;
        let seq = sink.next_seq;
        sink.next_seq += 1;
        let skip = if frames == 0 || buffer.flags().contains(gst::BufferFlags::GAP) {
            Some(Skip::Gap)
        } else if settings.bypass {
            Some(Skip::Bypass)
        } else if settings.url.is_empty() {
            Some(Skip::Passthrough)
        } else {
            None
        };
        let running_time = buffer.pts().and_then(|p| sink.segment.to_running_time(p));
        let accepted = Accepted {
            seq,
            rate: info.rate(),
            channels: info.channels(),
            frames,
            skip,
            deadline: Deadline::Instant(Instant::now()),
            request_deadline: Instant::now(),
            client: sink.client.clone(),
            session: sink.session.clone(),
            stream_id: sink.stream_id.clone(),
            api_key: sink.api_key.clone(),
        };
        drop(sink);
        let (deadline, request_deadline) = if latency.live {
            self.live_deadline_of(running_time, latency, settings.latency)
        } else {
            // Files: no clock running time to wait for (the pipeline runs as fast as the
            // service answers); a wall-time safety net against a request that never ends.
            let at = Instant::now()
                + give_up_after(Duration::from_nanos(settings.timeout), settings.max_retries);
            (Deadline::Instant(at), at)
        };
        Ok(Accepted {
            deadline,
            request_deadline,
            ..accepted
        })
    }

    /// Asks the breaker whether a request may go out (the transition, if any, is posted with
    /// no lock held).
    fn admit(&self) -> Admission {
        let now = breaker_clock_time(Some(&self.obj()));
        let (admission, transition) = match self.shared.breaker.lock().as_mut() {
            Some(b) => b.admit(now),
            None => (Admission::Allow, None),
        };
        if let Some(t) = transition {
            self.breaker_transition(t);
        }
        admission
    }

    /// Starts the request task of a queued fragment.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        client: reqwest::Client,
        settings: &Settings,
        accepted: &Accepted,
        id: String,
        probe: bool,
        generation: u64,
        buffer: gst::Buffer,
    ) {
        let stream = Format::new(accepted.rate, accepted.channels);
        let job = Job {
            sequence_number: accepted.seq,
            fragment_id: id,
            stream,
            frames: accepted.frames,
            wire: settings.wire_format(stream),
            deadline: Some(accepted.request_deadline),
            probe,
        };
        let cfg = settings.client_config(&accepted.api_key);
        let sts = settings.sts_config();
        let stream_id = accepted.stream_id.clone();
        let session = accepted.session.clone();
        let sio_job = SioJob {
            wire_format: settings.wire_format.into(),
            chunk_duration_ms: buffer.duration().map_or(0, |d| d.mseconds()),
            pts_ns: buffer.pts().map(|p| p.nseconds()),
        };
        let shared = self.shared.clone();
        let obs = Obs {
            shared: shared.clone(),
            element: self.obj().downgrade(),
        };
        gst::trace!(
            CAT,
            imp = self,
            "sending fragment {} ({}), {} frames",
            job.sequence_number,
            job.fragment_id,
            job.frames
        );
        // Counted from now until the task's future is dropped, so that `stop` sees it even
        // before its first poll.
        let in_flight = InFlight::new(shared.clone());
        let handle = RUNTIME.spawn(async move {
            let mut in_flight = in_flight;
            let answer = {
                let Ok(map) = buffer.map_readable() else {
                    return;
                };
                let Ok(samples) = bytemuck::try_cast_slice::<u8, i16>(&map) else {
                    return;
                };
                if let Some(session) = session {
                    // Socket.IO: the session sends it (the transports differ, nothing else).
                    let audio = sio::prepare(&job, &sio_job, samples);
                    drop(map);
                    match audio {
                        Ok(audio) => {
                            sio::process(&session, &cfg, &job, &sio_job, audio, &obs).await
                        }
                        Err(failure) => Answer {
                            result: Err(failure),
                            attempts: 0,
                            rtt: None,
                        },
                    }
                } else {
                    let body =
                        client::encode_fragment(&stream_id, &sts, cfg.timeout, &job, samples);
                    drop(map);
                    match body {
                        Ok(body) => client::process(&client, &cfg, &job, body, &obs).await,
                        Err(failure) => Answer {
                            result: Err(failure),
                            attempts: 0,
                            rtt: None,
                        },
                    }
                }
            };
            in_flight.answered();
            let late = LateReport {
                sequence_number: job.sequence_number,
                fragment_id: String::new(),
                outcome: match &answer.result {
                    Ok(_) => Outcome::Dubbed,
                    Err(f) => Outcome::Fallback(f.reason),
                },
                rtt: answer.rtt.map_or(0, |r| r.as_nanos() as u64),
                attempts: answer.attempts,
            };
            if shared
                .queue
                .deliver(generation, job.sequence_number, answer)
                == Delivery::Late
            {
                shared.stats.lock().late_responses += 1;
                if let Some(el) = obs.element.upgrade() {
                    el.imp().late_response(LateReport {
                        fragment_id: job.fragment_id.clone(),
                        ..late
                    });
                }
            }
        });
        self.shared.queue.add_task(handle.abort_handle());
    }

    /// Upstream liveness and latency. The sink asks only once its first buffer arrived, so
    /// before that we ask upstream ourselves: the first fragments need a deadline too.
    fn latency_info(&self) -> LatencyInfo {
        let info = self.sink.lock().latency;
        if info.known {
            return info;
        }
        let mut q = gst::query::Latency::new();
        if !self.sinkpad.peer_query(&mut q) {
            return info;
        }
        let (live, min, _) = q.result();
        let info = LatencyInfo {
            known: true,
            live,
            upstream_min: min,
        };
        gst::debug!(CAT, imp = self, "upstream latency live {live} min {min}");
        self.sink.lock().latency = info;
        info
    }

    /// When a live fragment's audio must leave: its running time + upstream latency + our
    /// latency (minus a margin), a running time on the pipeline clock that the source pad task
    /// waits for; and the same moment in wall time for the request task's retries. Without a
    /// clock or a timestamp, `latency` from now in wall time.
    fn live_deadline_of(
        &self,
        running_time: Option<gst::ClockTime>,
        latency: LatencyInfo,
        own: u64,
    ) -> (Deadline, Instant) {
        let now = Instant::now();
        let obj = self.obj();
        let (Some(clock), Some(base), Some(rt)) = (obj.clock(), obj.base_time(), running_time)
        else {
            let at = now + Duration::from_nanos(own);
            return (Deadline::Instant(at), at);
        };
        let deadline_rt = live_deadline(
            rt.nseconds(),
            latency.upstream_min.nseconds(),
            own,
            DEADLINE_MARGIN,
        );
        let deadline_clock = base.nseconds().saturating_add(deadline_rt);
        let clock_now = clock.time().nseconds();
        (
            Deadline::RunningTime(deadline_rt),
            now + Duration::from_nanos(deadline_clock.saturating_sub(clock_now)),
        )
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "event {:?}", event.type_());
        match event.view() {
            EventView::FlushStart(_) => {
                self.shared.queue.set_flushing();
                drop(self.text.set_flushing());
                if let Some(session) = &self.sink.lock().session {
                    session.flush();
                }
                self.textpad.push_event(event.clone());
                let _ = self.textpad.pause_task();
                let ret = self.srcpad.push_event(event);
                let _ = self.srcpad.pause_task();
                ret
            }
            EventView::FlushStop(_) => {
                self.shared.queue.start();
                {
                    let mut o = self.output.lock();
                    o.output.reset();
                    o.text_position = None;
                }
                self.textpad.push_event(event.clone());
                self.text.start();
                self.start_text_task();
                let ret = self.srcpad.push_event(event);
                self.start_task();
                ret
            }
            EventView::Caps(c) => {
                let Ok(info) = gst_audio::AudioInfo::from_caps(c.caps()) else {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ("invalid audio caps {}", c.caps())
                    );
                    return false;
                };
                self.sink.lock().info = Some(info);
                self.shared.queue.push_event(event)
            }
            EventView::Segment(s) => {
                let Some(seg) = s.segment().downcast_ref::<gst::ClockTime>() else {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        (
                            "stsbridge needs a TIME segment, got {:?}",
                            s.segment().format()
                        )
                    );
                    return false;
                };
                self.sink.lock().segment = seg.clone();
                self.shared.queue.push_event(event)
            }
            _ if event.is_serialized() => self.shared.queue.push_event(event),
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if query.is_serialized()
            && !matches!(query.view(), gst::QueryView::Allocation(_))
            // Drain and friends must not overtake the fragments still held.
            && !self.shared.queue.wait_drained()
        {
            return false;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let mut peer = gst::query::Latency::new();
            if !self.sinkpad.peer_query(&mut peer) {
                return false;
            }
            let (live, min, max) = peer.result();
            let own = gst::ClockTime::from_nseconds(self.settings.lock().latency);
            self.sink.lock().latency = LatencyInfo {
                known: true,
                live,
                upstream_min: min,
            };
            gst::debug!(
                CAT,
                imp = self,
                "upstream latency live {live} min {min} max {max:?}, adding {own}"
            );
            q.set(live, min + own, max.map(|m| m + own));
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    /// Audio caps, allocation and queries go between `sink` and `src` only: `text_src` carries
    /// another format.
    fn internal_links(&self, pad: &gst::Pad) -> gst::Iterator<gst::Pad> {
        if pad == &self.sinkpad {
            gst::Iterator::from_vec(vec![self.srcpad.clone()])
        } else if pad == &self.srcpad {
            gst::Iterator::from_vec(vec![self.sinkpad.clone()])
        } else {
            gst::Iterator::from_vec(vec![])
        }
    }

    /// The text pad answers latency like the audio (its buffers go out with the audio's).
    fn text_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        match query.view_mut() {
            gst::QueryViewMut::Latency(_) => self.src_query(&self.srcpad, query),
            gst::QueryViewMut::Caps(q) => {
                let caps = match q.filter() {
                    Some(f) => f.intersect(&text_caps()),
                    None => text_caps(),
                };
                q.set_result(&caps);
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }

    fn start_task(&self) {
        let this = self.obj().clone();
        if let Err(e) = self.srcpad.start_task(move || this.imp().src_loop()) {
            gst::error!(CAT, imp = self, "cannot start the source pad task: {e}");
        }
    }

    fn start_text_task(&self) {
        let this = self.obj().clone();
        if let Err(e) = self.textpad.start_task(move || this.imp().text_loop()) {
            gst::error!(CAT, imp = self, "cannot start the text pad task: {e}");
        }
    }

    /// The text pad's task: pushes what the text queue gives it, one item per call. Its
    /// consumer may block it for as long as it likes: nothing else waits for it.
    fn text_loop(&self) {
        match self.text.pop() {
            None => {
                let _ = self.textpad.pause_task();
            }
            Some(TextOut::Event(e)) => {
                self.textpad.push_event(e);
            }
            Some(TextOut::Buffer(b)) => {
                if let Err(e) = self.textpad.push(b)
                    && e != gst::FlowError::NotLinked
                    && e != gst::FlowError::Flushing
                {
                    gst::debug!(CAT, imp = self, "text pad: {e:?}");
                }
            }
        }
    }

    /// Waits on the pipeline clock until running time `until` (the earliest pending live
    /// deadline): a single-shot clock id, unscheduled by the queue when an answer arrives, on
    /// flush and on state changes (then the task decides again).
    fn wait_clock(&self, seen: u64, until: u64) {
        let obj = self.obj();
        let (Some(clock), Some(base)) = (obj.clock(), obj.base_time()) else {
            return;
        };
        let id = clock.new_single_shot_id(base + gst::ClockTime::from_nseconds(until));
        let cancel = id.clone();
        if !self
            .shared
            .queue
            .arm(seen, Cancel::new(move || cancel.unschedule()))
        {
            return;
        }
        let (res, _) = id.wait();
        gst::trace!(CAT, imp = self, "clock wait until {until}: {res:?}");
        self.shared.queue.disarm();
    }

    /// The pipeline clock's running time while PLAYING (`None` otherwise: live deadlines do
    /// not pass while the clock does not run for us).
    fn clock_running_time(&self) -> Option<u64> {
        if !self.playing.load(Ordering::SeqCst) {
            return None;
        }
        let obj = self.obj();
        let (clock, base) = (obj.clock()?, obj.base_time()?);
        Some(clock.time().nseconds().saturating_sub(base.nseconds()))
    }

    /// Hands an item to the text pad's task; never waits.
    fn queue_text(&self, item: TextOut) {
        let droppable = match &item {
            TextOut::Buffer(_) => true,
            TextOut::Event(e) => e.type_() == gst::EventType::Gap,
        };
        if let Some(dropped) = self.text.push(item, droppable)
            && droppable
        {
            gst::debug!(
                CAT,
                imp = self,
                "text queue full: dropped the oldest text or gap"
            );
            drop(dropped);
        }
    }

    fn text_activate_mode(
        &self,
        _pad: &gst::Pad,
        mode: gst::PadMode,
        active: bool,
    ) -> Result<(), gst::LoggableError> {
        if mode != gst::PadMode::Push {
            return Err(gst::loggable_error!(CAT, "only push mode is supported"));
        }
        if active {
            self.text.start();
            self.start_text_task();
        } else {
            drop(self.text.set_flushing());
            self.textpad
                .stop_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot stop the text task: {e}"))?;
        }
        Ok(())
    }

    /// The source pad task: pushes the queue's items strictly in order, one per call; waits
    /// for live deadlines on the pipeline clock.
    fn src_loop(&self) {
        let item = loop {
            // The version before the clock: a change in between is seen by `next`.
            let seen = self.shared.queue.version();
            let now_rt = self.clock_running_time();
            match self.shared.queue.next(now_rt, seen) {
                Err(_) => {
                    let _ = self.srcpad.pause_task();
                    return;
                }
                Ok(Next::Item(item)) => break item,
                Ok(Next::Again) => {}
                Ok(Next::WaitClock(until)) => self.wait_clock(seen, until),
            }
        };
        let flow = match item {
            Item::Event(e) => self.push_event(e),
            Item::Fragment(f) => self.push_fragment(f),
        };
        if let Err(e) = flow {
            self.shared.queue.set_flow_error(e);
            if e != gst::FlowError::Flushing {
                gst::debug!(CAT, imp = self, "pausing on {e:?}");
            }
            if !matches!(e, gst::FlowError::Eos | gst::FlowError::Flushing) {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("internal data flow error"),
                    ["streaming stopped, reason {e:?}"]
                );
            }
            let _ = self.srcpad.pause_task();
        }
    }

    fn push_event(&self, event: gst::Event) -> Result<gst::FlowSuccess, gst::FlowError> {
        // The text pad follows the audio's stream, segment and end.
        match event.view() {
            gst::EventView::StreamStart(s) => {
                let text_start =
                    gst::event::StreamStart::builder(&format!("{}/text", s.stream_id()))
                        .group_id(s.group_id().unwrap_or_else(gst::GroupId::next))
                        .flags(gst::StreamFlags::SPARSE)
                        .build();
                self.queue_text(TextOut::Event(text_start));
                self.queue_text(TextOut::Event(gst::event::Caps::new(&text_caps())));
            }
            gst::EventView::Caps(_) => self.output.lock().output.reset(),
            gst::EventView::Segment(_) => {
                self.queue_text(TextOut::Event(event.clone()));
            }
            gst::EventView::Eos(_) => {
                // Every fragment before it is resolved: the session may end (stream:end, a
                // bounded wait for stream:complete).
                if let Some(session) = &self.sink.lock().session {
                    session.end();
                }
                self.queue_text(TextOut::Event(event.clone()));
            }
            _ => {}
        }
        let is_eos = event.type_() == gst::EventType::Eos;
        if self.srcpad.push_event(event) || !is_eos {
            Ok(gst::FlowSuccess::Ok)
        } else {
            Err(gst::FlowError::Eos)
        }
    }

    /// Builds a resolved fragment's output, accounts for it, reports it and pushes it.
    fn push_fragment(
        &self,
        f: Fragment<Payload, Answer>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = self.settings.lock().clone();
        let res = Resolution::of(&f.state, settings.bypass);
        let last = self
            .shared
            .queue
            .next_event_is(|e| e.type_() == gst::EventType::Eos);
        let plan = settings.plan(&f.payload, last);
        let (out, frames, rendered, speech_stats) = self.render(&f.payload, &res, &plan)?;
        let fitted_frames = rendered.fitted_frames;
        let pts = f.payload.buffer.pts().map(|p| p.nseconds());
        let at = |frames: usize| {
            pts.map_or(u64::MAX, |p| {
                p + (frames as u128 * 1_000_000_000 / u128::from(f.payload.rate)) as u64
            })
        };
        let speech = rendered
            .placed
            .map(|p: Placed| (at(p.start), at(p.start + p.frames)));

        {
            let mut stats = self.shared.stats.lock();
            stats.count(res.outcome, fitted_frames != 0);
            stats.speech = speech_stats;
        }
        self.log_outcome(f.seq, &f.payload, &res);
        if settings.post_messages {
            let report = FragmentReport {
                sequence_number: f.seq,
                fragment_id: f.payload.id.clone(),
                pts: f.payload.buffer.pts().map_or(u64::MAX, |p| p.nseconds()),
                duration: f
                    .payload
                    .buffer
                    .duration()
                    .map_or(u64::MAX, |p| p.nseconds()),
                frames: frames as u64,
                outcome: res.outcome,
                detail: res.detail.clone(),
                rtt: res.rtt,
                attempts: res.attempts,
                transcript: res
                    .dub
                    .and_then(|d| d.transcript.clone())
                    .unwrap_or_default(),
                translated_text: res
                    .dub
                    .and_then(|d| d.translated_text.clone())
                    .unwrap_or_default(),
                processing_time: res
                    .dub
                    .and_then(|d| d.processing_time_ms)
                    .map_or(0, |ms| (ms.max(0.0) * 1e6) as u64),
                fitted_frames,
                speech_start: speech.map_or(u64::MAX, |s| s.0),
                speech_end: speech.map_or(u64::MAX, |s| s.1),
                tempo: rendered.placed.map_or(1.0, |p| p.tempo),
            };
            let obj = self.obj();
            let _ = obj.post_message(
                gst::message::Element::builder(report.to_structure())
                    .src(&*obj)
                    .build(),
            );
        }
        // Text first: like a demuxer's, the two pads need queues before a muxer.
        let text = res.dub.and_then(|d| d.translated_text.as_deref());
        self.push_text(
            &f.payload,
            speech.filter(|_| text.is_some_and(|t| !t.trim().is_empty())),
            text,
        );
        self.srcpad.push(out)
    }

    /// The text pad's share of a fragment: the translation where its speech plays, and a GAP
    /// up to the fragment's end, so that sparse-stream muxers never wait for text.
    fn push_text(&self, payload: &Payload, speech: Option<(u64, u64)>, text: Option<&str>) {
        let (Some(pts), Some(duration)) = (payload.buffer.pts(), payload.buffer.duration()) else {
            return;
        };
        let end = (pts + duration).nseconds();
        let position = {
            let mut o = self.output.lock();
            let position = *o.text_position.get_or_insert(pts.nseconds());
            o.text_position = Some(position.max(end).max(speech.map_or(0, |s| s.1)));
            position
        };
        let mut position = position;
        if let (Some((start, stop)), Some(text)) = (speech, text) {
            let start = start.max(position);
            if start > position {
                self.push_text_gap(position, start);
            }
            let mut buf = gst::Buffer::from_mut_slice(text.trim().as_bytes().to_vec());
            {
                let b = buf.get_mut().expect("new buffer");
                b.set_pts(gst::ClockTime::from_nseconds(start));
                b.set_duration(gst::ClockTime::from_nseconds(stop.saturating_sub(start)));
            }
            self.queue_text(TextOut::Buffer(buf));
            position = stop.max(start);
        }
        if end > position {
            self.push_text_gap(position, end);
        }
    }

    fn push_text_gap(&self, from: u64, to: u64) {
        let gap = gst::event::Gap::builder(gst::ClockTime::from_nseconds(from))
            .duration(gst::ClockTime::from_nseconds(to - from))
            .build();
        self.queue_text(TextOut::Event(gap));
    }

    /// The output buffer of a fragment: the input's timestamps, flags and metadata, the
    /// samples of its resolution. Returns it with its frame count, what the rendering did and
    /// the speech queue's counters.
    fn render(
        &self,
        payload: &Payload,
        res: &Resolution<'_>,
        plan: &Plan,
    ) -> Result<(gst::Buffer, usize, Rendered, SpeechStats), gst::FlowError> {
        let in_map = payload.buffer.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::ResourceError::Read, ("cannot map input buffer"));
            gst::FlowError::Error
        })?;
        let Ok(input) = bytemuck::try_cast_slice::<u8, i16>(&in_map) else {
            gst::element_imp_error!(self, gst::StreamError::Format, ("misaligned audio buffer"));
            return Err(gst::FlowError::Error);
        };
        let frames = input.len() / payload.channels.max(1);
        let format = Format::new(payload.rate, payload.channels as u32);

        let mut out =
            gst::Buffer::with_size(payload.buffer.size()).map_err(|_| gst::FlowError::Error)?;
        let (rendered, stats) = {
            let out_ref = out.get_mut().expect("new buffer is writable");
            let _ = payload.buffer.copy_into(
                out_ref,
                gst::BufferCopyFlags::FLAGS
                    | gst::BufferCopyFlags::TIMESTAMPS
                    | gst::BufferCopyFlags::META,
                ..,
            );
            let mut out_map = out_ref.map_writable().map_err(|_| gst::FlowError::Error)?;
            let Ok(out_samples) = bytemuck::try_cast_slice_mut::<u8, i16>(&mut out_map) else {
                drop(out_map);
                gst::element_imp_error!(self, gst::ResourceError::Write, ("misaligned buffer"));
                return Err(gst::FlowError::Error);
            };
            let mut o = self.output.lock();
            let rendered = o.output.render(
                input,
                format,
                res.outcome,
                res.dub.map(|d| d.samples.as_slice()),
                plan,
                out_samples,
            );
            let stats = o.output.stats();
            drop(o);
            drop(out_map);
            if res.outcome != Outcome::Gap || rendered.speech {
                out_ref.unset_flags(gst::BufferFlags::GAP);
            }
            (rendered, stats)
        };
        Ok((out, frames, rendered, stats))
    }

    /// Logs a fragment's outcome; a refused certificate is a configuration problem, not a
    /// hiccup: it is also said on the bus, once per stream.
    fn log_outcome(&self, seq: u64, payload: &Payload, res: &Resolution<'_>) {
        let Some(reason) = res.outcome.reason() else {
            gst::trace!(CAT, imp = self, "fragment {seq}: {}", res.outcome.as_str());
            return;
        };
        gst::debug!(
            CAT,
            imp = self,
            "fragment {seq} at {:?}: fallback ({}) {}",
            payload.buffer.pts(),
            reason.as_str(),
            res.detail
        );
        if res.detail.contains("certificate") {
            let first = !std::mem::replace(&mut self.output.lock().cert_warned, true);
            if first {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::OpenRead,
                    ("the STS server's certificate was refused: set tls-ca-file if it uses a private CA"),
                    ["fragment {seq}: {}", res.detail]
                );
            }
        }
    }

    /// An answer came after its fragment went out (from its request task).
    fn late_response(&self, r: LateReport) {
        gst::debug!(
            CAT,
            imp = self,
            "late answer for fragment {} ({}): rtt {} ms, discarded",
            r.sequence_number,
            r.fragment_id,
            r.rtt / MS
        );
        if self.settings.lock().post_messages {
            let s = r.to_structure();
            let _ = self
                .obj()
                .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
        }
    }

    fn breaker_transition(&self, t: Transition) {
        if t.to == BreakerState::Open {
            gst::warning!(
                CAT,
                imp = self,
                "circuit breaker {} -> open after {} consecutive failures: falling back without requests",
                t.from.as_str(),
                t.failures
            );
        } else {
            gst::info!(
                CAT,
                imp = self,
                "circuit breaker {} -> {}",
                t.from.as_str(),
                t.to.as_str()
            );
        }
        let s = BreakerReport {
            state: t.to,
            previous: t.from,
            consecutive_failures: t.failures,
        }
        .to_structure();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    fn stats(&self) -> gst::Structure {
        let breaker = match self.shared.breaker.lock().as_ref() {
            Some(b) => (b.state(), b.consecutive_failures(), b.opened_count()),
            None => (BreakerState::Closed, 0, 0),
        };
        let mut s = self.shared.stats.lock().to_structure(breaker);
        s.set("text-dropped", self.text.dropped());
        let protocol = self.settings.lock().protocol;
        let status = self.sink.lock().session.as_ref().map(|h| h.status.clone());
        sio::stats_fields(&mut s, protocol == Protocol::SocketIo, status.as_deref());
        s
    }

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().clone();
        let client = http_client(&settings)?;
        if !settings.url.is_empty() {
            match reqwest::Url::parse(&settings.url) {
                Ok(u)
                    if settings.protocol == Protocol::SocketIo
                        && !matches!(u.scheme(), "http" | "https") =>
                {
                    return Err(gst::error_msg!(
                        gst::ResourceError::Settings,
                        [
                            "url {:?} is not the http:// or https:// base URL of a Socket.IO STS server",
                            redact_url(&settings.url)
                        ]
                    ));
                }
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return Err(gst::error_msg!(
                        gst::ResourceError::Settings,
                        [
                            "url {:?} is not an http:// or https:// URL",
                            redact_url(&settings.url)
                        ]
                    ));
                }
            }
        }
        let api_key = stream_api_key(&settings)?;
        let stream_id = if settings.stream_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            settings.stream_id.clone()
        };
        gst::info!(
            CAT,
            imp = self,
            "stream {stream_id} to {} (api key {})",
            if settings.url.is_empty() {
                "nowhere: passthrough".to_owned()
            } else {
                redact_url(&settings.url)
            },
            if api_key.is_empty() {
                "unset"
            } else if settings.api_key_file.is_empty() {
                "set"
            } else {
                "read from api-key-file"
            }
        );
        let session = (settings.protocol == Protocol::SocketIo && !settings.url.is_empty())
            .then(|| self.open_session(&settings, &stream_id, &api_key))
            .transpose()?;
        *self.sink.lock() = SinkState {
            stream_id,
            client: Some(client),
            session,
            api_key,
            ..Default::default()
        };
        *self.shared.breaker.lock() = Some(Breaker::new(
            settings.breaker_threshold,
            Duration::from_nanos(settings.breaker_cooldown),
        ));
        {
            // A request from before (aborted, not yet dropped) still counts until it is.
            let mut s = self.shared.stats.lock();
            *s = Stats {
                in_flight: s.in_flight,
                tasks: s.tasks,
                ..Stats::default()
            };
        }
        self.shared
            .queue
            .set_max_in_flight(settings.max_in_flight as usize);
        *self.output.lock() = OutputState::default();
        Ok(())
    }

    /// Opens the stream's Socket.IO session (it connects at once; `stream:init` goes out with
    /// the first fragment, which tells the audio format).
    fn open_session(
        &self,
        settings: &Settings,
        stream_id: &str,
        api_key: &Secret,
    ) -> Result<Arc<SessionHandle>, gst::ErrorMessage> {
        let ca_pem = if settings.tls_ca_file.is_empty() {
            None
        } else {
            Some(std::fs::read(&settings.tls_ca_file).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::Settings,
                    ["cannot read tls-ca-file {:?}: {e}", settings.tls_ca_file]
                )
            })?)
        };
        let timeout = Duration::from_nanos(settings.timeout);
        let cfg = session::Config {
            stream_id: stream_id.to_owned(),
            worker_id: format!("gst-dubbing-{}", std::process::id()),
            source_language: settings.source_language.clone(),
            target_language: settings.target_language.clone(),
            voice_profile: settings.voice_profile.clone(),
            max_inflight: settings.max_in_flight,
            timeout,
        };
        let connect = ConnectConfig {
            url: settings.url.clone(),
            api_key: api_key.clone(),
            ca_pem,
            connect_timeout: timeout.min(Duration::from_secs(5)),
        };
        let element = self.obj().downgrade();
        let notify = Arc::new(move |n: Notice| {
            let Some(el) = element.upgrade() else { return };
            el.imp().session_notice(n);
        });
        Ok(Arc::new(SessionHandle::start(
            &RUNTIME, cfg, connect, notify,
        )))
    }

    /// What the Socket.IO session tells the element (from the session's task).
    fn session_notice(&self, n: Notice) {
        match n {
            Notice::Granted(granted) => {
                let asked = self.settings.lock().max_in_flight;
                if granted < asked {
                    gst::info!(
                        CAT,
                        imp = self,
                        "the STS granted {granted} fragments in flight of the {asked} asked"
                    );
                }
                self.shared
                    .queue
                    .set_max_in_flight(granted.min(asked) as usize);
            }
            Notice::Refused { code, message } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Settings,
                    ("the STS refused the stream: {code}: {message}"),
                    ["error code {code} is not retryable: its fragments fall back"]
                );
            }
            Notice::Up(up) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "Socket.IO session {}",
                    if up { "up" } else { "down" }
                );
            }
        }
    }

    fn stop(&self) {
        // Aborts every request task.
        self.shared.queue.set_flushing();
        self.shared.queue.clear();
        self.sink.lock().client = None;
        let session = self.sink.lock().session.take();
        if let Some(session) = session
            && !session.close_and_join()
        {
            gst::warning!(CAT, imp = self, "the Socket.IO session did not end in time");
        }
        // READY means no request left: the aborted tasks end at their next poll (each one's
        // end signals `idle`). Bounded: never hold up a state change.
        let until = Instant::now() + STOP_JOIN;
        let mut s = self.shared.stats.lock();
        while s.tasks > 0 {
            if self.shared.idle.wait_until(&mut s, until).timed_out() {
                gst::warning!(
                    CAT,
                    imp = self,
                    "{} aborted requests still running",
                    s.tasks
                );
                break;
            }
        }
    }

    fn src_activate_mode(
        &self,
        _pad: &gst::Pad,
        mode: gst::PadMode,
        active: bool,
    ) -> Result<(), gst::LoggableError> {
        if mode != gst::PadMode::Push {
            return Err(gst::loggable_error!(CAT, "only push mode is supported"));
        }
        if active {
            self.shared.queue.start();
            self.start_task();
        } else {
            self.shared.queue.set_flushing();
            self.srcpad
                .stop_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot stop the task: {e}"))?;
        }
        Ok(())
    }
}

/// The stream's API key: `api-key`, or the first line of `api-key-file` (a mounted secret).
fn stream_api_key(settings: &Settings) -> Result<Secret, gst::ErrorMessage> {
    if settings.api_key_file.is_empty() {
        return Ok(settings.api_key.clone());
    }
    if !settings.api_key.is_empty() {
        return Err(gst::error_msg!(
            gst::ResourceError::Settings,
            ["set api-key or api-key-file, not both"]
        ));
    }
    let text = std::fs::read_to_string(&settings.api_key_file).map_err(|e| {
        gst::error_msg!(
            gst::ResourceError::Settings,
            ["cannot read api-key-file {:?}: {e}", settings.api_key_file]
        )
    })?;
    let key = text.lines().next().unwrap_or("").trim();
    if key.is_empty() {
        return Err(gst::error_msg!(
            gst::ResourceError::Settings,
            ["api-key-file {:?} is empty", settings.api_key_file]
        ));
    }
    Ok(Secret::new(key))
}

/// Caps of the text pad: the translation of each dubbed fragment, UTF-8.
fn text_caps() -> gst::Caps {
    gst::Caps::builder("text/x-raw")
        .field("format", "utf8")
        .build()
}

/// The HTTP client of a stream: rustls with the system's roots plus `tls-ca-file`, keep-alive.
fn http_client(settings: &Settings) -> Result<reqwest::Client, gst::ErrorMessage> {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if !settings.tls_ca_file.is_empty() {
        let pem = std::fs::read(&settings.tls_ca_file).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ["cannot read tls-ca-file {:?}: {e}", settings.tls_ca_file]
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                [
                    "tls-ca-file {:?} holds no usable PEM certificate: {e}",
                    settings.tls_ca_file
                ]
            )
        })?;
        if certs.is_empty() {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                [
                    "tls-ca-file {:?} holds no PEM certificate",
                    settings.tls_ca_file
                ]
            ));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    builder
        .tcp_nodelay(true)
        .pool_max_idle_per_host(settings.max_in_flight as usize * 2)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_nanos(settings.timeout).min(Duration::from_secs(5)))
        .user_agent(concat!("gst-dubbing/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ["cannot create the HTTP client: {e}"]
            )
        })
}

#[glib::object_subclass]
impl ObjectSubclass for StsBridge {
    const NAME: &'static str = "GstStsBridge";
    type Type = super::StsBridge;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let templ = klass.pad_template("sink").expect("sink template");
        let sinkpad = gst::Pad::builder_from_template(&templ)
            .chain_function(|pad, parent, buffer| {
                StsBridge::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                StsBridge::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                StsBridge::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_query(pad, query),
                )
            })
            .iterate_internal_links_function(|pad, parent| {
                StsBridge::catch_panic_pad_function(
                    parent,
                    || gst::Iterator::from_vec(vec![]),
                    |imp| imp.internal_links(pad),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        let templ = klass.pad_template("src").expect("src template");
        let srcpad = gst::Pad::builder_from_template(&templ)
            .query_function(|pad, parent, query| {
                StsBridge::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .activatemode_function(|pad, parent, mode, active| {
                StsBridge::catch_panic_pad_function(
                    parent,
                    || Err(gst::loggable_error!(CAT, "panic in activatemode")),
                    |imp| imp.src_activate_mode(pad, mode, active),
                )
            })
            .iterate_internal_links_function(|pad, parent| {
                StsBridge::catch_panic_pad_function(
                    parent,
                    || gst::Iterator::from_vec(vec![]),
                    |imp| imp.internal_links(pad),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        let templ = klass.pad_template("text_src").expect("text_src template");
        let textpad = gst::Pad::builder_from_template(&templ)
            .query_function(|pad, parent, query| {
                StsBridge::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.text_query(pad, query),
                )
            })
            .activatemode_function(|pad, parent, mode, active| {
                StsBridge::catch_panic_pad_function(
                    parent,
                    || Err(gst::loggable_error!(CAT, "panic in activatemode")),
                    |imp| imp.text_activate_mode(pad, mode, active),
                )
            })
            .build();
        StsBridge {
            sinkpad,
            srcpad,
            textpad,
            text: TextQueue::new(TEXT_QUEUE_CAPACITY),
            settings: Mutex::new(Settings::default()),
            sink: Mutex::new(SinkState::default()),
            output: Mutex::new(OutputState::default()),
            shared: Arc::new(Shared::default()),
            playing: AtomicBool::new(false),
        }
    }
}

impl ObjectImpl for StsBridge {
    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).expect("add sink pad");
        obj.add_pad(&self.srcpad).expect("add src pad");
        obj.add_pad(&self.textpad).expect("add text pad");
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("url")
                    .nick("URL")
                    .blurb("STS endpoint, e.g. http://sts:8000/api/v1/sts/process (empty: passthrough, no requests); user:password@ in it is sent as Basic auth unless api-key is set, and never read back")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("api-key")
                    .nick("API key")
                    .blurb("Sent as Authorization: Bearer <key> (write-only: never logged or shown)")
                    .write_only()
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("api-key-file")
                    .nick("API key file")
                    .blurb("File whose first line is the API key, read when the element starts (a Docker/Kubernetes secret): keeps the key off command lines and out of GStreamer's own logs of launch lines")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stream-id")
                    .nick("Stream ID")
                    .blurb("stream_id sent with every fragment (empty: a random UUID per stream)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("source-language")
                    .nick("Source language")
                    .blurb("Language spoken in the input (config.source_language)")
                    .default_value(Some("en"))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("target-language")
                    .nick("Target language")
                    .blurb("Language of the dub (config.target_language)")
                    .default_value(Some("es"))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("voice-profile")
                    .nick("Voice profile")
                    .blurb("TTS voice (config.voice_profile)")
                    .default_value(Some("default"))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("timeout")
                    .nick("Timeout")
                    .blurb("Time limit of one request attempt, in nanoseconds")
                    .minimum(MIN_TIMEOUT)
                    .maximum(MAX_TIMEOUT)
                    .default_value(DEFAULT_TIMEOUT)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-retries")
                    .nick("Maximum retries")
                    .blurb("Retries of a fragment after a retryable failure (backoff with jitter, Retry-After honoured, never past the live deadline)")
                    .maximum(MAX_MAX_RETRIES)
                    .default_value(DEFAULT_MAX_RETRIES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("protocol", Protocol::default())
                    .nick("Protocol")
                    .blurb("How fragments travel: http (one POST per fragment to url) or socketio (one Socket.IO session per stream at url, the server's base URL, as the seeds' STS services speak it)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("wire-format", WireFormat::default())
                    .nick("Wire format")
                    .blurb("Audio format of the fragments sent over Socket.IO: pcm_s16le, pcm_f32le or wav (the one the seeds' full service reads at any rate; it takes pcm_f32le only as 16 kHz mono). HTTP always sends pcm_s16le. Answers may be any of these, m4a or ADTS AAC")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-in-flight")
                    .nick("Maximum in flight")
                    .blurb("Fragments waiting for an answer at once (output stays in order)")
                    .minimum(1)
                    .maximum(64)
                    .default_value(DEFAULT_MAX_IN_FLIGHT)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("latency")
                    .nick("Latency")
                    .blurb("Processing budget added to the pipeline latency, in nanoseconds: the live deadline of each fragment (1 s fragments + 5 s = a 6 s A/V offset)")
                    .maximum(MAX_LATENCY)
                    .default_value(DEFAULT_LATENCY)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("fallback", Fallback::Original)
                    .nick("Fallback")
                    .blurb("What goes out for a fragment without a usable answer")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("fallback-gain")
                    .nick("Fallback gain")
                    .blurb("Gain of the original audio in ducked fallback, in dB")
                    .minimum(-96.0)
                    .maximum(0.0)
                    .default_value(DEFAULT_FALLBACK_GAIN)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("original-mix")
                    .nick("Original mix")
                    .blurb("Level of the original audio mixed under the dub, in dB (-inf: off), so crowd and ambience stay as in broadcast voice-over")
                    .minimum(f64::NEG_INFINITY)
                    .maximum(MAX_ORIGINAL_MIX)
                    .default_value(DEFAULT_ORIGINAL_MIX)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("crossfade")
                    .nick("Crossfade")
                    .blurb("Smoothing of the seams between dubbed and fallback audio, in nanoseconds")
                    .maximum(SECOND)
                    .default_value(DEFAULT_CROSSFADE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("bypass")
                    .nick("Bypass")
                    .blurb("Send nothing and output the original audio at once (an operator's switch; changeable while playing)")
                    .default_value(false)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("breaker-threshold")
                    .nick("Breaker threshold")
                    .blurb("Consecutive retryable failures that open the circuit breaker (0: never open)")
                    .maximum(10_000)
                    .default_value(DEFAULT_BREAKER_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("breaker-cooldown")
                    .nick("Breaker cooldown")
                    .blurb("Time the open breaker waits before one probe request, in nanoseconds")
                    .minimum(10 * MS)
                    .maximum(3600 * SECOND)
                    .default_value(DEFAULT_BREAKER_COOLDOWN)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("max-response-size")
                    .nick("Maximum response size")
                    .blurb("Largest answer body read, in bytes (larger: fallback invalid_output)")
                    .minimum(1024)
                    .maximum(1 << 30)
                    .default_value(DEFAULT_MAX_RESPONSE_SIZE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("tls-ca-file")
                    .nick("TLS CA file")
                    .blurb("PEM file of extra CA certificates trusted for an https:// url, besides the system's (certificates are always verified)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("wire-rate")
                    .nick("Wire rate")
                    .blurb("Sample rate the fragments are sent at, in Hz: 0 (the stream's own) or 8000-192000; 16000 is what speech recognizers take. Answers at any rate are converted back")
                    .maximum(192_000)
                    .default_value(0)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("wire-channels")
                    .nick("Wire channels")
                    .blurb("Channels the fragments are sent with: 0 (the stream's own) or 1-8 (1: a mono mix). Answers with any channel count are converted back")
                    .maximum(8)
                    .default_value(0)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("overflow", Overflow::default())
                    .nick("Overflow")
                    .blurb("What a dub longer than its fragment does: trim (cut at the fragment's end), shift (run on into the next fragments' time), compress (shift, and past max-backlog time-compress with pitch kept up to max-tempo)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("max-backlog")
                    .nick("Maximum backlog")
                    .blurb("How far speech may run past its own fragment before it is compressed (compress) or trimmed (shift), in nanoseconds; keep it below the latency left downstream")
                    .maximum(60 * SECOND)
                    .default_value(DEFAULT_MAX_BACKLOG)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("max-tempo")
                    .nick("Maximum tempo")
                    .blurb("Fastest speed compressed speech plays at (1.25: 25 % faster), pitch kept; beyond it speech is trimmed with a fade-out")
                    .minimum(1.0)
                    .maximum(2.0)
                    .default_value(DEFAULT_MAX_TEMPO)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("loudness-match")
                    .nick("Loudness match")
                    .blurb("Bring each dub to the loudness of the speech it replaces (EBU R128 gated loudness, smoothed across fragments, within max-gain, true peak at most -1 dBTP)")
                    .default_value(true)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("max-gain")
                    .nick("Maximum gain")
                    .blurb("Largest gain loudness-match gives a dub, up or down, in dB")
                    .minimum(0.0)
                    .maximum(40.0)
                    .default_value(DEFAULT_MAX_GAIN)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("post-messages")
                    .nick("Post messages")
                    .blurb("Post a stsbridge/fragment element message per fragment")
                    .default_value(true)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("fragments, requests, dubbed, fallbacks (total and fallbacks-<reason>), retries, in-flight, max-in-flight, breaker-state, breaker-failures, breaker-opened, rtt-last/avg/max (ns), late-responses, bypassed, passthrough, gaps, fitted; overflow, compressed, trimmed, max-backlog (ns of speech run on past its fragment, time-compressed, cut), max-tempo-used, loudness-gain (dB, the last gain loudness-match applied), text-dropped (subtitle buffers and gaps dropped because text_src's consumer did not keep up); protocol (http, socketio), and with socketio session-up, sessions (stream:ready received), reconnects, resent, granted-in-flight, backpressure-events, error-events")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock();
        let string = |v: &glib::Value| {
            v.get::<Option<String>>()
                .expect("type checked")
                .unwrap_or_default()
        };
        match pspec.name() {
            "url" => s.url = string(value),
            "api-key" => s.api_key = Secret::new(string(value)),
            "api-key-file" => s.api_key_file = string(value),
            "stream-id" => s.stream_id = string(value),
            "source-language" => s.source_language = string(value),
            "target-language" => s.target_language = string(value),
            "voice-profile" => s.voice_profile = string(value),
            "timeout" => s.timeout = value.get().expect("type checked"),
            "max-retries" => s.max_retries = value.get().expect("type checked"),
            "max-in-flight" => {
                s.max_in_flight = value.get().expect("type checked");
                let n = s.max_in_flight as usize;
                drop(s);
                self.shared.queue.set_max_in_flight(n);
            }
            "latency" => {
                let new: u64 = value.get().expect("type checked");
                let changed = new != s.latency;
                s.latency = new;
                drop(s);
                if changed {
                    let _ = self
                        .obj()
                        .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
                }
            }
            "fallback" => s.fallback = value.get().expect("type checked"),
            "fallback-gain" => s.fallback_gain = value.get().expect("type checked"),
            "original-mix" => s.original_mix = value.get().expect("type checked"),
            "crossfade" => s.crossfade = value.get().expect("type checked"),
            "bypass" => {
                let on: bool = value.get().expect("type checked");
                let was = std::mem::replace(&mut s.bypass, on);
                drop(s);
                if was != on {
                    gst::info!(CAT, imp = self, "bypass {}", if on { "on" } else { "off" });
                }
            }
            "breaker-threshold" | "breaker-cooldown" => {
                if pspec.name() == "breaker-threshold" {
                    s.breaker_threshold = value.get().expect("type checked");
                } else {
                    s.breaker_cooldown = value.get().expect("type checked");
                }
                let (t, c) = (s.breaker_threshold, s.breaker_cooldown);
                drop(s);
                if let Some(b) = self.shared.breaker.lock().as_mut() {
                    b.configure(t, Duration::from_nanos(c));
                }
            }
            "max-response-size" => s.max_response_size = value.get().expect("type checked"),
            "post-messages" => s.post_messages = value.get().expect("type checked"),
            "tls-ca-file" => s.tls_ca_file = string(value),
            "wire-rate" => {
                let rate: u32 = value.get().expect("type checked");
                if rate != 0 && rate < 8000 {
                    drop(s);
                    gst::warning!(
                        CAT,
                        imp = self,
                        "wire-rate {rate} refused: 0 (the stream's rate) or 8000-192000 Hz"
                    );
                    return;
                }
                s.wire_rate = rate;
            }
            "wire-channels" => s.wire_channels = value.get().expect("type checked"),
            "overflow" => s.overflow = value.get().expect("type checked"),
            "max-backlog" => s.max_backlog = value.get().expect("type checked"),
            "max-tempo" => s.max_tempo = value.get().expect("type checked"),
            "loudness-match" => s.loudness_match = value.get().expect("type checked"),
            "max-gain" => s.max_gain = value.get().expect("type checked"),
            "protocol" => s.protocol = value.get().expect("type checked"),
            "wire-format" => s.wire_format = value.get().expect("type checked"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock();
        match pspec.name() {
            // Credentials in the URL are write-only like the key: pipeline dumps and
            // gst-inspect read properties.
            // Pipeline dumps and gst-inspect read every property: no credentials, no query
            // values (a key in `?api_key=`).
            "url" => if s.url.is_empty() {
                String::new()
            } else {
                redact_url(&s.url)
            }
            .to_value(),
            // Write-only; GObject never asks, but never answer with the key.
            "api-key" => None::<String>.to_value(),
            "api-key-file" => s.api_key_file.to_value(),
            "stream-id" => s.stream_id.to_value(),
            "source-language" => s.source_language.to_value(),
            "target-language" => s.target_language.to_value(),
            "voice-profile" => s.voice_profile.to_value(),
            "timeout" => s.timeout.to_value(),
            "max-retries" => s.max_retries.to_value(),
            "max-in-flight" => s.max_in_flight.to_value(),
            "latency" => s.latency.to_value(),
            "fallback" => s.fallback.to_value(),
            "fallback-gain" => s.fallback_gain.to_value(),
            "original-mix" => s.original_mix.to_value(),
            "crossfade" => s.crossfade.to_value(),
            "bypass" => s.bypass.to_value(),
            "breaker-threshold" => s.breaker_threshold.to_value(),
            "breaker-cooldown" => s.breaker_cooldown.to_value(),
            "max-response-size" => s.max_response_size.to_value(),
            "post-messages" => s.post_messages.to_value(),
            "tls-ca-file" => s.tls_ca_file.to_value(),
            "wire-rate" => s.wire_rate.to_value(),
            "wire-channels" => s.wire_channels.to_value(),
            "overflow" => s.overflow.to_value(),
            "max-backlog" => s.max_backlog.to_value(),
            "max-tempo" => s.max_tempo.to_value(),
            "loudness-match" => s.loudness_match.to_value(),
            "max-gain" => s.max_gain.to_value(),
            "protocol" => s.protocol.to_value(),
            "wire-format" => s.wire_format.to_value(),
            "stats" => {
                drop(s);
                self.stats().to_value()
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for StsBridge {}

impl ElementImpl for StsBridge {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "STS bridge",
                "Filter/Effect/Audio/Network",
                "Dubs audio fragments through a remote speech-to-speech translation service, \
                 in order, sample-exact, with fallback so a live stream never stalls",
                "gst-dubbing developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let mut t = crate::s16le_pad_templates();
            t.push(
                gst::PadTemplate::new(
                    "text_src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &text_caps(),
                )
                .expect("text_src"),
            );
            t
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::ReadyToPaused
            && let Err(e) = self.start()
        {
            self.post_error_message(e);
            return Err(gst::StateChangeError);
        }
        if transition == gst::StateChange::PausedToReady {
            // Abort every request before the pads deactivate: READY at once, even with a
            // hung server.
            self.shared.queue.set_flushing();
        }
        if transition == gst::StateChange::PlayingToPaused {
            // The clock stops running for us: the source pad task's clock wait ends, and live
            // deadlines wait for PLAYING again (the running time resumes where it stopped).
            self.playing.store(false, Ordering::SeqCst);
            self.shared.queue.wake();
        }
        let ret = self.parent_change_state(transition)?;
        match transition {
            gst::StateChange::PausedToPlaying => {
                // The base time is set: live deadlines wait on the clock.
                self.playing.store(true, Ordering::SeqCst);
                self.shared.queue.wake();
            }
            gst::StateChange::PausedToReady => self.stop(),
            _ => {}
        }
        Ok(ret)
    }
}
