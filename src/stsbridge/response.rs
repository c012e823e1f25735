//! Judging an STS answer without GStreamer: HTTP status, JSON body, error codes, the dubbed
//! audio's shape. Produces either the dubbed samples fitted to the fragment or a classified
//! failure.

use std::time::Duration;

use dubbing_sts_proto::{
    ProcessResponse, Retry, Status, classify_error_code, classify_http_status,
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
    let bytes = audio
        .decode_pcm()
        .map_err(|e| Failure::invalid(format!("dubbed audio: {e}")))?;
    let mut samples: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
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
    use dubbing_sts_proto::AudioPayload;

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
}
