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
//! ## Ordering, pipelining and deadlines
//! Up to `max-in-flight` requests run at once on the plugin's tokio runtime (HTTP keep-alive is
//! reused); a source pad task pushes the fragments strictly in input order, serialized events
//! in between exactly where they arrived. A full window blocks the chain until the oldest
//! pending fragment resolves or reaches its deadline.
//!
//! In a live pipeline a fragment's deadline is its running time + the upstream latency +
//! `latency` (minus a small margin for downstream). Without a good answer by then the fallback
//! goes out on time; an answer that comes later is discarded and counted (`late-responses`).
//! In a non-live pipeline (files) the element waits for the answer, retries included, then
//! falls back. Retries use exponential backoff with jitter, honour `Retry-After` and never
//! start past the deadline.
//!
//! ## Failures
//! Retryable failures (transport errors, timeouts, 5xx, 429, the codes TIMEOUT, MODEL_ERROR,
//! GPU_OOM, QUEUE_FULL, RATE_LIMIT, unusable answers) are retried up to `max-retries` times and
//! counted by a circuit breaker: after `breaker-threshold` in a row it opens and fragments fall
//! back at once without requests; after `breaker-cooldown` one probe goes out. Non-retryable
//! ones (400, 401, INVALID_* codes) fall back at once and leave the breaker alone. A failure of
//! one fragment is never an element error: it is a fallback, a counter in `stats` and a
//! `stsbridge/fragment` element message.
//!
//! Dubbed audio is trimmed or zero-padded to the fragment's sample count; audio at another rate
//! or channel count, bad base64, bad JSON or a body above `max-response-size` is a fallback
//! (reason `invalid_output`). Seams between dubbed and fallback audio are smoothed over
//! `crossfade`.
//!
//! ## Bus messages
//! * `stsbridge/fragment` per fragment: `sequence-number`, `fragment-id`, `pts`, `duration`,
//!   `outcome` (dubbed, fallback, bypass, passthrough, gap), `reason`, `detail`, `rtt`,
//!   `attempts`, `transcript`, `translated-text`, `processing-time`, `fitted-frames`.
//! * `stsbridge/breaker` on each breaker transition: `state`, `previous`,
//!   `consecutive-failures`.
//!
//! The API key is write-only: it never appears in logs, `gst-inspect-1.0`, `gst-launch-1.0 -v`
//! or pipeline dumps.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use dubbing_sts_proto::StsConfig;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use parking_lot::{Condvar, Mutex};

use super::Fallback;
use super::breaker::{Admission, Breaker, BreakerState, Transition};
use super::client::{self, Answer, ClientConfig, Job, Observer, Secret, redact_url};
use super::mix::{self, Seam, Signal, db_to_gain};
use super::response::Reason;
use super::retry::live_deadline;
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
const DEFAULT_TIMEOUT: u64 = 8 * SECOND;
const DEFAULT_MAX_RETRIES: u32 = 2;
const DEFAULT_MAX_IN_FLIGHT: u32 = 3;
const DEFAULT_LATENCY: u64 = 5 * SECOND;
const DEFAULT_FALLBACK_GAIN: f64 = -12.0;
const DEFAULT_ORIGINAL_MIX: f64 = f64::NEG_INFINITY;
const DEFAULT_CROSSFADE: u64 = 10 * MS;
const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
const DEFAULT_BREAKER_COOLDOWN: u64 = 30 * SECOND;
const DEFAULT_MAX_RESPONSE_SIZE: u64 = 16 * 1024 * 1024;
/// Kept from `latency` for the elements downstream (at most half of it).
const DEADLINE_MARGIN: u64 = 100 * MS;
/// Hard cap on fragments held (resolved ones waiting for downstream included).
const MAX_QUEUED: usize = 256;

#[derive(Debug, Clone)]
struct Settings {
    url: String,
    api_key: Secret,
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
    breaker_threshold: u32,
    breaker_cooldown: u64,
    max_response_size: u64,
    post_messages: bool,
    tls_ca_file: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: String::new(),
            api_key: Secret::default(),
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
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            max_response_size: DEFAULT_MAX_RESPONSE_SIZE,
            post_messages: true,
            tls_ca_file: String::new(),
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
}

#[derive(Debug, Default)]
struct Stats {
    fragments: u64,
    requests: u64,
    dubbed: u64,
    fallbacks: BTreeMap<Reason, u64>,
    retries: u64,
    max_in_flight: u64,
    rtt_last: u64,
    rtt_sum: u64,
    rtt_count: u64,
    rtt_max: u64,
    late_responses: u64,
    bypassed: u64,
    passthrough: u64,
    gaps: u64,
    fitted: u64,
}

/// Why a fragment was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// GAP buffer (silence filled in by dubchunker): nothing to translate.
    Gap,
    /// `bypass` was on.
    Bypass,
    /// No `url`: passthrough.
    Passthrough,
    /// The breaker was open.
    BreakerOpen,
}

#[derive(Debug)]
struct Fragment {
    seq: u64,
    id: String,
    buffer: gst::Buffer,
    rate: u32,
    channels: usize,
    deadline: Option<Instant>,
    skip: Option<Skip>,
    answer: Option<Answer>,
    expired: bool,
}

impl Fragment {
    fn resolved(&self) -> bool {
        self.skip.is_some() || self.answer.is_some() || self.expired
    }
}

#[derive(Debug)]
enum Item {
    Fragment(Box<Fragment>),
    Event(gst::Event),
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Item>,
    flushing: bool,
    flow: Result<gst::FlowSuccess, gst::FlowError>,
    /// Bumped by every flush: answers of an older generation are dropped.
    generation: u64,
    /// Every request task still running, to abort them on flush and shutdown.
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            items: VecDeque::new(),
            flushing: true,
            flow: Ok(gst::FlowSuccess::Ok),
            generation: 0,
            tasks: Vec::new(),
        }
    }
}

impl Queue {
    fn fragments(&self) -> impl Iterator<Item = &Fragment> {
        self.items.iter().filter_map(|i| match i {
            Item::Fragment(f) => Some(&**f),
            Item::Event(_) => None,
        })
    }

    fn unresolved(&self) -> usize {
        self.fragments().filter(|f| !f.resolved()).count()
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.fragments()
            .filter(|f| !f.resolved())
            .filter_map(|f| f.deadline)
            .min()
    }

    /// Marks pending fragments whose deadline has passed as resolved (they go out as fallback).
    fn expire(&mut self, now: Instant) {
        for item in self.items.iter_mut() {
            if let Item::Fragment(f) = item
                && !f.resolved()
                && f.deadline.is_some_and(|d| d <= now)
            {
                f.expired = true;
            }
        }
    }

    fn abort_all(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// State shared with the request tasks.
#[derive(Debug, Default)]
struct Inner {
    queue: Mutex<Queue>,
    cond: Condvar,
    breaker: Mutex<Option<Breaker>>,
    stats: Mutex<Stats>,
    in_flight: AtomicUsize,
}

impl Inner {
    fn deliver(&self, generation: u64, seq: u64, answer: Answer) {
        let mut q = self.queue.lock();
        if q.generation != generation {
            return;
        }
        let slot = q.items.iter_mut().find_map(|i| match i {
            Item::Fragment(f) if f.seq == seq && !f.expired => Some(f),
            _ => None,
        });
        match slot {
            Some(f) => {
                f.answer = Some(answer);
                self.cond.notify_all();
            }
            None => {
                drop(q);
                self.stats.lock().late_responses += 1;
            }
        }
    }
}

/// Counts a request task as in flight for as long as it lives (aborts included).
struct InFlight(Arc<Inner>);

impl InFlight {
    fn new(inner: Arc<Inner>) -> Self {
        let n = inner.in_flight.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        let mut stats = inner.stats.lock();
        stats.max_in_flight = stats.max_in_flight.max(n);
        drop(stats);
        InFlight(inner)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The request task's view of the element: breaker, counters, bus.
struct Obs {
    inner: Arc<Inner>,
    element: glib::WeakRef<super::StsBridge>,
}

impl Obs {
    fn with_breaker<R>(&self, f: impl FnOnce(&mut Breaker) -> (R, Option<Transition>)) -> R {
        let (r, t) = {
            let mut b = self.inner.breaker.lock();
            match b.as_mut() {
                Some(b) => f(b),
                None => f(&mut Breaker::new(0, Duration::ZERO)),
            }
        };
        if let (Some(t), Some(el)) = (t, self.element.upgrade()) {
            el.imp().breaker_transition(t);
        }
        r
    }
}

impl Observer for Obs {
    fn attempt_started(&self) {
        self.inner.stats.lock().requests += 1;
    }

    fn attempt_finished(&self, rtt: Duration) {
        let ns = rtt.as_nanos() as u64;
        let mut s = self.inner.stats.lock();
        s.rtt_last = ns;
        s.rtt_sum += ns;
        s.rtt_count += 1;
        s.rtt_max = s.rtt_max.max(ns);
    }

    fn succeeded(&self, probe: bool) {
        self.with_breaker(|b| ((), b.on_success(probe)))
    }

    fn failed_retryable(&self, probe: bool) -> bool {
        self.with_breaker(|b| {
            let t = b.on_failure(Instant::now(), probe);
            (b.allows_retry(probe), t)
        })
    }

    fn failed_permanent(&self, probe: bool) {
        self.with_breaker(|b| {
            b.release_probe(probe);
            ((), None)
        })
    }

    fn retrying(&self, _delay: Duration) {
        self.inner.stats.lock().retries += 1;
    }
}

/// Streaming-thread state (sink side).
#[derive(Debug)]
struct StreamState {
    info: Option<gst_audio::AudioInfo>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    next_seq: u64,
    stream_id: String,
    client: Option<reqwest::Client>,
}

impl Default for StreamState {
    fn default() -> Self {
        StreamState {
            info: None,
            segment: gst::FormattedSegment::new(),
            next_seq: 0,
            stream_id: String::new(),
            client: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct LatencyInfo {
    /// Whether upstream answered a latency query yet.
    known: bool,
    live: bool,
    upstream_min: gst::ClockTime,
}

pub struct StsBridge {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    bypass: AtomicBool,
    cert_warned: AtomicBool,
    inner: Arc<Inner>,
    state: Mutex<StreamState>,
    seam: Mutex<Seam>,
    latency: Mutex<LatencyInfo>,
}

impl StsBridge {
    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        {
            let q = self.inner.queue.lock();
            if q.flushing {
                return Err(gst::FlowError::Flushing);
            }
            q.flow?;
        }

        let settings = self.settings.lock().clone();
        let mut state = self.state.lock();
        let Some(info) = state.info.clone() else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ("stsbridge received audio before its caps")
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let bpf = info.bpf() as usize;
        if !buffer.size().is_multiple_of(bpf) {
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
        let seq = state.next_seq;
        state.next_seq += 1;

        let mut skip = if frames == 0 || buffer.flags().contains(gst::BufferFlags::GAP) {
            Some(Skip::Gap)
        } else if self.bypass.load(Ordering::SeqCst) {
            Some(Skip::Bypass)
        } else if settings.url.is_empty() {
            Some(Skip::Passthrough)
        } else {
            None
        };

        let latency = self.latency_info();
        let deadline = if latency.live {
            Some(self.deadline_of(&buffer, &state.segment, latency, settings.latency))
        } else {
            None
        };
        let client = state.client.clone();
        let stream_id = state.stream_id.clone();
        drop(state);

        let mut q = self.inner.queue.lock();
        // The window: at most max-in-flight fragments waiting for an answer; in a non-live
        // pipeline also at most max-in-flight fragments held in total (backpressure).
        loop {
            if q.flushing {
                return Err(gst::FlowError::Flushing);
            }
            q.flow?;
            let now = Instant::now();
            q.expire(now);
            let held = q.fragments().count();
            let full = held >= MAX_QUEUED
                || (skip.is_none() && q.unresolved() >= settings.max_in_flight as usize)
                || (!latency.live && held >= settings.max_in_flight as usize);
            if !full {
                break;
            }
            match q.earliest_deadline() {
                Some(d) => {
                    self.inner.cond.wait_until(&mut q, d);
                }
                None => self.inner.cond.wait(&mut q),
            }
        }

        let mut probe = false;
        if skip.is_none() {
            let (admission, transition) = {
                let mut b = self.inner.breaker.lock();
                match b.as_mut() {
                    Some(b) => b.admit(Instant::now()),
                    None => (Admission::Allow, None),
                }
            };
            if let Some(t) = transition {
                self.breaker_transition(t);
            }
            match admission {
                Admission::Reject => skip = Some(Skip::BreakerOpen),
                Admission::Probe => probe = true,
                Admission::Allow => {}
            }
        }

        let id = uuid::Uuid::new_v4().to_string();
        if skip.is_none() {
            let Some(client) = client else {
                return Err(gst::FlowError::Flushing);
            };
            let job = Job {
                sequence_number: seq,
                fragment_id: id.clone(),
                rate: info.rate(),
                channels: info.channels(),
                frames,
                deadline,
                probe,
            };
            let cfg = ClientConfig {
                url: settings.url.clone(),
                api_key: settings.api_key.clone(),
                timeout: Duration::from_nanos(settings.timeout),
                max_retries: settings.max_retries,
                max_response_size: settings.max_response_size,
            };
            let sts = StsConfig {
                source_language: settings.source_language.clone(),
                target_language: settings.target_language.clone(),
                voice_profile: settings.voice_profile.clone(),
            };
            let inner = self.inner.clone();
            let obs = Obs {
                inner: inner.clone(),
                element: self.obj().downgrade(),
            };
            let generation = q.generation;
            let buf = buffer.clone();
            gst::trace!(
                CAT,
                imp = self,
                "sending fragment {seq} ({id}), {frames} frames"
            );
            let handle = RUNTIME.spawn(async move {
                let answer = {
                    let _in_flight = InFlight::new(inner.clone());
                    let body = {
                        let Ok(map) = buf.map_readable() else {
                            return;
                        };
                        client::build_body(&stream_id, &sts, cfg.timeout, &job, &map)
                    };
                    client::process(&client, &cfg, &job, body, &obs).await
                };
                // Out of the in-flight count before the chain can see the slot free.
                inner.deliver(generation, job.sequence_number, answer);
            });
            q.tasks.retain(|t| !t.is_finished());
            q.tasks.push(handle.abort_handle());
        }

        q.items.push_back(Item::Fragment(Box::new(Fragment {
            seq,
            id,
            buffer,
            rate: info.rate(),
            channels: info.channels() as usize,
            deadline,
            skip,
            answer: None,
            expired: false,
        })));
        self.inner.cond.notify_all();
        q.flow
    }

    /// Upstream liveness and latency. The sink asks only once its first buffer arrived, so
    /// before that we ask upstream ourselves: the first fragments need a deadline too.
    fn latency_info(&self) -> LatencyInfo {
        let info = *self.latency.lock();
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
        *self.latency.lock() = info;
        info
    }

    /// The instant a live fragment's audio must leave: its running time + upstream latency +
    /// our latency (minus a margin), on the pipeline clock, mapped to the monotonic clock.
    fn deadline_of(
        &self,
        buffer: &gst::Buffer,
        segment: &gst::FormattedSegment<gst::ClockTime>,
        latency: LatencyInfo,
        own: u64,
    ) -> Instant {
        let now = Instant::now();
        let obj = self.obj();
        let (Some(clock), Some(base), Some(rt)) = (
            obj.clock(),
            obj.base_time(),
            buffer.pts().and_then(|p| segment.to_running_time(p)),
        ) else {
            return now + Duration::from_nanos(own);
        };
        let deadline_rt = live_deadline(
            rt.nseconds(),
            latency.upstream_min.nseconds(),
            own,
            DEADLINE_MARGIN,
        );
        let deadline_clock = base.nseconds().saturating_add(deadline_rt);
        let clock_now = clock.time().nseconds();
        now + Duration::from_nanos(deadline_clock.saturating_sub(clock_now))
    }

    fn enqueue_event(&self, event: gst::Event) -> bool {
        let mut q = self.inner.queue.lock();
        if q.flushing {
            return false;
        }
        q.items.push_back(Item::Event(event));
        self.inner.cond.notify_all();
        true
    }

    /// Waits until every held fragment and event has gone downstream (serialized queries).
    fn wait_drained(&self) -> bool {
        let mut q = self.inner.queue.lock();
        loop {
            if q.flushing {
                return false;
            }
            if q.items.is_empty() {
                return true;
            }
            let d = q.earliest_deadline();
            match d {
                Some(d) => {
                    self.inner.cond.wait_until(&mut q, d);
                }
                None => self.inner.cond.wait(&mut q),
            }
        }
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "event {:?}", event.type_());
        match event.view() {
            EventView::FlushStart(_) => {
                self.set_flushing();
                let ret = self.srcpad.push_event(event);
                let _ = self.srcpad.pause_task();
                ret
            }
            EventView::FlushStop(_) => {
                self.reset_queue();
                self.seam.lock().reset();
                let ret = self.srcpad.push_event(event);
                self.start_task();
                ret
            }
            EventView::Caps(c) => {
                let info = match gst_audio::AudioInfo::from_caps(c.caps()) {
                    Ok(i) => i,
                    Err(_) => {
                        gst::element_imp_error!(
                            self,
                            gst::CoreError::Negotiation,
                            ("invalid audio caps {}", c.caps())
                        );
                        return false;
                    }
                };
                self.state.lock().info = Some(info);
                self.enqueue_event(event)
            }
            EventView::Segment(s) => {
                match s.segment().downcast_ref::<gst::ClockTime>() {
                    Some(seg) => self.state.lock().segment = seg.clone(),
                    None => {
                        gst::element_imp_error!(
                            self,
                            gst::StreamError::Format,
                            (
                                "stsbridge needs a TIME segment, got {:?}",
                                s.segment().format()
                            )
                        );
                        return false;
                    }
                }
                self.enqueue_event(event)
            }
            _ if event.is_serialized() => self.enqueue_event(event),
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if query.is_serialized() && !matches!(query.view(), gst::QueryView::Allocation(_)) {
            // Drain and friends must not overtake the fragments still held.
            if !self.wait_drained() {
                return false;
            }
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
            *self.latency.lock() = LatencyInfo {
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

    fn set_flushing(&self) {
        let mut q = self.inner.queue.lock();
        q.flushing = true;
        q.abort_all();
        self.inner.cond.notify_all();
    }

    fn reset_queue(&self) {
        let mut q = self.inner.queue.lock();
        q.abort_all();
        q.items.clear();
        q.generation += 1;
        q.flushing = false;
        q.flow = Ok(gst::FlowSuccess::Ok);
    }

    fn start_task(&self) {
        let this = self.obj().clone();
        if let Err(e) = self.srcpad.start_task(move || this.imp().src_loop()) {
            gst::error!(CAT, imp = self, "cannot start the source pad task: {e}");
        }
    }

    /// The source pad task: pushes held items strictly in order.
    fn src_loop(&self) {
        let imp = self;
        let mut q = imp.inner.queue.lock();
        loop {
            if q.flushing {
                drop(q);
                let _ = imp.srcpad.pause_task();
                return;
            }
            q.expire(Instant::now());
            let ready = match q.items.front() {
                None => None,
                Some(Item::Event(_)) => Some(true),
                Some(Item::Fragment(f)) => f.resolved().then_some(false),
            };
            match ready {
                Some(_) => {
                    let item = q.items.pop_front().expect("front exists");
                    imp.inner.cond.notify_all();
                    drop(q);
                    let flow = match item {
                        Item::Event(e) => {
                            if let gst::EventView::Caps(_) = e.view() {
                                imp.seam.lock().reset();
                            }
                            let is_eos = e.type_() == gst::EventType::Eos;
                            if imp.srcpad.push_event(e) || !is_eos {
                                Ok(gst::FlowSuccess::Ok)
                            } else {
                                Err(gst::FlowError::Eos)
                            }
                        }
                        Item::Fragment(f) => imp.push_fragment(*f),
                    };
                    q = imp.inner.queue.lock();
                    if let Err(e) = flow {
                        if q.flow.is_ok() {
                            q.flow = Err(e);
                        }
                        imp.inner.cond.notify_all();
                        if e != gst::FlowError::Flushing {
                            gst::debug!(CAT, imp = imp, "pausing on {e:?}");
                            if !matches!(e, gst::FlowError::Eos | gst::FlowError::Flushing) {
                                gst::element_imp_error!(
                                    imp,
                                    gst::StreamError::Failed,
                                    ("internal data flow error"),
                                    ["streaming stopped, reason {e:?}"]
                                );
                            }
                        }
                        drop(q);
                        let _ = imp.srcpad.pause_task();
                        return;
                    }
                }
                None => {
                    let wait = match q.items.front() {
                        Some(Item::Fragment(f)) => f.deadline,
                        _ => None,
                    };
                    match wait {
                        Some(d) => {
                            imp.inner.cond.wait_until(&mut q, d);
                        }
                        None => imp.inner.cond.wait(&mut q),
                    }
                }
            }
        }
    }

    /// Builds a resolved fragment's output, accounts for it and pushes it.
    fn push_fragment(&self, f: Fragment) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = self.settings.lock().clone();
        let bypass = self.bypass.load(Ordering::SeqCst);
        let fallback = settings.fallback_signal();

        let mut reason: Option<Reason> = None;
        let mut detail = String::new();
        let mut dub: Option<&[i16]> = None;
        let (signal, outcome) = if bypass {
            (Signal::Original { gain: 1.0 }, "bypass")
        } else {
            match (f.skip, &f.answer) {
                (Some(Skip::Gap), _) => (Signal::Original { gain: 1.0 }, "gap"),
                (Some(Skip::Bypass), _) => (Signal::Original { gain: 1.0 }, "bypass"),
                (Some(Skip::Passthrough), _) => (Signal::Original { gain: 1.0 }, "passthrough"),
                (Some(Skip::BreakerOpen), _) => {
                    reason = Some(Reason::BreakerOpen);
                    (fallback, "fallback")
                }
                (None, Some(a)) => match &a.result {
                    Ok(d) => {
                        dub = Some(&d.samples);
                        (settings.dub_signal(), "dubbed")
                    }
                    Err(e) => {
                        reason = Some(e.reason);
                        detail = e.detail.clone();
                        (fallback, "fallback")
                    }
                },
                (None, None) => {
                    reason = Some(Reason::Deadline);
                    detail = "no usable answer before the live deadline".into();
                    (fallback, "fallback")
                }
            }
        };

        let in_map = f.buffer.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::ResourceError::Read, ("cannot map input buffer"));
            gst::FlowError::Error
        })?;
        let input: &[i16] = match bytemuck_cast(&in_map) {
            Some(s) => s,
            None => {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Format,
                    ("misaligned audio buffer")
                );
                return Err(gst::FlowError::Error);
            }
        };
        let info_rate_frames = input.len() / f.channels.max(1);
        // The fragment's own rate: caps may already have changed for the fragments behind it.
        let crossfade = ns_to_frames(settings.crossfade, f.rate) as usize;

        let mut out = gst::Buffer::with_size(f.buffer.size()).map_err(|_| gst::FlowError::Error)?;
        {
            let out_ref = out.get_mut().expect("new buffer is writable");
            let _ = f.buffer.copy_into(
                out_ref,
                gst::BufferCopyFlags::FLAGS
                    | gst::BufferCopyFlags::TIMESTAMPS
                    | gst::BufferCopyFlags::META,
                ..,
            );
            let mut out_map = out_ref.map_writable().map_err(|_| gst::FlowError::Error)?;
            let out_samples: &mut [i16] = bytemuck_cast_mut(&mut out_map).ok_or_else(|| {
                gst::element_imp_error!(self, gst::ResourceError::Write, ("misaligned buffer"));
                gst::FlowError::Error
            })?;
            let mut seam = self.seam.lock();
            if f.buffer.flags().contains(gst::BufferFlags::DISCONT) {
                seam.reset();
            }
            mix::render(
                input,
                f.channels,
                signal,
                dub,
                crossfade,
                &mut seam,
                out_samples,
            );
            drop(out_map);
            if outcome != "gap" {
                out_ref.unset_flags(gst::BufferFlags::GAP);
            }
        }
        drop(in_map);

        // Accounting and the bus message.
        {
            let mut s = self.inner.stats.lock();
            s.fragments += 1;
            match outcome {
                "dubbed" => s.dubbed += 1,
                "bypass" => s.bypassed += 1,
                "passthrough" => s.passthrough += 1,
                "gap" => s.gaps += 1,
                _ => {}
            }
            if let Some(r) = reason {
                *s.fallbacks.entry(r).or_default() += 1;
            }
            if let Some(Answer { result: Ok(d), .. }) = &f.answer
                && d.fitted_frames != 0
            {
                s.fitted += 1;
            }
        }
        if reason.is_some()
            && detail.contains("certificate")
            && !self.cert_warned.swap(true, Ordering::SeqCst)
        {
            // A TLS verification failure is a configuration problem, not a hiccup: say so on
            // the bus, once per stream.
            gst::element_imp_warning!(
                self,
                gst::ResourceError::OpenRead,
                ("the STS server's certificate was refused: set tls-ca-file if it uses a private CA"),
                ["fragment {}: {detail}", f.seq]
            );
        }
        if let Some(r) = reason {
            gst::debug!(
                CAT,
                imp = self,
                "fragment {} at {:?}: fallback ({}) {detail}",
                f.seq,
                f.buffer.pts(),
                r.as_str()
            );
        } else {
            gst::trace!(CAT, imp = self, "fragment {}: {outcome}", f.seq);
        }
        if settings.post_messages {
            let (attempts, rtt) = f
                .answer
                .as_ref()
                .map(|a| (a.attempts, a.rtt.map_or(0, |r| r.as_nanos() as u64)))
                .unwrap_or((0, 0));
            let ok = f.answer.as_ref().and_then(|a| a.result.as_ref().ok());
            let s = gst::Structure::builder("stsbridge/fragment")
                .field("sequence-number", f.seq)
                .field("fragment-id", &f.id)
                .field("pts", f.buffer.pts().map_or(u64::MAX, |p| p.nseconds()))
                .field(
                    "duration",
                    f.buffer.duration().map_or(u64::MAX, |p| p.nseconds()),
                )
                .field("frames", info_rate_frames as u64)
                .field("outcome", outcome)
                .field("reason", reason.map_or("", |r| r.as_str()))
                .field("detail", &detail)
                .field("rtt", rtt)
                .field("attempts", attempts)
                .field(
                    "transcript",
                    ok.and_then(|d| d.transcript.clone()).unwrap_or_default(),
                )
                .field(
                    "translated-text",
                    ok.and_then(|d| d.translated_text.clone())
                        .unwrap_or_default(),
                )
                .field(
                    "processing-time",
                    ok.and_then(|d| d.processing_time_ms)
                        .map_or(0u64, |ms| (ms.max(0.0) * 1e6) as u64),
                )
                .field("fitted-frames", ok.map_or(0i64, |d| d.fitted_frames))
                .build();
            let _ = self
                .obj()
                .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
        }

        self.srcpad.push(out)
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
        let s = gst::Structure::builder("stsbridge/breaker")
            .field("state", t.to.as_str())
            .field("previous", t.from.as_str())
            .field("consecutive-failures", t.failures)
            .build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    fn stats(&self) -> gst::Structure {
        let s = self.inner.stats.lock();
        let (state, failures, opened) = match self.inner.breaker.lock().as_ref() {
            Some(b) => (b.state(), b.consecutive_failures(), b.opened_count()),
            None => (BreakerState::Closed, 0, 0),
        };
        let total_fallbacks: u64 = s.fallbacks.values().sum();
        let mut b = gst::Structure::builder("application/x-stsbridge-stats")
            .field("fragments", s.fragments)
            .field("requests", s.requests)
            .field("dubbed", s.dubbed)
            .field("fallbacks", total_fallbacks);
        for r in Reason::ALL {
            b = b.field(
                format!("fallbacks-{}", r.as_str().replace('_', "-")),
                s.fallbacks.get(&r).copied().unwrap_or(0),
            );
        }
        b.field("retries", s.retries)
            .field(
                "in-flight",
                self.inner.in_flight.load(Ordering::SeqCst) as u64,
            )
            .field("max-in-flight", s.max_in_flight)
            .field("breaker-state", state.as_str())
            .field("breaker-failures", failures)
            .field("breaker-opened", opened)
            .field("rtt-last", s.rtt_last)
            .field("rtt-avg", s.rtt_sum.checked_div(s.rtt_count).unwrap_or(0))
            .field("rtt-max", s.rtt_max)
            .field("late-responses", s.late_responses)
            .field("bypassed", s.bypassed)
            .field("passthrough", s.passthrough)
            .field("gaps", s.gaps)
            .field("fitted", s.fitted)
            .build()
    }

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().clone();
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
        let client = builder
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
            })?;
        if !settings.url.is_empty() {
            match reqwest::Url::parse(&settings.url) {
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
        let mut state = self.state.lock();
        *state = StreamState {
            stream_id: if settings.stream_id.is_empty() {
                uuid::Uuid::new_v4().to_string()
            } else {
                settings.stream_id.clone()
            },
            client: Some(client),
            ..Default::default()
        };
        gst::info!(
            CAT,
            imp = self,
            "stream {} to {} (api key {})",
            state.stream_id,
            if settings.url.is_empty() {
                "nowhere: passthrough".to_owned()
            } else {
                redact_url(&settings.url)
            },
            if settings.api_key.is_empty() {
                "unset"
            } else {
                "set"
            }
        );
        drop(state);
        *self.inner.breaker.lock() = Some(Breaker::new(
            settings.breaker_threshold,
            Duration::from_nanos(settings.breaker_cooldown),
        ));
        *self.inner.stats.lock() = Stats::default();
        self.cert_warned.store(false, Ordering::SeqCst);
        *self.seam.lock() = Seam::default();
        *self.latency.lock() = LatencyInfo::default();
        Ok(())
    }

    fn stop(&self) {
        self.set_flushing();
        let mut q = self.inner.queue.lock();
        q.items.clear();
        drop(q);
        self.state.lock().client = None;
        // Aborted tasks are dropped by the runtime's workers right away; give them a moment
        // so that READY means no request left (bounded: never hold up a state change).
        let t = Instant::now();
        while self.inner.in_flight.load(Ordering::SeqCst) > 0
            && t.elapsed() < Duration::from_millis(100)
        {
            std::thread::sleep(Duration::from_millis(1));
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
            self.reset_queue();
            self.start_task();
        } else {
            self.set_flushing();
            self.srcpad
                .stop_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot stop the task: {e}"))?;
        }
        Ok(())
    }
}

fn bytemuck_cast(bytes: &[u8]) -> Option<&[i16]> {
    // SAFETY: i16 has no invalid bit patterns; alignment and length are checked by align_to.
    let (pre, mid, post) = unsafe { bytes.align_to::<i16>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

fn bytemuck_cast_mut(bytes: &mut [u8]) -> Option<&mut [i16]> {
    // SAFETY: as above.
    let (pre, mid, post) = unsafe { bytes.align_to_mut::<i16>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
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
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        StsBridge {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            bypass: AtomicBool::new(false),
            cert_warned: AtomicBool::new(false),
            inner: Arc::new(Inner::default()),
            state: Mutex::new(StreamState::default()),
            seam: Mutex::new(Seam::default()),
            latency: Mutex::new(LatencyInfo::default()),
        }
    }
}

impl ObjectImpl for StsBridge {
    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).expect("add sink pad");
        obj.add_pad(&self.srcpad).expect("add src pad");
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("url")
                    .nick("URL")
                    .blurb("STS endpoint, e.g. http://sts:8000/api/v1/sts/process (empty: passthrough, no requests)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("api-key")
                    .nick("API key")
                    .blurb("Sent as Authorization: Bearer <key> (write-only: never logged or shown)")
                    .write_only()
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
                    .minimum(100 * MS)
                    .maximum(600 * SECOND)
                    .default_value(DEFAULT_TIMEOUT)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-retries")
                    .nick("Maximum retries")
                    .blurb("Retries of a fragment after a retryable failure (backoff with jitter, Retry-After honoured, never past the live deadline)")
                    .maximum(10)
                    .default_value(DEFAULT_MAX_RETRIES)
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
                    .maximum(300 * SECOND)
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
                    .maximum(12.0)
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
                glib::ParamSpecBoolean::builder("post-messages")
                    .nick("Post messages")
                    .blurb("Post a stsbridge/fragment element message per fragment")
                    .default_value(true)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("fragments, requests, dubbed, fallbacks (total and fallbacks-<reason>), retries, in-flight, max-in-flight, breaker-state, breaker-failures, breaker-opened, rtt-last/avg/max (ns), late-responses, bypassed, passthrough, gaps, fitted")
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
            "stream-id" => s.stream_id = string(value),
            "source-language" => s.source_language = string(value),
            "target-language" => s.target_language = string(value),
            "voice-profile" => s.voice_profile = string(value),
            "timeout" => s.timeout = value.get().expect("type checked"),
            "max-retries" => s.max_retries = value.get().expect("type checked"),
            "max-in-flight" => {
                s.max_in_flight = value.get().expect("type checked");
                drop(s);
                self.inner.cond.notify_all();
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
                drop(s);
                let was = self.bypass.swap(on, Ordering::SeqCst);
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
                if let Some(b) = self.inner.breaker.lock().as_mut() {
                    b.configure(t, Duration::from_nanos(c));
                }
            }
            "max-response-size" => s.max_response_size = value.get().expect("type checked"),
            "post-messages" => s.post_messages = value.get().expect("type checked"),
            "tls-ca-file" => s.tls_ca_file = string(value),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock();
        match pspec.name() {
            "url" => s.url.to_value(),
            // Write-only; GObject never asks, but never answer with the key.
            "api-key" => None::<String>.to_value(),
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
            "bypass" => self.bypass.load(Ordering::SeqCst).to_value(),
            "breaker-threshold" => s.breaker_threshold.to_value(),
            "breaker-cooldown" => s.breaker_cooldown.to_value(),
            "max-response-size" => s.max_response_size.to_value(),
            "post-messages" => s.post_messages.to_value(),
            "tls-ca-file" => s.tls_ca_file.to_value(),
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
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> =
            LazyLock::new(crate::s16le_pad_templates);
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
            self.set_flushing();
        }
        let ret = self.parent_change_state(transition)?;
        if transition == gst::StateChange::PausedToReady {
            self.stop();
        }
        Ok(ret)
    }
}
