//! `syncmeter FILE [--json] [--max-pair-s S] [--fail-above MS]`
//!
//! Prints the A/V offset at each flash/beep marker of FILE (positive = audio late).
//! Exit status: 0 measured, 1 error, 2 usage, 3 `--fail-above` exceeded or no marker found.

use std::path::PathBuf;
use std::process::ExitCode;

use dubbing_syncmeter::{Options, SyncReport, measure_with};

const USAGE: &str = "usage: syncmeter FILE [--json] [--max-pair-s SECONDS] [--fail-above MS]

Measures A/V sync at flash/beep markers (white full-frame flash + 1 kHz beep).
  --json             print the report as JSON
  --max-pair-s S     pair a flash with a beep at most S seconds away (default 2)
  --fail-above MS    exit 3 if any |delta| exceeds MS or no marker is found
Delta = audio onset - video flash, in ms: positive means the audio is late.";

struct Args {
    file: PathBuf,
    json: bool,
    max_pair_s: Option<f64>,
    fail_above: Option<f64>,
}

fn parse_args() -> Result<Args, String> {
    let mut file = None;
    let mut json = false;
    let mut max_pair_s = None;
    let mut fail_above = None;
    let mut it = std::env::args_os().skip(1);
    while let Some(arg) = it.next() {
        let number = |it: &mut dyn Iterator<Item = std::ffi::OsString>, name: &str| {
            it.next()
                .and_then(|v| v.to_str().and_then(|s| s.parse::<f64>().ok()))
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{name} needs a non-negative number"))
        };
        match arg.to_str() {
            Some("--json") => json = true,
            Some("--max-pair-s") => max_pair_s = Some(number(&mut it, "--max-pair-s")?),
            Some("--fail-above") => fail_above = Some(number(&mut it, "--fail-above")?),
            Some("-h" | "--help") => return Err(String::new()),
            Some(s) if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ if file.is_none() => file = Some(PathBuf::from(arg)),
            _ => return Err("only one FILE may be given".into()),
        }
    }
    Ok(Args {
        file: file.ok_or("missing FILE")?,
        json,
        max_pair_s,
        fail_above,
    })
}

fn print_table(r: &SyncReport) {
    println!(
        "audio: {:.3} s from {:.3} s at {} Hz; video: {:.3} s from {:.3} s, {} frames",
        r.audio_duration_s,
        r.audio_start_s,
        r.audio_rate,
        r.video_duration_s,
        r.video_start_s,
        r.video_frames
    );
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
    match (
        r.mean_delta_ms(),
        r.mean_abs_delta_ms(),
        r.max_abs_delta_ms(),
    ) {
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
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("syncmeter: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut opts = Options::default();
    if let Some(s) = args.max_pair_s {
        opts.max_pair_s = s;
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
            obj.insert("mean_delta_ms".into(), report.mean_delta_ms().into());
            obj.insert(
                "mean_abs_delta_ms".into(),
                report.mean_abs_delta_ms().into(),
            );
            obj.insert("max_abs_delta_ms".into(), report.max_abs_delta_ms().into());
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print_table(&report);
    }
    if let Some(limit) = args.fail_above {
        match report.max_abs_delta_ms() {
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
