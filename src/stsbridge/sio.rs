//! The Socket.IO side of `stsbridge`: the thin glue between the session state machine
//! ([`super::session`]) and a Socket.IO client, and the per-fragment request path (encode,
//! submit, judge the answer, retry) that mirrors the HTTP one in [`super::client`].
//!
//! ## The client crate
//! `tf-rust-socketio` (async), the maintained fork of `rust_socketio`, whose 0.6 release (2024)
//! is its last. Both speak Socket.IO v5 / Engine.IO v4 over a websocket; the limitations the
//! original has (no answer to server-requested acks, binary attachments) do not matter here:
//! audio travels as base64 inside JSON and acknowledgements are events. What decided: the fork
//! reports a transport that closes without a Socket.IO DISCONNECT (a killed or unreachable
//! server) as a `close` event, which the original swallows silently with reconnection off; we
//! need it to reconnect with our own backoff and re-init. The fork runs each event callback
//! as its own task, so two events may in principle be handled out of order: nothing here
//! depends on their order (answers are matched by fragment id; the element's queue orders the
//! output; a stale `pause` expires by itself).
//!
//! ## Threads
//! One driver task per element instance, on the plugin's tokio runtime, owns the state
//! machine, the client and the reply channels; everything else talks to it through one
//! channel. Emits are awaited in the driver, one after the other, so `fragment:data` go out in
//! sequence order. Client callbacks only parse and forward (they hold a weak sender: the
//! driver ends when the element drops its handle).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dubbing_sts_proto::Retry;
use futures::FutureExt as _;
use serde_json::{Value, json};
use tf_rust_socketio::asynchronous::{Client, ClientBuilder};
use tf_rust_socketio::{Event, Payload, TransportType};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// The Socket.IO glue's own debug category (`GST_DEBUG=stsbridge-sio:6`).
static CAT: std::sync::LazyLock<gst::DebugCategory> = std::sync::LazyLock::new(|| {
    gst::DebugCategory::new(
        "stsbridge-sio",
        gst::DebugColorFlags::empty(),
        Some("stsbridge's Socket.IO session"),
    )
});

use super::client::{Answer, ClientConfig, Job, Observer, Secret};
use super::codec::{self, WireFormat};
use super::convert::{Format, convert};
use super::response::{Dubbed, Failure, MAX_OVERRUN, Reason};
use super::retry::{retry_delay, retry_fits};
use super::session::{
    Action, AudioConfig, Config, ConnId, Input, Key, Processed, Reply, ServerEvent, Session,
    Submit, WireAudio, classify,
};

/// Events the client listens to.
const EVENTS: [&str; 5] = [
    "stream:ready",
    "fragment:ack",
    "fragment:processed",
    "backpressure",
    "stream:complete",
];

/// What the session tells the element.
#[derive(Debug, Clone)]
pub enum Notice {
    /// `stream:ready` granted this many fragments in flight.
    Granted(u32),
    /// The server refused the session or a fragment for good (once per code).
    Refused { code: String, message: String },
    /// The session went up or down.
    Up(bool),
}

/// Live state of the session, for `stats`.
#[derive(Debug, Default)]
pub struct Status {
    pub up: AtomicBool,
    pub granted: AtomicU32,
    pub sessions: AtomicU64,
    pub reconnects: AtomicU64,
    pub resent: AtomicU64,
    pub backpressure: AtomicU64,
    pub errors: AtomicU64,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct ConnectConfig {
    /// The server's base URL (`/socket.io/` is added when the path is `/`).
    pub url: String,
    /// Sent as `auth: {token}` when set; never logged.
    pub api_key: Secret,
    /// Extra CA certificates (PEM) for an https:// URL.
    pub ca_pem: Option<Vec<u8>>,
    /// Bound on connecting (handshake and the namespace's CONNECT).
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("url", &super::client::redact_url(&self.url))
            .field("api_key", &self.api_key)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

enum Msg {
    Input(Input),
    Submit(Submit, oneshot::Sender<Reply>),
    Client(ConnId, Client),
}

/// How long [`SessionHandle::close_and_join`] lets the driver end cleanly (`stream:end`,
/// disconnect) before aborting it.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// How long it then waits for the aborted driver to be dropped.
const ABORT_JOIN: Duration = Duration::from_millis(200);

/// Set when the driver's future is dropped: it ended, or an abort dropped it (its clients and
/// helper tasks with it).
#[derive(Debug, Default)]
struct Ended {
    done: parking_lot::Mutex<bool>,
    cond: parking_lot::Condvar,
}

impl Ended {
    /// Blocks until the driver ended, at most `bound`; whether it did.
    fn wait(&self, bound: Duration) -> bool {
        let until = Instant::now() + bound;
        let mut done = self.done.lock();
        while !*done {
            if self.cond.wait_until(&mut done, until).timed_out() {
                break;
            }
        }
        *done
    }
}

/// Held by the driver's future: its drop signals [`Ended`].
struct EndGuard(Arc<Ended>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        *self.0.done.lock() = true;
        self.0.cond.notify_all();
    }
}

/// The element's handle on its session. Dropping it closes the session.
#[derive(Debug)]
pub struct SessionHandle {
    tx: mpsc::UnboundedSender<Msg>,
    keys: AtomicU64,
    pub status: Arc<Status>,
    ended: Arc<Ended>,
    driver: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl SessionHandle {
    /// Starts the session's driver on `rt`: it connects at once.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        cfg: Config,
        connect: ConnectConfig,
        notify: Arc<dyn Fn(Notice) + Send + Sync>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(Status::default());
        let weak = tx.downgrade();
        let st = status.clone();
        let ended = Arc::new(Ended::default());
        let guard = EndGuard(ended.clone());
        let driver = rt.spawn(async move {
            let _ended = guard;
            Driver {
                sm: Session::new(cfg, Instant::now()),
                rx,
                weak,
                connect,
                status: st,
                notify,
                waiters: HashMap::new(),
                clients: HashMap::new(),
                refused: HashSet::new(),
                connecting: JoinSet::new(),
                closing: JoinSet::new(),
            }
            .run()
            .await;
        });
        SessionHandle {
            tx,
            keys: AtomicU64::new(1),
            status,
            ended,
            driver: driver.abort_handle(),
        }
    }

    /// End of stream: `stream:end` once everything sent is answered.
    pub fn end(&self) {
        let _ = self.tx.send(Msg::Input(Input::End));
    }

    /// A flushing seek: this session is closed cleanly, the next fragment opens a new one.
    pub fn flush(&self) {
        let _ = self.tx.send(Msg::Input(Input::Flush));
    }

    /// Closes the session for good (`stream:end` if it was up, then disconnect).
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Input(Input::Close));
    }

    /// Closes the session and waits for its driver to end: cleanly within [`CLOSE_GRACE`],
    /// else it is aborted (its sockets dropped) and waited for at most [`ABORT_JOIN`]. Whether
    /// it ended. Blocks: call it from a GStreamer thread, never from the runtime.
    pub fn close_and_join(&self) -> bool {
        self.close();
        if self.ended.wait(CLOSE_GRACE) {
            return true;
        }
        gst::debug!(
            CAT,
            "the session did not close within {CLOSE_GRACE:?}: aborted"
        );
        self.driver.abort();
        self.ended.wait(ABORT_JOIN)
    }

    /// Submits a fragment and waits for its reply (the session guarantees one by the
    /// deadline or within `timeout` of its last sending; `safety` bounds the wait anyway).
    async fn submit(&self, mut s: Submit, safety: Duration) -> Reply {
        let key = self.keys.fetch_add(1, Ordering::Relaxed);
        s.key = key;
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Submit(s, tx)).is_err() {
            return Reply {
                result: Err(Failure::new(
                    Reason::Transport,
                    Retry::Permanent,
                    "session closed",
                )),
                emitted: 0,
                rtt: None,
            };
        }
        // Withdrawn if this task is aborted (flush) before its answer.
        struct Cancel<'a>(&'a mpsc::UnboundedSender<Msg>, Key, bool);
        impl Drop for Cancel<'_> {
            fn drop(&mut self) {
                if !self.2 {
                    let _ = self.0.send(Msg::Input(Input::Cancel(self.1)));
                }
            }
        }
        let mut guard = Cancel(&self.tx, key, false);
        let reply = match tokio::time::timeout(safety, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Reply {
                result: Err(Failure::new(
                    Reason::Transport,
                    Retry::Permanent,
                    "session closed",
                )),
                emitted: 0,
                rtt: None,
            },
            Err(_) => Reply {
                result: Err(Failure::new(
                    Reason::Timeout,
                    Retry::Retryable,
                    "no reply from the session",
                )),
                emitted: 0,
                rtt: None,
            },
        };
        guard.2 = true;
        reply
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Input(Input::Close));
    }
}

struct Driver {
    sm: Session,
    rx: mpsc::UnboundedReceiver<Msg>,
    weak: mpsc::WeakUnboundedSender<Msg>,
    connect: ConnectConfig,
    status: Arc<Status>,
    notify: Arc<dyn Fn(Notice) + Send + Sync>,
    waiters: HashMap<Key, oneshot::Sender<Reply>>,
    clients: HashMap<ConnId, Client>,
    refused: HashSet<String>,
    /// Connections being made (aborted when the session ends).
    connecting: JoinSet<()>,
    /// Connections being closed (awaited when the session ends, each bounded).
    closing: JoinSet<()>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            self.execute().await;
            // Reap the helpers that ended.
            while self.connecting.try_join_next().is_some() {}
            while self.closing.try_join_next().is_some() {}
            if self.sm.is_closed() && self.clients.is_empty() {
                break;
            }
            let timer = self.sm.next_timer();
            let sleep = async {
                match timer {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = self.rx.recv() => match m {
                    None => {
                        self.sm.handle(Instant::now(), Input::Close);
                        self.execute().await;
                        break;
                    }
                    Some(Msg::Submit(s, w)) => {
                        self.waiters.insert(s.key, w);
                        self.sm.handle(Instant::now(), Input::Submit(s));
                    }
                    Some(Msg::Client(c, client)) => {
                        self.clients.insert(c, client);
                        self.sm.handle(Instant::now(), Input::Connected(c));
                    }
                    Some(Msg::Input(i)) => self.sm.handle(Instant::now(), i),
                },
                _ = sleep => self.sm.tick(Instant::now()),
            }
        }
        self.connecting.abort_all();
        for (_, c) in self.clients.drain() {
            let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
        }
        // Every helper ends with the session: connects aborted, disconnects done.
        while self.connecting.join_next().await.is_some() {}
        while self.closing.join_next().await.is_some() {}
    }

    async fn execute(&mut self) {
        loop {
            let actions = self.sm.take_actions();
            if actions.is_empty() {
                break;
            }
            for a in actions {
                self.act(a).await;
            }
        }
        let st = self.sm.stats();
        self.status.sessions.store(st.sessions, Ordering::Relaxed);
        self.status
            .reconnects
            .store(st.reconnects, Ordering::Relaxed);
        self.status.resent.store(st.resent, Ordering::Relaxed);
        self.status
            .backpressure
            .store(st.backpressure, Ordering::Relaxed);
        self.status.errors.store(st.errors, Ordering::Relaxed);
    }

    async fn act(&mut self, a: Action) {
        match a {
            Action::Connect(c) => self.spawn_connect(c),
            Action::Disconnect(c) => {
                if let Some(client) = self.clients.remove(&c) {
                    self.closing.spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), client.disconnect()).await;
                    });
                }
            }
            Action::Emit { conn, event, data } => {
                let Some(client) = self.clients.get(&conn).cloned() else {
                    return;
                };
                let sent =
                    tokio::time::timeout(self.connect.connect_timeout, client.emit(event, data))
                        .await;
                let err = match sent {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "emit timed out".to_owned(),
                };
                gst::debug!(CAT, "emit {event} failed: {err}");
                self.sm.handle(
                    Instant::now(),
                    Input::Disconnected(conn, format!("emit {event}: {err}")),
                );
            }
            Action::Reply { key, reply } => {
                if let Some(w) = self.waiters.remove(&key) {
                    let _ = w.send(reply.0);
                }
            }
            Action::Up(up) => {
                self.status.up.store(up, Ordering::Relaxed);
                (self.notify)(Notice::Up(up));
            }
            Action::Granted(n) => {
                self.status.granted.store(n, Ordering::Relaxed);
                (self.notify)(Notice::Granted(n));
            }
            Action::Refused { code, message } => {
                if self.refused.insert(code.clone()) {
                    (self.notify)(Notice::Refused { code, message });
                }
            }
        }
    }

    fn spawn_connect(&mut self, c: ConnId) {
        let weak = self.weak.clone();
        let cfg = self.connect.clone();
        self.connecting.spawn(async move {
            let (up_tx, up_rx) = oneshot::channel::<()>();
            let result = tokio::time::timeout(cfg.connect_timeout, async {
                let client = builder(&cfg, c, weak.clone(), up_tx)?
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                // The namespace's CONNECT answer: only then do events reach the handlers.
                match up_rx.await {
                    Ok(()) => Ok(client),
                    Err(_) => Err("no Socket.IO CONNECT answer".to_owned()),
                }
            })
            .await
            .unwrap_or_else(|_| Err("connection timed out".to_owned()));
            let Some(tx) = weak.upgrade() else { return };
            let _ = match result {
                Ok(client) => tx.send(Msg::Client(c, client)),
                Err(e) => tx.send(Msg::Input(Input::ConnectFailed(c, e))),
            };
        });
    }
}

fn forward(weak: &mpsc::WeakUnboundedSender<Msg>, m: Msg) {
    if let Some(tx) = weak.upgrade() {
        let _ = tx.send(m);
    }
}

fn first_value(p: Payload) -> Option<Value> {
    match p {
        Payload::Text(values, _) => values.into_iter().next(),
        #[allow(deprecated)]
        Payload::String(s, _) => serde_json::from_str(&s).ok(),
        Payload::Binary(..) => None,
    }
}

/// The client of connection `c`: every event forwarded, tagged with `c`.
fn builder(
    cfg: &ConnectConfig,
    c: ConnId,
    weak: mpsc::WeakUnboundedSender<Msg>,
    up: oneshot::Sender<()>,
) -> Result<ClientBuilder, String> {
    let url = super::client::without_credentials(&cfg.url);
    let mut b = ClientBuilder::new(url)
        .namespace("/")
        .transport_type(TransportType::Websocket)
        // Reconnecting is the session's decision (new session, numbers from 0).
        .reconnect(false)
        .reconnect_on_disconnect(false);
    if !cfg.api_key.is_empty() {
        b = b.auth(json!({ "token": cfg.api_key.expose() }));
    }
    if let Some(pem) = &cfg.ca_pem {
        let mut tls = native_tls::TlsConnector::builder();
        let text = String::from_utf8_lossy(pem);
        for block in text.split_inclusive("-----END CERTIFICATE-----") {
            if let Ok(cert) = native_tls::Certificate::from_pem(block.trim().as_bytes()) {
                tls.add_root_certificate(cert);
            }
        }
        b = b.tls_config(tls.build().map_err(|e| format!("TLS: {e}"))?);
    }
    for name in EVENTS {
        let weak = weak.clone();
        b = b.on(name, move |p: Payload, _| {
            let weak = weak.clone();
            async move {
                let Some(v) = first_value(p) else { return };
                match ServerEvent::parse(name, v) {
                    Ok(Some(ev)) => forward(&weak, Msg::Input(Input::Event(c, ev))),
                    Ok(None) => {}
                    Err(e) => gst::debug!(CAT, "unusable {name} event: {e}"),
                }
            }
            .boxed()
        });
    }
    // The server's `error` event and the client's own errors share the name.
    let w = weak.clone();
    b = b.on(Event::Error, move |p: Payload, _| {
        let weak = w.clone();
        async move {
            match first_value(p) {
                Some(v @ Value::Object(_)) => {
                    if let Ok(Some(ev)) = ServerEvent::parse("error", v) {
                        forward(&weak, Msg::Input(Input::Event(c, ev)));
                    }
                }
                other => gst::debug!(CAT, "socket.io client error: {other:?}"),
            }
        }
        .boxed()
    });
    let up = std::sync::Mutex::new(Some(up));
    b = b.on(Event::Connect, move |_, _| {
        if let Some(tx) = up.lock().ok().and_then(|mut u| u.take()) {
            let _ = tx.send(());
        }
        async {}.boxed()
    });
    let w = weak;
    b = b.on(Event::Close, move |p: Payload, _| {
        let weak = w.clone();
        async move {
            let why = match first_value(p) {
                Some(Value::String(s)) if !s.is_empty() => s,
                _ => "closed".to_owned(),
            };
            forward(&weak, Msg::Input(Input::Disconnected(c, why)));
        }
        .boxed()
    });
    Ok(b)
}

/// The protocol and session fields of `stats`.
pub fn stats_fields(s: &mut gst::Structure, socketio: bool, status: Option<&Status>) {
    s.set("protocol", if socketio { "socketio" } else { "http" });
    if !socketio {
        return;
    }
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let d = Status::default();
    let st = status.unwrap_or(&d);
    s.set("session-up", st.up.load(Ordering::Relaxed));
    s.set("sessions", load(&st.sessions));
    s.set("reconnects", load(&st.reconnects));
    s.set("resent", load(&st.resent));
    s.set("granted-in-flight", st.granted.load(Ordering::Relaxed));
    s.set("backpressure-events", load(&st.backpressure));
    s.set("error-events", load(&st.errors));
}

/// What a fragment needs besides its job.
#[derive(Debug, Clone)]
pub struct SioJob {
    pub wire_format: WireFormat,
    pub chunk_duration_ms: u64,
    pub pts_ns: Option<u64>,
}

/// Judges a `fragment:processed`: a failure classified by its code, or the dubbed audio
/// decoded and converted to the stream's format (at most the fragment plus
/// [`MAX_OVERRUN`]).
pub fn judge_processed(
    p: &Processed,
    fragment_id: &str,
    stream: Format,
    frames: usize,
) -> Result<Dubbed, Failure> {
    if p.fragment_id != fragment_id {
        return Err(Failure::new(
            Reason::InvalidOutput,
            Retry::Retryable,
            format!(
                "answer is for fragment {} instead of {fragment_id}",
                p.fragment_id
            ),
        ));
    }
    let audio = match (&p.dubbed_audio, p.status.as_str()) {
        (Some(a), "success" | "partial") => a,
        (_, "success" | "partial") => {
            return Err(Failure::new(
                Reason::InvalidOutput,
                Retry::Retryable,
                format!("{} without dubbed_audio", p.status),
            ));
        }
        _ => {
            let (code, message, retryable) = match &p.error {
                Some(e) => (e.code.as_str(), e.message.as_str(), e.retryable),
                None => ("UNKNOWN", "failed without an error object", None),
            };
            return Err(Failure::new(
                Reason::StsError,
                classify(code, retryable),
                format!("{code}: {message}"),
            ));
        }
    };
    let fragment_s = frames as f64 / f64::from(stream.rate.max(1));
    let max_s = fragment_s + MAX_OVERRUN.as_secs_f64();
    let decoded = codec::decode(
        &audio.format,
        audio.sample_rate_hz,
        audio.channels,
        &audio.data_base64,
        max_s,
    )
    .map_err(|e| {
        Failure::new(
            Reason::InvalidOutput,
            Retry::Retryable,
            format!("dubbed audio ({}): {e}", audio.format),
        )
    })?;
    let from = decoded.format;
    let max_frames = (max_s * f64::from(from.rate)) as usize;
    let mut samples = decoded.samples;
    let have = samples.len() / from.channels as usize;
    let cut = have.saturating_sub(max_frames);
    samples.truncate(have.min(max_frames) * from.channels as usize);
    let samples = convert(samples, from, stream).map_err(|e| {
        Failure::new(
            Reason::InvalidOutput,
            Retry::Retryable,
            format!("dubbed audio: {e}"),
        )
    })?;
    Ok(Dubbed {
        samples,
        cut_frames: (cut as u128 * u128::from(stream.rate) / u128::from(from.rate)) as u64,
        transcript: p.transcript.clone(),
        translated_text: p.translated_text.clone(),
        processing_time_ms: p.processing_time_ms,
    })
}

/// A fragment's audio in the wire format, encoded (once: a resend after a reconnect sends
/// the same).
pub fn prepare(job: &Job, sio: &SioJob, samples: &[i16]) -> Result<Arc<WireAudio>, Failure> {
    let converted;
    let wire: &[i16] = if job.wire == job.stream {
        samples
    } else {
        converted = convert(samples.to_vec(), job.stream, job.wire)
            .map_err(|e| Failure::new(Reason::InvalidOutput, Retry::Permanent, e.0))?;
        &converted
    };
    let frames = wire.len() as u64 / u64::from(job.wire.channels.max(1));
    Ok(Arc::new(WireAudio {
        config: AudioConfig {
            format: sio.wire_format.as_str(),
            sample_rate_hz: job.wire.rate,
            channels: job.wire.channels,
            chunk_duration_ms: sio.chunk_duration_ms,
        },
        duration_ms: dubbing_sts_proto::duration_ms(frames, job.wire.rate),
        data_base64: codec::encode(wire, job.wire, sio.wire_format),
    }))
}

/// Sends a fragment through the session, retrying retryable failures with backoff up to
/// `max_retries` times within the deadline, like [`super::client::process`] does over HTTP.
pub async fn process(
    session: &SessionHandle,
    cfg: &ClientConfig,
    job: &Job,
    sio: &SioJob,
    audio: Arc<WireAudio>,
    obs: &dyn Observer,
) -> Answer {
    let deadline = job.deadline.unwrap_or_else(|| Instant::now() + cfg.timeout);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let safety = deadline.saturating_duration_since(Instant::now())
            + cfg.timeout
            + Duration::from_secs(2);
        let reply = session
            .submit(
                Submit {
                    key: 0,
                    fragment_id: job.fragment_id.clone(),
                    deadline,
                    audio: audio.clone(),
                    pts_ns: sio.pts_ns,
                },
                safety,
            )
            .await;
        for _ in 0..reply.emitted {
            obs.attempt_started();
        }
        if let Some(rtt) = reply.rtt {
            obs.attempt_finished(rtt);
        }
        let result = reply
            .result
            .and_then(|p| judge_processed(&p, &job.fragment_id, job.stream, job.frames));
        let failure = match result {
            Ok(d) => {
                obs.succeeded(job.probe);
                return Answer {
                    result: Ok(d),
                    attempts,
                    rtt: reply.rtt,
                };
            }
            Err(f) => f,
        };
        let done = |f: Failure| Answer {
            result: Err(f),
            attempts,
            rtt: reply.rtt,
        };
        if failure.retry == Retry::Permanent {
            obs.failed_permanent(job.probe);
            return done(failure);
        }
        let retry_allowed = obs.failed_retryable(job.probe);
        if !retry_allowed || attempts > cfg.max_retries {
            return done(failure);
        }
        let delay = retry_delay(attempts, rand::random::<f64>(), failure.retry_after);
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !retry_fits(delay, Some(remaining)) {
            return done(failure);
        }
        obs.retrying(delay);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stsbridge::session::{AudioIn, ProcessingError};

    fn processed(
        status: &str,
        audio: Option<AudioIn>,
        error: Option<ProcessingError>,
    ) -> Processed {
        Processed {
            fragment_id: "f".into(),
            sequence_number: Some(0),
            status: status.into(),
            dubbed_audio: audio,
            transcript: Some("hello".into()),
            translated_text: Some("hola".into()),
            processing_time_ms: Some(3.0),
            error,
        }
    }

    #[test]
    fn answers_are_judged_like_http_ones() {
        let s: Vec<i16> = (0..960).map(|i| i as i16).collect();
        let f = Format::new(48000, 2);
        let a = AudioIn {
            format: "pcm_f32le".into(),
            sample_rate_hz: 48000,
            channels: 2,
            duration_ms: 10.0,
            data_base64: codec::encode(&s, f, WireFormat::PcmF32le),
        };
        let d = judge_processed(&processed("success", Some(a.clone()), None), "f", f, 480).unwrap();
        assert_eq!(d.samples, s);
        assert_eq!(d.translated_text.as_deref(), Some("hola"));
        // Another fragment's answer, a failure, a success without audio, undecodable audio.
        assert_eq!(
            judge_processed(&processed("success", Some(a.clone()), None), "g", f, 480)
                .unwrap_err()
                .reason,
            Reason::InvalidOutput
        );
        for (code, want) in [
            ("GPU_OOM", Retry::Retryable),
            ("INVALID_CONFIG", Retry::Permanent),
        ] {
            let e = ProcessingError {
                code: code.into(),
                message: "x".into(),
                stage: Some("asr".into()),
                retryable: None,
            };
            let f = judge_processed(&processed("failed", None, Some(e)), "f", f, 480).unwrap_err();
            assert_eq!((f.reason, f.retry), (Reason::StsError, want));
            assert!(f.detail.starts_with(code));
        }
        assert_eq!(
            judge_processed(&processed("success", None, None), "f", f, 480)
                .unwrap_err()
                .reason,
            Reason::InvalidOutput
        );
        let bad = AudioIn {
            format: "m4a".into(),
            data_base64: "AAAA".into(),
            ..a
        };
        let e = judge_processed(&processed("success", Some(bad), None), "f", f, 480).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidOutput);
        assert!(e.detail.contains("m4a"), "{}", e.detail);
    }

    #[test]
    fn a_22k_mono_f32_answer_is_converted_to_the_stream() {
        let s: Vec<i16> = (0..2205)
            .map(|i| ((i as f64 * 0.1).sin() * 8000.0) as i16)
            .collect();
        let a = AudioIn {
            format: "pcm_f32le".into(),
            sample_rate_hz: 22050,
            channels: 1,
            duration_ms: 100.0,
            data_base64: codec::encode(&s, Format::new(22050, 1), WireFormat::PcmF32le),
        };
        let d = judge_processed(
            &processed("success", Some(a), None),
            "f",
            Format::new(48000, 2),
            4800,
        )
        .unwrap();
        assert_eq!(d.samples.len(), 4800 * 2);
    }
}
