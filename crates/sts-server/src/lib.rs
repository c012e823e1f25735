//! Reference STS (speech-to-speech translation) server: answers the wire contract of
//! [`dubbing_sts_proto`] with echo, tone or silence, and injects faults on demand.
//!
//! [`StsServer`] runs the server on its own tokio runtime in a background thread, so
//! synchronous tests can start it, steer it ([`StsServer::set_faults`],
//! [`StsServer::fault_for_sequence`], …), inspect what it received ([`StsServer::requests`]) and
//! stop it. The `sts-server` binary wraps the same type. HTTP/1.1 only.
//!
//! ```no_run
//! use dubbing_sts_server::{Faults, Mode, ServerConfig, StsServer};
//!
//! let srv = StsServer::start(ServerConfig { mode: Mode::Echo, ..Default::default() }).unwrap();
//! let url = srv.url(); // http://127.0.0.1:PORT/api/v1/sts/process
//! srv.fault_for_sequence(7, Faults { status: Some(503), ..Default::default() });
//! // … drive a client against `url` …
//! assert!(srv.request_count() > 0);
//! srv.stop();
//! ```

mod app;
pub mod audio;
mod faults;
mod limits;
pub mod listen_back;
mod schedule;
mod socketio;
pub mod speech;
mod translate;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use faults::{FaultKind, Faults, MAX_DURATION_FACTOR, MAX_OVERSIZE_BYTES, Mode};
pub use limits::{
    Limits, MAX_CHANNELS, MAX_FRAGMENT_ID_BYTES, MAX_LANGUAGE_BYTES, MAX_SAMPLE_RATE_HZ,
    MAX_STREAM_ID_BYTES, MAX_VOICE_PROFILE_BYTES,
};
pub use socketio::{COMPLETE_DISCONNECT, SioFaults, SioStats};
pub use translate::{
    EngineInfo, HandledFragment, LanguagePair, NEW_STREAM_WINDOW, TranslateConfig, TranslateStats,
};

/// Path of the process endpoint.
pub const PROCESS_PATH: &str = "/api/v1/sts/process";

/// How long [`StsServer::stop`] lets in-flight answers finish before dropping their
/// connections.
const STOP_GRACE: Duration = Duration::from_millis(250);
/// Process requests kept by [`StsServer::requests`] (the most recent ones).
pub const REQUEST_LOG_CAPACITY: usize = 1024;

/// Configuration of [`StsServer::start`]. Its `Debug` output hides the API key.
#[derive(Clone)]
pub struct ServerConfig {
    pub mode: Mode,
    /// Address to listen on; port 0 picks a free one.
    pub bind: SocketAddr,
    /// When set, process requests (and the admin endpoints) need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Serve the admin endpoints (`/admin/faults`, `/admin/stats`); off by default. On an
    /// address other than loopback they need `api_key` ([`StsServer::start`] refuses
    /// otherwise).
    pub admin: bool,
    /// What clients may send and how long they may take.
    pub limits: Limits,
    /// Global faults at start.
    pub faults: Faults,
    /// Settings of [`Mode::Translate`] (its engines are loaded at start when `mode` is
    /// `Translate`).
    pub translate: TranslateConfig,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("mode", &self.mode)
            .field("bind", &self.bind)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("admin", &self.admin)
            .field("limits", &self.limits)
            .field("faults", &self.faults)
            .field("translate", &self.translate)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            mode: Mode::Echo,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            api_key: None,
            admin: false,
            limits: Limits::default(),
            faults: Faults::default(),
            translate: TranslateConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Checks the limits and the admin rule: admin endpoints on a non-loopback address need an
    /// API key (anyone who can reach the port could otherwise make every answer fail).
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()?;
        if self.admin && self.api_key.is_none() && !self.bind.ip().is_loopback() {
            return Err(format!(
                "the admin endpoints (--admin) on {} need an API key (STS_API_KEY): \
                 without one anyone who reaches the port could inject faults",
                self.bind.ip()
            ));
        }
        Ok(())
    }
}

/// One process request as the server saw it. Fields taken from the body are empty (or `None`,
/// 0) when the body was not read (401, 408, 413) or not a valid request; strings are cut at
/// the field limits ([`Limits`]), header values at 1 KiB.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub fragment_id: String,
    pub stream_id: String,
    pub sequence_number: Option<u64>,
    /// Value of the `Authorization` header, as received (it holds the API key: never log it).
    pub authorization: Option<String>,
    /// Value of the `X-Request-ID` header.
    pub request_id: Option<String>,
    pub sample_rate_hz: u32,
    pub channels: u32,
    /// Frames in the request audio (from the base64 length).
    pub frames: u64,
    pub arrived: Instant,
    /// HTTP status answered; `None` while undecided or when no HTTP answer was given
    /// (`reset`, `hang`).
    pub status: Option<u16>,
    /// The fault that shaped the answer, if any.
    pub fault: Option<FaultKind>,
    /// `error.code` of a `status: "error"` answer.
    pub error_code: Option<String>,
}

/// Counters of process requests (also `GET /admin/stats`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub mode: Mode,
    pub total_requests: u64,
    /// Requests being handled now.
    pub in_flight: u64,
    /// Most requests handled at once since start.
    pub max_in_flight: u64,
    /// Answers per HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests given no HTTP answer (`reset`, `hang`).
    pub no_response: u64,
    /// Connections open now (every endpoint of the listener).
    pub open_connections: u64,
    /// Most connections open at once since start (at most `--max-connections`).
    pub max_open_connections: u64,
}

struct SequenceFault {
    faults: Faults,
    persistent: bool,
}

/// State shared by the handle and the handlers.
pub(crate) struct Shared {
    mode: Mutex<Mode>,
    faults: Mutex<Faults>,
    sequence_faults: Mutex<HashMap<u64, SequenceFault>>,
    api_key: Option<String>,
    admin: bool,
    limits: Limits,
    /// The most recent requests ([`REQUEST_LOG_CAPACITY`]), each with its number.
    requests: Mutex<VecDeque<(u64, RecordedRequest)>>,
    /// Signalled (with `requests`) on every request recorded and every answer decided.
    recorded: parking_lot::Condvar,
    /// Test hook: while true, process answers wait before they go out.
    held: tokio::sync::watch::Sender<bool>,
    total_requests: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
    no_response: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    connections: AtomicU64,
    max_connections: AtomicU64,
    shutdown: CancellationToken,
    /// The translate mode's engines and workers, when loaded at start.
    translate: Option<translate::TranslateService>,
    /// The Socket.IO side's faults and counters.
    sio: socketio::SioState,
}

impl Shared {
    fn new(config: ServerConfig, translate: Option<translate::TranslateService>) -> Self {
        Shared {
            mode: Mutex::new(config.mode),
            faults: Mutex::new(config.faults),
            sequence_faults: Mutex::default(),
            api_key: config.api_key,
            admin: config.admin,
            limits: config.limits,
            requests: Mutex::default(),
            recorded: parking_lot::Condvar::new(),
            held: tokio::sync::watch::Sender::new(false),
            total_requests: AtomicU64::new(0),
            by_status: Mutex::default(),
            no_response: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            max_connections: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            translate,
            sio: socketio::SioState::default(),
        }
    }

    /// The faults of a request: those scheduled for its sequence number (consuming a one-shot
    /// entry), else the global ones.
    fn faults_for(&self, sequence_number: Option<u64>) -> Faults {
        if let Some(seq) = sequence_number {
            let mut map = self.sequence_faults.lock();
            if let Some(entry) = map.get(&seq) {
                let faults = entry.faults.clone();
                if !entry.persistent {
                    map.remove(&seq);
                }
                return faults;
            }
        }
        self.faults.lock().clone()
    }

    /// Records a request (the oldest record goes past [`REQUEST_LOG_CAPACITY`]); returns its
    /// number for [`Shared::record_answer`].
    fn record(&self, request: RecordedRequest) -> u64 {
        let mut requests = self.requests.lock();
        let number = self.total_requests.fetch_add(1, Ordering::Relaxed);
        if requests.len() == REQUEST_LOG_CAPACITY {
            requests.pop_front();
        }
        requests.push_back((number, request));
        self.recorded.notify_all();
        number
    }

    /// While answers are held ([`StsServer::hold_answers`]), waits until they are released or
    /// the server stops; whether the answer may go out.
    pub(crate) async fn released(&self) -> bool {
        let mut held = self.held.subscribe();
        tokio::select! {
            r = held.wait_for(|h| !*h) => r.is_ok(),
            () = self.shutdown.cancelled() => false,
        }
    }

    fn record_answer(
        &self,
        number: u64,
        status: Option<u16>,
        fault: Option<FaultKind>,
        error_code: Option<String>,
    ) {
        match status {
            Some(s) => *self.by_status.lock().entry(s).or_default() += 1,
            None => {
                self.no_response.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut requests = self.requests.lock();
        self.recorded.notify_all();
        let first = requests.front().map_or(0, |(n, _)| *n);
        if let Some((_, r)) = number
            .checked_sub(first)
            .and_then(|i| requests.get_mut(i as usize))
        {
            r.status = status;
            r.fault = fault;
            r.error_code = error_code;
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            mode: *self.mode.lock(),
            total_requests: self.total_requests.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight.load(Ordering::Relaxed),
            by_status: self.by_status.lock().clone(),
            no_response: self.no_response.load(Ordering::Relaxed),
            open_connections: self.connections.load(Ordering::Relaxed),
            max_open_connections: self.max_connections.load(Ordering::Relaxed),
        }
    }
}

/// Counts a request as in flight for as long as it lives.
pub(crate) struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running reference server. Dropping it stops it.
pub struct StsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl StsServer {
    /// Binds (with `SO_REUSEADDR`, so a stopped server's port can be bound again at once) and
    /// starts serving on a background thread with its own tokio runtime.
    ///
    /// With [`Mode::Translate`] it first loads the speech engines (a few seconds); when they
    /// cannot be loaded the error (kind `NotFound` for a missing package) says which Debian
    /// package to install.
    ///
    /// Fails (kind `InvalidInput`) when the configuration is refused by
    /// [`ServerConfig::validate`].
    pub fn start(config: ServerConfig) -> std::io::Result<StsServer> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let translate = if config.mode == Mode::Translate {
            let service = translate::TranslateService::start(&config.translate).map_err(|e| {
                let kind = if e.contains("install the Debian package")
                    || e.contains("install it with scripts/install-deps.sh")
                {
                    std::io::ErrorKind::NotFound
                } else {
                    std::io::ErrorKind::Other
                };
                std::io::Error::new(kind, format!("translate mode unavailable: {e}"))
            })?;
            Some(service)
        } else {
            None
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sts-server-worker")
            .enable_all()
            .build()?;
        let listener = {
            let _guard = runtime.enter();
            bind(config.bind).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.bind))
            })?
        };
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, translate));
        // Socket.IO at /socket.io/ on the same port (crate::socketio).
        let router = app::router(shared.clone()).layer(socketio::layer(shared.clone()));
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sts-server-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(serve(listener, router, serving));
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(StsServer {
            addr,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the root of the health and admin endpoints.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// URL of the process endpoint: `http://ADDR/api/v1/sts/process`.
    pub fn url(&self) -> String {
        format!("http://{}{PROCESS_PATH}", self.addr)
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.lock()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock() = mode;
    }

    /// The global faults.
    pub fn faults(&self) -> Faults {
        self.shared.faults.lock().clone()
    }

    /// Replaces the global faults (applied to requests arriving from now on).
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock() = faults;
    }

    /// Uses `faults` instead of the global ones for the next request with this sequence number
    /// (one-shot). Replaces what was scheduled for it.
    pub fn fault_for_sequence(&self, sequence_number: u64, faults: Faults) {
        self.schedule(sequence_number, faults, false);
    }

    /// Uses `faults` instead of the global ones for every request with this sequence number
    /// (e.g. all retries of a fragment), until [`clear_sequence_faults`](Self::clear_sequence_faults).
    pub fn fault_for_sequence_persistent(&self, sequence_number: u64, faults: Faults) {
        self.schedule(sequence_number, faults, true);
    }

    /// Drops every per-sequence fault.
    pub fn clear_sequence_faults(&self) {
        self.shared.sequence_faults.lock().clear();
    }

    fn schedule(&self, sequence_number: u64, faults: Faults, persistent: bool) {
        self.shared
            .sequence_faults
            .lock()
            .insert(sequence_number, SequenceFault { faults, persistent });
    }

    /// The process requests received so far, in arrival order: the last
    /// [`REQUEST_LOG_CAPACITY`] of them.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Process requests received since start.
    pub fn request_count(&self) -> usize {
        self.shared.total_requests.load(Ordering::Relaxed) as usize
    }

    /// Blocks until at least `n` process requests were received since start (HTTP and
    /// Socket.IO), at most `timeout`; whether they were. For tests: wait for what the server
    /// saw instead of sleeping.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut requests = self.shared.requests.lock();
        while self.request_count() < n {
            if self
                .shared
                .recorded
                .wait_until(&mut requests, until)
                .timed_out()
            {
                break;
            }
        }
        self.request_count() >= n
    }

    /// Blocks until the answers to at least `n` HTTP process requests were decided (a status,
    /// or none for `hang` and `reset`), at most `timeout`; whether they were. An answer is
    /// decided just before it is sent.
    pub fn wait_for_answers(&self, n: u64, timeout: Duration) -> bool {
        let decided = |s: &Shared| {
            s.by_status.lock().values().sum::<u64>() + s.no_response.load(Ordering::Relaxed)
        };
        let until = Instant::now() + timeout;
        let mut requests = self.shared.requests.lock();
        while decided(&self.shared) < n {
            if self
                .shared
                .recorded
                .wait_until(&mut requests, until)
                .timed_out()
            {
                break;
            }
        }
        decided(&self.shared) >= n
    }

    /// Test hook: `true` holds every HTTP process answer (after its fault delay) until `false`
    /// releases them, so that a test decides when answers arrive. Held answers of a stopping
    /// server are never sent.
    pub fn hold_answers(&self, held: bool) {
        self.shared.held.send_replace(held);
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Counters of the translate mode (`None` when its engines were not loaded).
    pub fn translate_stats(&self) -> Option<TranslateStats> {
        self.shared.translate.as_ref().map(|t| t.stats())
    }

    /// The fragments recognised so far (the last 4096), in the order the recogniser handled
    /// them: per stream, that is `sequence_number` order even when requests arrive out of
    /// order.
    pub fn translate_log(&self) -> Vec<HandledFragment> {
        self.shared
            .translate
            .as_ref()
            .map(|t| t.log())
            .unwrap_or_default()
    }

    /// The streams whose recogniser state is kept now, sorted.
    pub fn translate_streams(&self) -> Vec<String> {
        self.shared
            .translate
            .as_ref()
            .map(|t| t.stream_ids())
            .unwrap_or_default()
    }

    /// The language pairs the translate mode serves (empty when its engines were not loaded).
    pub fn language_pairs(&self) -> Vec<LanguagePair> {
        self.shared
            .translate
            .as_ref()
            .map(|t| t.language_pairs())
            .unwrap_or_default()
    }

    /// The engines the translate mode runs (`None` when its engines were not loaded).
    pub fn translate_engines(&self) -> Option<EngineInfo> {
        self.shared.translate.as_ref().map(|t| t.engines())
    }

    /// Test hook: kills the translate mode's Whisper helper process as a crash would (the
    /// server restarts it). Returns whether there was one.
    pub fn kill_recognizer_helper(&self) -> bool {
        self.shared
            .translate
            .as_ref()
            .is_some_and(|t| t.kill_recognizer_helper())
    }

    /// Test hook: while paused, the translate workers take a fragment each from the queue and
    /// hold it without working on it, so a test can fill the queue deterministically.
    pub fn set_translate_paused(&self, paused: bool) {
        if let Some(t) = &self.shared.translate {
            t.set_paused(paused);
        }
    }

    /// Stops accepting, lets in-flight answers finish for a short grace period (250 ms), then
    /// closes every connection (hung requests get no answer). Returns within about 0.4 s.
    /// Idempotent; the port can be bound again once it returns.
    /// Faults of the Socket.IO side (see [`SioFaults`]).
    pub fn set_sio_faults(&self, faults: SioFaults) {
        *self.shared.sio.faults.lock() = faults;
    }

    /// Blocks until clients sent at least `n` `fragment:ack`s over Socket.IO (a client acks
    /// each `fragment:processed` once it has it, so the last ack may arrive after the answer
    /// was used), at most `timeout`; whether they did.
    pub fn wait_for_client_acks(&self, n: u64, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut stats = self.shared.sio.stats.lock();
        while stats.client_acks < n {
            if self
                .shared
                .sio
                .acked
                .wait_until(&mut stats, until)
                .timed_out()
            {
                break;
            }
        }
        stats.client_acks >= n
    }

    /// What the Socket.IO side saw.
    pub fn sio_stats(&self) -> SioStats {
        self.shared.sio.stats.lock().clone()
    }

    /// The Socket.IO base URL (`url` of `stsbridge protocol=socketio`).
    pub fn sio_url(&self) -> String {
        self.base_url()
    }

    pub fn stop(&self) {
        self.shared.shutdown.cancel();
        // Work in progress stops at its next step, so the workers can be joined at once.
        if let Some(t) = &self.shared.translate {
            t.cancel_all();
        }
        if let Some(thread) = self.thread.lock().take()
            && thread.join().is_err()
        {
            tracing::error!("sts-server thread panicked");
        }
        if let Some(t) = &self.shared.translate {
            t.shutdown();
        }
    }
}

impl Drop for StsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for StsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The open connections, oldest first, for [`serve`] to pick one to close at the cap.
type Registry = Arc<Mutex<BTreeMap<u64, ConnectionControl>>>;

/// Accept loop: one task per connection until `shutdown`, then a bounded graceful drain.
///
/// At most `limits.max_connections` are open at once (every endpoint served from the listener
/// counts). A connection accepted at the cap closes the oldest connection that has not yet
/// delivered a whole request (one sending its head or body slowly, or opened and left), so a
/// flood of slow or idle connections cannot lock real clients out; when every open connection
/// is a client's (a request received, or answered before), it waits for one to close.
async fn serve(listener: TcpListener, router: axum::Router, shared: Arc<Shared>) {
    let shutdown = shared.shutdown.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(shared.limits.max_connections));
    let registry: Registry = Arc::default();
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // EMFILE and friends: wait for descriptors to be freed.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let victim = registry.lock().values().find(|c| !c.is_trusted()).cloned();
                match victim {
                    Some(c) => {
                        tracing::debug!("at the connection cap: closing the oldest unfinished one");
                        c.kill();
                    }
                    None => tracing::debug!("at the connection cap: waiting for one to close"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => {
                        slot.expect("the semaphore is never closed")
                    }
                }
            }
        };
        let id = next_id;
        next_id += 1;
        let control = ConnectionControl {
            kill: CancellationToken::new(),
            trusted: Arc::default(),
        };
        registry.lock().insert(id, control.clone());
        let open = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        shared.max_connections.fetch_max(open, Ordering::Relaxed);
        let (shared, router, registry) = (shared.clone(), router.clone(), registry.clone());
        connections.spawn(async move {
            serve_connection(stream, router, &shared, control).await;
            registry.lock().remove(&id);
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            "closing {} connection(s) still busy after the grace period",
            connections.len()
        );
    }
    connections.shutdown().await;
}

/// Lets a handler drop its connection without answering, and mark it as a real client's.
#[derive(Clone)]
pub(crate) struct ConnectionControl {
    kill: CancellationToken,
    /// Set once the connection delivered a whole request: it is no longer a candidate for
    /// closing at the connection cap.
    trusted: Arc<std::sync::atomic::AtomicBool>,
}

impl ConnectionControl {
    /// Closes the connection at once, whatever it is doing.
    pub(crate) fn kill(&self) {
        self.kill.cancel();
    }

    /// The connection delivered a whole request.
    pub(crate) fn trust(&self) {
        self.trusted.store(true, Ordering::Relaxed);
    }

    fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Relaxed)
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: axum::Router,
    shared: &Shared,
    control: ConnectionControl,
) {
    use futures::FutureExt as _;
    use tower::ServiceExt as _;

    let shutdown = shared.shutdown.clone();
    let kill = control.kill.clone();
    let service = hyper::service::service_fn(move |mut request| {
        request.extensions_mut().insert(control.clone());
        let answered = control.clone();
        // A request answered (its body read, when it has one) makes the connection a client's.
        router
            .clone()
            .oneshot(request)
            .inspect(move |_| answered.trust())
    });
    // The head of every request (and the idle time of a kept-alive connection) is bounded by
    // `header_timeout`, its size by MAX_HEAD_BYTES; the body's time is bounded by the handler.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .max_buf_size(limits::MAX_HEAD_BYTES)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        // The Socket.IO websocket.
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = kill.cancelled() => return,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                _ = kill.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}
