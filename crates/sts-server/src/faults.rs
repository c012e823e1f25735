//! What the server answers: the [`Mode`] of successful answers and the injected [`Faults`].

use serde::{Deserialize, Serialize};

/// Largest accepted `duration_factor` (keeps a fault from allocating unbounded memory).
pub const MAX_DURATION_FACTOR: f64 = 100.0;
/// Largest accepted `oversize_bytes` (256 MiB).
pub const MAX_OVERSIZE_BYTES: usize = 256 << 20;

/// How a successful answer's `dubbed_audio` is made from the request audio.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The input audio unchanged.
    #[default]
    Echo,
    /// A 440 Hz sine at 0.3 of full scale on every channel, as long as the input.
    Tone,
    /// Zeros, as long as the input.
    Silence,
    /// Real offline speech-to-speech: pocketsphinx → apertium → espeak-ng; the dubbed audio
    /// is the synthesised speech at 22 050 Hz mono, at its own length.
    Translate,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Tone => "tone",
            Mode::Silence => "silence",
            Mode::Translate => "translate",
        }
    }
}

/// Faults injected into answers. `Faults::default()` injects nothing.
///
/// *Failure* faults (`hang`, `reset`, a non-2xx `status`, `error_code`, `malformed_json`,
/// `bad_base64`, `reset_mid_body`) fire on a request with probability `error_rate`, or always
/// when `error_rate` is 0. A non-zero `error_rate` with no failure fault set injects HTTP 500
/// with code `MODEL_ERROR`. When several fire, `hang` wins over `reset`, which wins over an
/// error answer (`status` / `error_code`), which wins over a success; `malformed_json` and
/// `reset_mid_body` then spoil whatever body was chosen, `bad_base64` a success's audio.
///
/// The other faults apply to every answer they fit: `delay_ms` / `jitter_ms` to all,
/// `wrong_rate` / `wrong_channels` / `duration_factor` to a success's audio, `retry_after_s`
/// to error answers, `slow_body_ms` / `oversize_bytes` to every body. Requests refused before
/// the faults are looked at (401, 400 `INVALID_INPUT`) get none of them.
///
/// Also the JSON body of `PUT /admin/faults` (every field optional, unknown fields rejected)
/// and the fault flags of the `sts-server` binary.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, clap::Args)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Fault injection")]
pub struct Faults {
    /// Wait this long before answering.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Add a uniform random 0..=jitter_ms to delay_ms, so answers complete out of order.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Fraction (0..=1) of requests the failure faults fire on; 0 = all of them. Alone (no
    /// failure fault set) it fails that fraction with HTTP 500 MODEL_ERROR.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// HTTP status to answer with (an error body unless it is 2xx).
    #[arg(long)]
    pub status: Option<u16>,
    /// Add a `Retry-After: N` header (seconds) to error answers (e.g. 429, 503).
    #[arg(long)]
    pub retry_after_s: Option<u64>,
    /// Answer `status: "error"` with this code (HTTP 200 unless `status` is set).
    #[arg(long)]
    pub error_code: Option<String>,
    /// `retryable` flag of the injected error body (omitted when unset).
    #[arg(long)]
    pub error_retryable: Option<bool>,
    /// Answer with a truncated JSON body (HTTP 200 unless `status` is set).
    #[arg(long)]
    pub malformed_json: bool,
    /// Answer success with a `data_base64` that is not valid base64.
    #[arg(long)]
    pub bad_base64: bool,
    /// Answer audio at this sample rate (resampled, so the duration stays right).
    #[arg(long)]
    pub wrong_rate: Option<u32>,
    /// Answer audio with this many channels.
    #[arg(long)]
    pub wrong_channels: Option<u32>,
    /// Answer audio this many times as long as the input (echo: truncated or zero-padded).
    #[arg(long)]
    pub duration_factor: Option<f64>,
    /// Read the request, then close the connection without any HTTP response.
    #[arg(long)]
    pub reset: bool,
    /// Send headers (with Content-Length) and half the body, then close the connection.
    #[arg(long)]
    pub reset_mid_body: bool,
    /// Trickle the body in small pieces spread over this many milliseconds.
    #[arg(long, default_value_t = 0)]
    pub slow_body_ms: u64,
    /// Pad the JSON body with whitespace to at least this many bytes (still valid JSON).
    #[arg(long)]
    pub oversize_bytes: Option<usize>,
    /// Never answer (until the client goes away or the server stops).
    #[arg(long)]
    pub hang: bool,
    /// Answer silence (of the answer's length) to input without sound (every sample below
    /// -50 dBFS), as a dubbing service says nothing in pauses. With `--mode tone` and
    /// `--duration-factor 1.3` it plays a service whose speech outlasts the speech it replaces.
    #[arg(long)]
    pub silent_for_silence: bool,
}

impl Faults {
    /// Checks ranges. The server never panics on out-of-range values (it clamps them), but
    /// user-facing inputs (CLI, `PUT /admin/faults`) are rejected with this message.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate {} is not within 0..=1",
                self.error_rate
            ));
        }
        if let Some(s) = self.status
            && !(200..=599).contains(&s)
        {
            return Err(format!("status {s} is not within 200..=599"));
        }
        if let Some(f) = self.duration_factor
            && !(f.is_finite() && (0.0..=MAX_DURATION_FACTOR).contains(&f))
        {
            return Err(format!(
                "duration_factor {f} is not within 0..={MAX_DURATION_FACTOR}"
            ));
        }
        if let Some(n) = self.oversize_bytes
            && n > MAX_OVERSIZE_BYTES
        {
            return Err(format!("oversize_bytes {n} exceeds {MAX_OVERSIZE_BYTES}"));
        }
        Ok(())
    }

    /// Whether any failure fault (gated by `error_rate`) is set.
    pub(crate) fn has_failure(&self) -> bool {
        self.hang
            || self.reset
            || self.reset_mid_body
            || self.status.is_some_and(|s| !(200..300).contains(&s))
            || self.error_code.is_some()
            || self.malformed_json
            || self.bad_base64
    }

    /// Rolls the dice for one request: whether the failure faults fire.
    pub(crate) fn failure_fires(&self, rng: &mut impl rand::Rng) -> bool {
        let p = self.error_rate;
        if p.is_nan() || p <= 0.0 {
            self.has_failure()
        } else {
            rng.random_bool(p.min(1.0))
        }
    }

    /// The delay for one request: `delay_ms` plus a uniform random `0..=jitter_ms`.
    pub(crate) fn pick_delay_ms(&self, rng: &mut impl rand::Rng) -> u64 {
        if self.jitter_ms == 0 {
            return self.delay_ms;
        }
        self.delay_ms
            .saturating_add(rng.random_range(0..=self.jitter_ms))
    }
}

/// Which fault shaped an answer (see [`crate::RecordedRequest::fault`]).
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Hang,
    Reset,
    ResetMidBody,
    /// HTTP `status` and/or `error_code` (or the default error of a bare `error_rate`).
    Error,
    MalformedJson,
    BadBase64,
    SlowBody,
    Oversize,
    /// `wrong_rate`, `wrong_channels` or `duration_factor`.
    AudioShape,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_defaults_and_unknown_fields() {
        let f: Faults = serde_json::from_str(r#"{"status":503,"retry_after_s":2}"#).unwrap();
        assert_eq!(f.status, Some(503));
        assert_eq!(f.retry_after_s, Some(2));
        assert!(!f.hang);
        assert_eq!(
            serde_json::from_str::<Faults>("{}").unwrap(),
            Faults::default()
        );
        assert!(serde_json::from_str::<Faults>(r#"{"stauts":503}"#).is_err());
    }

    #[test]
    fn validation() {
        assert!(Faults::default().validate().is_ok());
        for bad in [
            Faults {
                error_rate: 1.5,
                ..Default::default()
            },
            Faults {
                error_rate: f64::NAN,
                ..Default::default()
            },
            Faults {
                status: Some(99),
                ..Default::default()
            },
            Faults {
                duration_factor: Some(f64::INFINITY),
                ..Default::default()
            },
            Faults {
                oversize_bytes: Some(usize::MAX),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn failure_gating() {
        let mut rng = rand::rng();
        assert!(!Faults::default().failure_fires(&mut rng));
        let always = Faults {
            status: Some(503),
            ..Default::default()
        };
        assert!((0..50).all(|_| always.failure_fires(&mut rng)));
        let never_ok = Faults {
            status: Some(200),
            ..Default::default()
        };
        assert!(!never_ok.failure_fires(&mut rng));
        let half = Faults {
            error_rate: 0.5,
            ..Default::default()
        };
        let fired = (0..1000).filter(|_| half.failure_fires(&mut rng)).count();
        assert!((350..650).contains(&fired), "{fired}");
    }

    #[test]
    fn delay_with_jitter_stays_in_range() {
        let mut rng = rand::rng();
        let f = Faults {
            delay_ms: 10,
            jitter_ms: 30,
            ..Default::default()
        };
        let picks: Vec<u64> = (0..500).map(|_| f.pick_delay_ms(&mut rng)).collect();
        assert!(picks.iter().all(|&d| (10..=40).contains(&d)));
        assert!(picks.iter().any(|&d| d < 15));
        assert!(picks.iter().any(|&d| d > 35));
        let huge = Faults {
            delay_ms: u64::MAX,
            jitter_ms: u64::MAX,
            ..Default::default()
        };
        assert_eq!(huge.pick_delay_ms(&mut rng), u64::MAX);
    }
}
