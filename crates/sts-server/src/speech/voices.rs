//! The voices of the translate mode (`sts-server --tts`): espeak-ng (free software, Debian
//! main, in-process, see [`super::Synthesizer`]) or SVOX Pico (Debian non-free
//! `libttspico-utils`, its `pico2wave` run per sentence) for the languages Pico has, espeak-ng
//! for the others.
//!
//! Pico is never installed silently: `scripts/install-deps.sh --with-pico` adds Debian's
//! non-free component and installs it; without it `--tts pico` is a start-up error naming that
//! command.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use wait_timeout::ChildExt as _;

use super::SpeechError;
use super::tts::{MAX_TEXT_BYTES, Synthesizer};

/// The command that installs Pico.
pub const PICO_INSTALL_COMMAND: &str = "scripts/install-deps.sh --with-pico";
/// Where Debian's `libttspico-utils` puts `pico2wave`.
const PICO2WAVE: &str = "/usr/bin/pico2wave";

/// The speech synthesiser of the translate mode.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TtsEngine {
    /// espeak-ng (free software): robotic, often hard to understand.
    #[default]
    EspeakNg,
    /// SVOX Pico (non-free, `scripts/install-deps.sh --with-pico`): a clearer voice for es, en,
    /// de, fr, it; espeak-ng for the other languages.
    Pico,
}

impl TtsEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            TtsEngine::EspeakNg => "espeak-ng",
            TtsEngine::Pico => "pico",
        }
    }
}

impl std::fmt::Display for TtsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Pico's voice of a language (ISO 639-1), if it has one.
pub fn pico_voice(language: &str) -> Option<&'static str> {
    match super::language_code(language).as_str() {
        "es" => Some("es-ES"),
        "en" => Some("en-US"),
        "de" => Some("de-DE"),
        "fr" => Some("fr-FR"),
        "it" => Some("it-IT"),
        _ => None,
    }
}

/// The loaded voices.
#[derive(Debug)]
pub struct Voices {
    engine: TtsEngine,
    espeak: Arc<Synthesizer>,
    pico: Option<PathBuf>,
}

impl Voices {
    /// espeak-ng always (it also speaks what Pico cannot); Pico too when `engine` is
    /// [`TtsEngine::Pico`] (an error naming [`PICO_INSTALL_COMMAND`] when it is missing).
    pub fn load(engine: TtsEngine) -> Result<Voices, SpeechError> {
        let espeak = Synthesizer::shared()?;
        let pico = match engine {
            TtsEngine::EspeakNg => None,
            TtsEngine::Pico => {
                let path = PathBuf::from(PICO2WAVE);
                if !path.is_file() {
                    return Err(SpeechError::NotInstalled {
                        detail: format!(
                            "--tts pico: SVOX Pico is not installed (no {PICO2WAVE}, Debian \
                             non-free package libttspico-utils)"
                        ),
                        command: PICO_INSTALL_COMMAND,
                    });
                }
                Some(path)
            }
        };
        let voices = Voices {
            engine,
            espeak,
            pico,
        };
        if voices.pico.is_some() {
            let deadline = Instant::now() + std::time::Duration::from_secs(20);
            voices.synthesize_pico("es-ES", "hola", deadline)?;
        }
        Ok(voices)
    }

    pub fn engine(&self) -> TtsEngine {
        self.engine
    }

    /// The espeak-ng synthesiser (always loaded).
    pub fn espeak(&self) -> &Arc<Synthesizer> {
        &self.espeak
    }

    /// Which engine speaks `language`: `"pico"` or `"espeak-ng"`.
    pub fn engine_for(&self, language: &str) -> &'static str {
        if self.pico.is_some() && pico_voice(language).is_some() {
            TtsEngine::Pico.as_str()
        } else {
            TtsEngine::EspeakNg.as_str()
        }
    }

    /// Speaks `text` in `language` (with `espeak_voice` when espeak-ng speaks it): mono
    /// samples and their rate (16 kHz for Pico, 22.05 kHz for espeak-ng).
    pub fn synthesize(
        &self,
        text: &str,
        language: &str,
        espeak_voice: &str,
        deadline: Instant,
    ) -> Result<(Vec<i16>, u32), SpeechError> {
        if let (Some(_), Some(voice)) = (&self.pico, pico_voice(language)) {
            if text.trim().is_empty() {
                return Ok((Vec::new(), 16_000));
            }
            return self.synthesize_pico(voice, text, deadline);
        }
        let samples = self.espeak.synthesize(text, espeak_voice, deadline)?;
        Ok((samples, self.espeak.sample_rate()))
    }

    fn synthesize_pico(
        &self,
        voice: &str,
        text: &str,
        deadline: Instant,
    ) -> Result<(Vec<i16>, u32), SpeechError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(SpeechError::Input(format!(
                "text of {} bytes is longer than {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        let program = self.pico.as_ref().expect("pico loaded");
        // pico2wave writes only to a file whose name ends in .wav.
        let dir = tempfile::Builder::new()
            .prefix("sts-pico-")
            .tempdir()
            .map_err(|e| SpeechError::Failed(format!("no temporary directory for Pico: {e}")))?;
        let wav = dir.path().join("out.wav");
        let mut child = Command::new(program)
            .arg("-l")
            .arg(voice)
            .arg("-w")
            .arg(&wav)
            .arg("--")
            .arg(text)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SpeechError::Failed(format!("cannot run {}: {e}", program.display())))?;
        let wait = deadline.saturating_duration_since(Instant::now());
        let status = match child.wait_timeout(wait) {
            Ok(Some(s)) => s,
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpeechError::Timeout(
                    "Pico did not finish by the deadline".into(),
                ));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpeechError::Failed(format!("waiting for pico2wave: {e}")));
            }
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(SpeechError::Failed(format!(
                "pico2wave -l {voice} failed ({status}): {}",
                err.trim()
            )));
        }
        let reader = hound::WavReader::open(&wav)
            .map_err(|e| SpeechError::Failed(format!("Pico's WAV: {e}")))?;
        let spec = reader.spec();
        if spec.channels != 1 || spec.bits_per_sample != 16 {
            return Err(SpeechError::Failed(format!(
                "Pico's WAV is {} channels × {} bits, expected mono 16-bit",
                spec.channels, spec.bits_per_sample
            )));
        }
        let samples = reader
            .into_samples::<i16>()
            .collect::<Result<Vec<i16>, _>>()
            .map_err(|e| SpeechError::Failed(format!("Pico's WAV: {e}")))?;
        Ok((samples, spec.sample_rate))
    }
}
