//! Speech recognition: Whisper (faster-whisper in a supervised helper process, see
//! [`super::whisper`]) or pocketsphinx (5prealpha, Debian's `libpocketsphinx3`, in-process)
//! with its US English model (`pocketsphinx-en-us`), chosen by [`AsrEngine`].
//!
//! A [`Recognizer`] is the loaded engine; a [`Decoder`] is one stream's recogniser state,
//! carried from fragment to fragment in order: pocketsphinx's cepstral mean, or for Whisper
//! the stream's last 3 s of audio, heard again before its next fragment so that the words cut
//! at the fragment's edge are heard whole (only the words whose middle lies in the new
//! fragment are kept). Measured on the fixture cut as the demo cuts it (0.5–1.5 s fragments,
//! Whisper base): 31 % word errors with that audio context, 49 % with none, and 62 % with the
//! stream's previous text as Whisper's prompt (short fragments then repeat the prompt:
//! "And welcome. And welcome.").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::pocketsphinx::{self, PocketSphinx};
use super::signal::to_asr_input;
use super::whisper::{self, Whisper, WhisperModel, WhisperOptions, WhisperStatus};
use super::{Budget, SpeechError};

/// Deadline of [`Decoder::decode`] (which takes none).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// The speech recogniser of the translate mode (`sts-server --asr`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum AsrEngine {
    /// Whisper base (multilingual, 74 M parameters) with faster-whisper: the most accurate.
    #[default]
    WhisperBase,
    /// Whisper tiny.en (English, 39 M parameters): half the CPU of base, more errors.
    WhisperTinyEn,
    /// pocketsphinx with its US English model: in-process, cheap, many errors.
    Pocketsphinx,
}

impl AsrEngine {
    /// The name on the command line and in `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            AsrEngine::WhisperBase => "whisper-base",
            AsrEngine::WhisperTinyEn => "whisper-tiny-en",
            AsrEngine::Pocketsphinx => "pocketsphinx",
        }
    }

    /// Its Whisper model (`None` for pocketsphinx).
    pub fn whisper_model(self) -> Option<WhisperModel> {
        match self {
            AsrEngine::WhisperBase => Some(WhisperModel::Base),
            AsrEngine::WhisperTinyEn => Some(WhisperModel::TinyEn),
            AsrEngine::Pocketsphinx => None,
        }
    }
}

impl std::fmt::Display for AsrEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A loaded recogniser of one language.
pub struct Recognizer {
    engine: AsrEngine,
    language: &'static str,
    kind: Kind,
}

enum Kind {
    Sphinx(Sphinx),
    Whisper(Arc<Whisper>),
}

impl std::fmt::Debug for Recognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recognizer")
            .field("engine", &self.engine)
            .field("language", &self.language)
            .finish_non_exhaustive()
    }
}

impl Recognizer {
    /// pocketsphinx for `language` (only `"en"`); see [`Recognizer::load_engine`].
    pub fn load(language: &str) -> Result<Recognizer, SpeechError> {
        Recognizer::load_engine(AsrEngine::Pocketsphinx, language, WhisperOptions::default())
    }

    /// Loads `engine` for the spoken `language` (only `"en"`): a missing package or model is
    /// [`SpeechError::Missing`] / [`SpeechError::NotInstalled`] naming what installs it. A
    /// Whisper engine starts its helper process and waits until its model is loaded.
    pub fn load_engine(
        engine: AsrEngine,
        language: &str,
        options: WhisperOptions,
    ) -> Result<Recognizer, SpeechError> {
        if super::language_code(language) != "en" {
            return Err(SpeechError::Input(format!(
                "no speech recognition model for {language:?} (only en)"
            )));
        }
        let kind = match engine.whisper_model() {
            Some(model) => Kind::Whisper(Arc::new(Whisper::start(model, options)?)),
            None => Kind::Sphinx(Sphinx::load()?),
        };
        Ok(Recognizer {
            engine,
            language: "en",
            kind,
        })
    }

    pub fn engine(&self) -> AsrEngine {
        self.engine
    }

    pub fn language(&self) -> &'static str {
        self.language
    }

    /// The Whisper helper's state (`None` for pocketsphinx).
    pub fn whisper_status(&self) -> Option<WhisperStatus> {
        match &self.kind {
            Kind::Whisper(w) => Some(w.status()),
            Kind::Sphinx(_) => None,
        }
    }

    /// The Whisper recogniser itself (`None` for pocketsphinx).
    pub fn whisper(&self) -> Option<&Arc<Whisper>> {
        match &self.kind {
            Kind::Whisper(w) => Some(w),
            Kind::Sphinx(_) => None,
        }
    }

    /// A fresh decoder: the state of one stream.
    pub fn new_decoder(&self) -> Result<Decoder, SpeechError> {
        Ok(Decoder {
            inner: match &self.kind {
                Kind::Sphinx(s) => Inner::Sphinx(s.new_decoder()?),
                Kind::Whisper(w) => Inner::Whisper {
                    whisper: w.clone(),
                    language: self.language,
                    context: Vec::new(),
                    last_seq: None,
                },
            },
        })
    }

    /// Transcribes one block of interleaved S16LE audio with a fresh decoder.
    pub fn transcribe(&self, pcm: &[u8], rate: u32, channels: u32) -> Result<String, SpeechError> {
        self.new_decoder()?.transcribe(pcm, rate, channels)
    }
}

/// pocketsphinx: the library, the model files, and a spare decoder.
struct Sphinx {
    lib: Arc<PocketSphinx>,
    hmm: PathBuf,
    lm: PathBuf,
    dict: PathBuf,
    /// A decoder made at load time (proving the model loads), handed to the first user.
    spare: Mutex<Option<pocketsphinx::Decoder>>,
}

/// Where `pocketsphinx-en-us` installs its model.
pub const EN_US_MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";

impl Sphinx {
    fn load() -> Result<Sphinx, SpeechError> {
        let dir = Path::new(EN_US_MODEL_DIR);
        let (hmm, lm, dict) = (
            dir.join("en-us"),
            dir.join("en-us.lm.bin"),
            dir.join("cmudict-en-us.dict"),
        );
        for path in [&hmm.join("mdef"), &lm, &dict] {
            if !path.is_file() {
                return Err(SpeechError::Missing {
                    package: "pocketsphinx-en-us",
                    detail: format!(
                        "the English speech model file {} is missing",
                        path.display()
                    ),
                });
            }
        }
        let lib = PocketSphinx::load()?;
        let sphinx = Sphinx {
            lib,
            hmm,
            lm,
            dict,
            spare: Mutex::new(None),
        };
        let first = sphinx.make_decoder()?;
        *sphinx.spare.lock() = Some(first);
        Ok(sphinx)
    }

    fn make_decoder(&self) -> Result<pocketsphinx::Decoder, SpeechError> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let (hmm, lm, dict) = (path(&self.hmm), path(&self.lm), path(&self.dict));
        pocketsphinx::Decoder::new(
            self.lib.clone(),
            &[
                ("-hmm", &hmm),
                ("-lm", &lm),
                ("-dict", &dict),
                ("-logfn", "/dev/null"),
            ],
        )
    }

    /// A fresh decoder (its cepstral mean starts from the model's default).
    fn new_decoder(&self) -> Result<pocketsphinx::Decoder, SpeechError> {
        if let Some(d) = self.spare.lock().take() {
            return Ok(d);
        }
        self.make_decoder()
    }
}

/// One stream's recogniser: decodes utterances one after the other, carrying over
/// pocketsphinx's cepstral mean, or the text so far as Whisper's prompt.
pub struct Decoder {
    inner: Inner,
}

enum Inner {
    Sphinx(pocketsphinx::Decoder),
    Whisper {
        whisper: Arc<Whisper>,
        language: &'static str,
        /// The end of the stream's audio so far (at most [`whisper::CONTEXT_SAMPLES`]).
        context: Vec<i16>,
        /// The `sequence_number` of the fragment `context` ends with.
        last_seq: Option<u64>,
    },
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = match &self.inner {
            Inner::Sphinx(_) => "pocketsphinx",
            Inner::Whisper { .. } => "whisper",
        };
        f.debug_struct("Decoder")
            .field("engine", &engine)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// Decodes 16 kHz mono samples as one utterance (pocketsphinx: fed in blocks of at most
    /// 2048 samples), within a minute.
    pub fn decode(&mut self, samples: &[i16]) -> Result<String, SpeechError> {
        self.decode_within(samples, &Budget::until(Instant::now() + DEFAULT_DEADLINE))
    }

    /// [`Decoder::decode`] within `budget`: pocketsphinx checks it before each block of 2048
    /// samples (128 ms of audio, a few ms of work) and stops with [`SpeechError::Timeout`] once
    /// it is spent (the decoder stays usable); Whisper's helper gets its deadline.
    pub fn decode_within(
        &mut self,
        samples: &[i16],
        budget: &Budget,
    ) -> Result<String, SpeechError> {
        self.decode_fragment(samples, None, budget)
    }

    /// Decodes the fragment `sequence_number` of a stream within `budget`: Whisper hears the
    /// stream's previous audio first when that fragment directly follows the last one decoded
    /// (`None`: it does).
    pub fn decode_fragment(
        &mut self,
        samples: &[i16],
        sequence_number: Option<u64>,
        budget: &Budget,
    ) -> Result<String, SpeechError> {
        budget.check("speech recognition")?;
        match &mut self.inner {
            Inner::Sphinx(d) => d
                .decode_utterance_until(samples, &|| budget.is_spent())
                .map_err(|e| match e {
                    SpeechError::Timeout(_) => {
                        budget.check("speech recognition").err().unwrap_or(e)
                    }
                    e => e,
                }),
            Inner::Whisper {
                whisper,
                language,
                context,
                last_seq,
            } => {
                let follows = match (sequence_number, *last_seq) {
                    (Some(seq), Some(last)) => seq == last + 1,
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                if !follows {
                    context.clear();
                }
                let result =
                    whisper.transcribe_after(context, samples, language, "", budget.deadline());
                // Whatever the outcome, the next fragment follows this audio.
                context.extend_from_slice(samples);
                let excess = context.len().saturating_sub(whisper::CONTEXT_SAMPLES);
                context.drain(..excess);
                *last_seq = sequence_number;
                Ok(result?.text.trim().to_owned())
            }
        }
    }

    /// Decodes interleaved S16LE audio at any rate of 8–192 kHz and 1–8 channels as one
    /// utterance (downmixed and resampled to 16 kHz first).
    pub fn transcribe(
        &mut self,
        pcm: &[u8],
        rate: u32,
        channels: u32,
    ) -> Result<String, SpeechError> {
        let samples = to_asr_input(pcm, rate, channels).map_err(SpeechError::Input)?;
        self.decode(&samples)
    }
}
