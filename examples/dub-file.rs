//! Dubs a media file through the same element chain as the live pipeline (demux → decode →
//! dubchunker → stsbridge → avoffset → AAC encode → mux, video copied) and prints a summary:
//! fragments dubbed and fallen back, per-marker A/V sync, output durations.
//!
//! ```text
//! cargo run --release -p dubbing-worker --example dub-file -- --sts-mode tone
//! cargo run --release -p dubbing-worker --example dub-file -- --input in.mp4 --output out.mkv \
//!     --url http://sts:8000/api/v1/sts/process --languages es,de
//! ```
//!
//! Without `--url` a reference STS server (`--sts-mode echo|tone|silence`, default echo) runs
//! in-process on 127.0.0.1. The API key comes from `WORKER_STS_API_KEY` (never from the
//! command line, which GStreamer would log).

use std::collections::BTreeMap;
use std::path::Path;

use clap::Parser;
use dubbing_sts_server::Mode;
use gst::prelude::*;

/// Dubs a media file through the live element chain and prints a summary (fragments, A/V
/// sync per marker, output durations).
#[derive(Parser, Debug)]
#[command(
    name = "dub-file",
    after_help = "The STS API key comes from WORKER_STS_API_KEY (never from the command line)."
)]
struct Args {
    /// Input file: H.264 + AAC in MP4, Matroska, FLV or MPEG-TS.
    #[arg(long, default_value = "fixtures/speech-60s.mp4")]
    input: String,
    /// Output file: .mp4, .mkv, .flv or .ts (its directory is created).
    #[arg(long, default_value = "out/dubbed.mp4")]
    output: String,
    /// STS endpoint; without it a reference STS server runs in-process on 127.0.0.1.
    #[arg(long, conflicts_with = "sts_mode")]
    url: Option<String>,
    /// What the in-process reference STS server answers.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    sts_mode: Mode,
    /// Target languages, comma-separated: one dubbed audio track each.
    #[arg(long, value_delimiter = ',', default_value = "es")]
    languages: Vec<String>,
    /// A/V offset, ns.
    #[arg(long, default_value_t = 6_000_000_000)]
    offset_ns: u64,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("dub-file: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    dubbing_worker::init()?;

    let server = match &args.url {
        Some(_) => None,
        None => Some(dubbing_sts_server::StsServer::start(
            dubbing_sts_server::ServerConfig {
                mode: args.sts_mode,
                ..Default::default()
            },
        )?),
    };
    let url = match (&args.url, &server) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.url(),
        (None, None) => unreachable!(),
    };
    if let Some(dir) = Path::new(&args.output).parent() {
        std::fs::create_dir_all(dir)?;
    }

    let chain = dubbing_worker::pipeline::Chain {
        url: url.clone(),
        stream_id: "dub-file".into(),
        target_languages: args.languages.clone(),
        offset_ns: args.offset_ns,
        ..Default::default()
    };
    let desc = chain.file_description(&args.input, &args.output)?;
    let pipeline = gst::parse::launch(&desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    if let Ok(key) = std::env::var("WORKER_STS_API_KEY") {
        for i in 0..args.languages.len() {
            if let Some(e) = pipeline.by_name(&format!("sts{i}")) {
                e.set_property("api-key", &key);
            }
        }
    }

    println!("dubbing {} -> {}", args.input, args.output);
    match &server {
        Some(_) => println!(
            "STS: reference server ({} mode) at {url}",
            args.sts_mode.as_str()
        ),
        None => println!("STS: {url}"),
    }
    let t0 = std::time::Instant::now();
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().unwrap();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut fallback_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut result = Ok(());
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                result = Err(format!(
                    "{} from {:?} ({:?})",
                    e.error(),
                    e.src().map(|s| s.path_string()),
                    e.debug()
                ));
                break;
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "stsbridge/fragment"
                {
                    let outcome = s.get::<String>("outcome").unwrap_or_default();
                    if outcome == "fallback" {
                        *fallback_reasons
                            .entry(s.get::<String>("reason").unwrap_or_default())
                            .or_default() += 1;
                    }
                    *outcomes.entry(outcome).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let took = t0.elapsed();
    pipeline.set_state(gst::State::Null)?;
    result?;

    println!("\n## Summary ({:.1} s)", took.as_secs_f64());
    for (k, v) in &outcomes {
        println!("fragments {k}: {v}");
    }
    for (k, v) in &fallback_reasons {
        println!("  fallback reason {k}: {v}");
    }
    match dubbing_syncmeter::measure(Path::new(&args.output)) {
        Ok(r) => {
            println!(
                "output: video {:.3} s from {:.3} s, audio {:.3} s from {:.3} s",
                r.video_duration_s, r.video_start_s, r.audio_duration_s, r.audio_start_s
            );
            println!("A/V sync per marker (audio − video):");
            for (i, m) in r.markers.iter().enumerate() {
                println!(
                    "  marker {}: video {:.3} s audio {:.3} s delta {:+.1} ms",
                    i + 1,
                    m.video_s,
                    m.audio_s,
                    m.delta_ms
                );
            }
            if r.markers.is_empty() {
                println!("  no markers found (tone/silence replace the beeps)");
            }
        }
        Err(e) => println!("sync measurement failed: {e}"),
    }
    Ok(())
}
