//! The HTTP side of `stsbridge`, without GStreamer: building a request, one attempt with a
//! size-capped body read, and the retry loop (backoff, `Retry-After`, deadline, breaker hooks).

use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use dubbing_sts_proto::{
    AudioPayload, FORMAT_PCM_S16LE, HEADER_REQUEST_ID, ProcessRequest, Retry, StsConfig,
    duration_ms,
};

use super::convert::{Format, convert};
use super::response::{Dubbed, Expect, Failure, Reason, judge};
use super::retry::{parse_retry_after, retry_delay, retry_fits};

/// A credential that never shows up in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("<unset>")
        } else {
            f.write_str("<redacted>")
        }
    }
}

/// `url` for logs and read-backs: credentials, query values (`?api_key=…`) hidden; one rule
/// with the worker's ([`crate::redact`]).
pub use crate::redact::redact_url;

/// `url` without `user:password@`: requests with an API key send the bearer only (one
/// `Authorization` header); reqwest would otherwise add Basic credentials from the URL too.
pub fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// What every request of a stream shares.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub url: String,
    pub api_key: Secret,
    pub timeout: Duration,
    pub max_retries: u32,
    pub max_response_size: u64,
}

/// One fragment to translate.
#[derive(Debug, Clone)]
pub struct Job {
    pub sequence_number: u64,
    pub fragment_id: String,
    /// The stream's format: the fragment's audio is in it, the answer is converted to it.
    pub stream: Format,
    /// The fragment's frames, at the stream's rate.
    pub frames: usize,
    /// The format the audio is sent in (`wire-rate`, `wire-channels`).
    pub wire: Format,
    /// When the answer stops being useful. Retries never start past it.
    pub deadline: Option<Instant>,
    /// This request is the half-open breaker's probe.
    pub probe: bool,
}

/// Where the audio's base64 goes in the JSON that serde writes for an empty `data_base64`.
const AUDIO_HOLE: &[u8] = br#""data_base64":"""#;

/// Serializes the request body of a fragment whose audio (`pcm`, interleaved S16LE) is in the
/// job's wire format: the small fields through serde, the base64 written straight into its
/// place in the body (no base64 string, no escape scan over it; base64 needs no escaping).
pub fn build_body(
    stream_id: &str,
    config: &StsConfig,
    timeout: Duration,
    job: &Job,
    pcm: &[u8],
) -> Bytes {
    let channels = job.wire.channels;
    let frames = pcm.len() as u64 / (2 * u64::from(channels.max(1)));
    let req = ProcessRequest {
        fragment_id: job.fragment_id.clone(),
        stream_id: stream_id.to_owned(),
        sequence_number: job.sequence_number,
        audio: AudioPayload {
            format: FORMAT_PCM_S16LE.to_owned(),
            sample_rate_hz: job.wire.rate,
            channels,
            duration_ms: duration_ms(frames, job.wire.rate),
            data_base64: String::new(),
        },
        config: config.clone(),
        timeout_ms: timeout.as_millis() as u64,
    };
    let json = serde_json::to_vec(&req).expect("request serializes");
    // Strings serde writes cannot hold an unescaped quote, so the first match is the field.
    let hole = json
        .windows(AUDIO_HOLE.len())
        .position(|w| w == AUDIO_HOLE)
        .expect("the request has an audio field")
        + AUDIO_HOLE.len()
        - 1;
    let b64_len = base64::encoded_len(pcm.len(), true).expect("fragment fits in memory");
    let mut body = Vec::with_capacity(json.len() + b64_len);
    body.extend_from_slice(&json[..hole]);
    let at = body.len();
    body.resize(at + b64_len, 0);
    let written = STANDARD
        .encode_slice(pcm, &mut body[at..])
        .expect("sized for the encoding");
    debug_assert_eq!(written, b64_len);
    body.extend_from_slice(&json[hole..]);
    Bytes::from(body)
}

/// The request body of a fragment whose `samples` are in the stream's format: converted to
/// the wire format first when the two differ.
pub fn encode_fragment(
    stream_id: &str,
    config: &StsConfig,
    timeout: Duration,
    job: &Job,
    samples: &[i16],
) -> Result<Bytes, Failure> {
    if job.wire == job.stream {
        return Ok(build_body(
            stream_id,
            config,
            timeout,
            job,
            &le_bytes(samples),
        ));
    }
    let wire = convert(samples.to_vec(), job.stream, job.wire)
        .map_err(|e| Failure::new(Reason::InvalidOutput, Retry::Permanent, e.0))?;
    Ok(build_body(
        stream_id,
        config,
        timeout,
        job,
        &le_bytes(&wire),
    ))
}

/// Samples as little-endian bytes: the samples themselves on little-endian machines.
fn le_bytes(samples: &[i16]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(samples))
    } else {
        std::borrow::Cow::Owned(samples.iter().flat_map(|s| s.to_le_bytes()).collect())
    }
}

/// Hooks into the element's breaker and counters.
pub trait Observer: Send + Sync {
    /// An HTTP attempt is about to go out.
    fn attempt_started(&self);
    /// An attempt ended (answer judged, or failed) after `rtt`.
    fn attempt_finished(&self, rtt: Duration);
    /// A usable answer arrived.
    fn succeeded(&self, probe: bool);
    /// An attempt failed with a retryable failure. Returns whether a retry may still go out
    /// (the breaker may have opened).
    fn failed_retryable(&self, probe: bool) -> bool;
    /// The request ended without a verdict on the service (non-retryable failure).
    fn failed_permanent(&self, probe: bool);
    /// A retry is about to wait `delay` and go out.
    fn retrying(&self, delay: Duration);
}

/// The result of a fragment's request, retries included.
#[derive(Debug)]
pub struct Answer {
    pub result: Result<Dubbed, Failure>,
    pub attempts: u32,
    /// Round-trip time of the last attempt.
    pub rtt: Option<Duration>,
}

fn transport_failure(e: reqwest::Error) -> Failure {
    // reqwest's Display never includes request headers; strip the URL anyway (it may carry
    // credentials) and keep the cause chain.
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_timeout() {
        Failure::new(Reason::Timeout, Retry::Retryable, detail)
    } else {
        Failure::new(Reason::Transport, Retry::Retryable, detail)
    }
}

/// One attempt: send, read the body up to the cap, judge.
async fn attempt(
    client: &reqwest::Client,
    cfg: &ClientConfig,
    job: &Job,
    body: Bytes,
) -> Result<Dubbed, Failure> {
    let mut req = client
        .post(&cfg.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(HEADER_REQUEST_ID, &job.fragment_id)
        .body(body);
    if !cfg.api_key.is_empty() {
        // bearer_auth marks the header sensitive: never printed by reqwest/hyper.
        req = req.bearer_auth(cfg.api_key.expose());
    }
    let mut resp = req.send().await.map_err(transport_failure)?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));

    let cap = cfg.max_response_size;
    if resp.content_length().is_some_and(|l| l > cap) && status == 200 {
        return Err(Failure::new(
            Reason::InvalidOutput,
            Retry::Retryable,
            format!(
                "answer of {} bytes exceeds max-response-size ({cap})",
                resp.content_length().unwrap_or(0)
            ),
        ));
    }
    let mut buf = Vec::with_capacity(resp.content_length().unwrap_or(0).min(cap) as usize);
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if (buf.len() + chunk.len()) as u64 > cap {
                    if status != 200 {
                        // An error page too big to read: the status says enough.
                        break;
                    }
                    return Err(Failure::new(
                        Reason::InvalidOutput,
                        Retry::Retryable,
                        format!("answer exceeds max-response-size ({cap} bytes)"),
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                let mut f = transport_failure(e);
                f.detail = format!("reading the answer: {}", f.detail);
                return Err(f);
            }
        }
    }
    judge(
        status,
        &buf,
        retry_after,
        Expect {
            fragment_id: &job.fragment_id,
            stream: job.stream,
            frames: job.frames,
        },
    )
}

/// Sends a fragment, retrying retryable failures with backoff and jitter up to `max_retries`
/// times, never starting an attempt past the job's deadline.
pub async fn process(
    client: &reqwest::Client,
    cfg: &ClientConfig,
    job: &Job,
    body: Bytes,
    obs: &dyn Observer,
) -> Answer {
    let mut attempts = 0u32;
    loop {
        // The attempt itself is not cut at the deadline: an answer that comes late is still
        // counted (late-responses) and still tells the breaker the service is alive.
        let budget = cfg.timeout;
        attempts += 1;
        obs.attempt_started();
        let start = Instant::now();
        let res = match tokio::time::timeout(budget, attempt(client, cfg, job, body.clone())).await
        {
            Ok(r) => r,
            Err(_) => Err(Failure::new(
                Reason::Timeout,
                Retry::Retryable,
                format!("no answer within {} ms", budget.as_millis()),
            )),
        };
        let took = start.elapsed();
        let rtt = Some(took);
        obs.attempt_finished(took);

        let failure = match res {
            Ok(d) => {
                obs.succeeded(job.probe);
                return Answer {
                    result: Ok(d),
                    attempts,
                    rtt,
                };
            }
            Err(f) => f,
        };
        let done = |f: Failure| Answer {
            result: Err(f),
            attempts,
            rtt,
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
        let remaining = job
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        if !retry_fits(delay, remaining) {
            return done(failure);
        }
        obs.retrying(delay);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Secret::default()), "<unset>");
        let cfg = ClientConfig {
            url: "http://h/x".into(),
            api_key: s,
            timeout: Duration::from_secs(1),
            max_retries: 0,
            max_response_size: 1,
        };
        assert!(!format!("{cfg:?}").contains("sk-live"));
    }

    #[test]
    fn urls_lose_credentials_and_query_values_in_logs() {
        assert_eq!(
            redact_url("http://user:pw@sts:8000/api/v1/sts/process"),
            "http://***@sts:8000/api/v1/sts/process"
        );
        // A key in the query string (issue 22, 5): logged at INFO, read back by `url`.
        assert_eq!(
            redact_url("http://sts:8000/p?api_key=SECRET"),
            "http://sts:8000/p?api_key=***"
        );
        assert_eq!(redact_url("not a url"), "<invalid url>");
    }

    fn job(wire: Format) -> Job {
        Job {
            sequence_number: 7,
            fragment_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            stream: Format::new(48000, 2),
            frames: 2,
            wire,
            deadline: None,
            probe: false,
        }
    }

    fn sts() -> StsConfig {
        StsConfig {
            source_language: "en".into(),
            target_language: "es".into(),
            voice_profile: "default".into(),
        }
    }

    #[test]
    fn body_carries_the_contract_fields() {
        let job = job(Format::new(48000, 2));
        let body = build_body(
            "s1",
            &sts(),
            Duration::from_secs(8),
            &job,
            &[1, 0, 2, 0, 3, 0, 4, 0],
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["fragment_id"], job.fragment_id);
        assert_eq!(v["stream_id"], "s1");
        assert_eq!(v["sequence_number"], 7);
        assert_eq!(v["timeout_ms"], 8000);
        assert_eq!(v["audio"]["format"], "pcm_s16le");
        assert_eq!(v["audio"]["sample_rate_hz"], 48000);
        assert_eq!(v["audio"]["channels"], 2);
        assert_eq!(v["audio"]["data_base64"], "AQACAAMABAA=");
        assert_eq!(v["config"]["target_language"], "es");
    }

    #[test]
    fn the_wire_format_is_what_is_sent() {
        // 10 ms of 48 kHz stereo, sent as 16 kHz mono: a third of the frames, one channel.
        let samples: Vec<i16> = (0..960).map(|i| (i % 2 * 1000) as i16).collect();
        let mut j = job(Format::new(16000, 1));
        j.frames = 480;
        let body = encode_fragment("s", &sts(), Duration::from_secs(1), &j, &samples).unwrap();
        let req: ProcessRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!((req.audio.sample_rate_hz, req.audio.channels), (16000, 1));
        assert_eq!(req.audio.encoded_frames(), Some(160));
        assert_eq!(req.audio.duration_ms, 10);
        // Same format: the samples as they are.
        let j = job(Format::new(48000, 2));
        let body = encode_fragment("s", &sts(), Duration::from_secs(1), &j, &[1, -1]).unwrap();
        let req: ProcessRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(req.audio.decode_pcm().unwrap(), vec![1, 0, 255, 255]);
    }

    mod body_fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// The spliced body is exactly the JSON serde writes for the same request, whatever
            /// the strings hold (quotes, backslashes, the hole's own text, any Unicode).
            #[test]
            fn built_bodies_equal_the_serde_built_ones(
                stream_id in prop_oneof![
                    Just(r#"x","data_base64":"""#.to_string()),
                    "\\PC{0,40}",
                ],
                lang in "\\PC{0,12}",
                voice in prop_oneof![Just("\\\"".to_string()), ".{0,20}"],
                seq in any::<u64>(),
                timeout_ms in 0u64..1_000_000,
                rate in 8000u32..=192_000,
                channels in 1u32..=8,
                pcm in proptest::collection::vec(any::<u8>(), 0..600),
            ) {
                let frame = 2 * channels as usize;
                let pcm = &pcm[..pcm.len() / frame * frame];
                let j = Job {
                    sequence_number: seq,
                    fragment_id: stream_id.chars().rev().collect(),
                    stream: Format::new(rate, channels),
                    frames: pcm.len() / frame,
                    wire: Format::new(rate, channels),
                    deadline: None,
                    probe: false,
                };
                let config = StsConfig {
                    source_language: lang.clone(),
                    target_language: lang,
                    voice_profile: voice,
                };
                let timeout = Duration::from_millis(timeout_ms);
                let built = build_body(&stream_id, &config, timeout, &j, pcm);
                let parsed: ProcessRequest = serde_json::from_slice(&built).unwrap();
                let expected = ProcessRequest {
                    fragment_id: j.fragment_id.clone(),
                    stream_id: stream_id.clone(),
                    sequence_number: seq,
                    audio: AudioPayload::from_pcm(rate, channels, pcm),
                    config,
                    timeout_ms,
                };
                prop_assert_eq!(&parsed, &expected);
                prop_assert_eq!(&built[..], &serde_json::to_vec(&expected).unwrap()[..]);
            }
        }
    }
}
