//! Judging an STS answer without GStreamer: HTTP status, JSON body, error codes, the dubbed
//! audio's shape. Produces either the dubbed samples fitted to the fragment or a classified
//! failure.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dubbing_sts_proto::{
    AudioPayloadRef, FORMAT_PCM_S16LE, ProcessResponseRef, Retry, Status, classify_error_code,
    classify_http_status,
};

use super::convert::{Format, convert};

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
    /// Interleaved S16 samples in the stream's format (rate and channels), at the dub's own
    /// length: the output stage places it.
    pub samples: Vec<i16>,
    /// Frames cut off an answer longer than the fragment plus [`MAX_OVERRUN`].
    pub cut_frames: u64,
    pub transcript: Option<String>,
    pub translated_text: Option<String>,
    pub processing_time_ms: Option<f64>,
}

/// The longest a dub may run past its fragment; the rest of an answer is cut before it is
/// converted, so a hostile answer cannot make the element allocate without bound.
pub const MAX_OVERRUN: Duration = Duration::from_secs(10);

/// What the answer is for and what it is converted to.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub fragment_id: &'a str,
    /// The stream's format.
    pub stream: Format,
    /// The fragment's frames.
    pub frames: usize,
}

/// Decodes `data_base64` straight into S16 samples (no intermediate byte vector), keeping at
/// most `max_frames` frames.
fn decode_samples(
    audio: &AudioPayloadRef<'_>,
    max_frames: u64,
) -> Result<(Vec<i16>, u64), Failure> {
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
    let n = STANDARD
        .decode_slice(b64, bytemuck::cast_slice_mut(&mut samples))
        .map_err(|e| bad(&e))?;
    let channels = audio.channels as usize;
    let frame = 2 * channels;
    if !n.is_multiple_of(frame) {
        return Err(Failure::invalid(format!(
            "dubbed audio: {n} bytes is not a whole number of {}-channel S16LE frames",
            audio.channels
        )));
    }
    let frames = (n / frame) as u64;
    let kept = frames.min(max_frames);
    samples.truncate(kept as usize * channels);
    if cfg!(target_endian = "big") {
        for s in &mut samples {
            *s = i16::from_le(*s);
        }
    }
    Ok((samples, frames - kept))
}

/// Judges a complete answer: HTTP `status`, its `body` (already read under the size cap) and
/// the `Retry-After` header. The dubbed audio may come at any rate and channel count the
/// element supports; it is converted to the stream's.
pub fn judge(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    expect: Expect<'_>,
) -> Result<Dubbed, Failure> {
    if status != 200 {
        let mut detail = format!("HTTP {status}");
        if let Ok(r) = serde_json::from_slice::<ProcessResponseRef<'_>>(body)
            && let Some(e) = r.error
        {
            detail = format!("HTTP {status}: {}: {}", e.code, e.message);
        }
        let mut f = Failure::new(Reason::HttpStatus, classify_http_status(status), detail);
        f.retry_after = retry_after;
        return Err(f);
    }

    let resp: ProcessResponseRef<'_> = serde_json::from_slice(body)
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
    let format = Format::new(audio.sample_rate_hz, audio.channels);
    if !format.is_supported() {
        return Err(Failure::invalid(format!(
            "dubbed audio at {} Hz with {} channels: only 8–192 kHz and 1–8 channels are accepted",
            audio.sample_rate_hz, audio.channels
        )));
    }
    // The fragment's duration plus the allowed overrun, in the answer's frames.
    let max_frames = (u128::from(format.rate)
        * (expect.frames as u128 * 1_000_000_000 / u128::from(expect.stream.rate.max(1))
            + MAX_OVERRUN.as_nanos())
        / 1_000_000_000) as u64;
    let (samples, cut) = decode_samples(audio, max_frames)?;
    let samples = convert(samples, format, expect.stream)
        .map_err(|e| Failure::invalid(format!("dubbed audio: {e}")))?;
    let cut_frames =
        (u128::from(cut) * u128::from(expect.stream.rate) / u128::from(format.rate)) as u64;
    Ok(Dubbed {
        samples,
        cut_frames,
        transcript: resp.transcript,
        translated_text: resp.translated_text,
        processing_time_ms: resp.processing_time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dubbing_sts_proto::{AudioPayload, ProcessResponse};

    const ID: &str = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";

    fn expect(frames: usize) -> Expect<'static> {
        Expect {
            fragment_id: ID,
            stream: Format::new(48000, 2),
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
        assert_eq!(d.cut_frames, 0);
        assert_eq!(d.transcript.as_deref(), Some("hello"));
        assert_eq!(d.processing_time_ms, Some(12.5));
    }

    #[test]
    fn answers_keep_their_own_length_up_to_the_overrun_limit() {
        // Longer and shorter than the fragment: kept as they are (the output stage places
        // them).
        let s = vec![7i16; 260];
        let d = judge(200, &ok_body(48000, 2, &s), None, expect(100)).unwrap();
        assert_eq!((d.samples.len(), d.cut_frames), (260, 0));
        let d = judge(200, &ok_body(48000, 2, &s[..140]), None, expect(100)).unwrap();
        assert_eq!(d.samples.len(), 140);
        // Beyond the fragment + 10 s: cut before conversion, and counted.
        let limit = 100 + 10 * 8000;
        let long = vec![1i16; limit + 500];
        let d = judge(
            200,
            &ok_body(8000, 1, &long),
            None,
            Expect {
                fragment_id: ID,
                stream: Format::new(8000, 1),
                frames: 100,
            },
        )
        .unwrap();
        assert_eq!((d.samples.len(), d.cut_frames), (limit, 500));
    }

    #[test]
    fn other_rates_and_channel_counts_are_converted() {
        // 22.05 kHz mono (espeak-ng) and 16 kHz stereo, for a 48 kHz stereo stream.
        for (rate, channels, frames) in [(22050u32, 1u32, 2205usize), (16000, 2, 1600)] {
            let s: Vec<i16> = (0..frames * channels as usize)
                .map(|i| ((i / channels as usize) as f64 * 0.05).sin() as i16 * 8000)
                .collect();
            let d = judge(200, &ok_body(rate, channels, &s), None, expect(4800)).unwrap();
            assert_eq!(d.samples.len(), 4800 * 2, "{rate} Hz {channels} ch");
        }
    }

    #[test]
    fn wrong_shape_is_invalid_output() {
        let s = vec![7i16; 200];
        for body in [
            ok_body(4000, 2, &s),
            ok_body(200_000, 2, &s),
            ok_body(48000, 0, &s),
            ok_body(48000, 9, &[7i16; 9 * 10]),
            ok_body(48000, 3, &s[..199]),
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
            /// come in the stream's format, never longer than the fragment plus the overrun.
            #[test]
            fn hostile_answers_are_contained(
                id in prop_oneof![Just(ID.to_string()), ".{0,40}"],
                rate in prop_oneof![Just(48000u32), Just(22050u32), any::<u32>()],
                channels in prop_oneof![Just(2u32), Just(1u32), any::<u32>()],
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
                let e = Expect { fragment_id: ID, stream: Format::new(48000, 2), frames };
                match judge(200, body.to_string().as_bytes(), None, e) {
                    Ok(d) => {
                        prop_assert_eq!(d.samples.len() % 2, 0);
                        // One frame of rounding in the conversion at most.
                        prop_assert!(d.samples.len() <= (frames + 10 * 48000 + 1) * 2);
                    }
                    Err(f) => prop_assert_eq!(f.reason, Reason::InvalidOutput),
                }
            }
        }
    }
}
