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
mod socketio;
pub mod speech;
mod translate;

use std::collections::{BTreeMap, HashMap};
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
pub use socketio::{COMPLETE_DISCONNECT, SioFaults, SioStats};
pub use translate::{
    HandledFragment, LanguagePair, NEW_STREAM_WINDOW, TranslateConfig, TranslateStats,
};

/// Path of the process endpoint.
pub const PROCESS_PATH: &str = "/api/v1/sts/process";

/// How long [`StsServer::stop`] lets in-flight answers finish before dropping their
/// connections.
const STOP_GRACE: Duration = Duration::from_millis(250);

/// Configuration of [`StsServer::start`]. Its `Debug` output hides the API key.
#[derive(Clone)]
pub struct ServerConfig {
    pub mode: Mode,
    /// Address to listen on; port 0 picks a free one.
    pub bind: SocketAddr,
    /// When set, process requests (and the admin endpoints) need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
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
            faults: Faults::default(),
            translate: TranslateConfig::default(),
        }
    }
}

/// One process request as the server saw it. Fields taken from the body are empty (or `None`,
/// 0) when the body was not a valid request.
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
    requests: Mutex<Vec<RecordedRequest>>,
    by_status: Mutex<BTreeMap<u16, u64>>,
    no_response: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
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
            requests: Mutex::default(),
            by_status: Mutex::default(),
            no_response: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
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

    /// Records a request; returns its index for [`Shared::record_answer`].
    fn record(&self, request: RecordedRequest) -> usize {
        let mut requests = self.requests.lock();
        requests.push(request);
        requests.len() - 1
    }

    fn record_answer(
        &self,
        index: usize,
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
        if let Some(r) = self.requests.lock().get_mut(index) {
            r.status = status;
            r.fault = fault;
            r.error_code = error_code;
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            mode: *self.mode.lock(),
            total_requests: self.requests.lock().len() as u64,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight.load(Ordering::Relaxed),
            by_status: self.by_status.lock().clone(),
            no_response: self.no_response.load(Ordering::Relaxed),
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
    pub fn start(config: ServerConfig) -> std::io::Result<StsServer> {
        let translate = if config.mode == Mode::Translate {
            let service = translate::TranslateService::start(&config.translate).map_err(|e| {
                let kind = if e.contains("install the Debian package") {
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
        let shutdown = shared.shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sts-server-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(serve(listener, router, shutdown));
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

    /// Every process request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().len()
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

/// Accept loop: one task per connection until `shutdown`, then a bounded graceful drain.
async fn serve(listener: TcpListener, router: axum::Router, shutdown: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, router.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
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

/// Lets a handler drop its connection without answering.
#[derive(Clone)]
pub(crate) struct ConnectionControl {
    kill: CancellationToken,
}

impl ConnectionControl {
    /// Closes the connection at once, whatever it is doing.
    pub(crate) fn kill(&self) {
        self.kill.cancel();
    }
}

async fn serve_connection(stream: TcpStream, router: axum::Router, shutdown: CancellationToken) {
    use tower::ServiceExt as _;

    let control = ConnectionControl {
        kill: CancellationToken::new(),
    };
    let kill = control.kill.clone();
    let service = hyper::service::service_fn(move |mut request| {
        request.extensions_mut().insert(control.clone());
        router.clone().oneshot(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
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
