//! Wire contract of the STS (speech-to-speech translation) service, shared by the `stsbridge`
//! element (client) and the reference server.
//!
//! The contract is documented in `docs/sts-api.md` and `docs/sts-openapi.yaml`. In short: one
//! `POST {url}` per audio fragment with a JSON [`ProcessRequest`]; the answer is a JSON
//! [`ProcessResponse`] whose `status` is `success` (with `dubbed_audio`) or `error` (with
//! [`ErrorInfo`]). Which failures are worth retrying is decided by [`classify_http_status`] and
//! [`classify_error_code`], so client and server agree on one table.

use std::borrow::Cow;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The only audio encoding on the wire: interleaved signed 16-bit little-endian PCM.
pub const FORMAT_PCM_S16LE: &str = "pcm_s16le";

/// Header carrying the fragment id of a request (for tracing across services).
pub const HEADER_REQUEST_ID: &str = "x-request-id";

/// A block of PCM audio as carried in requests (`audio`) and answers (`dubbed_audio`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AudioPayload {
    /// Always [`FORMAT_PCM_S16LE`].
    pub format: String,
    pub sample_rate_hz: u32,
    pub channels: u32,
    /// Duration of the audio, rounded to the nearest millisecond (informative: the sample count
    /// is what `data_base64` holds).
    pub duration_ms: u64,
    /// Standard base64 (RFC 4648, with padding) of the interleaved S16LE samples.
    pub data_base64: String,
}

/// Why a payload's audio could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioError {
    UnsupportedFormat(String),
    BadBase64(String),
    /// The byte count is not a whole number of frames (2 bytes × channels).
    PartialFrame {
        bytes: usize,
        channels: u32,
    },
    ZeroChannels,
}

impl std::fmt::Display for AudioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AudioError::UnsupportedFormat(s) => write!(f, "unsupported audio format {s:?}"),
            AudioError::BadBase64(e) => write!(f, "invalid base64 audio data: {e}"),
            AudioError::PartialFrame { bytes, channels } => write!(
                f,
                "{bytes} bytes of audio is not a whole number of {channels}-channel S16LE frames"
            ),
            AudioError::ZeroChannels => write!(f, "audio with 0 channels"),
        }
    }
}

impl std::error::Error for AudioError {}

impl AudioPayload {
    /// Wraps interleaved S16LE bytes. `pcm.len()` must be a multiple of `2 × channels`.
    pub fn from_pcm(sample_rate_hz: u32, channels: u32, pcm: &[u8]) -> Self {
        let frames = pcm.len() as u64 / (2 * u64::from(channels.max(1)));
        AudioPayload {
            format: FORMAT_PCM_S16LE.to_owned(),
            sample_rate_hz,
            channels,
            duration_ms: duration_ms(frames, sample_rate_hz),
            data_base64: base64::engine::general_purpose::STANDARD.encode(pcm),
        }
    }

    /// Decodes `data_base64` into interleaved S16LE bytes, checking format and frame alignment.
    pub fn decode_pcm(&self) -> Result<Vec<u8>, AudioError> {
        let mut out = Vec::new();
        self.decode_pcm_into(&mut out)?;
        Ok(out)
    }

    /// Like [`decode_pcm`](Self::decode_pcm) but reuses `out`'s allocation.
    pub fn decode_pcm_into(&self, out: &mut Vec<u8>) -> Result<(), AudioError> {
        if !self.format.eq_ignore_ascii_case(FORMAT_PCM_S16LE) {
            return Err(AudioError::UnsupportedFormat(self.format.clone()));
        }
        if self.channels == 0 {
            return Err(AudioError::ZeroChannels);
        }
        out.clear();
        base64::engine::general_purpose::STANDARD
            .decode_vec(self.data_base64.as_bytes(), out)
            .map_err(|e| AudioError::BadBase64(e.to_string()))?;
        let frame = 2 * self.channels as usize;
        if !out.len().is_multiple_of(frame) {
            return Err(AudioError::PartialFrame {
                bytes: out.len(),
                channels: self.channels,
            });
        }
        Ok(())
    }

    /// Number of frames (samples per channel) that `data_base64` decodes to, computed from the
    /// base64 length without decoding. `None` if the length is not valid base64.
    pub fn encoded_frames(&self) -> Option<u64> {
        let s = self.data_base64.as_bytes();
        if !s.len().is_multiple_of(4) || self.channels == 0 {
            return None;
        }
        let pad = s.iter().rev().take_while(|&&c| c == b'=').count().min(2);
        let bytes = (s.len() / 4 * 3).checked_sub(pad)? as u64;
        Some(bytes / (2 * u64::from(self.channels)))
    }
}

/// The `duration_ms` of `frames` at `sample_rate_hz`: rounded to the nearest millisecond.
pub fn duration_ms(frames: u64, sample_rate_hz: u32) -> u64 {
    if sample_rate_hz == 0 {
        0
    } else {
        (frames * 1000 + u64::from(sample_rate_hz) / 2) / u64::from(sample_rate_hz)
    }
}

/// A borrowed view of [`AudioPayload`], for reading answers: `data_base64` stays in the body
/// it was parsed from (base64 holds no JSON escapes, so it is never copied).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AudioPayloadRef<'a> {
    #[serde(borrow)]
    pub format: Cow<'a, str>,
    pub sample_rate_hz: u32,
    pub channels: u32,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(borrow)]
    pub data_base64: Cow<'a, str>,
}

/// A borrowed view of [`ProcessResponse`] (see [`AudioPayloadRef`]). Same JSON, same rules:
/// unknown fields are ignored.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessResponseRef<'a> {
    #[serde(default, borrow)]
    pub fragment_id: Cow<'a, str>,
    pub status: Status,
    #[serde(default, borrow)]
    pub dubbed_audio: Option<AudioPayloadRef<'a>>,
    #[serde(default)]
    pub transcript: Option<String>,
    #[serde(default)]
    pub translated_text: Option<String>,
    #[serde(default)]
    pub processing_time_ms: Option<f64>,
    #[serde(default)]
    pub error: Option<ErrorInfo>,
}

/// Translation settings of a request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StsConfig {
    pub source_language: String,
    pub target_language: String,
    pub voice_profile: String,
}

/// Body of `POST {url}`: one audio fragment to dub.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProcessRequest {
    /// UUID v4, unique per fragment (retries of a fragment reuse it). Also sent as `X-Request-ID`.
    pub fragment_id: String,
    pub stream_id: String,
    /// 0, 1, 2 … per stream, in fragment order.
    pub sequence_number: u64,
    pub audio: AudioPayload,
    pub config: StsConfig,
    /// How long the client waits for this attempt, in milliseconds.
    pub timeout_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Error,
}

/// Error details of a `status: "error"` answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// The server's own opinion; used for codes the contract does not list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

/// Body of an answer (success or error).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessResponse {
    #[serde(default)]
    pub fragment_id: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dubbed_audio: Option<AudioPayload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translated_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time_ms: Option<f64>,
    /// Time spent in each stage of a real speech-to-speech chain, when the service reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_timings_ms: Option<StageTimings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// Milliseconds spent in each stage of one answer (`stage_timings_ms`). A stage that did not
/// run (no speech, an empty transcript) counts 0.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct StageTimings {
    /// Speech recognition, including the conversion of the input to the recogniser's format.
    pub asr: f64,
    /// Machine translation.
    pub translation: f64,
    /// Speech synthesis.
    pub tts: f64,
}

impl ProcessResponse {
    pub fn success(fragment_id: impl Into<String>, dubbed_audio: AudioPayload) -> Self {
        ProcessResponse {
            fragment_id: fragment_id.into(),
            status: Status::Success,
            dubbed_audio: Some(dubbed_audio),
            transcript: None,
            translated_text: None,
            processing_time_ms: None,
            stage_timings_ms: None,
            error: None,
        }
    }

    pub fn error(
        fragment_id: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
        retryable: Option<bool>,
    ) -> Self {
        ProcessResponse {
            fragment_id: fragment_id.into(),
            status: Status::Error,
            dubbed_audio: None,
            transcript: None,
            translated_text: None,
            processing_time_ms: None,
            stage_timings_ms: None,
            error: Some(ErrorInfo {
                code: code.into(),
                message: message.into(),
                retryable,
            }),
        }
    }
}

/// Error codes of the contract.
pub mod codes {
    pub const TIMEOUT: &str = "TIMEOUT";
    pub const MODEL_ERROR: &str = "MODEL_ERROR";
    pub const GPU_OOM: &str = "GPU_OOM";
    pub const QUEUE_FULL: &str = "QUEUE_FULL";
    pub const RATE_LIMIT: &str = "RATE_LIMIT";
    pub const INVALID_CONFIG: &str = "INVALID_CONFIG";
    pub const INVALID_SEQUENCE: &str = "INVALID_SEQUENCE";
    pub const INVALID_INPUT: &str = "INVALID_INPUT";
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    /// The service cannot translate between the requested languages (or a language's model is
    /// not installed). Permanent: retrying the same fragment gives the same answer.
    pub const UNSUPPORTED_LANGUAGE: &str = "UNSUPPORTED_LANGUAGE";
}

/// Whether a failure is transient.
///
/// Retryable failures are retried (within the fragment's deadline) and counted by the circuit
/// breaker; permanent ones fall back at once and leave the breaker alone: the service is up, it
/// just refuses this input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Retryable,
    Permanent,
}

/// Classifies an HTTP status other than 200.
pub fn classify_http_status(status: u16) -> Retry {
    match status {
        408 | 429 => Retry::Retryable,
        500..=599 => Retry::Retryable,
        _ => Retry::Permanent,
    }
}

/// Classifies the `error.code` of a `status: "error"` answer. Codes the contract does not list
/// follow the server's `retryable` flag (permanent when absent).
pub fn classify_error_code(code: &str, retryable: Option<bool>) -> Retry {
    match code {
        codes::TIMEOUT
        | codes::MODEL_ERROR
        | codes::GPU_OOM
        | codes::QUEUE_FULL
        | codes::RATE_LIMIT => Retry::Retryable,
        codes::INVALID_CONFIG
        | codes::INVALID_SEQUENCE
        | codes::INVALID_INPUT
        | codes::UNAUTHORIZED
        | codes::UNSUPPORTED_LANGUAGE => Retry::Permanent,
        _ if retryable == Some(true) => Retry::Retryable,
        _ => Retry::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_round_trip_and_duration() {
        let pcm: Vec<u8> = (0..48000u32 * 4).map(|i| (i % 251) as u8).collect();
        let p = AudioPayload::from_pcm(48000, 2, &pcm);
        assert_eq!(p.duration_ms, 1000);
        assert_eq!(p.encoded_frames(), Some(48000));
        assert_eq!(p.decode_pcm().unwrap(), pcm);
        // 1024 frames at 44.1 kHz = 23.22 ms, rounded.
        let p = AudioPayload::from_pcm(44100, 1, &vec![0u8; 2048]);
        assert_eq!(p.duration_ms, 23);
        assert_eq!(p.encoded_frames(), Some(1024));
    }

    #[test]
    fn decode_rejects_bad_input() {
        let mut p = AudioPayload::from_pcm(48000, 2, &[0u8; 8]);
        p.data_base64 = "not base64!".into();
        assert!(matches!(p.decode_pcm(), Err(AudioError::BadBase64(_))));
        let mut p = AudioPayload::from_pcm(48000, 2, &[0u8; 6]);
        assert!(matches!(
            p.decode_pcm(),
            Err(AudioError::PartialFrame { bytes: 6, .. })
        ));
        p.format = "opus".into();
        assert!(matches!(
            p.decode_pcm(),
            Err(AudioError::UnsupportedFormat(_))
        ));
        p.format = "pcm_s16le".into();
        p.channels = 0;
        assert_eq!(p.decode_pcm(), Err(AudioError::ZeroChannels));
    }

    #[test]
    fn request_json_shape() {
        let req = ProcessRequest {
            fragment_id: "f".into(),
            stream_id: "s".into(),
            sequence_number: 3,
            audio: AudioPayload::from_pcm(16000, 1, &[1, 0]),
            config: StsConfig {
                source_language: "en".into(),
                target_language: "es".into(),
                voice_profile: "default".into(),
            },
            timeout_ms: 8000,
        };
        let v: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(v["audio"]["format"], "pcm_s16le");
        assert_eq!(v["audio"]["data_base64"], "AQA=");
        assert_eq!(v["config"]["target_language"], "es");
        assert_eq!(v["sequence_number"], 3);
        let back: ProcessRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn response_parsing() {
        let ok: ProcessResponse = serde_json::from_str(
            r#"{"fragment_id":"a","status":"success","dubbed_audio":{"format":"pcm_s16le",
            "sample_rate_hz":48000,"channels":2,"duration_ms":0,"data_base64":""},
            "transcript":"hello","processing_time_ms":12.5,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(ok.status, Status::Success);
        assert_eq!(ok.transcript.as_deref(), Some("hello"));
        let err: ProcessResponse = serde_json::from_str(
            r#"{"fragment_id":"a","status":"error","error":{"code":"GPU_OOM","message":"x","retryable":true}}"#,
        )
        .unwrap();
        assert_eq!(err.error.unwrap().code, "GPU_OOM");
        assert!(serde_json::from_str::<ProcessResponse>(r#"{"status":"maybe"}"#).is_err());
        assert_eq!(ok.stage_timings_ms, None);
        let timed: ProcessResponse = serde_json::from_str(
            r#"{"fragment_id":"a","status":"success","stage_timings_ms":{"asr":310.5,"translation":4.25,"tts":6}}"#,
        )
        .unwrap();
        assert_eq!(
            timed.stage_timings_ms,
            Some(StageTimings {
                asr: 310.5,
                translation: 4.25,
                tts: 6.0
            })
        );
        // Absent timings stay absent on the wire.
        let v = serde_json::to_value(ProcessResponse::error("a", "X", "m", None)).unwrap();
        assert!(v.get("stage_timings_ms").is_none());
    }

    #[test]
    fn the_borrowed_view_reads_the_same_answer_without_copying_the_audio() {
        let mut owned =
            ProcessResponse::success("f", AudioPayload::from_pcm(22050, 1, &[1, 0, 2, 0, 3, 0]));
        owned.transcript = Some("hello \"quoted\"".into());
        owned.processing_time_ms = Some(3.5);
        let body = serde_json::to_vec(&owned).unwrap();
        let view: ProcessResponseRef<'_> = serde_json::from_slice(&body).unwrap();
        let audio = view.dubbed_audio.as_ref().unwrap();
        assert!(matches!(audio.data_base64, Cow::Borrowed(_)));
        assert_eq!(
            audio.data_base64,
            owned.dubbed_audio.as_ref().unwrap().data_base64
        );
        assert_eq!(
            (audio.sample_rate_hz, audio.channels, audio.duration_ms),
            (22050, 1, 0)
        );
        assert_eq!(view.fragment_id, "f");
        assert_eq!(view.status, Status::Success);
        assert_eq!(view.transcript, owned.transcript);
        assert_eq!(view.processing_time_ms, Some(3.5));
        let err = ProcessResponse::error("g", "GPU_OOM", "x", Some(true));
        let body = serde_json::to_vec(&err).unwrap();
        let view: ProcessResponseRef<'_> = serde_json::from_slice(&body).unwrap();
        assert_eq!(view.error, err.error);
        assert!(view.dubbed_audio.is_none());
    }

    #[test]
    fn classification_table() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify_http_status(s), Retry::Retryable, "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert_eq!(classify_http_status(s), Retry::Permanent, "{s}");
        }
        for c in [
            "TIMEOUT",
            "MODEL_ERROR",
            "GPU_OOM",
            "QUEUE_FULL",
            "RATE_LIMIT",
        ] {
            assert_eq!(classify_error_code(c, Some(false)), Retry::Retryable, "{c}");
        }
        for c in [
            "INVALID_CONFIG",
            "INVALID_SEQUENCE",
            "INVALID_INPUT",
            "UNSUPPORTED_LANGUAGE",
        ] {
            assert_eq!(classify_error_code(c, Some(true)), Retry::Permanent, "{c}");
        }
        assert_eq!(classify_error_code("OTHER", Some(true)), Retry::Retryable);
        assert_eq!(classify_error_code("OTHER", None), Retry::Permanent);
    }
}
