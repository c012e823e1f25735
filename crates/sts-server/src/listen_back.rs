//! Listening back: what a listener would understand of a dub. The dubbed output's speech is
//! transcribed by Whisper (base, multilingual) in the target language, sentence by sentence,
//! and compared with the translation that was sent to be spoken: the words heard, their
//! overlap with the translation's, and the share of the translation recovered.
//!
//! A silent dub recovers nothing, a garbled one little, an untranslated (English) one almost
//! nothing of the Spanish; a clear voice speaking the translation recovers most of it.
//!
//! Used by `dub-file --verbose` (the demo's summary), the `listen-back` example (any dubbed
//! file with its `.srt`), and the end-to-end test of the translate mode.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::speech::SpeechError;
use crate::speech::normalize_words;
use crate::speech::whisper::{Whisper, WhisperModel, WhisperOptions};

/// Rate the audio is decoded at for Whisper.
pub const RATE: u32 = 16_000;
/// Listening starts this much before a span and ends this much after it (the dub's onset and
/// its last syllable are not cut).
const MARGIN_S: f64 = 0.25;
/// Longest wait for one sentence's transcription.
const SENTENCE_DEADLINE: Duration = Duration::from_secs(60);

/// A stretch of dubbed speech in the output file's time, with the text it was meant to say.
#[derive(Debug, Clone, PartialEq)]
pub struct Spoken {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
}

/// What was heard of one [`Spoken`] stretch.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    pub start_s: f64,
    pub end_s: f64,
    /// The translation sent to be spoken.
    pub sent: String,
    /// What Whisper heard.
    pub heard: String,
    /// Words of the translation (normalised).
    pub sent_words: usize,
    /// Words heard.
    pub heard_words: usize,
    /// Words in common (each word of the translation matched at most once).
    pub common: usize,
}

impl Heard {
    /// Share of the translation's words that were heard (1 for an empty translation).
    pub fn recovered(&self) -> f64 {
        if self.sent_words == 0 {
            1.0
        } else {
            self.common as f64 / self.sent_words as f64
        }
    }
}

/// The whole listen-back: per sentence, and the totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenBack {
    pub sentences: Vec<Heard>,
}

impl ListenBack {
    pub fn sent_words(&self) -> usize {
        self.sentences.iter().map(|h| h.sent_words).sum()
    }

    pub fn common(&self) -> usize {
        self.sentences.iter().map(|h| h.common).sum()
    }

    /// Share of all translated words heard back.
    pub fn recovered(&self) -> f64 {
        self.common() as f64 / self.sent_words().max(1) as f64
    }

    /// A plain-text table: one line per sentence, then the total.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for h in &self.sentences {
            out += &format!(
                "{:6.2}-{:6.2} s  {:3.0} % of {:2} words heard\n    sent:  {}\n    heard: {}\n",
                h.start_s,
                h.end_s,
                100.0 * h.recovered(),
                h.sent_words,
                h.sent,
                h.heard
            );
        }
        out += &format!(
            "listened back: {} of {} translated words heard ({:.0} %) in {} sentences\n",
            self.common(),
            self.sent_words(),
            100.0 * self.recovered(),
            self.sentences.len()
        );
        out
    }
}

/// Words in common between `sent` and `heard` (normalised; a multiset intersection).
pub fn common_words(sent: &str, heard: &str) -> (usize, usize, usize) {
    let sent = normalize_words(sent);
    let heard = normalize_words(heard);
    let mut pool: HashMap<&str, usize> = HashMap::new();
    for w in &heard {
        *pool.entry(w.as_str()).or_default() += 1;
    }
    let mut common = 0;
    for w in &sent {
        if let Some(n) = pool.get_mut(w.as_str())
            && *n > 0
        {
            *n -= 1;
            common += 1;
        }
    }
    (common, sent.len(), heard.len())
}

/// Merges fragments into sentences: fragments whose start lies in the same window of
/// `windows` (start, end in the same time as the fragments) go together; without windows,
/// fragments less than `gap_s` apart do. Empty texts are dropped; the result is in time order.
pub fn group(fragments: &[Spoken], windows: Option<&[(f64, f64)]>, gap_s: f64) -> Vec<Spoken> {
    let mut frags: Vec<&Spoken> = fragments
        .iter()
        .filter(|f| !f.text.trim().is_empty() && f.end_s > f.start_s)
        .collect();
    frags.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    let key = |f: &Spoken| -> Option<usize> {
        windows.and_then(|w| {
            w.iter()
                .position(|&(a, b)| f.start_s >= a - MARGIN_S && f.start_s < b)
        })
    };
    let mut out: Vec<(Option<usize>, Spoken)> = Vec::new();
    for f in frags {
        let k = key(f);
        let joins = match out.last() {
            Some((last_key, last)) => match (windows, k) {
                (Some(_), Some(_)) => *last_key == k,
                (Some(_), None) => false,
                (None, _) => f.start_s - last.end_s < gap_s,
            },
            None => false,
        };
        if joins {
            let (_, last) = out.last_mut().expect("checked");
            last.end_s = last.end_s.max(f.end_s);
            last.text = format!("{} {}", last.text.trim(), f.text.trim());
        } else {
            out.push((k, f.clone()));
        }
    }
    out.into_iter().map(|(_, s)| s).collect()
}

/// Decodes the first audio track of `path` to 16 kHz mono S16 with the `ffmpeg` CLI.
pub fn decode_audio(path: &Path) -> Result<Vec<i16>, String> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args([
            "-map",
            "0:a:0",
            "-f",
            "s16le",
            "-acodec",
            "pcm_s16le",
            "-ac",
            "1",
        ])
        .args(["-ar", &RATE.to_string(), "-"])
        .output()
        .map_err(|e| format!("cannot run ffmpeg (scripts/install-deps.sh installs it): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ffmpeg could not decode {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

/// Starts the listener: Whisper base, which knows the target languages.
pub fn listener() -> Result<Whisper, SpeechError> {
    Whisper::start(WhisperModel::Base, WhisperOptions::default())
}

/// Transcribes each stretch of `audio` (16 kHz mono, the output file's time) in `language`
/// and compares it with the text sent.
pub fn listen(
    whisper: &Whisper,
    audio: &[i16],
    spans: &[Spoken],
    language: &str,
) -> Result<ListenBack, SpeechError> {
    let mut sentences = Vec::new();
    for s in spans {
        let at = |t: f64| ((t.max(0.0) * f64::from(RATE)) as usize).min(audio.len());
        let clip = &audio[at(s.start_s - MARGIN_S)..at(s.end_s + MARGIN_S)];
        let heard = if clip.is_empty() {
            String::new()
        } else {
            whisper
                .transcribe(clip, language, "", Instant::now() + SENTENCE_DEADLINE)?
                .text
        };
        let (common, sent_words, heard_words) = common_words(&s.text, &heard);
        sentences.push(Heard {
            start_s: s.start_s,
            end_s: s.end_s,
            sent: s.text.clone(),
            heard,
            sent_words,
            heard_words,
            common,
        });
    }
    Ok(ListenBack { sentences })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(a: f64, b: f64, t: &str) -> Spoken {
        Spoken {
            start_s: a,
            end_s: b,
            text: t.into(),
        }
    }

    #[test]
    fn overlap_counts_each_word_once() {
        assert_eq!(
            common_words("el puente del puerto", "El puente, el puerto."),
            (3, 4, 4)
        );
        assert_eq!(common_words("la la la", "la"), (1, 3, 1));
        assert_eq!(common_words("", "algo"), (0, 0, 1));
        let h = Heard {
            start_s: 0.0,
            end_s: 1.0,
            sent: "a b".into(),
            heard: "a".into(),
            sent_words: 2,
            heard_words: 1,
            common: 1,
        };
        assert_eq!(h.recovered(), 0.5);
    }

    #[test]
    fn fragments_group_into_sentences() {
        let frags = [
            sp(0.5, 1.4, "Buenas"),
            sp(1.5, 2.9, "tardes"),
            sp(3.0, 3.5, ""),
            sp(5.6, 7.0, "El consejo"),
            sp(7.1, 9.0, "votó"),
        ];
        let by_window = group(&frags, Some(&[(0.4, 3.8), (5.6, 8.7)]), 0.5);
        assert_eq!(by_window.len(), 2);
        assert_eq!(by_window[0].text, "Buenas tardes");
        assert_eq!((by_window[0].start_s, by_window[0].end_s), (0.5, 2.9));
        assert_eq!(by_window[1].text, "El consejo votó");
        let by_gap = group(&frags, None, 0.5);
        assert_eq!(by_gap.len(), 2);
        assert_eq!(by_gap[1].end_s, 9.0);
    }
}
