//! HTTP routes and the making of each answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dubbing_sts_proto::{
    AudioPayload, HEADER_REQUEST_ID, ProcessRequest, ProcessResponse, Retry, StageTimings,
    classify_http_status, codes,
};
use futures::{StreamExt as _, stream};

use crate::audio::{self, Shape};
use crate::limits::{self, MAX_RECORDED_HEADER_BYTES, loggable, truncated};
use crate::translate::TranslateError;
use crate::{
    ConnectionControl, FaultKind, Faults, InFlight, LanguagePair, Mode, PROCESS_PATH,
    RecordedRequest, Shared,
};

/// Below this peak (-50 dBFS) an input has no sound (`silent_for_silence`).
const SILENCE_PEAK: u16 = 104;
/// Pieces a `slow_body_ms` body is sent in.
const SLOW_BODY_PIECES: usize = 20;
/// Pause between the partial body of `reset_mid_body` and the close, so the part is flushed.
const CUT_PAUSE: Duration = Duration::from_millis(50);

/// The routes; the admin endpoints only when enabled (`--admin`).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route(PROCESS_PATH, post(process))
        .route("/health", get(health));
    if shared.admin {
        router = router
            .route("/admin/faults", get(get_faults).put(put_faults))
            .route("/admin/stats", get(get_stats));
    }
    router
        .layer(DefaultBodyLimit::max(limits::MAX_ADMIN_BODY_BYTES))
        .with_state(shared)
}

/// Why a request body was not read.
enum BodyError {
    /// Larger than the limit (413).
    TooLarge,
    /// Not all there within `body_timeout` (408).
    Timeout,
    /// The connection failed while sending it.
    Broken(String),
}

/// Reads a body of at most `max` bytes within `timeout`; refuses at once a `Content-Length`
/// above `max`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    read_or_discard(headers, body, max, timeout, true).await
}

/// Reads a body like [`read_body`] but keeps none of it, so that the client, which sends its
/// whole body before it reads the answer, gets the answer rather than a reset connection.
async fn discard_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    timeout: Duration,
) -> Result<(), BodyError> {
    read_or_discard(headers, body, max, timeout, false)
        .await
        .map(drop)
}

async fn read_or_discard(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    timeout: Duration,
    keep: bool,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let read = async move {
        let mut body = body;
        let capacity = if keep {
            declared.map_or(0, |n| n as usize)
        } else {
            0
        };
        let mut data = Vec::with_capacity(capacity);
        let mut len = 0;
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            if let Ok(chunk) = frame.into_data() {
                len += chunk.len();
                if len > max {
                    return Err(BodyError::TooLarge);
                }
                if keep {
                    data.extend_from_slice(&chunk);
                }
            }
        }
        Ok(Bytes::from(data))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

/// The error answer of a body that was not read; the connection is closed after it.
fn body_error_reply(e: &BodyError, max: usize, timeout: Duration) -> Reply {
    let mut reply = match e {
        BodyError::TooLarge => Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
            codes::INVALID_INPUT,
            &format!("the request body is larger than this server's limit of {max} bytes"),
            Some(false),
        ),
        BodyError::Timeout => Reply::error(
            StatusCode::REQUEST_TIMEOUT,
            "",
            codes::TIMEOUT,
            &format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
            Some(true),
        ),
        BodyError::Broken(m) => Reply::error(
            StatusCode::BAD_REQUEST,
            "",
            codes::INVALID_INPUT,
            &format!("the request body could not be read: {m}"),
            Some(false),
        ),
    };
    reply.close = true;
    reply
}

/// Body of `GET /health`.
#[derive(serde::Serialize)]
struct Health {
    status: &'static str,
    /// The mode successes are made in now.
    mode: Mode,
    /// The modes this server can answer in (translate only when its engines loaded).
    modes: Vec<Mode>,
    /// The language pairs of the translate mode (empty without it).
    language_pairs: Vec<LanguagePair>,
    /// The translate mode's engines (null without it).
    engines: Option<crate::EngineInfo>,
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let mode = *shared.mode.lock();
    let mut modes = vec![Mode::Echo, Mode::Tone, Mode::Silence];
    let language_pairs = match &shared.translate {
        Some(t) => {
            modes.push(Mode::Translate);
            t.language_pairs()
        }
        None => Vec::new(),
    };
    let health = Health {
        status: "ok",
        mode,
        modes,
        language_pairs,
        engines: shared.translate.as_ref().map(|t| t.engines()),
    };
    json_response(StatusCode::OK, to_json(&health))
}

async fn get_faults(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized("");
    }
    let faults = shared.faults.lock().clone();
    json_response(StatusCode::OK, to_json(&faults))
}

async fn put_faults(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized("");
    }
    let (max, timeout) = (limits::MAX_ADMIN_BODY_BYTES, shared.limits.body_timeout);
    let body = match read_body(&headers, body, max, timeout).await {
        Ok(b) => b,
        Err(e) => return body_error_reply(&e, max, timeout).into_response(),
    };
    let faults = match serde_json::from_slice::<Faults>(&body)
        .map_err(|e| e.to_string())
        .and_then(|f| f.validate().map(|()| f))
    {
        Ok(f) => f,
        Err(e) => return invalid_input("", &format!("invalid faults: {e}")),
    };
    tracing::info!(?faults, "faults set");
    *shared.faults.lock() = faults.clone();
    json_response(StatusCode::OK, to_json(&faults))
}

async fn get_stats(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized("");
    }
    json_response(StatusCode::OK, to_json(&shared.stats()))
}

/// What a process request is answered with.
enum Outcome {
    /// Authorised and read: the faults and the mode decide ([`answer`]).
    Pending(Result<ProcessRequest, serde_json::Error>),
    /// An HTTP answer.
    Reply(Reply),
    /// Close the connection without an answer.
    Reset,
    /// No answer until the client leaves or the server stops.
    Hang,
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
    fault: Option<FaultKind>,
    error_code: Option<String>,
    retry_after_s: Option<u64>,
    slow_body_ms: u64,
    cut_mid_body: bool,
    /// Close the connection after this answer (its request body was not read).
    close: bool,
}

impl Reply {
    fn new(status: StatusCode, body: Vec<u8>) -> Self {
        Reply {
            status,
            body,
            fault: None,
            error_code: None,
            retry_after_s: None,
            slow_body_ms: 0,
            cut_mid_body: false,
            close: false,
        }
    }

    fn error(
        status: StatusCode,
        fragment_id: &str,
        code: &str,
        message: &str,
        retryable: Option<bool>,
    ) -> Self {
        let body = ProcessResponse::error(fragment_id, code, message, retryable);
        Reply {
            error_code: Some(code.to_owned()),
            ..Reply::new(status, to_json(&body))
        }
    }

    fn into_response(self) -> Response {
        let len = self.body.len();
        let body = if self.slow_body_ms == 0 && !self.cut_mid_body {
            Body::from(self.body)
        } else {
            streamed_body(self.body, self.slow_body_ms, self.cut_mid_body)
        };
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(s) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The process endpoint. The API key is checked before the body is read, the body is read
/// within the size and time limits, then parsed and checked against the field limits, and only
/// then are the faults and the mode looked at.
async fn process(
    State(shared): State<Arc<Shared>>,
    control: Option<Extension<ConnectionControl>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrived = Instant::now();
    let _in_flight = InFlight::new(&shared);
    let header_value = |name: &str| {
        headers.get(name).map(|v| {
            truncated(
                &String::from_utf8_lossy(v.as_bytes()),
                MAX_RECORDED_HEADER_BYTES,
            )
        })
    };
    let mut record = RecordedRequest {
        fragment_id: String::new(),
        stream_id: String::new(),
        sequence_number: None,
        authorization: header_value(header::AUTHORIZATION.as_str()),
        request_id: header_value(HEADER_REQUEST_ID),
        sample_rate_hz: 0,
        channels: 0,
        frames: 0,
        arrived,
        status: None,
        fault: None,
        error_code: None,
    };
    let (max, timeout) = (shared.limits.max_body_bytes, shared.limits.body_timeout);
    let outcome = if !authorized(&shared, &headers) {
        // Nothing of the body is parsed or kept; it is read and thrown away (within the size
        // and time limits, else the connection is closed) so that the client reads the 401.
        let drained = discard_body(&headers, body, max, timeout).await.is_ok();
        let mut reply = Reply::error(
            StatusCode::UNAUTHORIZED,
            "",
            codes::UNAUTHORIZED,
            "missing or wrong API key (expected Authorization: Bearer <key>)",
            Some(false),
        );
        reply.close = !drained;
        Outcome::Reply(reply)
    } else {
        match read_body(&headers, body, max, timeout).await {
            Err(e) => Outcome::Reply(body_error_reply(&e, max, timeout)),
            Ok(body) => {
                // A whole request: this connection is a client's, not to be closed at the
                // connection cap while its answer is worked on.
                if let Some(Extension(c)) = &control {
                    c.trust();
                }
                let parsed = serde_json::from_slice::<ProcessRequest>(&body);
                drop(body);
                if let Ok(req) = &parsed {
                    record.fragment_id = truncated(&req.fragment_id, crate::MAX_FRAGMENT_ID_BYTES);
                    record.stream_id = truncated(&req.stream_id, crate::MAX_STREAM_ID_BYTES);
                    record.sequence_number = Some(req.sequence_number);
                    record.sample_rate_hz = req.audio.sample_rate_hz;
                    record.channels = req.audio.channels;
                    record.frames = req.audio.encoded_frames().unwrap_or(0);
                }
                Outcome::Pending(parsed)
            }
        }
    };
    let number = shared.record(record.clone());
    let outcome = match outcome {
        Outcome::Pending(parsed) => answer(&shared, parsed, arrived).await,
        decided => decided,
    };
    let elapsed_ms = arrived.elapsed().as_secs_f64() * 1000.0;
    let (status, fault, error_code) = match &outcome {
        Outcome::Reply(r) => (Some(r.status.as_u16()), r.fault, r.error_code.clone()),
        Outcome::Reset => (None, Some(FaultKind::Reset), None),
        Outcome::Hang | Outcome::Pending(_) => (None, Some(FaultKind::Hang), None),
    };
    shared.record_answer(number, status, fault, error_code.clone());
    // Every client-supplied text is logged quoted and escaped: no forged lines.
    tracing::info!(
        fragment_id = %loggable(&record.fragment_id, crate::MAX_FRAGMENT_ID_BYTES),
        stream_id = %loggable(&record.stream_id, crate::MAX_STREAM_ID_BYTES),
        seq = ?record.sequence_number,
        request_id = %record
            .request_id
            .as_deref()
            .map_or_else(|| "none".to_owned(), |id| loggable(id, 128)),
        rate = record.sample_rate_hz,
        channels = record.channels,
        frames = record.frames,
        status = ?status,
        fault = ?fault,
        error_code = %error_code
            .as_deref()
            .map_or_else(|| "none".to_owned(), |c| loggable(c, 64)),
        elapsed_ms = format_args!("{elapsed_ms:.1}"),
        "process"
    );

    match outcome {
        Outcome::Reply(reply) => {
            let mut response = reply.into_response();
            if let Some(id) = headers.get(HEADER_REQUEST_ID) {
                response.headers_mut().insert(HEADER_REQUEST_ID, id.clone());
            }
            response
        }
        Outcome::Reset => {
            match control {
                Some(Extension(c)) => c.kill(),
                // Outside the server's own accept loop: abort the body instead.
                None => return streamed_body(Vec::new(), 0, true).into_response(),
            }
            std::future::pending().await
        }
        Outcome::Hang | Outcome::Pending(_) => {
            shared.shutdown.cancelled().await;
            if let Some(Extension(c)) = control {
                c.kill();
            }
            std::future::pending().await
        }
    }
}

/// Decides the answer to one request (after the fault's delay).
async fn answer(
    shared: &Shared,
    parsed: Result<ProcessRequest, serde_json::Error>,
    arrived: Instant,
) -> Outcome {
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Reply(Reply::error(
                StatusCode::BAD_REQUEST,
                "",
                codes::INVALID_INPUT,
                &format!("invalid request body: {e}"),
                Some(false),
            ));
        }
    };
    if let Err(e) = shared.limits.check(&req) {
        return Outcome::Reply(invalid_reply(&req, &e));
    }
    let pcm = match req.audio.decode_pcm() {
        Ok(pcm) if req.audio.sample_rate_hz > 0 => pcm,
        Ok(_) => return Outcome::Reply(invalid_reply(&req, "sample_rate_hz must be > 0")),
        Err(e) => return Outcome::Reply(invalid_reply(&req, &e.to_string())),
    };

    let faults = shared.faults_for(Some(req.sequence_number));
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
    if !shared.released().await {
        return Outcome::Hang;
    }
    if fires && faults.hang {
        return Outcome::Hang;
    }
    if fires && faults.reset {
        return Outcome::Reset;
    }

    let http_status = faults
        .status
        .map(|s| StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    let mut reply = match http_status {
        Some(status) if fires && (faults.error_code.is_some() || !status.is_success()) => {
            injected_error(&req.fragment_id, status, &faults)
        }
        None if fires && faults.error_code.is_some() => {
            injected_error(&req.fragment_id, StatusCode::OK, &faults)
        }
        _ if fires && !faults.has_failure() => Reply {
            fault: Some(FaultKind::Error),
            ..Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &req.fragment_id,
                codes::MODEL_ERROR,
                "injected fault (error_rate)",
                Some(true),
            )
        },
        _ => {
            let mode = *shared.mode.lock();
            // A failure status that did not fire (error_rate) leaves a plain 200.
            let status = http_status
                .filter(|s| s.is_success())
                .unwrap_or(StatusCode::OK);
            if mode == Mode::Translate {
                translated(shared, &req, pcm, &faults, fires, arrived, status).await
            } else {
                let input = Shape {
                    rate: req.audio.sample_rate_hz,
                    channels: req.audio.channels,
                    frames: (pcm.len() / (2 * req.audio.channels as usize)) as u64,
                };
                let text = format!("{} of fragment {}", mode.as_str(), req.sequence_number);
                let texts = Texts {
                    translated_text: format!("[{}] {text}", req.config.target_language),
                    transcript: text,
                    timings: None,
                };
                success(
                    mode, &req, &pcm, input, texts, &faults, fires, arrived, status,
                )
            }
        }
    };
    let oversize = faults
        .oversize_bytes
        .unwrap_or(0)
        .min(crate::MAX_OVERSIZE_BYTES);
    if pad_json(&mut reply.body, oversize) {
        reply.fault = Some(FaultKind::Oversize);
    }
    if fires && faults.malformed_json {
        reply.body.truncate(reply.body.len() / 2);
        reply.fault = Some(FaultKind::MalformedJson);
    }
    if reply.error_code.is_some() || !reply.status.is_success() {
        reply.retry_after_s = faults.retry_after_s.or(reply.retry_after_s);
    }
    reply.slow_body_ms = faults.slow_body_ms;
    reply.cut_mid_body = fires && faults.reset_mid_body;
    if reply.cut_mid_body {
        reply.fault = Some(FaultKind::ResetMidBody);
    } else if reply.fault.is_none() && reply.slow_body_ms > 0 {
        reply.fault = Some(FaultKind::SlowBody);
    }
    Outcome::Reply(reply)
}

fn invalid_reply(req: &ProcessRequest, message: &str) -> Reply {
    Reply::error(
        StatusCode::BAD_REQUEST,
        &truncated(&req.fragment_id, crate::MAX_FRAGMENT_ID_BYTES),
        codes::INVALID_INPUT,
        message,
        Some(false),
    )
}

/// The error answer of the `status` / `error_code` faults.
fn injected_error(fragment_id: &str, status: StatusCode, faults: &Faults) -> Reply {
    let (code, retryable) = match &faults.error_code {
        Some(code) => (code.as_str(), faults.error_retryable),
        None => (
            default_code(status),
            Some(
                faults
                    .error_retryable
                    .unwrap_or(classify_http_status(status.as_u16()) == Retry::Retryable),
            ),
        ),
    };
    Reply {
        fault: Some(FaultKind::Error),
        ..Reply::error(status, fragment_id, code, "injected fault", retryable)
    }
}

/// The error code that goes with an injected HTTP status.
fn default_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => codes::INVALID_INPUT,
        401 => codes::UNAUTHORIZED,
        408 | 504 => codes::TIMEOUT,
        429 => codes::RATE_LIMIT,
        503 => codes::QUEUE_FULL,
        s if s >= 500 => codes::MODEL_ERROR,
        _ => codes::INVALID_INPUT,
    }
}

/// The texts of a success answer.
struct Texts {
    transcript: String,
    translated_text: String,
    timings: Option<StageTimings>,
}

/// The answer of the translate mode: its audio as a success (faults on top), or its error.
async fn translated(
    shared: &Shared,
    req: &ProcessRequest,
    pcm: Vec<u8>,
    faults: &Faults,
    fires: bool,
    arrived: Instant,
    status: StatusCode,
) -> Reply {
    let error = |status, code, message: &str, retryable| {
        Reply::error(status, &req.fragment_id, code, message, Some(retryable))
    };
    let Some(service) = &shared.translate else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::MODEL_ERROR,
            "translate mode is not available: its engines were not loaded at start (start the server with --mode translate)",
            true,
        );
    };
    match service.process(req, pcm, arrived).await {
        Ok(out) => {
            let input = Shape {
                rate: out.rate,
                channels: out.channels,
                frames: (out.pcm.len() / (2 * out.channels.max(1) as usize)) as u64,
            };
            let texts = Texts {
                transcript: out.transcript,
                translated_text: out.translated_text,
                timings: Some(out.timings),
            };
            success(
                Mode::Translate,
                req,
                &out.pcm,
                input,
                texts,
                faults,
                fires,
                arrived,
                status,
            )
        }
        Err(TranslateError::Unsupported(m)) => error(
            StatusCode::BAD_REQUEST,
            codes::UNSUPPORTED_LANGUAGE,
            &m,
            false,
        ),
        Err(TranslateError::Input(m)) => {
            error(StatusCode::BAD_REQUEST, codes::INVALID_INPUT, &m, false)
        }
        Err(TranslateError::QueueFull) => Reply {
            retry_after_s: Some(1),
            ..error(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::QUEUE_FULL,
                "the translate queue is full; retry later",
                true,
            )
        },
        Err(TranslateError::Timeout(m)) => {
            error(StatusCode::GATEWAY_TIMEOUT, codes::TIMEOUT, &m, true)
        }
        Err(TranslateError::Engine(m)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::MODEL_ERROR,
            &m,
            true,
        ),
    }
}

/// A success answer in `mode` from `pcm` (of shape `input`: the request's audio, or the
/// synthesised speech), shaped by the audio and body faults.
#[allow(clippy::too_many_arguments)]
fn success(
    mode: Mode,
    req: &ProcessRequest,
    pcm: &[u8],
    input: Shape,
    texts: Texts,
    faults: &Faults,
    fires: bool,
    arrived: Instant,
    status: StatusCode,
) -> Reply {
    let out = Shape::answer(
        input,
        faults.wrong_rate,
        faults.wrong_channels,
        faults.duration_factor.unwrap_or(1.0),
    );
    let mut fault = (out != input).then_some(FaultKind::AudioShape);
    let mut response = ProcessResponse {
        transcript: Some(texts.transcript),
        translated_text: Some(texts.translated_text),
        stage_timings_ms: texts.timings,
        ..ProcessResponse::success(&req.fragment_id, AudioPayload::from_pcm(0, 0, &[]))
    };
    let silent_input = pcm
        .chunks_exact(2)
        .all(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs() < SILENCE_PEAK);
    let data = if faults.silent_for_silence && silent_input {
        audio::render(Mode::Silence, pcm, input, out)
    } else {
        audio::render(mode, pcm, input, out)
    };
    let mut payload = AudioPayload::from_pcm(out.rate, out.channels, &data);
    if fires && faults.bad_base64 {
        payload.data_base64 = "!".repeat(payload.data_base64.len().max(4));
        fault = Some(FaultKind::BadBase64);
    }
    response.dubbed_audio = Some(payload);
    response.processing_time_ms = Some(arrived.elapsed().as_secs_f64() * 1000.0);
    Reply {
        fault,
        ..Reply::new(status, to_json(&response))
    }
}

/// Pads a JSON object with spaces before its closing brace to at least `min_len` bytes (it
/// stays valid JSON, with the same content). Returns whether it padded.
fn pad_json(body: &mut Vec<u8>, min_len: usize) -> bool {
    if body.len() >= min_len {
        return false;
    }
    let close = body.pop();
    body.resize(min_len - usize::from(close.is_some()), b' ');
    body.extend(close);
    true
}

/// A body sent in pieces: spread over `slow_ms`, and/or cut in the middle by an error (which
/// makes hyper close the connection after the part already sent).
fn streamed_body(body: Vec<u8>, slow_ms: u64, cut_mid_body: bool) -> Body {
    let mut body = Bytes::from(body);
    if cut_mid_body {
        body.truncate(body.len() / 2);
    }
    let pieces = if slow_ms > 0 {
        SLOW_BODY_PIECES.min(body.len()).max(1)
    } else {
        1
    };
    let piece_len = body.len().div_ceil(pieces).max(1);
    let chunks: Vec<Bytes> = (0..body.len())
        .step_by(piece_len)
        .map(|at| body.slice(at..(at + piece_len).min(body.len())))
        .collect();
    // Rounded up, so the whole body takes at least `slow_ms`.
    let gaps = chunks.len().max(2) as u64 - 1;
    let interval = Duration::from_nanos(slow_ms.saturating_mul(1_000_000).div_ceil(gaps));
    let chunks = stream::iter(chunks.into_iter().enumerate()).then(move |(i, chunk)| async move {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        Ok::<_, std::io::Error>(chunk)
    });
    if cut_mid_body {
        let cut = stream::once(async {
            tokio::time::sleep(CUT_PAUSE).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "reset_mid_body fault",
            ))
        });
        Body::from_stream(chunks.chain(cut))
    } else {
        Body::from_stream(chunks)
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(key) = &shared.api_key else {
        return true;
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match value.split_once(' ') {
        Some((scheme, token)) => scheme.eq_ignore_ascii_case("bearer") && token.trim() == key,
        None => false,
    }
}

fn unauthorized(fragment_id: &str) -> Response {
    Reply::error(
        StatusCode::UNAUTHORIZED,
        fragment_id,
        codes::UNAUTHORIZED,
        "missing or wrong API key (expected Authorization: Bearer <key>)",
        Some(false),
    )
    .into_response()
}

fn invalid_input(fragment_id: &str, message: &str) -> Response {
    Reply::error(
        StatusCode::BAD_REQUEST,
        fragment_id,
        codes::INVALID_INPUT,
        message,
        Some(false),
    )
    .into_response()
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    Reply::new(status, body).into_response()
}

fn to_json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types serialize to JSON")
}
