//! Measures how fragment boundaries shape real dubbing: the bundled fixture through the file
//! chain against the reference server's `translate` mode (pocketsphinx → apertium →
//! espeak-ng), once per boundary setting, and prints a table: word error rate of the
//! transcripts against the fixture's sentences, speech run on / compressed / trimmed by
//! `stsbridge`, and the STS latency each setting leaves within the offset.
//!
//! ```text
//! cargo run --release -p dubbing-worker --example boundary-wer
//! cargo run --release -p dubbing-worker --example boundary-wer -- --settings fixed:1000,silence:1000-3000
//! ```

use clap::Parser;
use dubbing_sts_server::speech::word_errors;
use dubbing_sts_server::{Mode, ServerConfig, StsServer};
use dubbing_worker::pipeline::{Boundary, Chain};
use gst::prelude::*;
use gstdubbing::stsbridge::{FRAGMENT_MESSAGE, FragmentReport};

#[derive(Parser, Debug)]
#[command(name = "boundary-wer")]
struct Args {
    /// Boundary settings, comma-separated: `fixed:<ms>` or `silence:<min ms>-<max ms>`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fixed:1000,silence:500-1500,silence:1000-2000,silence:1000-3000,silence:1500-4000"
    )]
    settings: Vec<String>,
    #[arg(long, default_value = "fixtures/speech-60s.mp4")]
    input: String,
    #[arg(long, default_value = "fixtures/speech-60s.json")]
    fixture_json: String,
}

fn parse(setting: &str) -> Result<(u64, Boundary), String> {
    let ms = |v: &str| {
        v.parse::<u64>()
            .map(|m| m * 1_000_000)
            .map_err(|e| format!("{setting}: {e}"))
    };
    match setting.split_once(':') {
        Some(("fixed", d)) => Ok((ms(d)?, Boundary::Fixed)),
        Some(("silence", r)) => {
            let (a, b) = r
                .split_once('-')
                .ok_or_else(|| format!("{setting}: min-max"))?;
            let (min_ns, max_ns) = (ms(a)?, ms(b)?);
            Ok((1_000_000_000, Boundary::Silence { min_ns, max_ns }))
        }
        _ => Err(format!("{setting}: fixed:<ms> or silence:<min>-<max>")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    dubbing_worker::init()?;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&args.fixture_json)?)?;
    let reference: String = json["sentences"]
        .as_array()
        .ok_or("fixture json has no sentences")?
        .iter()
        .filter_map(|s| s["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let server = StsServer::start(ServerConfig {
        mode: Mode::Translate,
        ..Default::default()
    })?;
    let out = std::env::temp_dir().join(format!("boundary-wer-{}.mp4", std::process::id()));

    println!(
        "| boundary | fragments | WER | errors / words | ran on | compressed | trimmed | STS latency left | wall |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (n, setting) in args.settings.iter().enumerate() {
        let (chunk, boundary) = parse(setting)?;
        let chain = Chain {
            url: server.url(),
            stream_id: format!("wer-{n}"),
            chunk_duration_ns: chunk,
            boundary,
            ..Default::default()
        };
        let file = chain.build_file(&args.input, out.to_str().unwrap(), None)?;
        let pipeline = file.pipeline.clone();
        let t0 = std::time::Instant::now();
        pipeline.set_state(gst::State::Playing)?;
        let mut transcripts = Vec::new();
        for msg in pipeline
            .bus()
            .unwrap()
            .iter_timed(gst::ClockTime::from_seconds(600))
        {
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(e) => return Err(format!("{}", e.error()).into()),
                gst::MessageView::Element(e) => {
                    if let Some(r) = e
                        .structure()
                        .filter(|s| s.name() == FRAGMENT_MESSAGE)
                        .and_then(FragmentReport::from_structure)
                    {
                        transcripts.push(r.transcript);
                    }
                }
                _ => {}
            }
        }
        let wall = t0.elapsed();
        let st = file.branches[0]
            .dubbing
            .as_ref()
            .expect("dubbed")
            .bridge
            .property::<gst::Structure>("stats");
        pipeline.set_state(gst::State::Null)?;
        let ms = |f: &str| st.get::<u64>(f).unwrap_or(0) as f64 / 1e6;
        let e = word_errors(&reference, &transcripts.join(" "));
        println!(
            "| {setting} | {} | {:.1} % | {} / {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} s | {:.1} s |",
            transcripts.len(),
            100.0 * e.rate(),
            e.errors,
            e.reference_words,
            ms("overflow"),
            ms("compressed"),
            ms("trimmed"),
            chain.sts_latency_ns() as f64 / 1e9,
            wall.as_secs_f64(),
        );
    }
    let _ = std::fs::remove_file(&out);
    Ok(())
}
