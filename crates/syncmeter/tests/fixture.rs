//! Measures the bundled fixture and re-muxed / shifted copies of it made with ffmpeg
//! (`-c copy`, no re-encoding): the deltas must follow the shifts and not depend on the
//! container or on where the file's timeline starts.
//!
//! Needs ffmpeg on PATH and GStreamer with the H.264/AAC decoders (gstreamer1.0-libav).
//! Run with `--nocapture` to see the measured figures.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use dubbing_syncmeter::{Error, Options, SyncReport, expected_markers, measure_with};
use tempfile::TempDir;

/// One AAC-LC frame at 48 kHz, in ms.
const AAC_FRAME_MS: f64 = 1024.0 / 48.0;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn fixture_mp4() -> PathBuf {
    fixtures().join("speech-60s.mp4")
}

fn fixture_markers() -> Vec<f64> {
    expected_markers(&fixtures().join("speech-60s.json")).expect("fixture JSON")
}

/// Options that compare with the fixture's markers.
fn opts() -> Options {
    Options {
        expected_markers_s: Some(fixture_markers()),
        ..Options::default()
    }
}

fn measure_timed(path: &Path, opts: &Options) -> Result<SyncReport, Error> {
    let t = Instant::now();
    let r = measure_with(path, opts);
    eprintln!(
        "measured {} in {:.2} s",
        path.file_name().unwrap_or_default().to_string_lossy(),
        t.elapsed().as_secs_f64()
    );
    r
}

fn measure(path: &Path) -> SyncReport {
    measure_timed(path, &opts()).unwrap_or_else(|e| panic!("{e}"))
}

/// The fixture's report, measured once per test process.
fn fixture_report() -> &'static SyncReport {
    static REPORT: OnceLock<SyncReport> = OnceLock::new();
    REPORT.get_or_init(|| measure(&fixture_mp4()))
}

/// Runs `ffmpeg -nostdin -y -loglevel error ARGS… DIR/OUT` and returns DIR/OUT. `args` is
/// split at whitespace; each `SRC` word stands for the fixture MP4.
fn ffmpeg(dir: &TempDir, out: &str, args: &str) -> PathBuf {
    let src = fixture_mp4();
    let args: Vec<&OsStr> = args
        .split_whitespace()
        .map(|a| {
            if a == "SRC" {
                src.as_os_str()
            } else {
                OsStr::new(a)
            }
        })
        .collect();
    let out = dir.path().join(out);
    let result = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(&args)
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ffmpeg (is it installed?): {e}"));
    assert!(
        result.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn print_markers(name: &str, r: &SyncReport) {
    eprintln!(
        "{name}: audio from {:.4} s, video from {:.4} s, timeline offset {:.4} s",
        r.audio_start_s, r.video_start_s, r.timeline_offset_s
    );
    for m in &r.markers {
        eprintln!(
            "  {name}: video {:.4} s audio {:.4} s delta {:+.2} ms",
            m.video_s, m.audio_s, m.delta_ms
        );
    }
}

/// All fixture markers found, each at `expected + offset_s` (video within `time_tol_s`),
/// nothing unmatched.
fn assert_all_markers(name: &str, r: &SyncReport, offset_s: f64, time_tol_s: f64) {
    let expected = fixture_markers();
    assert_eq!(
        r.markers.len(),
        expected.len(),
        "{name}: markers {:?}",
        r.markers
    );
    assert!(r.unmatched_flashes_s.is_empty(), "{name}: {r:?}");
    assert!(r.unmatched_beeps_s.is_empty(), "{name}: {r:?}");
    let e = r.expected.as_ref().expect("expected markers given");
    assert_eq!(
        (e.found, e.expected),
        (expected.len(), expected.len()),
        "{e:?}"
    );
    for (m, t) in r.markers.iter().zip(&expected) {
        assert!(
            (m.video_s - (t + offset_s)).abs() <= time_tol_s,
            "{name}: flash at {} s, expected {} s",
            m.video_s,
            t + offset_s
        );
    }
}

#[test]
fn fixture_has_six_markers_in_sync() {
    let r = fixture_report();
    print_markers("mp4", r);
    assert_all_markers("mp4", r, 0.0, 0.001);
    for m in &r.markers {
        assert!(m.delta_ms.abs() < 2.0, "{m:?}");
    }
    assert!(r.max_abs_delta_ms.unwrap() < 2.0);
    assert_eq!(r.audio_rate, 48000);
    assert_eq!(r.video_frames, 1500);
    assert_eq!((r.audio_track, r.audio_tracks), (0, 1));
    assert_eq!(r.timeline_offset_s, 0.0);
    assert!(r.audio_start_s.abs() < 0.001 && r.video_start_s.abs() < 0.001);
    assert!((r.video_duration_s - 60.0).abs() < 0.001);
    assert!((r.audio_duration_s - 60.0).abs() < 0.05);
}

/// Copies of the fixture with the audio shifted by ±200 ms (MP4 edit lists; a 48 kHz
/// movie timescale so that the edit list itself does not round the shift to 1 ms).
#[test]
fn audio_shift_of_200_ms_is_measured() {
    let dir = tempdir();
    let late = ffmpeg(
        &dir,
        "audio-late.mp4",
        "-i SRC -itsoffset 0.2 -i SRC -map 0:v -map 1:a -c copy -movie_timescale 48000",
    );
    let early = ffmpeg(
        &dir,
        "audio-early.mp4",
        "-itsoffset 0.2 -i SRC -i SRC -map 0:v -map 1:a -c copy -movie_timescale 48000",
    );
    for (path, shift_ms, video_offset_s) in [(late, 200.0, 0.0), (early, -200.0, 0.2)] {
        let r = measure(&path);
        let name = format!("{shift_ms:+} ms");
        print_markers(&name, &r);
        assert_all_markers(&name, &r, video_offset_s, 0.001);
        for m in &r.markers {
            assert!(
                (m.delta_ms - shift_ms).abs() <= 3.0,
                "{name}: delta {} ms",
                m.delta_ms
            );
        }
    }
}

/// Matroska and FLV re-muxes (`-c copy`) measure like the MP4: ffmpeg moves their
/// timeline by the AAC priming (video starts at 21 ms), the deltas stay.
#[test]
fn mkv_and_flv_remux_measure_like_the_mp4() {
    let dir = tempdir();
    let mp4 = fixture_report();
    for ext in ["mkv", "flv"] {
        let path = ffmpeg(&dir, &format!("remux.{ext}"), "-i SRC -c copy");
        let r = measure(&path);
        print_markers(ext, &r);
        assert_all_markers(ext, &r, 0.0, AAC_FRAME_MS / 1000.0 + 0.001);
        for (m, reference) in r.markers.iter().zip(&mp4.markers) {
            let diff = m.delta_ms - reference.delta_ms;
            eprintln!("  {ext} - mp4 delta: {diff:+.2} ms");
            assert!(
                diff.abs() < AAC_FRAME_MS,
                "{ext}: {m:?} vs mp4 {reference:?}"
            );
        }
    }
}

/// Files whose timeline starts at 6 s (like the output of the 6 s offset pipeline):
/// markers at +6 s, deltas as in the fixture (within the 1 ms timestamp precision of
/// the containers).
#[test]
fn timeline_starting_at_6_s_shifts_markers_not_deltas() {
    let dir = tempdir();
    let mp4 = fixture_report();
    for ext in ["mp4", "mkv", "flv"] {
        let path = ffmpeg(
            &dir,
            &format!("offset6.{ext}"),
            "-i SRC -c copy -output_ts_offset 6",
        );
        let r = measure(&path);
        let name = format!("{ext} +6 s");
        print_markers(&name, &r);
        assert!((r.video_start_s - 6.0).abs() < 0.001, "{name}: {r:?}");
        assert_all_markers(&name, &r, 6.0, 0.001);
        assert!((r.expected.as_ref().unwrap().offset_s - 6.0).abs() < 0.001);
        for (m, reference) in r.markers.iter().zip(&mp4.markers) {
            assert!(
                (m.delta_ms - reference.delta_ms).abs() < 1.0,
                "{name}: {m:?} vs {reference:?}"
            );
        }
    }
}

/// A Matroska file with three audio tracks: the fixture's, +200 ms and −200 ms.
#[test]
fn mkv_audio_track_is_selectable() {
    let dir = tempdir();
    let path = ffmpeg(
        &dir,
        "three-tracks.mkv",
        "-i SRC -itsoffset 0.2 -i SRC -itsoffset -0.2 -i SRC \
         -map 0:v -map 0:a -map 1:a -map 2:a -c copy",
    );
    for (track, shift_ms) in [(0, 0.0), (1, 200.0), (2, -200.0)] {
        let o = Options {
            audio_track: track,
            ..opts()
        };
        let r = measure_timed(&path, &o).unwrap_or_else(|e| panic!("{e}"));
        let name = format!("track {track}");
        print_markers(&name, &r);
        assert_eq!((r.audio_track, r.audio_tracks), (track, 3));
        assert_eq!(r.expected.as_ref().unwrap().found, 6, "{name}: {r:?}");
        for m in &r.markers {
            assert!(
                (m.delta_ms - shift_ms).abs() <= 3.0,
                "{name}: delta {} ms",
                m.delta_ms
            );
        }
    }
    let o = Options {
        audio_track: 3,
        ..Options::default()
    };
    match measure_with(&path, &o) {
        Err(Error::NoSuchAudioTrack {
            index: 3,
            available: 3,
            ..
        }) => {}
        other => panic!("expected NoSuchAudioTrack, got {other:?}"),
    }
}

#[test]
fn cli_prints_json_report() {
    let out = Command::new(env!("CARGO_BIN_EXE_syncmeter"))
        .arg(fixture_mp4())
        .arg("--json")
        .arg("--expected")
        .arg(fixtures().join("speech-60s.json"))
        .args(["--fail-above", "2"])
        .output()
        .expect("run syncmeter");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["markers"].as_array().map(Vec::len), Some(6), "{v}");
    assert_eq!(v["expected"]["found"], 6);
    assert_eq!(v["expected"]["expected"], 6);
    assert!(v["max_abs_delta_ms"].as_f64().unwrap() < 2.0);
    assert!(v["file"].as_str().unwrap().ends_with("speech-60s.mp4"));
    assert!(v["markers"][0]["video_s"].as_f64().is_some());
}

#[test]
fn cli_errors() {
    let bin = env!("CARGO_BIN_EXE_syncmeter");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .output()
            .expect("run syncmeter")
            .status
            .code()
    };
    assert_eq!(run(&[]), Some(2));
    assert_eq!(run(&["a.mp4", "--audio-track", "x"]), Some(2));
    assert_eq!(run(&["a.mp4", "--expected-offset", "6"]), Some(2));
    assert_eq!(run(&["/nonexistent/file.mp4"]), Some(1));
}

#[test]
fn missing_file_and_bad_marker_json_are_errors() {
    let dir = tempdir();
    let missing = dir.path().join("missing.mp4");
    assert_eq!(
        measure_with(&missing, &Options::default()).unwrap_err(),
        Error::FileNotFound(missing.clone())
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"markers_s": [1, "x"]}"#).unwrap();
    assert!(matches!(expected_markers(&bad), Err(Error::Markers { .. })));
    assert_eq!(fixture_markers(), vec![5.0, 14.0, 23.0, 32.0, 41.0, 50.0]);
}
