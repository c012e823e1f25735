//! What the server accepts from a client: sizes, field lengths, fragment duration, timeouts
//! and connections ([`Limits`], documented in `docs/sts-api.md`), the checks of a parsed
//! request against them, and the escaping of client-supplied text before it is logged.
//!
//! The server faces the network: every client is untrusted. Nothing a request carries is kept
//! or logged unbounded, and no request can hold the server's resources past these limits.

use std::time::Duration;

use dubbing_sts_proto::ProcessRequest;

/// Longest `fragment_id` (bytes); a UUID has 36.
pub const MAX_FRAGMENT_ID_BYTES: usize = 128;
/// Longest `stream_id` (bytes).
pub const MAX_STREAM_ID_BYTES: usize = 256;
/// Longest `config.source_language` / `config.target_language` (bytes): a BCP 47 tag.
pub const MAX_LANGUAGE_BYTES: usize = 35;
/// Longest `config.voice_profile` (bytes).
pub const MAX_VOICE_PROFILE_BYTES: usize = 128;
/// Longest `audio.format` (bytes).
pub const MAX_FORMAT_BYTES: usize = 16;
/// Highest `audio.sample_rate_hz`.
pub const MAX_SAMPLE_RATE_HZ: u32 = 192_000;
/// Most `audio.channels`.
pub const MAX_CHANNELS: u32 = 8;
/// Longest header value kept in a [`crate::RecordedRequest`] or logged (`X-Request-ID`,
/// `Authorization`); longer ones are cut.
pub const MAX_RECORDED_HEADER_BYTES: usize = 1024;
/// Largest body of `PUT /admin/faults`.
pub const MAX_ADMIN_BODY_BYTES: usize = 64 << 10;
/// Largest request head (request line and headers) hyper buffers.
pub const MAX_HEAD_BYTES: usize = 64 << 10;

/// Limits on what clients send and how long they may take (`--max-body-bytes`,
/// `--max-fragment-ms`, `--header-timeout-ms`, `--body-timeout-ms`, `--max-connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest process request body; larger is answered 413 before it is read.
    pub max_body_bytes: usize,
    /// Longest fragment (its audio's duration); longer is answered 400 `INVALID_INPUT`
    /// before any work.
    pub max_fragment: Duration,
    /// Longest time a client may take to send a request's head (request line and headers),
    /// and longest idle time of a kept-alive connection; the connection is closed past it.
    pub header_timeout: Duration,
    /// Longest time a client may take to send a request's body; 408 past it.
    pub body_timeout: Duration,
    /// Most connections open at once (every endpoint of the listener together); past it a new
    /// connection closes the oldest one that has not delivered a whole request yet, or waits
    /// in the listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_fragment: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), String> {
        if !(1024..=(1 << 30)).contains(&self.max_body_bytes) {
            return Err(format!(
                "max_body_bytes must be 1024..=1073741824, not {}",
                self.max_body_bytes
            ));
        }
        let ms = |d: Duration| d.as_millis();
        if !(1..=3_600_000).contains(&ms(self.max_fragment)) {
            return Err(format!(
                "max_fragment must be 1 ms..=1 h, not {} ms",
                ms(self.max_fragment)
            ));
        }
        for (name, d) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if !(1..=3_600_000).contains(&ms(d)) {
                return Err(format!("{name} must be 1 ms..=1 h, not {} ms", ms(d)));
            }
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(format!(
                "max_connections must be 1..=65536, not {}",
                self.max_connections
            ));
        }
        Ok(())
    }

    /// Checks a parsed request's fields against the limits; the error names the field.
    pub fn check(&self, req: &ProcessRequest) -> Result<(), String> {
        let fields: [(&str, &str, usize); 6] = [
            ("fragment_id", &req.fragment_id, MAX_FRAGMENT_ID_BYTES),
            ("stream_id", &req.stream_id, MAX_STREAM_ID_BYTES),
            ("audio.format", &req.audio.format, MAX_FORMAT_BYTES),
            (
                "config.source_language",
                &req.config.source_language,
                MAX_LANGUAGE_BYTES,
            ),
            (
                "config.target_language",
                &req.config.target_language,
                MAX_LANGUAGE_BYTES,
            ),
            (
                "config.voice_profile",
                &req.config.voice_profile,
                MAX_VOICE_PROFILE_BYTES,
            ),
        ];
        for (name, value, max) in fields {
            if value.len() > max {
                return Err(format!(
                    "{name} is {} bytes long; at most {max} are accepted",
                    value.len()
                ));
            }
        }
        let audio = &req.audio;
        if audio.sample_rate_hz > MAX_SAMPLE_RATE_HZ {
            return Err(format!(
                "audio.sample_rate_hz {} is above {MAX_SAMPLE_RATE_HZ}",
                audio.sample_rate_hz
            ));
        }
        if audio.channels > MAX_CHANNELS {
            return Err(format!(
                "audio.channels {} is above {MAX_CHANNELS}",
                audio.channels
            ));
        }
        if audio.sample_rate_hz > 0
            && let Some(frames) = audio.encoded_frames()
        {
            let ns = u128::from(frames) * 1_000_000_000 / u128::from(audio.sample_rate_hz);
            if ns > self.max_fragment.as_nanos() {
                return Err(format!(
                    "the fragment lasts {:.3} s; this server takes fragments of at most {:.3} s",
                    ns as f64 / 1e9,
                    self.max_fragment.as_secs_f64()
                ));
            }
        }
        Ok(())
    }
}

/// `s` as it may be logged: quoted, control characters (newlines, ANSI escapes …), quotes and
/// backslashes escaped, cut after `max` bytes (at a character boundary) with `…`.
pub fn loggable(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = format!("{:?}", &s[..end]);
    if end < s.len() {
        out.insert(out.len() - 1, '…');
    }
    out
}

/// `s` cut after `max` bytes (at a character boundary), as kept in a record.
pub fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dubbing_sts_proto::{AudioPayload, StsConfig};

    fn request(frames: usize, rate: u32) -> ProcessRequest {
        ProcessRequest {
            fragment_id: "f".into(),
            stream_id: "s".into(),
            sequence_number: 0,
            audio: AudioPayload::from_pcm(rate, 1, &vec![0; frames * 2]),
            config: StsConfig {
                source_language: "en".into(),
                target_language: "es".into(),
                voice_profile: "default".into(),
            },
            timeout_ms: 8000,
        }
    }

    #[test]
    fn fields_and_duration_are_bounded() {
        let limits = Limits {
            max_fragment: Duration::from_secs(2),
            ..Default::default()
        };
        assert!(limits.check(&request(32_000, 16_000)).is_ok());
        let e = limits.check(&request(32_001, 16_000)).unwrap_err();
        assert!(e.contains("2.000 s"), "{e}");
        let mut r = request(16, 16_000);
        r.stream_id = "x".repeat(MAX_STREAM_ID_BYTES + 1);
        assert!(
            limits
                .check(&r)
                .unwrap_err()
                .starts_with("stream_id is 257")
        );
        let mut r = request(16, 16_000);
        r.config.target_language = "x".repeat(36);
        assert!(
            limits
                .check(&r)
                .unwrap_err()
                .starts_with("config.target_language")
        );
        let mut r = request(16, 16_000);
        r.audio.channels = 9;
        assert!(limits.check(&r).unwrap_err().contains("channels"));
        assert!(Limits::default().validate().is_ok());
        assert!(
            Limits {
                max_connections: 0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn logged_text_cannot_forge_lines() {
        assert_eq!(loggable("a\nb", 64), r#""a\nb""#);
        assert_eq!(loggable("\u{1b}[31mred", 64), r#""\u{1b}[31mred""#);
        assert_eq!(loggable("say \"hi\"", 64), r#""say \"hi\"""#);
        assert_eq!(loggable("ééé", 3), "\"é…\"");
        assert_eq!(truncated("ééé", 3), "é");
        assert!(!loggable("x\r\ny", 64).contains(['\r', '\n']));
    }
}
