//! Dubs a media file through the same element chain as the live pipeline (demux → decode →
//! dubchunker → stsbridge → avoffset → AAC encode → mux, video copied) and prints, per
//! fragment, its time and transcript → translation, then a summary: fragments dubbed and
//! fallen back, speech that ran on or was compressed, per-marker A/V sync, output durations.
//! The translation is written as subtitles: a subtitle track in Matroska outputs, and an
//! `.srt` next to every output (`<output>.srt`, `<output>.<lang>.srt` for further languages).
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
use std::sync::{Arc, Mutex};

use clap::Parser;
use dubbing_sts_server::Mode;
use dubbing_worker::pipeline::{Boundary, Chain};
use dubbing_worker::subtitles::{Cue, srt_path, to_srt};
use gst::prelude::*;
use gstdubbing::stsbridge::{FRAGMENT_MESSAGE, FragmentReport, Outcome};

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
    /// Where fragments are cut: `silence` (in pauses, between --min-duration-ms and
    /// --max-duration-ms: 67 % word error rate in translate mode on the fixture) or `fixed`
    /// (every --fragment-ms: 79 %, words cut in half).
    #[arg(long, default_value = "silence", value_parser = ["fixed", "silence"])]
    boundary: String,
    /// Fragment duration with --boundary fixed, ms.
    #[arg(long, default_value_t = 1000)]
    fragment_ms: u64,
    /// Shortest fragment with --boundary silence, ms.
    #[arg(long, default_value_t = 500)]
    min_duration_ms: u64,
    /// Longest fragment with --boundary silence, ms.
    #[arg(long, default_value_t = 1500)]
    max_duration_ms: u64,
    /// Level of the original under the dub, dB (voice-over: crowd, music, the sync beeps);
    /// off when not given.
    #[arg(long, allow_negative_numbers = true)]
    original_mix_db: Option<f64>,
    /// Print each fragment's time, transcript and translation as it goes out.
    #[arg(long)]
    verbose: bool,
}

/// Cues collected on one language's `avoffset` text pad, in output running time.
type Cues = Arc<Mutex<Vec<Cue>>>;

/// Collects the text buffers leaving `pad` as cues.
fn collect_cues(pad: &gst::Pad) -> Cues {
    let cues: Cues = Arc::default();
    let c = cues.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(gst::PadProbeData::Buffer(b)) = &info.data
            && let (Some(start), Ok(map)) = (running_time(pad, b.pts()), b.map_readable())
        {
            c.lock().unwrap().push(Cue {
                start_ns: start,
                end_ns: start + b.duration().map_or(0, |d| d.nseconds()),
                text: String::from_utf8_lossy(&map).into_owned(),
            });
        }
        gst::PadProbeReturn::Ok
    });
    cues
}

/// `pts` on `pad` as running time (what muxers place in the file), from its segment.
fn running_time(pad: &gst::Pad, pts: Option<gst::ClockTime>) -> Option<u64> {
    let seg = pad.sticky_event::<gst::event::Segment>(0)?;
    let seg = seg.segment().downcast_ref::<gst::ClockTime>()?.clone();
    seg.to_running_time(pts?).map(|t| t.nseconds())
}

/// The running time of the first buffer leaving `pad`.
fn first_time(pad: &gst::Pad) -> Arc<Mutex<Option<u64>>> {
    let first: Arc<Mutex<Option<u64>>> = Arc::default();
    let f = first.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(gst::PadProbeData::Buffer(b)) = &info.data
            && let Some(rt) = running_time(pad, b.pts())
        {
            f.lock().unwrap().get_or_insert(rt);
            return gst::PadProbeReturn::Remove;
        }
        gst::PadProbeReturn::Ok
    });
    first
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
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

    let boundary = match args.boundary.as_str() {
        "silence" => Boundary::Silence {
            min_ns: args.min_duration_ms * 1_000_000,
            max_ns: args.max_duration_ms * 1_000_000,
        },
        _ => Boundary::Fixed,
    };
    let chain = Chain {
        url: url.clone(),
        stream_id: "dub-file".into(),
        target_languages: args.languages.clone(),
        offset_ns: args.offset_ns,
        chunk_duration_ns: args.fragment_ms * 1_000_000,
        boundary,
        subtitles: true,
        original_mix_db: args.original_mix_db,
        ..Default::default()
    };
    // The STS URL and the key are set on the elements, never written into the description.
    let key = std::env::var("WORKER_STS_API_KEY").ok();
    let pipeline = chain.build_file(&args.input, &args.output, key.as_deref())?;

    // Subtitle cues per language, and where the output file's time starts (the first buffer
    // any track of the muxer gets).
    let av_name = |i: usize| {
        if i == 0 {
            "av".to_string()
        } else {
            format!("av{i}")
        }
    };
    let cues: Vec<Cues> = (0..args.languages.len())
        .map(|i| {
            let av = pipeline
                .by_name(&av_name(i))
                .expect("avoffset of each language");
            collect_cues(&av.static_pad("text_src").expect("text_src"))
        })
        .collect();
    let av = pipeline.by_name("av").expect("avoffset");
    let starts = [
        first_time(&av.static_pad("audio_src").unwrap()),
        first_time(&av.static_pad("video_src").unwrap()),
    ];

    println!("dubbing {} -> {}", args.input, args.output);
    match &server {
        Some(_) => println!(
            "STS: reference server ({} mode) at {url}",
            args.sts_mode.as_str()
        ),
        None => println!("STS: {}", dubbing_worker::log::redact_url(&url)),
    }
    let t0 = std::time::Instant::now();
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().unwrap();
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut fallback_reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
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
                let Some(s) = e.structure().filter(|s| s.name() == FRAGMENT_MESSAGE) else {
                    continue;
                };
                let Some(r) = FragmentReport::from_structure(s) else {
                    continue;
                };
                if let Outcome::Fallback(reason) = r.outcome {
                    *fallback_reasons.entry(reason.as_str()).or_default() += 1;
                }
                *outcomes.entry(r.outcome.as_str()).or_default() += 1;
                let lang = e
                    .src()
                    .and_then(|src| src.name().strip_prefix("sts").map(str::to_owned))
                    .and_then(|i| i.parse::<usize>().ok())
                    .and_then(|i| args.languages.get(i))
                    .map_or("", |l| l.as_str());
                if args.verbose || !r.transcript.is_empty() {
                    let spoken = if r.speech_start == u64::MAX {
                        String::new()
                    } else {
                        format!(
                            " (dub {:.2}-{:.2} s{})",
                            seconds(r.speech_start),
                            seconds(r.speech_end),
                            if r.tempo > 1.0 {
                                format!(", {:.2}x", r.tempo)
                            } else {
                                String::new()
                            }
                        )
                    };
                    println!(
                        "{:>7.2} s {lang:>2} {:<8}{} {:?} -> {:?}",
                        seconds(r.pts),
                        r.outcome.as_str(),
                        spoken,
                        r.transcript,
                        r.translated_text
                    );
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
    for (i, lang) in args.languages.iter().enumerate() {
        if let Some(sts) = pipeline.by_name(&format!("sts{i}")) {
            let st = sts.property::<gst::Structure>("stats");
            let ms = |f: &str| st.get::<u64>(f).unwrap_or(0) as f64 / 1e6;
            println!(
                "speech ({lang}): ran on {:.0} ms, compressed {:.0} ms, trimmed {:.0} ms, \
                 longest backlog {:.0} ms, fastest tempo {:.2}, last loudness gain {:+.1} dB",
                ms("overflow"),
                ms("compressed"),
                ms("trimmed"),
                ms("max-backlog"),
                st.get::<f64>("max-tempo-used").unwrap_or(1.0),
                st.get::<f64>("loudness-gain").unwrap_or(0.0),
            );
        }
    }
    let measured = dubbing_syncmeter::measure(Path::new(&args.output));
    match &measured {
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
    // Where the output file's time is: muxers that start it at 0 (MP4, FLV) and those that
    // keep the stream's (Matroska, MPEG-TS) alike, from the first video frame's time in the
    // file as a demuxer reads it.
    let first_video = *starts[1].lock().unwrap();
    let file_video_start = measured
        .as_ref()
        .map_or(0, |r| (r.video_start_s * 1e9).round() as u64);
    let zero = first_video.map_or(0, |v| v.saturating_sub(file_video_start));
    for (i, lang) in args.languages.iter().enumerate() {
        let shifted: Vec<Cue> = cues[i]
            .lock()
            .unwrap()
            .iter()
            .map(|c| Cue {
                start_ns: c.start_ns.saturating_sub(zero),
                end_ns: c.end_ns.saturating_sub(zero),
                text: c.text.clone(),
            })
            .collect();
        let path = srt_path(Path::new(&args.output), (i > 0).then_some(lang.as_str()));
        std::fs::write(&path, to_srt(&shifted))?;
        println!(
            "subtitles ({lang}): {} ({} cues)",
            path.display(),
            shifted.len()
        );
    }
    Ok(())
}
