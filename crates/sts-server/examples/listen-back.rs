//! Listens back to a dubbed file: Whisper (base) transcribes its speech in the target language
//! where its subtitles say the dub speaks, and compares that with the subtitles' text (the
//! translation that was sent to be spoken): per sentence, the words heard and the share of the
//! translation recovered. `dub-file --verbose` (the demo) prints the same for its own output.
//!
//! ```text
//! cargo run --release -p dubbing-sts-server --example listen-back -- \
//!     --input out/dubbed-translate.mp4 --sentences fixtures/speech-60s.json
//! ```

use std::path::PathBuf;

use clap::Parser;
use dubbing_sts_server::listen_back::{self, Spoken};

#[derive(Parser)]
struct Args {
    /// The dubbed file.
    #[arg(long)]
    input: PathBuf,
    /// Its subtitles (default: the input with `.srt`).
    #[arg(long)]
    srt: Option<PathBuf>,
    /// A description with `sentences[].start_s/end_s` (the fixture's JSON) to group the cues
    /// by sentence; without it, cues less than 0.5 s apart are grouped.
    #[arg(long)]
    sentences: Option<PathBuf>,
    /// Language of the dub.
    #[arg(long, default_value = "es")]
    language: String,
}

/// `HH:MM:SS,mmm` in seconds.
fn srt_time(t: &str) -> Option<f64> {
    let (hms, ms) = t.trim().split_once(',')?;
    let mut parts = hms.split(':').map(|p| p.parse::<f64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(h * 3600.0 + m * 60.0 + s + ms.parse::<f64>().ok()? / 1000.0)
}

/// The cues of an SRT file.
fn parse_srt(text: &str) -> Vec<Spoken> {
    let mut cues = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let mut lines = block.lines().skip_while(|l| l.trim().is_empty());
        let _index = lines.next();
        let Some((a, b)) = lines.next().and_then(|l| l.split_once("-->")) else {
            continue;
        };
        let (Some(start_s), Some(end_s)) = (srt_time(a), srt_time(b)) else {
            continue;
        };
        let text: Vec<&str> = lines.collect();
        cues.push(Spoken {
            start_s,
            end_s,
            text: text.join(" "),
        });
    }
    cues
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let srt = args
        .srt
        .clone()
        .unwrap_or_else(|| args.input.with_extension("srt"));
    let cues = parse_srt(&std::fs::read_to_string(&srt)?);
    let windows: Option<Vec<(f64, f64)>> = match &args.sentences {
        Some(p) => {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p)?)?;
            let s = v["sentences"].as_array().ok_or("no sentences[] in it")?;
            Some(
                s.iter()
                    .filter_map(|s| Some((s["start_s"].as_f64()?, s["end_s"].as_f64()?)))
                    .collect(),
            )
        }
        None => None,
    };
    let spans = listen_back::group(&cues, windows.as_deref(), 0.5);
    let audio = listen_back::decode_audio(&args.input)?;
    let whisper = listen_back::listener()?;
    let heard = listen_back::listen(&whisper, &audio, &spans, &args.language)?;
    println!(
        "{} ({} cues of {}), listened back in {}:",
        args.input.display(),
        cues.len(),
        srt.display(),
        args.language
    );
    print!("{}", heard.report());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srt_cues() {
        let cues = parse_srt(
            "1\n00:00:01,500 --> 00:00:02,250\nHola\n\n2\n00:01:00,000 --> 00:01:01,000\nuno\ndos\n",
        );
        assert_eq!(cues.len(), 2);
        assert_eq!((cues[0].start_s, cues[0].end_s), (1.5, 2.25));
        assert_eq!(cues[1].text, "uno dos");
        assert_eq!(cues[1].start_s, 60.0);
    }
}
