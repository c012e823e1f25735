//! Speech synthesis with espeak-ng, in-process, on one dedicated thread (espeak-ng has global
//! state): jobs come through a bounded channel and are answered by their deadline.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};

use super::SpeechError;
use super::espeak::Espeak;

/// Jobs waiting for the synthesiser thread.
const QUEUE: usize = 64;
/// Longest synthesis, in seconds of audio (a guard against runaway input).
const MAX_SECONDS: usize = 120;
/// Longest text accepted for one synthesis, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 << 10;

enum Job {
    Synthesize {
        text: String,
        voice: String,
        deadline: Instant,
        reply: std::sync::mpsc::SyncSender<Result<Vec<i16>, SpeechError>>,
    },
}

/// The process's espeak-ng, behind its own thread. Get it with [`Synthesizer::shared`].
pub struct Synthesizer {
    jobs: Sender<Job>,
    sample_rate: u32,
    _thread: JoinHandle<()>,
}

impl std::fmt::Debug for Synthesizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Synthesizer")
            .field("sample_rate", &self.sample_rate)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Result<Arc<Synthesizer>, SpeechError>> = OnceLock::new();

impl Synthesizer {
    /// The one synthesiser of this process (espeak-ng allows one), started on first use.
    /// Fails with [`SpeechError::Missing`] when `libespeak-ng1` / `espeak-ng-data` is absent
    /// (and keeps failing: the library is looked for once).
    pub fn shared() -> Result<Arc<Synthesizer>, SpeechError> {
        SHARED
            .get_or_init(|| Synthesizer::start().map(Arc::new))
            .clone()
    }

    fn start() -> Result<Synthesizer, SpeechError> {
        let (jobs, rx) = bounded::<Job>(QUEUE);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("sts-tts".into())
            .spawn(move || {
                let espeak = match Espeak::load() {
                    Ok(e) => {
                        let _ = ready_tx.send(Ok(e.sample_rate()));
                        e
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let mut voice = String::new();
                for job in rx {
                    match job {
                        Job::Synthesize {
                            text,
                            voice: wanted,
                            deadline,
                            reply,
                        } => {
                            let result = if Instant::now() >= deadline {
                                Err(SpeechError::Timeout(
                                    "deadline passed before synthesis started".into(),
                                ))
                            } else if voice != wanted {
                                espeak.set_voice(&wanted).map(|()| voice = wanted)
                            } else {
                                Ok(())
                            }
                            .and_then(|()| {
                                espeak
                                    .synthesize(&text, MAX_SECONDS * espeak.sample_rate() as usize)
                            });
                            let _ = reply.send(result);
                        }
                    }
                }
            })
            .map_err(|e| SpeechError::Failed(format!("cannot start the TTS thread: {e}")))?;
        let sample_rate = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| SpeechError::Failed("espeak-ng did not initialise".into()))??;
        Ok(Synthesizer {
            jobs,
            sample_rate,
            _thread: thread,
        })
    }

    /// Rate of the synthesised audio (22 050 Hz for espeak-ng).
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Synthesises `text` with espeak-ng's voice `voice` (`"es"`, `"ca"`, `"en"` …): mono
    /// samples at [`sample_rate`](Self::sample_rate). Empty text gives no samples.
    pub fn synthesize(
        &self,
        text: &str,
        voice: &str,
        deadline: Instant,
    ) -> Result<Vec<i16>, SpeechError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(SpeechError::Input(format!(
                "text of {} bytes is longer than {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let wait = deadline.saturating_duration_since(Instant::now());
        self.jobs
            .send_timeout(
                Job::Synthesize {
                    text: text.to_owned(),
                    voice: voice.to_owned(),
                    deadline,
                    reply,
                },
                wait,
            )
            .map_err(|_| {
                SpeechError::Timeout("the TTS queue stayed full until the deadline".into())
            })?;
        // A synthesis that started runs to its end (a few ms per sentence); wait for it with a
        // little slack past the deadline rather than leave it unanswered.
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(2);
        answer
            .recv_timeout(wait)
            .map_err(|_| SpeechError::Timeout("the TTS thread did not answer in time".into()))?
    }

    /// Whether espeak-ng has the voice `voice` (synthesises a short word with it).
    pub fn has_voice(&self, voice: &str) -> bool {
        self.synthesize("a", voice, Instant::now() + Duration::from_secs(10))
            .is_ok_and(|s| !s.is_empty())
    }
}
