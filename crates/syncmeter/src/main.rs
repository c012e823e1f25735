//! `syncmeter FILE [--json] [--audio-track N] [--expected JSON [--expected-offset S]]
//! [--max-pair-s S] [--fail-above MS]`
//!
//! Prints the A/V offset at each flash/beep marker of FILE (positive = audio late).
//! Exit status: 0 measured, 1 error, 2 usage, 3 `--fail-above` exceeded, no marker found
//! or (with `--expected`) an expected marker missing.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dubbing_syncmeter::{Options, SyncReport, expected_markers, measure_with};

/// Measures A/V sync at flash/beep markers (white full-frame flash + 1 kHz beep).
#[derive(Parser, Debug)]
#[command(name = "syncmeter", version, after_help = AFTER_HELP)]
struct Args {
    /// The media file to measure.
    file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Measure the audio stream N (0-based).
    #[arg(long, value_name = "N", default_value_t = 0)]
    audio_track: usize,
    /// Compare with the markers_s of a fixture description (e.g. fixtures/speech-60s.json).
    #[arg(long, value_name = "JSON")]
    expected: Option<PathBuf>,
    /// Expected marker t is looked for at t + S seconds (default: at t + the time of the first
    /// video frame).
    #[arg(long, value_name = "S", requires = "expected", value_parser = non_negative)]
    expected_offset: Option<f64>,
    /// Pair a flash with a beep at most S seconds away [default: 2].
    #[arg(long, value_name = "S", value_parser = non_negative)]
    max_pair_s: Option<f64>,
    /// Exit 3 if any |delta| exceeds MS, no marker is found or an expected marker is missing.
    #[arg(long, value_name = "MS", value_parser = non_negative)]
    fail_above: Option<f64>,
}

const AFTER_HELP: &str = "\
Delta = audio onset - video flash, in ms: positive means the audio is late.
Times are seconds on the file's timeline (absolute, not rebased to 0).
Exit status: 0 measured, 1 error, 2 usage, 3 --fail-above exceeded, no marker found or (with
--expected) an expected marker missing.";

/// A finite number >= 0.
fn non_negative(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a non-negative number"))
}

fn print_table(r: &SyncReport) {
    println!(
        "audio track {} of {}: {:.3} s from {:.3} s at {} Hz; video: {:.3} s from {:.3} s, {} frames",
        r.audio_track,
        r.audio_tracks,
        r.audio_duration_s,
        r.audio_start_s,
        r.audio_rate,
        r.video_duration_s,
        r.video_start_s,
        r.video_frames
    );
    if r.timeline_offset_s != 0.0 {
        println!(
            "timeline: the demuxer started the file at 0; {:.3} s added back",
            r.timeline_offset_s
        );
    }
    println!(
        "{:>3}  {:>10}  {:>10}  {:>9}",
        "#", "video_s", "audio_s", "delta_ms"
    );
    for (i, m) in r.markers.iter().enumerate() {
        println!(
            "{:>3}  {:>10.4}  {:>10.4}  {:>+9.2}",
            i + 1,
            m.video_s,
            m.audio_s,
            m.delta_ms
        );
    }
    match (r.mean_delta_ms, r.mean_abs_delta_ms, r.max_abs_delta_ms) {
        (Some(mean), Some(mean_abs), Some(max_abs)) => println!(
            "{} markers: mean delta {:+.2} ms, mean |delta| {:.2} ms, max |delta| {:.2} ms",
            r.markers.len(),
            mean,
            mean_abs,
            max_abs
        ),
        _ => println!("no markers found"),
    }
    if !r.unmatched_flashes_s.is_empty() {
        println!("unmatched flashes (s): {:.3?}", r.unmatched_flashes_s);
    }
    if !r.unmatched_beeps_s.is_empty() {
        println!("unmatched beeps (s): {:.3?}", r.unmatched_beeps_s);
    }
    if let Some(e) = &r.expected {
        println!(
            "expected markers: {} of {} found (expected times + {:.3} s)",
            e.found, e.expected, e.offset_s
        );
        if !e.missing_s.is_empty() {
            println!("missing markers (s): {:.3?}", e.missing_s);
        }
        if !e.unexpected_s.is_empty() {
            println!("unexpected markers (s): {:.3?}", e.unexpected_s);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut opts = Options {
        audio_track: args.audio_track,
        expected_offset_s: args.expected_offset,
        ..Options::default()
    };
    if let Some(s) = args.max_pair_s {
        opts.max_pair_s = s;
    }
    if let Some(json) = &args.expected {
        match expected_markers(json) {
            Ok(m) => opts.expected_markers_s = Some(m),
            Err(e) => {
                eprintln!("syncmeter: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let report = match measure_with(&args.file, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("syncmeter: {e}");
            return ExitCode::from(1);
        }
    };
    if args.json {
        let mut v = match serde_json::to_value(&report) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("syncmeter: cannot serialise the report: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some(obj) = v.as_object_mut() {
            obj.insert("file".into(), args.file.display().to_string().into());
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print_table(&report);
    }
    if let Some(limit) = args.fail_above {
        if let Some(e) = report.expected.as_ref().filter(|e| e.found < e.expected) {
            eprintln!(
                "syncmeter: only {} of {} expected markers found",
                e.found, e.expected
            );
            return ExitCode::from(3);
        }
        match report.max_abs_delta_ms {
            Some(max) if max <= limit => {}
            Some(max) => {
                eprintln!("syncmeter: max |delta| {max:.2} ms exceeds {limit} ms");
                return ExitCode::from(3);
            }
            None => {
                eprintln!("syncmeter: no marker found");
                return ExitCode::from(3);
            }
        }
    }
    ExitCode::SUCCESS
}
