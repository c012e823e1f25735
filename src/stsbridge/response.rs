//! Judging an STS answer without GStreamer: HTTP status, JSON body, error codes, the dubbed
//! audio's shape. Produces either the dubbed samples fitted to the fragment or a classified
//! failure.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dubbing_sts_proto::{
    AudioPayload, FORMAT_PCM_S16LE, ProcessResponse, Retry, Status, classify_error_code,
    classify_http_status,
};

use super::mix::fit_length;

/// Why a fragment went out as fallback audio (the `reason` of bus messages and stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The circuit breaker was open: no request was sent.
    BreakerOpen,
    /// Every attempt timed out (per-attempt `timeout`).
    Timeout,
    /// The live deadline came before a usable answer.
    Deadline,
    /// Connection refused or reset, DNS, TLS, a body cut short.
    Transport,
    /// An HTTP status other than 200.
    HttpStatus,
    /// A `status: "error"` answer.
    StsError,
    /// The answer could not be used: bad JSON, bad base64, wrong rate or channels, oversize.
    InvalidOutput,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::BreakerOpen,
        Reason::Timeout,
        Reason::Deadline,
        Reason::Transport,
        Reason::HttpStatus,
        Reason::StsError,
        Reason::InvalidOutput,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BreakerOpen => "breaker_open",
            Reason::Timeout => "timeout",
            Reason::Deadline => "deadline",
            Reason::Transport => "transport",
            Reason::HttpStatus => "http_status",
            Reason::StsError => "sts_error",
            Reason::InvalidOutput => "invalid_output",
        }
    }
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: Reason,
    pub retry: Retry,
    /// Human-readable detail for logs and bus messages (never contains credentials).
    pub detail: String,
    /// The server's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(reason: Reason, retry: Retry, detail: impl Into<String>) -> Self {
        Failure {
            reason,
            retry,
            detail: detail.into(),
            retry_after: None,
        }
    }

    fn invalid(detail: impl Into<String>) -> Self {
        // Bad output is a broken service, not a refused input: retry it and let the breaker
        // count it.
        Failure::new(Reason::InvalidOutput, Retry::Retryable, detail)
    }
}

/// A usable answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dubbed {
    /// Interleaved S16 samples, exactly the fragment's length.
    pub samples: Vec<i16>,
    /// Frames added (positive) or cut (negative) to fit the fragment.
    pub fitted_frames: i64,
    pub transcript: Option<String>,
    pub translated_text: Option<String>,
    pub processing_time_ms: Option<f64>,
}

/// The shape the dubbed audio must have.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub fragment_id: &'a str,
    pub rate: u32,
    pub channels: u32,
    pub frames: usize,
}

/// Decodes `data_base64` straight into S16 samples (no intermediate byte vector).
fn decode_samples(audio: &AudioPayload) -> Result<Vec<i16>, Failure> {
    if !audio.format.eq_ignore_ascii_case(FORMAT_PCM_S16LE) {
        return Err(Failure::invalid(format!(
            "dubbed audio format {:?} is not {FORMAT_PCM_S16LE}",
            audio.format
        )));
    }
    let b64 = audio.data_base64.as_bytes();
    let bad =
        |e: &dyn std::fmt::Display| Failure::invalid(format!("dubbed audio: invalid base64: {e}"));
    // Room for the longest decoding of this many characters; trimmed to the real length below.
    let max_bytes = b64.len().div_ceil(4) * 3;
    let mut samples = vec![0i16; max_bytes.div_ceil(2)];
    // SAFETY: any byte pattern is a valid i16; the slice covers exactly the vector's memory.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(samples.as_mut_ptr().cast::<u8>(), samples.len() * 2)
    };
    let n = STANDARD.decode_slice(b64, bytes).map_err(|e| bad(&e))?;
    let frame = 2 * audio.channels as usize;
    if !n.is_multiple_of(frame) {
        return Err(Failure::invalid(format!(
            "dubbed audio: {n} bytes is not a whole number of {}-channel S16LE frames",
            audio.channels
        )));
    }
    samples.truncate(n / 2);
    if cfg!(target_endian = "big") {
        for s in &mut samples {
            *s = i16::from_le(*s);
        }
    }
    Ok(samples)
}

/// Judges a complete answer: HTTP `status`, its `body` (already read under the size cap) and
/// the `Retry-After` header.
pub fn judge(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    expect: Expect<'_>,
) -> Result<Dubbed, Failure> {
    if status != 200 {
        let mut detail = format!("HTTP {status}");
        if let Ok(r) = serde_json::from_slice::<ProcessResponse>(body)
            && let Some(e) = r.error
        {
            detail = format!("HTTP {status}: {}: {}", e.code, e.message);
        }
        let mut f = Failure::new(Reason::HttpStatus, classify_http_status(status), detail);
        f.retry_after = retry_after;
        return Err(f);
    }

    let resp: ProcessResponse = serde_json::from_slice(body)
        .map_err(|e| Failure::invalid(format!("answer is not a valid STS response: {e}")))?;

    if resp.status == Status::Error {
        let (code, message, retryable) = match &resp.error {
            Some(e) => (e.code.as_str(), e.message.as_str(), e.retryable),
            None => ("UNKNOWN", "status error without an error object", None),
        };
        let mut f = Failure::new(
            Reason::StsError,
            classify_error_code(code, retryable),
            format!("{code}: {message}"),
        );
        f.retry_after = retry_after;
        return Err(f);
    }

    if resp.fragment_id != expect.fragment_id {
        return Err(Failure::invalid(format!(
            "answer is for fragment {} instead of {}",
            resp.fragment_id, expect.fragment_id
        )));
    }
    let audio = resp
        .dubbed_audio
        .as_ref()
        .ok_or_else(|| Failure::invalid("success without dubbed_audio"))?;
    if audio.sample_rate_hz != expect.rate {
        return Err(Failure::invalid(format!(
            "dubbed audio at {} Hz, the fragment is at {} Hz",
            audio.sample_rate_hz, expect.rate
        )));
    }
    if audio.channels != expect.channels {
        return Err(Failure::invalid(format!(
            "dubbed audio has {} channels, the fragment has {}",
            audio.channels, expect.channels
        )));
    }
    let mut samples = decode_samples(audio)?;
    let fitted_frames = fit_length(&mut samples, expect.frames, expect.channels as usize);

    Ok(Dubbed {
        samples,
        fitted_frames,
        transcript: resp.transcript,
        translated_text: resp.translated_text,
        processing_time_ms: resp.processing_time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";

    fn expect(frames: usize) -> Expect<'static> {
        Expect {
            fragment_id: ID,
            rate: 48000,
            channels: 2,
            frames,
        }
    }

    fn pcm(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn ok_body(rate: u32, channels: u32, samples: &[i16]) -> Vec<u8> {
        let mut r =
            ProcessResponse::success(ID, AudioPayload::from_pcm(rate, channels, &pcm(samples)));
        r.transcript = Some("hello".into());
        r.processing_time_ms = Some(12.5);
        serde_json::to_vec(&r).unwrap()
    }

    #[test]
    fn exact_answer_is_used_as_is() {
        let s: Vec<i16> = (0..200).map(|i| i as i16 * 3 - 100).collect();
        let d = judge(200, &ok_body(48000, 2, &s), None, expect(100)).unwrap();
        assert_eq!(d.samples, s);
        assert_eq!(d.fitted_frames, 0);
        assert_eq!(d.transcript.as_deref(), Some("hello"));
        assert_eq!(d.processing_time_ms, Some(12.5));
    }

    #[test]
    fn long_and_short_answers_are_fitted() {
        let s = vec![7i16; 260];
        let d = judge(200, &ok_body(48000, 2, &s), None, expect(100)).unwrap();
        assert_eq!((d.samples.len(), d.fitted_frames), (200, -30));
        let d = judge(200, &ok_body(48000, 2, &s[..140]), None, expect(100)).unwrap();
        assert_eq!((d.samples.len(), d.fitted_frames), (200, 30));
        assert_eq!(&d.samples[140..], &[0; 60]);
    }

    #[test]
    fn wrong_shape_is_invalid_output() {
        let s = vec![7i16; 200];
        for body in [
            ok_body(44100, 2, &s),
            ok_body(48000, 1, &s),
            b"{not json".to_vec(),
            br#"{"fragment_id":"x","status":"success"}"#.to_vec(),
        ] {
            let f = judge(200, &body, None, expect(100)).unwrap_err();
            assert_eq!(f.reason, Reason::InvalidOutput, "{}", f.detail);
            assert_eq!(f.retry, Retry::Retryable);
        }
        let mut r = ProcessResponse::success(ID, AudioPayload::from_pcm(48000, 2, &pcm(&s)));
        r.dubbed_audio.as_mut().unwrap().data_base64 = "@@not base64@@".into();
        let f = judge(200, &serde_json::to_vec(&r).unwrap(), None, expect(100)).unwrap_err();
        assert_eq!(f.reason, Reason::InvalidOutput);
        assert!(f.detail.contains("base64"), "{}", f.detail);
        let f = judge(
            200,
            &ok_body(48000, 2, &s).replace_id("other"),
            None,
            expect(100),
        );
        assert_eq!(f.unwrap_err().reason, Reason::InvalidOutput);
    }

    trait ReplaceId {
        fn replace_id(self, id: &str) -> Vec<u8>;
    }
    impl ReplaceId for Vec<u8> {
        fn replace_id(self, id: &str) -> Vec<u8> {
            String::from_utf8(self)
                .unwrap()
                .replace(ID, id)
                .into_bytes()
        }
    }

    #[test]
    fn error_answers_are_classified() {
        let body = |code: &str, retryable: Option<bool>| {
            serde_json::to_vec(&ProcessResponse::error(ID, code, "boom", retryable)).unwrap()
        };
        for (code, flag, want) in [
            ("GPU_OOM", None, Retry::Retryable),
            ("QUEUE_FULL", Some(false), Retry::Retryable),
            ("INVALID_CONFIG", Some(true), Retry::Permanent),
            ("INVALID_SEQUENCE", None, Retry::Permanent),
            ("SOMETHING_NEW", Some(true), Retry::Retryable),
            ("SOMETHING_NEW", None, Retry::Permanent),
        ] {
            let f = judge(200, &body(code, flag), None, expect(1)).unwrap_err();
            assert_eq!((f.reason, f.retry), (Reason::StsError, want), "{code}");
            assert!(f.detail.starts_with(code));
        }
        let ra = Some(Duration::from_secs(2));
        for (status, want) in [
            (400, Retry::Permanent),
            (401, Retry::Permanent),
            (404, Retry::Permanent),
            (408, Retry::Retryable),
            (429, Retry::Retryable),
            (500, Retry::Retryable),
            (503, Retry::Retryable),
            (504, Retry::Retryable),
        ] {
            let f = judge(status, &body("QUEUE_FULL", None), ra, expect(1)).unwrap_err();
            assert_eq!((f.reason, f.retry), (Reason::HttpStatus, want), "{status}");
            assert_eq!(f.retry_after, ra);
            assert!(f.detail.contains("QUEUE_FULL"));
        }
        let f = judge(502, b"<html>bad gateway</html>", None, expect(1)).unwrap_err();
        assert_eq!(f.detail, "HTTP 502");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Arbitrary bytes: never a panic, always a classified failure.
            #[test]
            fn arbitrary_bodies_never_panic(
                status in 100u16..600,
                body in proptest::collection::vec(any::<u8>(), 0..2048),
            ) {
                let r = judge(status, &body, None, expect(100));
                if status != 200 {
                    prop_assert_eq!(r.unwrap_err().reason, Reason::HttpStatus);
                }
            }

            /// Well-formed JSON with hostile values: wrong shapes are failures, good shapes
            /// are fitted to exactly the fragment's length.
            #[test]
            fn hostile_answers_are_contained(
                id in prop_oneof![Just(ID.to_string()), ".{0,40}"],
                rate in prop_oneof![Just(48000u32), any::<u32>()],
                channels in prop_oneof![Just(2u32), any::<u32>()],
                format in prop_oneof![Just("pcm_s16le".to_string()), ".{0,12}"],
                data in prop_oneof![
                    "[A-Za-z0-9+/]{0,400}={0,2}",
                    ".{0,100}",
                ],
                frames in 0usize..500,
            ) {
                let body = serde_json::json!({
                    "fragment_id": id,
                    "status": "success",
                    "dubbed_audio": {
                        "format": format,
                        "sample_rate_hz": rate,
                        "channels": channels,
                        "duration_ms": 1,
                        "data_base64": data,
                    },
                });
                let e = Expect { fragment_id: ID, rate: 48000, channels: 2, frames };
                match judge(200, body.to_string().as_bytes(), None, e) {
                    Ok(d) => prop_assert_eq!(d.samples.len(), frames * 2),
                    Err(f) => prop_assert_eq!(f.reason, Reason::InvalidOutput),
                }
            }
        }
    }
}
