//! Dubs a media file through the same element chain as the live pipeline (demux → decode →
//! dubchunker → stsbridge → avoffset → AAC encode → mux, video copied) and prints, per
//! fragment, its time and transcript → translation, then a summary: fragments dubbed and
//! fallen back, speech that ran on or was compressed, per-marker A/V sync, output durations.
//! The translation is written as subtitles: a subtitle track in Matroska outputs, and an
//! `.srt` next to every output (`<output>.srt`, `<output>.<lang>.srt` for further languages);
//! with `--captions cea608`, as CEA-608 captions inside the video too (the first language on
//! CC1, the second on CC3). An MPEG-TS output (`.ts`) holds every language as an AAC track of
//! its own, tagged with its ISO 639 code, in the order given (`--original-track`: the
//! original after them); readers keep them all with `-map 0`.
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
//!
//! SIGINT/SIGTERM (Ctrl-C) ends the input where its audio is: what is in flight is dubbed,
//! the output is finished (the MP4 index written) and the summary printed, exit 0. A second
//! one stops at once (exit 1, the output unfinished), as does an end not reached in 30 s.
//!
//! An input that cannot be read, is not one of the formats above or lacks its audio or its
//! video track is a clear error at once (exit 1); a run that fails with an error leaves no
//! output behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use clap::Parser;
use dubbing_sts_server::speech::{AsrEngine, TtsEngine};
use dubbing_sts_server::{Mode, TranslateConfig, listen_back};
use dubbing_worker::pipeline::{Boundary, Chain};
use dubbing_worker::subtitles::{Cue, srt_path, to_srt};
use gst::prelude::*;
use gstdubbing::stsbridge::{FRAGMENT_MESSAGE, FragmentReport, Outcome};

/// Dubs a media file through the live element chain and prints a summary (fragments, A/V
/// sync per marker, output durations).
#[derive(Parser, Debug)]
#[command(
    name = "dub-file",
    after_help = "The STS API key comes from WORKER_STS_API_KEY (never from the command line).\n\
                  SIGINT/SIGTERM: the input ends there, the output is finished (exit 0); a \
                  second one stops at once."
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
    /// How fragments travel to the STS: http or socketio (with --url: the server's base URL).
    #[arg(long, default_value = "http", value_parser = ["http", "socketio"])]
    sts_protocol: String,
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
    /// Captions inside the video: `off` or `cea608` (CEA-608 in the H.264, no re-encoding:
    /// the first language on CC1, the second on CC3).
    #[arg(long, default_value = "off", value_parser = ["off", "cea608"])]
    captions: String,
    /// MPEG-TS outputs (.ts): the original audio as a track of its own, tagged with
    /// --source-language, after the dubbed ones.
    #[arg(long)]
    original_track: bool,
    /// Language spoken in the input (ISO 639 code).
    #[arg(long, default_value = "en")]
    source_language: String,
    /// Print each fragment's time, transcript and translation as it goes out; in translate
    /// mode, also listen back: Whisper transcribes the dubbed speech and the summary says,
    /// per sentence, how much of the translation a listener hears.
    #[arg(long)]
    verbose: bool,
    /// Speech recogniser of the in-process reference server's translate mode.
    #[arg(long, value_enum, default_value_t = AsrEngine::WhisperBase)]
    asr: AsrEngine,
    /// Voice of the in-process reference server's translate mode (pico: Debian non-free,
    /// scripts/install-deps.sh --with-pico).
    #[arg(long, value_enum, default_value_t = TtsEngine::EspeakNg)]
    tts: TtsEngine,
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

/// Where an interrupted run ends its output: the end of the audio that had entered the first
/// `dubchunker` when the signal came (what is already being dubbed is finished, the video
/// stops at the same time). Times are input running time.
#[derive(Default)]
struct Cut {
    /// End (running time + duration) of the last audio buffer into `chunk0`.
    audio_end: Option<u64>,
    /// Set at the first SIGINT/SIGTERM: audio and video from this time on are not dubbed,
    /// EOS goes in their place.
    at: Option<u64>,
    /// Running time of the first video buffer into `avoffset`.
    video_in: Option<u64>,
    /// Running time into the muxer minus into `avoffset` of the video (avoffset's shift).
    video_shift: Option<i64>,
}

/// Which stream a [`cut_probe`] ends.
#[derive(Clone, Copy, PartialEq)]
enum Cutting {
    /// Audio into a `dubchunker`; `true`: the one whose position sets the cut.
    Audio(bool),
    /// Video into the muxer (the demuxer reads ahead without limit, `avoffset` lets video
    /// out ahead of its audio in files).
    Video,
}

/// `b`'s running time on `pad` (from its segment).
fn buffer_rt(pad: &gst::Pad, b: &gst::BufferRef) -> Option<u64> {
    running_time(pad, b.dts_or_pts())
}

/// Ends the stream leaving `pad` (a source pad: the element it feeds is the one ended) once
/// a cut is set: the first buffer at or after the cut time becomes an EOS (the element
/// downstream finishes what it holds and passes the EOS on, the muxer writes its index).
/// What comes after it is refused as after any EOS, which ends the upstream branches too.
fn cut_probe(pad: &gst::Pad, cut: &Arc<Mutex<Cut>>, what: Cutting) {
    let cut = cut.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(gst::PadProbeData::Buffer(b)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let rt = buffer_rt(pad, b);
        let (at, t) = {
            let mut c = cut.lock().unwrap();
            let t = match what {
                Cutting::Audio(track) => {
                    if track && let Some(t) = rt {
                        let end = t + b.duration().map_or(0, |d| d.nseconds());
                        c.audio_end = Some(c.audio_end.map_or(end, |e| e.max(end)));
                    }
                    rt
                }
                Cutting::Video => rt.and_then(|out| {
                    let shift = match c.video_shift {
                        Some(s) => s,
                        None => {
                            let s = out as i64 - c.video_in? as i64;
                            c.video_shift = Some(s);
                            s
                        }
                    };
                    u64::try_from(out as i64 - shift).ok()
                }),
            };
            (c.at, t)
        };
        match (at, t) {
            (None, _) => gst::PadProbeReturn::Ok,
            (Some(at), Some(t)) if t < at => gst::PadProbeReturn::Ok,
            (Some(_), _) => {
                pad.push_event(gst::event::Eos::new());
                gst::PadProbeReturn::Drop
            }
        }
    });
}

/// Bus message of a SIGINT/SIGTERM.
const INTERRUPTED: &str = "dub-file/interrupted";
/// How long the EOS of an interrupted run may take to reach the muxer and the file.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// SIGINT/SIGTERM: the first one cuts the input where the audio is (see [`Cut`]): EOS goes
/// in, so that the muxer finishes the file (an MP4 without its index is unreadable), as the
/// worker does; each one posts [`INTERRUPTED`] on the bus (a second one stops at once). The
/// handlers are installed before this returns.
fn watch_signals(pipeline: &gst::Pipeline, cut: Arc<Mutex<Cut>>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut term, mut int) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let weak = pipeline.downgrade();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                    let Some(p) = weak.upgrade() else { return };
                    {
                        let mut c = cut.lock().unwrap();
                        if c.at.is_none() {
                            c.at = Some(c.audio_end.unwrap_or(0));
                        }
                    }
                    let msg =
                        gst::message::Application::new(gst::Structure::new_empty(INTERRUPTED));
                    let _ = p.post_message(msg);
                }
            })
        })?;
    Ok(())
}

/// Fails the run at once when the demuxer has exposed its streams without an audio or a video
/// one (the chain needs both: otherwise the muxer waits forever for the missing track).
fn require_both_tracks(demux: &gst::Element, input: &str) {
    let input = input.to_owned();
    demux.connect_no_more_pads(move |demux| {
        let kinds: Vec<String> = demux
            .src_pads()
            .iter()
            .map(|p| p.current_caps().unwrap_or_else(|| p.query_caps(None)))
            .filter_map(|c| c.structure(0).map(|s| s.name().to_string()))
            .collect();
        let has = |prefix: &str| kinds.iter().any(|k| k.starts_with(prefix));
        let missing = match (has("audio/"), has("video/")) {
            (true, true) => return,
            (false, true) => "no audio track",
            (true, false) => "no video track",
            (false, false) => "neither an audio nor a video track",
        };
        gst::element_error!(
            demux,
            gst::StreamError::Demux,
            (
                "{input} has {missing}: dub-file needs H.264 video and AAC audio (tracks found: {})",
                if kinds.is_empty() {
                    "none".to_string()
                } else {
                    kinds.join(", ")
                }
            )
        );
    });
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
    // Before anything is started or created: an input that cannot be read is an error at once.
    match std::fs::metadata(&args.input) {
        Ok(m) if m.is_file() => std::fs::File::open(&args.input)
            .map(drop)
            .map_err(|e| format!("cannot read the input {}: {e}", args.input))?,
        Ok(_) => return Err(format!("the input {} is not a file", args.input).into()),
        Err(e) => return Err(format!("cannot read the input {}: {e}", args.input).into()),
    }
    dubbing_worker::init()?;

    let server = match &args.url {
        Some(_) => None,
        None => Some(dubbing_sts_server::StsServer::start(
            dubbing_sts_server::ServerConfig {
                mode: args.sts_mode,
                translate: TranslateConfig {
                    asr: args.asr,
                    tts: args.tts,
                    ..Default::default()
                },
                ..Default::default()
            },
        )?),
    };
    let url = match (&args.url, &server) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) if args.sts_protocol == "socketio" => s.sio_url(),
        (None, Some(s)) => s.url(),
        (None, None) => unreachable!(),
    };
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
        protocol: args.sts_protocol.clone(),
        captions: args.captions == "cea608",
        original_track: args.original_track,
        source_language: args.source_language.clone(),
        ..Default::default()
    };
    if args.original_track && !args.output.to_ascii_lowercase().ends_with(".ts") {
        return Err("--original-track needs an MPEG-TS output (.ts)".into());
    }
    // The STS URL and the key are set on the elements, never written into the description.
    let key = std::env::var("WORKER_STS_API_KEY").ok();
    let file = chain.build_file(&args.input, &args.output, key.as_deref())?;
    let pipeline = file.pipeline.clone();
    if let Some(dir) = Path::new(&args.output).parent() {
        std::fs::create_dir_all(dir)?;
    }
    // From here on, a failed run removes what it wrote.
    let output = args.output.clone();
    let remove_output = move || {
        if std::fs::remove_file(&output).is_ok() {
            eprintln!("dub-file: removed the unfinished {output}");
        }
    };
    require_both_tracks(&file.demux, &args.input);

    // Subtitle cues per language, and where the output file's time starts (the first buffer
    // any track of the muxer gets).
    let dubbing = |i: usize| file.branches[i].dubbing.as_ref().expect("dubbed");
    let cues: Vec<Cues> = (0..args.languages.len())
        .map(|i| {
            collect_cues(
                &dubbing(i)
                    .avoffset
                    .static_pad("text_src")
                    .expect("text_src"),
            )
        })
        .collect();
    let av = dubbing(0).avoffset.clone();
    let starts = [
        first_time(&av.static_pad("audio_src").unwrap()),
        first_time(&av.static_pad("video_src").unwrap()),
    ];

    println!("dubbing {} -> {}", args.input, args.output);
    match &server {
        Some(s) => match s.translate_engines() {
            Some(e) => println!(
                "STS: reference server ({} mode: {} -> apertium -> {}) at {url}",
                args.sts_mode.as_str(),
                e.asr,
                e.tts
            ),
            None => println!(
                "STS: reference server ({} mode) at {url}",
                args.sts_mode.as_str()
            ),
        },
        None => println!("STS: {}", dubbing_worker::log::redact_url(&url)),
    }
    let t0 = std::time::Instant::now();
    // Interrupted: the audio into each dubchunker and the video out of avoffset end at one
    // time.
    let cut: Arc<Mutex<Cut>> = Arc::default();
    for i in 0..args.languages.len() {
        let chunker = &dubbing(i).chunker;
        let into = chunker
            .static_pad("sink")
            .and_then(|p| p.peer())
            .ok_or("dubchunker's sink is not linked")?;
        cut_probe(&into, &cut, Cutting::Audio(i == 0));
    }
    {
        let c = cut.clone();
        av.static_pad("video_sink").unwrap().add_probe(
            gst::PadProbeType::BUFFER,
            move |pad, info| {
                if let Some(gst::PadProbeData::Buffer(b)) = &info.data
                    && let Some(rt) = buffer_rt(pad, b)
                {
                    c.lock().unwrap().video_in.get_or_insert(rt);
                    return gst::PadProbeReturn::Remove;
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
    // The muxer's video pad: avoffset lets video out well ahead of the audio in files (as
    // far as `offset + max-hold`), the queue before the muxer holds it.
    let video_out = av
        .static_pad("video_src")
        .and_then(|p| p.peer())
        .and_then(|p| p.parent_element())
        .and_then(|q| q.static_pad("src"))
        .ok_or("avoffset's video_src does not lead to the muxer through a queue")?;
    cut_probe(&video_out, &cut, Cutting::Video);
    watch_signals(&pipeline, cut.clone())?;
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        // The reason is on the bus (filesink has already opened the output by now).
        let reason = pipeline
            .bus()
            .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(e.error().to_string()),
                _ => None,
            })
            .unwrap_or_else(|| e.to_string());
        let _ = pipeline.set_state(gst::State::Null);
        remove_output();
        return Err(format!("cannot start the pipeline: {reason}").into());
    }
    let bus = pipeline.bus().unwrap();
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    // The first language's dubbed fragments (for listening back).
    let mut dubbed: Vec<FragmentReport> = Vec::new();
    let mut fallback_reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut result = Ok(());
    // Set by the first SIGINT/SIGTERM: the EOS sent then must have gone through by this time.
    let mut deadline: Option<std::time::Instant> = None;
    let mut interrupted_at: Option<u64> = None;
    // An error (not an interrupt, whose unfinished output is documented): nothing is kept.
    let mut failed = false;
    loop {
        let wait = deadline.map_or(gst::ClockTime::NONE, |d| {
            Some(gst::ClockTime::from_nseconds(
                d.saturating_duration_since(std::time::Instant::now())
                    .as_nanos() as u64,
            ))
        });
        let Some(msg) = bus.timed_pop(wait) else {
            result = Err(format!(
                "interrupted, but the end of the stream did not get through in {STOP_GRACE:?}: \
                 {} is not finished",
                args.output
            ));
            break;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Application(a) => match a.structure().map(|s| s.name().as_str()) {
                Some(INTERRUPTED) if deadline.is_none() => {
                    let at = cut.lock().unwrap().at.unwrap_or(0);
                    eprintln!(
                        "dub-file: interrupted: {} ends at {:.2} s of the input once what is \
                         in flight is dubbed (interrupt again to stop at once)",
                        args.output,
                        seconds(at)
                    );
                    interrupted_at = Some(at);
                    deadline = Some(std::time::Instant::now() + STOP_GRACE);
                }
                Some(INTERRUPTED) => {
                    result = Err(format!(
                        "interrupted twice: stopped at once, {} is not finished",
                        args.output
                    ));
                    break;
                }
                _ => {}
            },
            gst::MessageView::Error(e) => {
                result = Err(format!(
                    "{} from {:?} ({:?})",
                    e.error(),
                    e.src().map(|s| s.path_string()),
                    e.debug()
                ));
                failed = true;
                break;
            }
            gst::MessageView::Element(e) => {
                let Some(s) = e.structure().filter(|s| s.name() == FRAGMENT_MESSAGE) else {
                    continue;
                };
                let Some(r) = FragmentReport::from_structure(s) else {
                    continue;
                };
                if e.src().is_some_and(|src| src.name() == "sts0") && r.outcome == Outcome::Dubbed {
                    dubbed.push(r.clone());
                }
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
    if failed {
        remove_output();
    }
    result?;

    println!("\n## Summary ({:.1} s)", took.as_secs_f64());
    if let Some(w) = server
        .as_ref()
        .and_then(|s| s.translate_engines())
        .and_then(|e| e.whisper)
    {
        println!(
            "recogniser: Whisper {} helper (pid {}, {} restarts): {} fragments, {:.1} s of audio \
             (3 s context included) in {:.1} s of CPU ({:.2} s per second), {:.0} MiB resident",
            w.model,
            w.pid,
            w.restarts,
            w.transcribed,
            w.audio_s,
            w.cpu_s,
            w.cpu_s / w.audio_s.max(1e-9),
            w.rss_mib
        );
    }
    if let Some(at) = interrupted_at {
        println!("interrupted: the input dubbed up to {:.2} s", seconds(at));
    }
    for (k, v) in &outcomes {
        println!("fragments {k}: {v}");
    }
    for (k, v) in &fallback_reasons {
        println!("  fallback reason {k}: {v}");
    }
    for (i, lang) in args.languages.iter().enumerate() {
        if let Some(sts) = file.branches[i].dubbing.as_ref().map(|d| &d.bridge) {
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
    if args.verbose && args.sts_mode == Mode::Translate && interrupted_at.is_none() {
        let lang = args.languages.first().map_or("es", |l| l.as_str());
        match listen(&args, &dubbed, measured.as_ref().ok(), lang) {
            Ok(report) => print!("\n## Listened back ({lang}, Whisper base)\n{report}"),
            Err(e) => println!("\nlisten-back skipped: {e}"),
        }
    }
    Ok(())
}

/// Transcribes the output's dubbed speech with Whisper and compares it with the translations
/// sent, per sentence of the input's description (`<input>.json`, the fixture's) when there is
/// one, else per run of fragments.
fn listen(
    args: &Args,
    dubbed: &[FragmentReport],
    measured: Option<&dubbing_syncmeter::SyncReport>,
    lang: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    // The output's audio lies `lag` later in its file than the input's (from the beeps).
    let before = dubbing_syncmeter::measure(Path::new(&args.input)).ok();
    let lag = match (measured, &before) {
        (Some(out), Some(inp)) if !out.markers.is_empty() && !inp.markers.is_empty() => {
            out.markers[0].audio_s - inp.markers[0].audio_s
        }
        _ => 0.0,
    };
    let spans: Vec<listen_back::Spoken> = dubbed
        .iter()
        .filter(|r| r.speech_start != u64::MAX)
        .map(|r| listen_back::Spoken {
            start_s: seconds(r.speech_start) + lag,
            end_s: seconds(r.speech_end) + lag,
            text: r.translated_text.clone(),
        })
        .collect();
    let windows: Option<Vec<(f64, f64)>> =
        std::fs::read_to_string(Path::new(&args.input).with_extension("json"))
            .ok()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .and_then(|v| {
                v["sentences"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|s| {
                            Some((s["start_s"].as_f64()? + lag, s["end_s"].as_f64()? + lag))
                        })
                        .collect()
                })
            });
    let sentences = listen_back::group(&spans, windows.as_deref(), 0.5);
    let audio = listen_back::decode_audio(Path::new(&args.output))?;
    let whisper = listen_back::listener()?;
    Ok(listen_back::listen(&whisper, &audio, &sentences, lang)?.report())
}
