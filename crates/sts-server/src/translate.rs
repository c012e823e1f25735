//! The `translate` mode: per request ASR → MT → TTS on a fixed pool of worker threads behind
//! a bounded queue that is fair across streams ([`FairQueue`]), with one recogniser state per
//! stream, fragments of a stream recognised in `sequence_number` order.
//!
//! Every job carries its [`Budget`]: the request's deadline, and cancel flags set when its
//! client leaves (the handler is dropped) and when the server stops. A job whose budget is
//! spent is dropped from the queue, never started, and stopped between steps (the recogniser
//! checks it between blocks of audio), so its worker is free at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dubbing_sts_proto::{ProcessRequest, StageTimings};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::schedule::{Expiring, FairQueue, PushError};
use crate::speech::whisper::{WhisperOptions, WhisperStatus};
use crate::speech::{
    self, AsrEngine, Budget, Decoder, PAIRS, Recognizer, SpeechError, Translator, TtsEngine,
    Voices, has_speech, to_asr_input,
};

/// A stream whose first request has a `sequence_number` below this is taken to start at 0:
/// its earlier fragments, pipelined, may still be on their way.
pub const NEW_STREAM_WINDOW: u64 = 8;
/// Deadline of a request whose `timeout_ms` is 0.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// No request is worked on for longer than this, whatever its `timeout_ms`.
const MAX_DEADLINE: Duration = Duration::from_secs(120);
/// Entries kept by [`TranslateService::log`].
const LOG_CAPACITY: usize = 4096;
/// How often idle streams are looked for when no request comes.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of the translate mode (`--workers`, `--queue-size`, `--stream-queue-size`,
/// `--max-streams`, `--stream-idle-s`, `--order-wait-ms`).
#[derive(Debug, Clone, PartialEq)]
pub struct TranslateConfig {
    /// Worker threads for the CPU stages (ASR, and waiting on MT and TTS).
    pub workers: usize,
    /// Fragments that may wait for a worker; one more is answered 503 `QUEUE_FULL`.
    pub queue_size: usize,
    /// Fragments of one stream that may wait for a worker (at most `queue_size`); one more
    /// is answered 503 `QUEUE_FULL`, so one stream cannot fill the queue.
    pub stream_queue_size: usize,
    /// Streams whose recogniser state is kept; past it the least recently used is evicted.
    pub max_streams: usize,
    /// A stream with no request for this long is evicted (its decoder freed).
    pub stream_idle: Duration,
    /// Longest wait of a fragment for its stream's earlier fragments (also at most half the
    /// request's `timeout_ms`).
    pub order_wait: Duration,
    /// The speech recogniser (`--asr`).
    pub asr: AsrEngine,
    /// The voice (`--tts`).
    pub tts: TtsEngine,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        TranslateConfig {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_size: 16,
            stream_queue_size: 4,
            max_streams: 64,
            stream_idle: Duration::from_secs(60),
            order_wait: Duration::from_secs(2),
            asr: AsrEngine::default(),
            tts: TtsEngine::default(),
        }
    }
}

impl TranslateConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=256).contains(&self.workers) {
            return Err(format!("workers must be 1..=256, not {}", self.workers));
        }
        if !(1..=65536).contains(&self.queue_size) {
            return Err(format!(
                "queue_size must be 1..=65536, not {}",
                self.queue_size
            ));
        }
        if !(1..=65536).contains(&self.stream_queue_size) {
            return Err(format!(
                "stream_queue_size must be 1..=65536, not {}",
                self.stream_queue_size
            ));
        }
        if !(1..=65536).contains(&self.max_streams) {
            return Err(format!(
                "max_streams must be 1..=65536, not {}",
                self.max_streams
            ));
        }
        if self.stream_idle.is_zero() {
            return Err("stream_idle must be > 0".into());
        }
        Ok(())
    }
}

/// A language pair served (`/health` `language_pairs`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LanguagePair {
    pub source: String,
    pub target: String,
}

/// The engines the translate mode runs (`/health` `engines`).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct EngineInfo {
    /// `whisper-base`, `whisper-tiny-en` or `pocketsphinx`.
    pub asr: AsrEngine,
    /// `--tts`: `espeak-ng` or `pico`.
    pub tts: TtsEngine,
    /// The voice engine of each target language served (Pico lacks some languages).
    pub voices: std::collections::BTreeMap<String, &'static str>,
    /// The Whisper helper process (absent for pocketsphinx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whisper: Option<WhisperStatus>,
}

/// Counters of the translate mode ([`crate::StsServer::translate_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranslateStats {
    pub workers: usize,
    pub queue_size: usize,
    /// Fragments waiting in the queue now.
    pub queued: usize,
    /// Fragments taken by a worker now.
    pub busy: usize,
    /// Streams with state now.
    pub streams: usize,
    /// Streams evicted since start (idle or least recently used).
    pub evicted_streams: u64,
    /// Requests answered 503 `QUEUE_FULL` (the queue or their stream's share of it full).
    pub rejected_queue_full: u64,
    /// Of those, the ones refused because their stream already had `stream_queue_size`
    /// fragments waiting.
    pub rejected_stream_full: u64,
    /// Fragments dropped from the queue without being worked on: past their deadline, or
    /// their client gone.
    pub expired: u64,
    /// Fragments stopped while being worked on: past their deadline, their client gone, or
    /// the server stopping.
    pub cancelled: u64,
    /// Fragments recognised since start.
    pub recognized: u64,
}

/// One recognised fragment, in the order the recogniser handled them
/// ([`crate::StsServer::translate_log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandledFragment {
    pub stream_id: String,
    pub sequence_number: u64,
    pub transcript: String,
}

/// Why a translate request was not answered with audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TranslateError {
    /// 400 `UNSUPPORTED_LANGUAGE`.
    Unsupported(String),
    /// 400 `INVALID_INPUT`.
    Input(String),
    /// 503 `QUEUE_FULL`.
    QueueFull,
    /// 504 `TIMEOUT`.
    Timeout(String),
    /// 500 `MODEL_ERROR`.
    Engine(String),
}

impl From<SpeechError> for TranslateError {
    fn from(e: SpeechError) -> Self {
        match e {
            SpeechError::Timeout(m) => TranslateError::Timeout(m),
            SpeechError::Input(m) => TranslateError::Input(m),
            e => TranslateError::Engine(e.to_string()),
        }
    }
}

/// What a translate request is answered with: interleaved S16LE audio and the texts.
#[derive(Debug)]
pub(crate) struct Translated {
    pub rate: u32,
    pub channels: u32,
    pub pcm: Vec<u8>,
    pub transcript: String,
    pub translated_text: String,
    pub timings: StageTimings,
}

/// The loaded engines.
struct Engines {
    recognizer: Recognizer,
    translators: Vec<Translator>,
    voices: Voices,
}

impl Engines {
    fn load(config: &TranslateConfig) -> Result<Engines, String> {
        let voices = Voices::load(config.tts).map_err(|e| format!("speech synthesis: {e}"))?;
        let recognizer = Recognizer::load_engine(config.asr, "en", WhisperOptions::default())
            .map_err(|e| format!("speech recognition ({}): {e}", config.asr))?;
        let synthesizer = voices.espeak();
        let mut translators = Vec::new();
        let mut problems = Vec::new();
        for pair in PAIRS {
            if voices.engine_for(pair.target) == "espeak-ng" && !synthesizer.has_voice(pair.voice) {
                problems.push(format!(
                    "{}→{}: espeak-ng has no voice {:?} (install the Debian package espeak-ng-data)",
                    pair.source, pair.target, pair.voice
                ));
                continue;
            }
            match Translator::start(pair.source, pair.target) {
                Ok(t) => translators.push(t),
                Err(e) => problems.push(format!("{}→{}: {e}", pair.source, pair.target)),
            }
        }
        for p in &problems {
            tracing::warn!("translate mode: language pair unavailable: {p}");
        }
        if translators.is_empty() {
            return Err(format!(
                "machine translation: no language pair is available: {}",
                problems.join("; ")
            ));
        }
        Ok(Engines {
            recognizer,
            translators,
            voices,
        })
    }

    fn info(&self) -> EngineInfo {
        EngineInfo {
            asr: self.recognizer.engine(),
            tts: self.voices.engine(),
            voices: self
                .translators
                .iter()
                .map(|t| {
                    let target = t.pair().target;
                    (target.to_owned(), self.voices.engine_for(target))
                })
                .collect(),
            whisper: self.recognizer.whisper_status(),
        }
    }

    fn translator(&self, source: &str, target: &str) -> Option<usize> {
        let wanted = speech::find_pair(source, target)?;
        self.translators.iter().position(|t| t.pair() == wanted)
    }

    fn pairs(&self) -> Vec<LanguagePair> {
        self.translators
            .iter()
            .map(|t| LanguagePair {
                source: t.pair().source.into(),
                target: t.pair().target.into(),
            })
            .collect()
    }
}

/// Most fragments of a stream remembered as handled ahead of a missing one; past it the
/// stream stops waiting for the missing ones.
const MAX_AHEAD: usize = 1024;

/// Which fragments of a stream have been handled: all below `next`, and those in `ahead`.
#[derive(Debug, Default)]
struct Order {
    /// Lowest `sequence_number` not handled yet.
    next: u64,
    /// Handled fragments above `next` (they came before a predecessor).
    ahead: std::collections::BTreeSet<u64>,
}

impl Order {
    fn starting_at(next: u64) -> Order {
        Order {
            next,
            ahead: Default::default(),
        }
    }

    fn advance(&mut self) {
        while self.ahead.remove(&self.next) {
            self.next += 1;
        }
        while self.ahead.len() > MAX_AHEAD {
            let first = self.ahead.pop_first().expect("non-empty");
            self.next = first + 1;
            self.advance();
        }
    }

    fn handled(&mut self, seq: u64) {
        if seq >= self.next {
            self.ahead.insert(seq);
            self.advance();
        }
    }

    /// Gives up on the fragments before `seq` (they did not come in time).
    fn skip_to(&mut self, seq: u64) {
        if seq > self.next {
            self.next = seq;
            self.ahead.retain(|&s| s >= seq);
            self.advance();
        }
    }
}

/// The state of one stream.
struct StreamEntry {
    id: String,
    order: Mutex<Order>,
    turn: tokio::sync::Notify,
    decoder: Mutex<Option<Decoder>>,
}

impl StreamEntry {
    fn mark_handled(&self, seq: u64) {
        self.order.lock().handled(seq);
        self.turn.notify_waiters();
    }

    fn skip_to(&self, seq: u64) {
        self.order.lock().skip_to(seq);
        self.turn.notify_waiters();
    }

    /// Waits until every fragment before `seq` has been handled, or until `until`. Returns
    /// whether it was its turn.
    async fn wait_turn(&self, seq: u64, until: tokio::time::Instant) -> bool {
        loop {
            let notified = self.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.order.lock().next >= seq {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return false;
            }
        }
    }
}

/// Marks its fragment handled when dropped, whatever became of it (recognised, rejected,
/// expired), so the stream's later fragments never wait for it longer than needed.
struct Ticket {
    stream: Arc<StreamEntry>,
    seq: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.stream.mark_handled(self.seq);
    }
}

struct StreamTable {
    map: HashMap<String, (Arc<StreamEntry>, Instant)>,
    evicted: u64,
}

impl StreamTable {
    /// Evicts the streams idle for `idle`; a stream with a fragment in progress (its entry
    /// also held by a request) is not idle, however long that fragment takes.
    fn sweep(&mut self, now: Instant, idle: Duration) {
        let before = self.map.len();
        self.map.retain(|_, (entry, last)| {
            Arc::strong_count(entry) > 1 || now.saturating_duration_since(*last) < idle
        });
        self.evicted += (before - self.map.len()) as u64;
    }

    /// Marks a stream used now (when one of its fragments is done).
    fn touch(&mut self, entry: &Arc<StreamEntry>, now: Instant) {
        if let Some((e, last)) = self.map.get_mut(&entry.id)
            && Arc::ptr_eq(e, entry)
        {
            *last = now;
        }
    }

    fn get(
        &mut self,
        id: &str,
        seq: u64,
        now: Instant,
        config: &TranslateConfig,
    ) -> Arc<StreamEntry> {
        self.sweep(now, config.stream_idle);
        if let Some((entry, last)) = self.map.get_mut(id) {
            *last = now;
            return entry.clone();
        }
        while self.map.len() >= config.max_streams {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(k, _)| k.clone())
                .expect("non-empty");
            self.map.remove(&oldest);
            self.evicted += 1;
        }
        let entry = Arc::new(StreamEntry {
            id: id.to_owned(),
            order: Mutex::new(Order::starting_at(if seq < NEW_STREAM_WINDOW {
                0
            } else {
                seq
            })),
            turn: tokio::sync::Notify::new(),
            decoder: Mutex::new(None),
        });
        self.map.insert(id.to_owned(), (entry.clone(), now));
        entry
    }
}

/// Holds workers back while paused (a test hook), releases them for good at shutdown.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gate {
    fn set_paused(&self, paused: bool) {
        self.state.lock().0 = paused;
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().1 = true;
        self.changed.notify_all();
    }

    fn wait_open(&self) {
        let mut state = self.state.lock();
        while state.0 && !state.1 {
            self.changed.wait(&mut state);
        }
    }

    fn closed(&self) -> bool {
        self.state.lock().1
    }
}

struct Job {
    ticket: Ticket,
    pcm: Vec<u8>,
    rate: u32,
    channels: u32,
    translator: usize,
    budget: Budget,
    reply: tokio::sync::oneshot::Sender<Result<Translated, TranslateError>>,
}

impl Expiring for Job {
    fn expired(&self, now: Instant) -> bool {
        now >= self.budget.deadline() || self.budget.is_cancelled() || self.reply.is_closed()
    }

    fn deadline(&self) -> Instant {
        self.budget.deadline()
    }
}

/// Sets its flag when dropped: the handler waiting for a job's answer cancels the job when it
/// goes (answered, timed out, or dropped because its client left).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Inner {
    engines: Engines,
    config: TranslateConfig,
    streams: Mutex<StreamTable>,
    gate: Gate,
    log: Mutex<VecDeque<HandledFragment>>,
    queue: FairQueue<Job>,
    /// Set when the server stops: every job's budget ends.
    stopping: Arc<AtomicBool>,
    busy: AtomicUsize,
    rejected: AtomicU64,
    rejected_stream: AtomicU64,
    cancelled: AtomicU64,
    recognized: AtomicU64,
}

/// The translate mode's engines, workers and stream state.
pub(crate) struct TranslateService {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop_sweeper: Mutex<Option<crossbeam_channel::Sender<()>>>,
}

impl TranslateService {
    /// Loads the engines and starts the workers. The error names what to install.
    pub(crate) fn start(config: &TranslateConfig) -> Result<TranslateService, String> {
        config.validate()?;
        let t0 = Instant::now();
        let engines = Engines::load(config)?;
        let inner = Arc::new(Inner {
            engines,
            config: config.clone(),
            streams: Mutex::new(StreamTable {
                map: HashMap::new(),
                evicted: 0,
            }),
            gate: Gate::default(),
            log: Mutex::new(VecDeque::new()),
            queue: FairQueue::new(config.queue_size, config.stream_queue_size),
            stopping: Arc::default(),
            busy: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            rejected_stream: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            recognized: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for i in 0..config.workers {
            let inner = inner.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sts-translate-{i}"))
                .spawn(move || worker(&inner));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => return Err(format!("cannot start worker threads: {e}")),
            }
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let sweeper_inner = inner.clone();
        let sweeper = std::thread::Builder::new()
            .name("sts-stream-sweep".into())
            .spawn(move || {
                let every = SWEEP_INTERVAL.min(sweeper_inner.config.stream_idle);
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(every)
                {
                    let idle = sweeper_inner.config.stream_idle;
                    sweeper_inner.streams.lock().sweep(Instant::now(), idle);
                }
            })
            .map_err(|e| format!("cannot start the stream sweeper: {e}"))?;
        threads.push(sweeper);
        tracing::info!(
            pairs = ?inner.engines.pairs(),
            asr = %config.asr,
            tts = %config.tts,
            workers = config.workers,
            queue_size = config.queue_size,
            "translate engines loaded in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        Ok(TranslateService {
            inner,
            threads: Mutex::new(threads),
            stop_sweeper: Mutex::new(Some(stop_tx)),
        })
    }

    pub(crate) fn language_pairs(&self) -> Vec<LanguagePair> {
        self.inner.engines.pairs()
    }

    pub(crate) fn engines(&self) -> EngineInfo {
        self.inner.engines.info()
    }

    /// Test hook: kills the Whisper helper process (as a crash would).
    pub(crate) fn kill_recognizer_helper(&self) -> bool {
        match self.inner.engines.recognizer.whisper() {
            Some(w) => {
                w.kill_helper();
                true
            }
            None => false,
        }
    }

    pub(crate) fn stats(&self) -> TranslateStats {
        let streams = self.inner.streams.lock();
        TranslateStats {
            workers: self.inner.config.workers,
            queue_size: self.inner.config.queue_size,
            queued: self.inner.queue.len(),
            busy: self.inner.busy.load(Ordering::SeqCst),
            streams: streams.map.len(),
            evicted_streams: streams.evicted,
            rejected_queue_full: self.inner.rejected.load(Ordering::Relaxed),
            rejected_stream_full: self.inner.rejected_stream.load(Ordering::Relaxed),
            expired: self.inner.queue.expired(),
            cancelled: self.inner.cancelled.load(Ordering::Relaxed),
            recognized: self.inner.recognized.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn log(&self) -> Vec<HandledFragment> {
        self.inner.log.lock().iter().cloned().collect()
    }

    pub(crate) fn stream_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.streams.lock().map.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.inner.gate.set_paused(paused);
    }

    /// Ends the budget of every job: work in progress stops at its next step.
    pub(crate) fn cancel_all(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// Stops the workers: work in progress stops at its next step, queued fragments are
    /// dropped.
    pub(crate) fn shutdown(&self) {
        self.cancel_all();
        self.inner.gate.close();
        self.inner.queue.close();
        self.stop_sweeper.lock().take();
        for t in self.threads.lock().drain(..) {
            if t.join().is_err() {
                tracing::error!("a translate thread panicked");
            }
        }
    }

    /// Answers one request (after the server's validation and faults).
    pub(crate) async fn process(
        &self,
        req: &ProcessRequest,
        pcm: Vec<u8>,
        arrived: Instant,
    ) -> Result<Translated, TranslateError> {
        let inner = &self.inner;
        let (source, target) = (&req.config.source_language, &req.config.target_language);
        let Some(translator) = inner.engines.translator(source, target) else {
            let available: Vec<String> = inner
                .engines
                .pairs()
                .iter()
                .map(|p| format!("{}→{}", p.source, p.target))
                .collect();
            return Err(TranslateError::Unsupported(format!(
                "cannot translate {source:?} → {target:?}; available language pairs: {}",
                available.join(", ")
            )));
        };
        let (rate, channels) = (req.audio.sample_rate_hz, req.audio.channels);
        if !speech::RATES.contains(&rate) || !speech::CHANNELS.contains(&channels) {
            return Err(TranslateError::Input(format!(
                "translate mode takes 8000..=192000 Hz and 1..=8 channels, not {rate} Hz × {channels}"
            )));
        }
        let budget = if req.timeout_ms == 0 {
            DEFAULT_DEADLINE
        } else {
            Duration::from_millis(req.timeout_ms).min(MAX_DEADLINE)
        };
        let deadline = arrived + budget;
        // The job is cancelled when this handler goes, whatever the reason.
        let abandoned = CancelOnDrop(Arc::default());
        let job_budget = Budget::until(deadline)
            .or_cancelled_by(abandoned.0.clone())
            .or_cancelled_by(inner.stopping.clone());
        let stream = inner.streams.lock().get(
            &req.stream_id,
            req.sequence_number,
            Instant::now(),
            &inner.config,
        );
        let ticket = Ticket {
            stream,
            seq: req.sequence_number,
        };
        if !has_speech(&pcm, rate, channels) {
            drop(ticket);
            return Ok(Translated {
                rate,
                channels,
                pcm: vec![0; pcm.len()],
                transcript: String::new(),
                translated_text: String::new(),
                timings: StageTimings::default(),
            });
        }
        let order_until = arrived + inner.config.order_wait.min(budget / 2);
        let in_turn = ticket
            .stream
            .wait_turn(ticket.seq, tokio::time::Instant::from_std(order_until))
            .await;
        if !in_turn {
            ticket.stream.skip_to(ticket.seq);
            tracing::debug!(
                stream_id = %crate::limits::loggable(&req.stream_id, crate::MAX_STREAM_ID_BYTES),
                seq = ticket.seq,
                "earlier fragments did not come in time; recognising out of order"
            );
        }
        let stream = ticket.stream.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            ticket,
            pcm,
            rate,
            channels,
            translator,
            budget: job_budget,
            reply,
        };
        match inner.queue.push(&req.stream_id, job) {
            Ok(()) => {}
            Err(PushError::Full(_)) => {
                inner.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(TranslateError::QueueFull);
            }
            Err(PushError::StreamFull(_)) => {
                inner.rejected.fetch_add(1, Ordering::Relaxed);
                inner.rejected_stream.fetch_add(1, Ordering::Relaxed);
                return Err(TranslateError::QueueFull);
            }
            Err(PushError::Closed(_)) => {
                return Err(TranslateError::Engine("the server is stopping".into()));
            }
        }
        let result =
            tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), answer).await;
        drop(abandoned);
        // Idle time counts from the end of a stream's last fragment.
        inner.streams.lock().touch(&stream, Instant::now());
        match result {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(TranslateError::Timeout(
                "the fragment expired before a worker took it".into(),
            )),
            Err(_) => Err(TranslateError::Timeout(format!(
                "no answer within the request's {} ms",
                budget.as_millis()
            ))),
        }
    }
}

impl Drop for TranslateService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Counts a job as held by a worker while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks a stream's job finished in the queue when dropped (a panicking job included).
struct Done<'a>(&'a FairQueue<Job>, Arc<str>);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.done(&self.1);
    }
}

fn worker(inner: &Inner) {
    while let Some((stream, job)) = inner.queue.pop() {
        let _done = Done(&inner.queue, stream);
        inner.busy.fetch_add(1, Ordering::SeqCst);
        let _busy = Busy(&inner.busy);
        inner.gate.wait_open();
        if inner.gate.closed() {
            continue;
        }
        if job.expired(Instant::now()) {
            inner.queue.note_expired();
            continue;
        }
        let Job {
            ticket,
            pcm,
            rate,
            channels,
            translator,
            budget,
            reply,
        } = job;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(inner, ticket, &pcm, rate, channels, translator, &budget)
        }))
        .unwrap_or_else(|_| Err(TranslateError::Engine("a translate worker panicked".into())));
        if matches!(result, Err(TranslateError::Timeout(_))) && budget.is_spent() {
            inner.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        let _ = reply.send(result);
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// ASR → MT → TTS of one fragment.
fn run(
    inner: &Inner,
    ticket: Ticket,
    pcm: &[u8],
    rate: u32,
    channels: u32,
    translator: usize,
    budget: &Budget,
) -> Result<Translated, TranslateError> {
    let t0 = Instant::now();
    let samples = to_asr_input(pcm, rate, channels).map_err(TranslateError::Input)?;
    budget.check("speech recognition")?;
    let transcript = {
        let mut decoder = ticket.stream.decoder.lock();
        if decoder.is_none() {
            *decoder = Some(inner.engines.recognizer.new_decoder()?);
        }
        decoder
            .as_mut()
            .expect("set above")
            .decode_fragment(&samples, Some(ticket.seq), budget)?
    };
    inner.recognized.fetch_add(1, Ordering::Relaxed);
    {
        let mut log = inner.log.lock();
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(HandledFragment {
            stream_id: ticket.stream.id.clone(),
            sequence_number: ticket.seq,
            transcript: transcript.clone(),
        });
    }
    // The stream's next fragment may be recognised while this one is translated.
    drop(ticket);
    let asr = ms_since(t0);
    if transcript.trim().is_empty() {
        return Ok(Translated {
            rate,
            channels,
            pcm: vec![0; pcm.len()],
            transcript,
            translated_text: String::new(),
            timings: StageTimings {
                asr,
                ..Default::default()
            },
        });
    }
    let t1 = Instant::now();
    budget.check("translation")?;
    let deadline = budget.deadline();
    let mt = &inner.engines.translators[translator];
    let translated_text = mt.translate(&transcript, deadline)?;
    let translation = ms_since(t1);
    let t2 = Instant::now();
    budget.check("speech synthesis")?;
    let (samples, tts_rate) = inner.engines.voices.synthesize(
        &translated_text,
        mt.pair().target,
        mt.pair().voice,
        deadline,
    )?;
    let tts = ms_since(t2);
    Ok(Translated {
        rate: tts_rate,
        channels: 1,
        pcm: speech::bytes_of(&samples),
        transcript,
        translated_text,
        timings: StageTimings {
            asr,
            translation,
            tts,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_streams: usize, idle_ms: u64) -> TranslateConfig {
        TranslateConfig {
            max_streams,
            stream_idle: Duration::from_millis(idle_ms),
            ..Default::default()
        }
    }

    #[test]
    fn stream_table_evicts_idle_then_least_recently_used() {
        let mut table = StreamTable {
            map: HashMap::new(),
            evicted: 0,
        };
        let c = config(2, 1000);
        let t0 = Instant::now();
        let a = table.get("a", 0, t0, &c);
        table.get("b", 0, t0 + Duration::from_millis(10), &c);
        // Touching a makes b the least recently used.
        assert!(Arc::ptr_eq(
            &a,
            &table.get("a", 1, t0 + Duration::from_millis(20), &c)
        ));
        table.get("c", 0, t0 + Duration::from_millis(30), &c);
        let mut ids: Vec<_> = table.map.keys().cloned().collect();
        ids.sort();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(table.evicted, 1);
        // Past the idle time every stream goes.
        drop(a);
        table.get("d", 0, t0 + Duration::from_millis(1100), &c);
        assert_eq!(table.map.keys().collect::<Vec<_>>(), ["d"]);
        assert_eq!(table.evicted, 3);
        // But not one whose fragment is still being worked on (a request holds its entry).
        let busy = table.get("e", 0, t0 + Duration::from_millis(1200), &c);
        table.sweep(t0 + Duration::from_millis(5000), c.stream_idle);
        assert_eq!(table.map.keys().collect::<Vec<_>>(), ["e"]);
        drop(busy);
        table.sweep(t0 + Duration::from_millis(5000), c.stream_idle);
        assert!(table.map.is_empty());
    }

    #[test]
    fn new_streams_expect_zero_unless_joined_late() {
        let mut table = StreamTable {
            map: HashMap::new(),
            evicted: 0,
        };
        let c = config(8, 60_000);
        let now = Instant::now();
        assert_eq!(table.get("early", 3, now, &c).order.lock().next, 0);
        assert_eq!(table.get("late", 500, now, &c).order.lock().next, 500);
    }

    #[test]
    fn order_waits_for_every_predecessor() {
        let mut o = Order::starting_at(0);
        // 2 handled early (e.g. a silent fragment) does not let 1 pass before 0.
        o.handled(2);
        assert_eq!(o.next, 0);
        o.handled(0);
        assert_eq!(o.next, 1);
        o.handled(1);
        assert_eq!(o.next, 3);
        // A retry of a handled fragment changes nothing.
        o.handled(1);
        assert_eq!(o.next, 3);
        // 3 never comes: 5 gives up on it and on 4; 5 and 6 handled then.
        o.handled(6);
        o.skip_to(5);
        assert_eq!(o.next, 5);
        o.handled(5);
        assert_eq!(o.next, 7);
        // Handled fragments ahead of a gap are bounded.
        let mut o = Order::starting_at(0);
        for seq in 1..=(MAX_AHEAD as u64 + 1) {
            o.handled(seq);
        }
        assert_eq!(o.next, MAX_AHEAD as u64 + 2);
        assert!(o.ahead.is_empty());
    }

    #[test]
    fn config_validation() {
        assert!(TranslateConfig::default().validate().is_ok());
        let bad = TranslateConfig {
            queue_size: 0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("queue_size"));
    }
}
