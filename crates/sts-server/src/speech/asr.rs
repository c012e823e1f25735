//! Speech recognition with pocketsphinx (5prealpha, Debian's `libpocketsphinx3`) and its
//! US English model (`pocketsphinx-en-us`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::pocketsphinx::{self, PocketSphinx};
use super::signal::to_asr_input;
use super::{Budget, SpeechError};

/// Where `pocketsphinx-en-us` installs its model.
pub const EN_US_MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";

/// The recogniser of one language: the library, the model files, and a spare decoder.
pub struct Recognizer {
    lib: Arc<PocketSphinx>,
    language: &'static str,
    hmm: PathBuf,
    lm: PathBuf,
    dict: PathBuf,
    /// A decoder made at load time (proving the model loads), handed to the first user.
    spare: Mutex<Option<Decoder>>,
}

impl std::fmt::Debug for Recognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recognizer")
            .field("language", &self.language)
            .field("hmm", &self.hmm)
            .finish_non_exhaustive()
    }
}

impl Recognizer {
    /// Loads the library and checks the model of `language` (only `"en"`) by making one
    /// decoder. Fails with [`SpeechError::Missing`] naming the package to install.
    pub fn load(language: &str) -> Result<Recognizer, SpeechError> {
        if super::language_code(language) != "en" {
            return Err(SpeechError::Input(format!(
                "no speech recognition model for {language:?} (only en)"
            )));
        }
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
        let recognizer = Recognizer {
            lib,
            language: "en",
            hmm,
            lm,
            dict,
            spare: Mutex::new(None),
        };
        let first = recognizer.make_decoder()?;
        *recognizer.spare.lock() = Some(first);
        Ok(recognizer)
    }

    pub fn language(&self) -> &'static str {
        self.language
    }

    fn make_decoder(&self) -> Result<Decoder, SpeechError> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let (hmm, lm, dict) = (path(&self.hmm), path(&self.lm), path(&self.dict));
        let inner = pocketsphinx::Decoder::new(
            self.lib.clone(),
            &[
                ("-hmm", &hmm),
                ("-lm", &lm),
                ("-dict", &dict),
                ("-logfn", "/dev/null"),
            ],
        )?;
        Ok(Decoder { inner })
    }

    /// A fresh decoder (its cepstral mean starts from the model's default).
    pub fn new_decoder(&self) -> Result<Decoder, SpeechError> {
        if let Some(d) = self.spare.lock().take() {
            return Ok(d);
        }
        self.make_decoder()
    }

    /// Transcribes one block of interleaved S16LE audio with a fresh decoder.
    pub fn transcribe(&self, pcm: &[u8], rate: u32, channels: u32) -> Result<String, SpeechError> {
        self.new_decoder()?.transcribe(pcm, rate, channels)
    }
}

/// One decoder: decodes utterances one after the other, carrying its cepstral mean over.
pub struct Decoder {
    inner: pocketsphinx::Decoder,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// Decodes 16 kHz mono samples as one utterance (fed in blocks of at most 2048 samples).
    pub fn decode(&mut self, samples: &[i16]) -> Result<String, SpeechError> {
        self.decode_within(samples, &Budget::unlimited())
    }

    /// [`Decoder::decode`] within `budget`: checked before each block of 2048 samples (128 ms
    /// of audio, a few ms of work), the decode stops with [`SpeechError::Timeout`] once the
    /// budget is spent (the decoder stays usable).
    pub fn decode_within(
        &mut self,
        samples: &[i16],
        budget: &Budget,
    ) -> Result<String, SpeechError> {
        self.inner
            .decode_utterance_until(samples, &|| budget.is_spent())
            .map_err(|e| match e {
                SpeechError::Timeout(_) => budget.check("speech recognition").err().unwrap_or(e),
                e => e,
            })
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
