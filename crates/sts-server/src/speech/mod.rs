//! Offline speech-to-speech engines of the `translate` mode, all from Debian's main archive:
//! [`Recognizer`] (pocketsphinx, English), [`Translator`] (an apertium language pair as one
//! persistent pipeline of its stages), [`Synthesizer`] (espeak-ng, in-process), plus the
//! measure of recognition quality ([`word_error_rate`], [`normalize_words`]).
//!
//! The C libraries are loaded at run time (`dlopen` by soname), so the crate builds without
//! the speech `-dev` packages and the other modes work without the speech packages; a missing
//! piece is a [`SpeechError::Missing`] naming the Debian package to install.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use dubbing_sts_server::speech::{Recognizer, Synthesizer, Translator, word_error_rate};
//!
//! let asr = Recognizer::load("en")?;
//! let pcm_48k_stereo: Vec<u8> = vec![0; 48000 * 4];
//! let text = asr.transcribe(&pcm_48k_stereo, 48000, 2)?;
//! let deadline = Instant::now() + Duration::from_secs(5);
//! let mt = Translator::start("en", "es")?;
//! let spanish = mt.translate("The city council voted tonight.", deadline)?;
//! let tts = Synthesizer::shared()?;
//! let samples = tts.synthesize(&spanish, "es", deadline)?; // 22 050 Hz mono
//! println!("{text} → {spanish}: {} samples, WER {}", samples.len(), word_error_rate("a b", "a c"));
//! # Ok::<(), dubbing_sts_server::speech::SpeechError>(())
//! ```

mod asr;
mod espeak;
mod mt;
mod pocketsphinx;
mod signal;
mod text;
mod tts;
mod voices;
pub mod whisper;

pub use asr::{AsrEngine, Decoder, Recognizer};
pub use mt::{Translator, clean_output, escape_input};
pub use signal::{
    ASR_RATE, CHANNELS, RATES, SPEECH_THRESHOLD_DBFS, SPEECH_WINDOW_MS, bytes_of, has_speech,
    samples_of, to_asr_input,
};
pub use text::{WordErrors, normalize_words, word_error_rate, word_errors};
pub use tts::Synthesizer;
pub use voices::{PICO_INSTALL_COMMAND, TtsEngine, Voices, pico_voice};

/// How long a piece of work may go on: until its deadline, and not once it is cancelled (its
/// client left, the server stops). Engines check it between steps (the recogniser between
/// blocks of audio) and stop with [`SpeechError::Timeout`], so a job past its deadline frees
/// its worker at once and shutdown does not wait for long fragments.
#[derive(Debug, Clone)]
pub struct Budget {
    deadline: std::time::Instant,
    cancelled: Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Budget {
    /// Work that must end by `deadline`.
    pub fn until(deadline: std::time::Instant) -> Budget {
        Budget {
            deadline,
            cancelled: Vec::new(),
        }
    }

    /// Work without a deadline (a day).
    pub fn unlimited() -> Budget {
        Budget::until(std::time::Instant::now() + std::time::Duration::from_secs(86_400))
    }

    /// This budget, also ended once `flag` is set.
    pub fn or_cancelled_by(mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.cancelled.push(flag);
        self
    }

    pub fn deadline(&self) -> std::time::Instant {
        self.deadline
    }

    /// Whether one of its cancel flags is set.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
            .iter()
            .any(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Whether the work must stop now.
    pub fn is_spent(&self) -> bool {
        self.is_cancelled() || std::time::Instant::now() >= self.deadline
    }

    /// `Err(Timeout)` naming `what` when the work must stop now.
    pub fn check(&self, what: &str) -> Result<(), SpeechError> {
        if self.is_cancelled() {
            Err(SpeechError::Timeout(format!("{what} cancelled")))
        } else if std::time::Instant::now() >= self.deadline {
            Err(SpeechError::Timeout(format!(
                "{what} stopped: the request's deadline passed"
            )))
        } else {
            Ok(())
        }
    }
}

/// A language pair the engines know about, and what it needs installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairSpec {
    /// ISO 639-1 code of the spoken language (`config.source_language`).
    pub source: &'static str,
    /// ISO 639-1 code of the dubbed language (`config.target_language`).
    pub target: &'static str,
    /// apertium mode (`/usr/share/apertium/modes/<mode>.mode`).
    pub apertium_mode: &'static str,
    /// Debian package holding that mode.
    pub apertium_package: &'static str,
    /// espeak-ng voice of the target language.
    pub voice: &'static str,
}

/// Every pair the engines can serve when its packages are installed.
pub const PAIRS: &[PairSpec] = &[
    PairSpec {
        source: "en",
        target: "es",
        apertium_mode: "eng-spa",
        apertium_package: "apertium-eng-spa",
        voice: "es",
    },
    PairSpec {
        source: "en",
        target: "ca",
        apertium_mode: "eng-cat",
        apertium_package: "apertium-eng-cat",
        voice: "ca",
    },
];

/// The known pair `source` → `target`; codes are matched case-insensitively, and a region
/// (`en-US`, `es_ES`) or an ISO 639-2 code (`eng`, `spa`, `cat`) is accepted.
pub fn find_pair(source: &str, target: &str) -> Option<&'static PairSpec> {
    let (s, t) = (language_code(source), language_code(target));
    PAIRS.iter().find(|p| p.source == s && p.target == t)
}

/// The ISO 639-1 code of a language tag: `"en-US"` → `"en"`, `"SPA"` → `"es"`.
pub fn language_code(tag: &str) -> String {
    let base = tag
        .trim()
        .split(['-', '_'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match base.as_str() {
        "eng" => "en".into(),
        "spa" => "es".into(),
        "cat" => "ca".into(),
        _ => base,
    }
}

/// Why an engine cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpeechError {
    /// Something is not installed; `package` is the Debian package that brings it.
    Missing {
        package: &'static str,
        detail: String,
    },
    /// The engine failed (a crashed apertium stage, a decoder error …).
    Failed(String),
    /// The deadline passed before the engine answered.
    Timeout(String),
    /// The input cannot be used (wrong rate, too long …).
    Input(String),
    /// Something that is not a Debian package is not installed; `command` installs it.
    NotInstalled {
        detail: String,
        command: &'static str,
    },
}

impl std::fmt::Display for SpeechError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpeechError::Missing { package, detail } => {
                write!(f, "{detail} (install the Debian package {package})")
            }
            SpeechError::NotInstalled { detail, command } => {
                write!(f, "{detail} (install it with {command})")
            }
            SpeechError::Failed(m) | SpeechError::Timeout(m) | SpeechError::Input(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for SpeechError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags() {
        assert_eq!(language_code("en-US"), "en");
        assert_eq!(language_code(" ES_es "), "es");
        assert_eq!(language_code("cat"), "ca");
        assert_eq!(
            find_pair("EN", "es-MX").map(|p| p.apertium_mode),
            Some("eng-spa")
        );
        assert_eq!(find_pair("eng", "cat").map(|p| p.voice), Some("ca"));
        assert!(find_pair("es", "en").is_none());
        assert!(find_pair("en", "fr").is_none());
        let e = SpeechError::Missing {
            package: "apertium-eng-spa",
            detail: "no eng-spa mode".into(),
        };
        assert_eq!(
            e.to_string(),
            "no eng-spa mode (install the Debian package apertium-eng-spa)"
        );
    }
}
