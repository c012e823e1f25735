//! The Socket.IO side of the reference server, at `/socket.io/` on the same port as HTTP: one
//! session per connection as the seeds' STS services run it (their spec 016; see
//! `docs/sts-asyncapi.yaml`), answering in every mode, with fault injection.
//!
//! * `stream:init` → `stream:ready` (`max_inflight` granted: the asked one, or
//!   [`SioFaults::grant`]), or `error` `INVALID_CONFIG` / `AUTH_FAILED`.
//! * `fragment:data` → `fragment:ack` (`queued`) at once → `fragment:processed`, emitted strictly
//!   in `sequence_number` order: a number never answered blocks the rest, as in the seeds'
//!   services. Echo answers the audio as it came (same format, bit for bit); tone, silence and
//!   translate answer WAV.
//! * The client's `fragment:ack` ends a fragment's time in flight; `stream:end` →
//!   `stream:complete` once nothing is in flight (at most `timeout_ms`), then a disconnect
//!   after [`COMPLETE_DISCONNECT`].
//!
//! Faults: the HTTP ones that make sense here apply per fragment, by the server-wide index of
//! the `fragment:data` (0, 1, … across sessions: deterministic for tests) in
//! [`crate::StsServer::fault_for_sequence`] and the global faults: `delay_ms`/`jitter_ms`
//! (processing time), `error_code` (a `failed` answer with that code), `hang` (no
//! `fragment:processed`, ever), `reset` (the server disconnects the client). The Socket.IO
//! ones are [`SioFaults`].

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dubbing_sts_proto::{AudioPayload, ProcessRequest, StsConfig};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef, TryData};

use crate::audio::{self, Shape};
use crate::{FaultKind, Mode, RecordedRequest, Shared};

/// Delay between `stream:complete` and the server's disconnect (the seeds' services: 5 s).
pub const COMPLETE_DISCONNECT: Duration = Duration::from_secs(5);
/// Largest Engine.IO message accepted (a 6 s fragment of 48 kHz stereo WAV is ~1.5 MB).
const MAX_PAYLOAD: u64 = 16 << 20;

/// Faults of the Socket.IO side only (the HTTP ones that apply are in [`crate::Faults`]).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct SioFaults {
    /// Never answer `stream:init`.
    pub no_ready: bool,
    /// Answer `stream:init` this late.
    pub ready_delay_ms: u64,
    /// Grant at most this many fragments in flight in `stream:ready`.
    pub grant: Option<u32>,
    /// Refuse `fragment:data` with an `error` event of this code (no `fragment:processed`),
    /// for the fragments in `range`.
    pub error_event: Option<String>,
    /// The `retryable` flag of `error_event` (the contract's class of the code when unset).
    pub error_retryable: Option<bool>,
    /// Whether `error_event` names the fragment (`fragment_id`), as the echo service does; the
    /// full service does not.
    pub error_names_fragment: bool,
    /// Emit `backpressure` with this action (`slow_down`, `pause`, `none`) on each
    /// `fragment:data` in `range`.
    pub backpressure: Option<String>,
    /// Its `recommended_delay_ms`.
    pub backpressure_delay_ms: Option<u64>,
    /// Server-wide fragment indices (from, to exclusive) the `error_event` and `backpressure`
    /// faults apply to; all when unset.
    pub range: Option<(u64, u64)>,
}

impl SioFaults {
    fn applies(&self, index: u64) -> bool {
        self.range.is_none_or(|(a, b)| (a..b).contains(&index))
    }
}

/// What the Socket.IO side saw.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct SioStats {
    pub connections: u64,
    /// `stream:init` received.
    pub inits: u64,
    /// `stream:ready` sent.
    pub ready: u64,
    /// `fragment:data` received.
    pub fragments: u64,
    /// `fragment:ack` received from clients.
    pub client_acks: u64,
    /// `stream:end` received.
    pub ends: u64,
    /// `error` events sent.
    pub errors: u64,
    /// Disconnects the server made (fault `reset`).
    pub kicked: u64,
    /// Sequence numbers received, per session (in arrival order).
    pub sequences: Vec<Vec<u64>>,
}

#[derive(Default)]
pub(crate) struct SioState {
    pub faults: Mutex<SioFaults>,
    pub stats: Mutex<SioStats>,
    /// Signalled (with `stats`) when a client's `fragment:ack` was counted.
    pub acked: parking_lot::Condvar,
    index: AtomicU64,
}

/// One connection's session.
struct Session {
    stream_id: String,
    config: StsConfig,
    timeout: Duration,
    /// Index of this session in [`SioStats::sequences`].
    log: usize,
    next: u64,
    pending: BTreeMap<u64, Value>,
    in_flight: u64,
    started: Instant,
    answered: u64,
    failed: u64,
}

type SessionSlot = Arc<Mutex<Option<Session>>>;

/// The Socket.IO layer of the router.
pub(crate) fn layer(shared: Arc<Shared>) -> socketioxide::layer::SocketIoLayer {
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_secs(25))
        .ping_timeout(Duration::from_secs(10))
        .max_payload(MAX_PAYLOAD)
        .build_layer();
    io.ns("/", move |s: SocketRef, TryData(auth): TryData<Value>| {
        let shared = shared.clone();
        async move { on_connect(shared, s, auth.ok()) }
    });
    layer
}

fn on_connect(shared: Arc<Shared>, s: SocketRef, auth: Option<Value>) {
    shared.sio.stats.lock().connections += 1;
    let token = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(key) = &shared.api_key
        && token.as_deref() != Some(key.as_str())
    {
        // Spec 016: unauthorized connections are rejected at once.
        emit_error(
            &shared,
            &s,
            "AUTH_FAILED",
            "missing or wrong auth token",
            false,
            None,
        );
        let _ = s.disconnect();
        return;
    }
    let slot: SessionSlot = Arc::default();
    {
        let (shared, slot) = (shared.clone(), slot.clone());
        s.on(
            "stream:init",
            move |s: SocketRef, Data(data): Data<Value>| {
                let (shared, slot) = (shared.clone(), slot.clone());
                async move { stream_init(shared, slot, s, data).await }
            },
        );
    }
    {
        let (shared, slot) = (shared.clone(), slot.clone());
        s.on(
            "fragment:data",
            move |s: SocketRef, Data(data): Data<Value>| {
                let (shared, slot) = (shared.clone(), slot.clone());
                async move { fragment_data(shared, slot, s, data).await }
            },
        );
    }
    {
        let (shared, slot) = (shared.clone(), slot.clone());
        s.on("fragment:ack", move || {
            let (shared, slot) = (shared.clone(), slot.clone());
            async move {
                shared.sio.stats.lock().client_acks += 1;
                shared.sio.acked.notify_all();
                if let Some(sess) = slot.lock().as_mut() {
                    sess.in_flight = sess.in_flight.saturating_sub(1);
                }
            }
        });
    }
    {
        let (shared, slot) = (shared.clone(), slot.clone());
        s.on("stream:end", move |s: SocketRef| {
            let (shared, slot) = (shared.clone(), slot.clone());
            async move { stream_end(shared, slot, s).await }
        });
    }
}

fn emit_error(
    shared: &Shared,
    s: &SocketRef,
    code: &str,
    message: &str,
    retryable: bool,
    fragment_id: Option<&str>,
) {
    shared.sio.stats.lock().errors += 1;
    let mut e = json!({
        "code": code,
        "message": message,
        "severity": "error",
        "retryable": retryable,
    });
    if let Some(id) = fragment_id {
        e["fragment_id"] = id.into();
    }
    let _ = s.emit("error", &e);
}

async fn stream_init(shared: Arc<Shared>, slot: SessionSlot, s: SocketRef, data: Value) {
    shared.sio.stats.lock().inits += 1;
    let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    let t = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let cfg = data.get("config").cloned().unwrap_or(Value::Null);
    let max_inflight = u(&data, "max_inflight").unwrap_or(3);
    let timeout_ms = u(&data, "timeout_ms").unwrap_or(8000);
    let problems: Vec<&str> = [
        (
            t(&data, "stream_id").is_none_or(|s| s.is_empty()),
            "stream_id",
        ),
        (
            t(&data, "worker_id").is_none_or(|s| s.is_empty()),
            "worker_id",
        ),
        (!(1..=10).contains(&max_inflight), "max_inflight 1-10"),
        (
            !(1000..=30_000).contains(&timeout_ms),
            "timeout_ms 1000-30000",
        ),
        (
            !(100..=6000).contains(&u(&cfg, "chunk_duration_ms").unwrap_or(1000)),
            "config.chunk_duration_ms 100-6000",
        ),
        (
            !(1..=2).contains(&u(&cfg, "channels").unwrap_or(1)),
            "config.channels 1-2",
        ),
        (
            !(8000..=96_000).contains(&u(&cfg, "sample_rate_hz").unwrap_or(48000)),
            "config.sample_rate_hz 8000-96000",
        ),
    ]
    .into_iter()
    .filter_map(|(bad, what)| bad.then_some(what))
    .collect();
    if !problems.is_empty() {
        let msg = format!("invalid stream:init: {}", problems.join(", "));
        emit_error(&shared, &s, "INVALID_CONFIG", &msg, false, None);
        return;
    }
    let faults = shared.sio.faults.lock().clone();
    let stream_id = t(&data, "stream_id").unwrap_or_default();
    let log = {
        let mut st = shared.sio.stats.lock();
        st.sequences.push(Vec::new());
        st.sequences.len() - 1
    };
    *slot.lock() = Some(Session {
        stream_id: stream_id.clone(),
        config: StsConfig {
            source_language: t(&cfg, "source_language").unwrap_or_else(|| "en".into()),
            target_language: t(&cfg, "target_language").unwrap_or_else(|| "es".into()),
            voice_profile: t(&cfg, "voice_profile").unwrap_or_else(|| "default".into()),
        },
        timeout: Duration::from_millis(timeout_ms),
        log,
        next: 0,
        pending: BTreeMap::new(),
        in_flight: 0,
        started: Instant::now(),
        answered: 0,
        failed: 0,
    });
    if faults.no_ready {
        return;
    }
    if faults.ready_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.ready_delay_ms)).await;
    }
    let granted = faults
        .grant
        .map_or(max_inflight, |g| max_inflight.min(u64::from(g.max(1))));
    shared.sio.stats.lock().ready += 1;
    let _ = s.emit(
        "stream:ready",
        &json!({
            "stream_id": stream_id,
            "session_id": uuid_like(&s),
            "max_inflight": granted,
            "capabilities": {"batch_processing": false, "async_delivery": true},
        }),
    );
}

fn uuid_like(s: &SocketRef) -> String {
    format!("session-{}", s.id)
}

/// The audio of a fragment as S16LE samples, with its shape.
fn decode(audio: &Value) -> Result<(Vec<u8>, Shape), String> {
    let fmt = audio.get("format").and_then(Value::as_str).unwrap_or("");
    let rate = audio
        .get("sample_rate_hz")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    let channels = audio.get("channels").and_then(Value::as_u64).unwrap_or(0) as u32;
    let data = audio
        .get("data_base64")
        .and_then(Value::as_str)
        .unwrap_or("");
    let bytes = STANDARD
        .decode(data)
        .map_err(|e| format!("invalid base64: {e}"))?;
    let shape = |rate: u32, channels: u32, pcm: &[u8]| Shape {
        rate,
        channels,
        frames: (pcm.len() / (2 * channels.max(1) as usize)) as u64,
    };
    let raw_ok = (8000..=96_000).contains(&rate) && (1..=2).contains(&channels);
    match fmt {
        "pcm_s16le" if raw_ok => {
            let s = shape(rate, channels, &bytes);
            Ok((bytes, s))
        }
        "pcm_f32le" if raw_ok => {
            let pcm: Vec<u8> = bytes
                .chunks_exact(4)
                .flat_map(|b| {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    ((v * 32768.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes()
                })
                .collect();
            let s = shape(rate, channels, &pcm);
            Ok((pcm, s))
        }
        "wav" => {
            let mut r =
                hound::WavReader::new(Cursor::new(bytes)).map_err(|e| format!("WAV: {e}"))?;
            let spec = r.spec();
            if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
                return Err("only 16-bit integer WAV is read".into());
            }
            let pcm: Vec<u8> = r
                .samples::<i16>()
                .map(|v| v.map(i16::to_le_bytes))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("WAV: {e}"))?
                .concat();
            let s = shape(spec.sample_rate, u32::from(spec.channels), &pcm);
            Ok((pcm, s))
        }
        "pcm_s16le" | "pcm_f32le" => Err(format!(
            "{rate} Hz, {channels} channels: 8000-96000 Hz, 1-2 channels"
        )),
        other => Err(format!(
            "format {other:?} is not read here (pcm_s16le, pcm_f32le, wav)"
        )),
    }
}

fn wav(pcm: &[u8], shape: Shape) -> String {
    let spec = hound::WavSpec {
        channels: shape.channels as u16,
        sample_rate: shape.rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::with_capacity(44 + pcm.len()));
    {
        let mut w = hound::WavWriter::new(&mut out, spec).expect("in-memory WAV");
        for b in pcm.chunks_exact(2) {
            w.write_sample(i16::from_le_bytes([b[0], b[1]]))
                .expect("in-memory WAV");
        }
        w.finalize().expect("in-memory WAV");
    }
    STANDARD.encode(out.into_inner())
}

async fn fragment_data(shared: Arc<Shared>, slot: SessionSlot, s: SocketRef, data: Value) {
    let arrived = Instant::now();
    let index = shared.sio.index.fetch_add(1, Ordering::Relaxed);
    let fragment_id = data
        .get("fragment_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let seq = data.get("sequence_number").and_then(Value::as_u64);
    let audio_v = data.get("audio").cloned().unwrap_or(Value::Null);
    let (session_info, log) = {
        let mut g = slot.lock();
        match g.as_mut() {
            Some(sess) => {
                sess.in_flight += 1;
                (
                    Some((sess.stream_id.clone(), sess.config.clone(), sess.timeout)),
                    sess.log,
                )
            }
            None => (None, 0),
        }
    };
    let decoded = decode(&audio_v);
    let record = RecordedRequest {
        fragment_id: fragment_id.clone(),
        stream_id: data
            .get("stream_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        sequence_number: seq,
        authorization: None,
        request_id: None,
        sample_rate_hz: decoded.as_ref().map_or(0, |d| d.1.rate),
        channels: decoded.as_ref().map_or(0, |d| d.1.channels),
        frames: decoded.as_ref().map_or(0, |d| d.1.frames),
        arrived,
        status: None,
        fault: None,
        error_code: None,
    };
    let rec = shared.record(record);
    {
        let mut st = shared.sio.stats.lock();
        st.fragments += 1;
        if session_info.is_some()
            && let (Some(seq), Some(l)) = (seq, st.sequences.get_mut(log))
        {
            l.push(seq);
        }
    }
    let Some((stream_id, config, timeout)) = session_info else {
        emit_error(
            &shared,
            &s,
            "STREAM_NOT_FOUND",
            "no stream:init on this connection",
            false,
            Some(&fragment_id),
        );
        shared.record_answer(rec, None, None, Some("STREAM_NOT_FOUND".into()));
        return;
    };
    let Some(seq) = seq else {
        emit_error(
            &shared,
            &s,
            "INVALID_SEQUENCE",
            "no sequence_number",
            false,
            Some(&fragment_id),
        );
        return;
    };
    let sio_faults = shared.sio.faults.lock().clone();
    if sio_faults.applies(index) {
        if let Some(action) = &sio_faults.backpressure {
            let in_flight = slot.lock().as_ref().map_or(0, |s| s.in_flight);
            let _ = s.emit(
                "backpressure",
                &json!({
                    "stream_id": stream_id,
                    "severity": if action == "pause" { "high" } else if action == "slow_down" { "medium" } else { "low" },
                    "current_inflight": in_flight,
                    "queue_depth": 0,
                    "action": action,
                    "recommended_delay_ms": sio_faults.backpressure_delay_ms,
                }),
            );
        }
        if let Some(code) = &sio_faults.error_event {
            let retryable = sio_faults.error_retryable.unwrap_or(!matches!(
                code.as_str(),
                "AUTH_FAILED"
                    | "STREAM_NOT_FOUND"
                    | "INVALID_CONFIG"
                    | "FRAGMENT_TOO_LARGE"
                    | "INVALID_SEQUENCE"
            ));
            let named = sio_faults
                .error_names_fragment
                .then_some(fragment_id.as_str());
            emit_error(
                &shared,
                &s,
                code,
                "injected fault (error_event)",
                retryable,
                named,
            );
            shared.record_answer(rec, None, Some(FaultKind::Error), Some(code.clone()));
            if let Some(sess) = slot.lock().as_mut() {
                sess.in_flight = sess.in_flight.saturating_sub(1);
            }
            return;
        }
    }
    let _ = s.emit(
        "fragment:ack",
        &json!({"fragment_id": fragment_id, "status": "queued", "timestamp": unix_ms()}),
    );
    let faults = shared.faults_for(Some(index));
    let (delay_ms, fires) = {
        let mut rng = rand::rng();
        (
            faults.pick_delay_ms(&mut rng),
            faults.failure_fires(&mut rng),
        )
    };
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    if fires && faults.reset {
        shared.sio.stats.lock().kicked += 1;
        shared.record_answer(rec, None, Some(FaultKind::Reset), None);
        let _ = s.clone().disconnect();
        return;
    }
    if fires && faults.hang {
        // Never answered: every later answer of this session waits behind it.
        shared.record_answer(rec, None, Some(FaultKind::Hang), None);
        return;
    }
    let mode = *shared.mode.lock();
    let processing_ms = |a: Instant| a.elapsed().as_secs_f64() * 1000.0;
    let failed = |code: &str, message: &str, retryable: bool| {
        json!({
            "fragment_id": fragment_id,
            "stream_id": stream_id,
            "sequence_number": seq,
            "status": "failed",
            "dubbed_audio": null,
            "processing_time_ms": processing_ms(arrived),
            "error": {"code": code, "message": message, "stage": "tts", "retryable": retryable},
        })
    };
    let (answer, code) = match (&faults.error_code, fires, decoded) {
        (Some(code), true, _) => {
            let retryable = faults.error_retryable.unwrap_or(matches!(
                code.as_str(),
                "TIMEOUT" | "MODEL_ERROR" | "GPU_OOM" | "QUEUE_FULL" | "RATE_LIMIT"
            ));
            (
                failed(code, "injected fault", retryable),
                Some(code.clone()),
            )
        }
        (_, _, Err(e)) => (
            failed("MALFORMED_DATA", &e, false),
            Some("MALFORMED_DATA".into()),
        ),
        (_, _, Ok((pcm, input))) => {
            let made = match mode {
                Mode::Echo => Ok((
                    audio_v.clone(),
                    format!("echo of fragment {seq}"),
                    format!("[{}] echo of fragment {seq}", config.target_language),
                )),
                Mode::Tone | Mode::Silence => {
                    let data = audio::render(mode, &pcm, input, input);
                    Ok((
                        json!({"format": "wav", "sample_rate_hz": input.rate, "channels": input.channels,
                               "duration_ms": input.frames * 1000 / u64::from(input.rate.max(1)),
                               "data_base64": wav(&data, input)}),
                        format!("{} of fragment {seq}", mode.as_str()),
                        format!(
                            "[{}] {} of fragment {seq}",
                            config.target_language,
                            mode.as_str()
                        ),
                    ))
                }
                Mode::Translate => {
                    translate(
                        &shared,
                        &fragment_id,
                        &stream_id,
                        seq,
                        &config,
                        timeout,
                        pcm,
                        input,
                        arrived,
                    )
                    .await
                }
            };
            match made {
                Ok((audio, transcript, translated)) => (
                    json!({
                        "fragment_id": fragment_id,
                        "stream_id": stream_id,
                        "sequence_number": seq,
                        "status": "success",
                        "dubbed_audio": audio,
                        "transcript": transcript,
                        "translated_text": translated,
                        "processing_time_ms": processing_ms(arrived),
                        "stage_timings": {"asr_ms": 0, "translation_ms": 0, "tts_ms": 0},
                        "error": null,
                    }),
                    None,
                ),
                Err((code, message, retryable)) => {
                    (failed(code, &message, retryable), Some(code.to_owned()))
                }
            }
        }
    };
    shared.record_answer(rec, Some(200), None, code.clone());
    // In sequence order: the answers waiting behind a missing number stay.
    let ready: Vec<Value> = {
        let mut g = slot.lock();
        let Some(sess) = g.as_mut() else { return };
        if code.is_some() {
            sess.failed += 1;
        } else {
            sess.answered += 1;
        }
        sess.pending.insert(seq, answer);
        let mut out = Vec::new();
        while let Some(a) = sess.pending.remove(&sess.next) {
            out.push(a);
            sess.next += 1;
        }
        out
    };
    for a in ready {
        let _ = s.emit("fragment:processed", &a);
    }
}

#[allow(clippy::too_many_arguments)]
async fn translate(
    shared: &Shared,
    fragment_id: &str,
    stream_id: &str,
    seq: u64,
    config: &StsConfig,
    timeout: Duration,
    pcm: Vec<u8>,
    input: Shape,
    arrived: Instant,
) -> Result<(Value, String, String), (&'static str, String, bool)> {
    let Some(service) = &shared.translate else {
        return Err(("MODEL_ERROR", "translate mode is not loaded".into(), true));
    };
    let req = ProcessRequest {
        fragment_id: fragment_id.to_owned(),
        stream_id: stream_id.to_owned(),
        sequence_number: seq,
        audio: AudioPayload::from_pcm(input.rate, input.channels, &pcm),
        config: config.clone(),
        timeout_ms: timeout.as_millis() as u64,
    };
    use crate::translate::TranslateError as E;
    match service.process(&req, pcm, arrived).await {
        Ok(out) => {
            let shape = Shape {
                rate: out.rate,
                channels: out.channels,
                frames: (out.pcm.len() / (2 * out.channels.max(1) as usize)) as u64,
            };
            Ok((
                json!({"format": "wav", "sample_rate_hz": out.rate, "channels": out.channels,
                       "duration_ms": shape.frames * 1000 / u64::from(out.rate.max(1)),
                       "data_base64": wav(&out.pcm, shape)}),
                out.transcript,
                out.translated_text,
            ))
        }
        Err(E::Unsupported(m)) => Err(("UNSUPPORTED_LANGUAGE", m, false)),
        Err(E::Input(m)) => Err(("MALFORMED_DATA", m, false)),
        Err(E::QueueFull) => Err(("QUEUE_FULL", "the translate queue is full".into(), true)),
        Err(E::Timeout(m)) => Err(("TIMEOUT", m, true)),
        Err(E::Engine(m)) => Err(("MODEL_ERROR", m, true)),
    }
}

async fn stream_end(shared: Arc<Shared>, slot: SessionSlot, s: SocketRef) {
    shared.sio.stats.lock().ends += 1;
    let Some(timeout) = slot.lock().as_ref().map(|s| s.timeout) else {
        emit_error(
            &shared,
            &s,
            "STREAM_NOT_FOUND",
            "no stream:init on this connection",
            false,
            None,
        );
        return;
    };
    let until = Instant::now() + timeout.min(Duration::from_secs(30));
    while Instant::now() < until && slot.lock().as_ref().is_some_and(|s| s.in_flight > 0) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let complete = {
        let g = slot.lock();
        let Some(sess) = g.as_ref() else { return };
        json!({
            "stream_id": sess.stream_id,
            "total_fragments": sess.answered + sess.failed,
            "total_duration_ms": sess.started.elapsed().as_millis() as u64,
            "statistics": {"success_count": sess.answered, "partial_count": 0,
                           "failed_count": sess.failed, "avg_processing_time_ms": 0.0,
                           "p95_processing_time_ms": 0.0},
        })
    };
    let _ = s.emit("stream:complete", &complete);
    tokio::spawn(async move {
        tokio::time::sleep(COMPLETE_DISCONNECT).await;
        let _ = s.disconnect();
    });
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
