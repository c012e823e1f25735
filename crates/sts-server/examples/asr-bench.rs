//! The recognisers of the translate mode on the bundled fixture: word error rate, CPU per
//! second of audio, memory. Two cuts: each sentence window (±0.2 s) on its own, and the whole
//! clip as one stream in 1 s fragments, in order, with the stream's context (what the server
//! does with fragments of a stream).
//!
//! ```text
//! cargo run --release -p dubbing-sts-server --example asr-bench
//! cargo run --release -p dubbing-sts-server --example asr-bench -- --engines whisper-base --fixture fixtures/speech-60s
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use dubbing_sts_server::speech::whisper::WhisperOptions;
use dubbing_sts_server::speech::{AsrEngine, Recognizer, to_asr_input, word_errors};

#[derive(Parser)]
struct Args {
    /// Recognisers to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [AsrEngine::WhisperBase, AsrEngine::WhisperTinyEn, AsrEngine::Pocketsphinx])]
    engines: Vec<AsrEngine>,
    /// The fixture, without extension (`.mp4` and `.json`).
    #[arg(long, default_value = "fixtures/speech-60s")]
    fixture: String,
    /// Print every transcript.
    #[arg(long)]
    verbose: bool,
    /// Whisper's encoder window for short audio, seconds (30: Whisper's own).
    #[arg(long, default_value_t = 10.0)]
    window_s: f64,
    /// Skip the 1 s fragments.
    #[arg(long)]
    sentences_only: bool,
}

/// CPU time of this process (user + system), seconds.
fn own_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn own_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(format!("{}.mp4", args.fixture))
        .args([
            "-f",
            "s16le",
            "-acodec",
            "pcm_s16le",
            "-ar",
            "48000",
            "-ac",
            "2",
            "-",
        ])
        .output()?;
    let pcm = to_asr_input(&out.stdout, 48000, 2)?;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}.json", args.fixture))?)?;
    let sentences: Vec<(f64, f64, String)> = json["sentences"]
        .as_array()
        .ok_or("no sentences")?
        .iter()
        .map(|s| {
            (
                s["start_s"].as_f64().unwrap(),
                s["end_s"].as_f64().unwrap(),
                s["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let reference: Vec<&str> = sentences.iter().map(|s| s.2.as_str()).collect();
    let reference = reference.join(" ");
    let at = |t: f64| ((t.max(0.0) * 16000.0) as usize).min(pcm.len());
    let deadline = || Instant::now() + Duration::from_secs(120);

    println!(
        "| recogniser | WER, sentences | WER, 1 s fragments of a stream | CPU per s of audio | memory | load |"
    );
    println!("|---|---|---|---|---|---|");
    for engine in args.engines {
        let rss0 = own_rss_mib();
        let t0 = Instant::now();
        let asr = Recognizer::load_engine(
            engine,
            "en",
            WhisperOptions {
                window_s: args.window_s,
                ..Default::default()
            },
        )?;
        let load = t0.elapsed();
        let cpu = |asr: &Recognizer| match asr.whisper_status() {
            Some(w) => w.cpu_s,
            None => own_cpu_s(),
        };
        // Sentences, each on its own.
        let (c0, mut audio_s) = (cpu(&asr), 0.0);
        let mut heard = Vec::new();
        for (a, b, _) in &sentences {
            let clip = &pcm[at(a - 0.2)..at(b + 0.2)];
            audio_s += clip.len() as f64 / 16000.0;
            heard.push(
                asr.new_decoder()?
                    .decode_within(clip, &dubbing_sts_server::speech::Budget::until(deadline()))?,
            );
            if args.verbose {
                eprintln!("{engine}: {:?}", heard.last().unwrap());
            }
        }
        let sentence_wer = word_errors(&reference, &heard.join(" ")).rate();
        // One stream in 1 s fragments, in order.
        let mut stream = asr.new_decoder()?;
        let mut heard = Vec::new();
        let fragments = if args.sentences_only { 0 } else { pcm.len() };
        for (seq, chunk) in pcm[..fragments].chunks(16000).enumerate() {
            audio_s += chunk.len() as f64 / 16000.0;
            heard.push(stream.decode_fragment(
                chunk,
                Some(seq as u64),
                &dubbing_sts_server::speech::Budget::until(deadline()),
            )?);
            if args.verbose {
                eprintln!("{engine} {seq}: {:?}", heard.last().unwrap());
            }
        }
        let fragment_wer = word_errors(&reference, &heard.join(" ")).rate();
        let cpu_s = cpu(&asr) - c0;
        let memory = match asr.whisper_status() {
            Some(w) => format!("{:.0} MiB (helper process)", w.rss_mib),
            None => format!("{:.0} MiB (in-process)", own_rss_mib() - rss0),
        };
        println!(
            "| {engine} | {:.1} % | {:.1} % | {:.2} s | {memory} | {:.1} s |",
            100.0 * sentence_wer,
            100.0 * fragment_wer,
            cpu_s / audio_s,
            load.as_secs_f64()
        );
    }
    Ok(())
}
