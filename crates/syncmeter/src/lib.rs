//! A/V sync meter.
//!
//! Decodes a media file (anything GStreamer's `uridecodebin` plays: MP4, MKV, FLV…) and
//! measures the audio/video offset at sync markers: a white full-frame flash in the video
//! and a short 1 kHz beep in the audio that were made at the same instant (see
//! `scripts/make-fixture.sh` and `fixtures/speech-60s.json`).
//!
//! For each flash the nearest beep is paired with it and the marker's delta is
//! `audio onset − video flash`, in milliseconds: positive means the audio is late.
//! Both streams are timed by their buffers' running time (PTS through the segment), put
//! back on the file's own timeline when the demuxer rebased it to 0 (see [`mod@decode`]), so
//! times are absolute (a file whose timeline starts at 6 s has its first fixture marker at
//! 11 s) and a shift of the whole file does not change the deltas.
//!
//! ```no_run
//! use std::path::Path;
//! use dubbing_syncmeter::{Options, expected_markers, measure_with};
//!
//! let opts = Options {
//!     audio_track: 0,
//!     expected_markers_s: Some(expected_markers(Path::new("fixtures/speech-60s.json"))?),
//!     ..Options::default()
//! };
//! let report = measure_with(Path::new("fixtures/speech-60s.mp4"), &opts)?;
//! for m in &report.markers {
//!     println!("{:.3} s: {:+.1} ms", m.video_s, m.delta_ms);
//! }
//! let expected = report.expected.as_ref().unwrap();
//! println!("{} of {} markers found", expected.found, expected.expected);
//! # Ok::<(), dubbing_syncmeter::Error>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub mod audio;
pub mod decode;
pub mod video;

pub use audio::{Beep, BeepParams, detect_beeps};
pub use decode::{AudioTrack, Decoded, Frame, decode};
pub use video::{FlashParams, detect_flashes};

/// Why a file could not be measured.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The file does not exist.
    FileNotFound(PathBuf),
    /// The path exists but is not a regular file.
    NotAFile(PathBuf),
    /// The file could not be read.
    Io { path: PathBuf, message: String },
    /// GStreamer could not be initialised.
    Init(String),
    /// A GStreamer element is not installed.
    MissingElement(String),
    /// The pipeline could not be built.
    Pipeline(String),
    /// Decoding failed (not a media file, missing decoder, corrupt data…).
    Decode { path: PathBuf, message: String },
    /// Decoding made no progress for too long.
    Timeout { path: PathBuf, seconds: f64 },
    /// The file has no audio stream.
    NoAudioStream(PathBuf),
    /// The file has no video stream.
    NoVideoStream(PathBuf),
    /// The requested audio stream does not exist (`available` audio streams, 0-based index).
    NoSuchAudioTrack {
        path: PathBuf,
        index: usize,
        available: usize,
    },
    /// A marker description (fixture JSON) could not be read or understood.
    Markers { path: PathBuf, message: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::FileNotFound(p) => write!(f, "{}: file not found", p.display()),
            Error::NotAFile(p) => write!(f, "{}: not a regular file", p.display()),
            Error::Io { path, message } => write!(f, "{}: {message}", path.display()),
            Error::Init(m) => write!(f, "cannot initialise GStreamer: {m}"),
            Error::MissingElement(e) => write!(
                f,
                "GStreamer element '{e}' is not installed (Debian: gstreamer1.0-plugins-base)"
            ),
            Error::Pipeline(m) => write!(f, "cannot build the decoding pipeline: {m}"),
            Error::Decode { path, message } => {
                write!(f, "{}: cannot decode: {message}", path.display())
            }
            Error::Timeout { path, seconds } => write!(
                f,
                "{}: decoding stalled (no data for {seconds:.0} s)",
                path.display()
            ),
            Error::NoAudioStream(p) => write!(f, "{}: no audio stream", p.display()),
            Error::NoVideoStream(p) => write!(f, "{}: no video stream", p.display()),
            Error::NoSuchAudioTrack {
                path,
                index,
                available,
            } => write!(
                f,
                "{}: no audio track {index} (the file has {available} audio stream{})",
                path.display(),
                if *available == 1 { "" } else { "s" }
            ),
            Error::Markers { path, message } => write!(f, "{}: {message}", path.display()),
        }
    }
}

impl std::error::Error for Error {}

/// Settings of [`measure_with`]; [`Options::default`] suits the fixture markers.
///
/// Fields are public; change a few with struct update syntax:
/// `Options { audio_track: 1, ..Options::default() }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Audio stream to measure, 0-based, in the container's order (Matroska files may
    /// carry several). The first video stream is always used.
    pub audio_track: usize,
    /// Marker times the file should have (seconds from the start of the source, e.g. from
    /// [`expected_markers`]). When set, the report says which were found
    /// ([`SyncReport::expected`]).
    pub expected_markers_s: Option<Vec<f64>>,
    /// Where the expected times lie in the file: marker `t` is looked for at
    /// `t + offset`. `None`: at the file's first video frame ([`SyncReport::video_start_s`]),
    /// i.e. expected times count from the start of the video, which follows a shift of the
    /// whole file (a 6 s offset pipeline puts the 5 s marker at 11 s).
    pub expected_offset_s: Option<f64>,
    /// A found marker (its flash time) matches an expected one at most this far away.
    pub expected_tolerance_s: f64,
    pub beep: BeepParams,
    pub flash: FlashParams,
    /// A flash and a beep further apart than this are not paired.
    pub max_pair_s: f64,
    /// Give up when decoding delivers nothing for this long.
    pub stall_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            audio_track: 0,
            expected_markers_s: None,
            expected_offset_s: None,
            expected_tolerance_s: 0.5,
            beep: BeepParams::default(),
            flash: FlashParams::default(),
            max_pair_s: 2.0,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// One sync marker: a flash and the beep paired with it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Marker {
    /// Time of the first flash frame, seconds (running time).
    pub video_s: f64,
    /// Onset of the beep, seconds (running time).
    pub audio_s: f64,
    /// `(audio_s − video_s)` in milliseconds; positive = audio late.
    pub delta_ms: f64,
}

/// Which expected markers a measurement found ([`Options::expected_markers_s`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpectedMatch {
    /// Number of expected markers.
    pub expected: usize,
    /// How many of them were found (a paired marker within the tolerance).
    pub found: usize,
    /// Offset added to the expected times (seconds), see [`Options::expected_offset_s`].
    pub offset_s: f64,
    /// Expected times (offset included) with no marker found, seconds.
    pub missing_s: Vec<f64>,
    /// Found markers (video time) that match no expected time, seconds.
    pub unexpected_s: Vec<f64>,
}

/// Result of a measurement. All times are seconds on the file's timeline (see the crate
/// documentation); deltas are milliseconds, positive = audio late.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncReport {
    /// Paired markers, in video time order.
    pub markers: Vec<Marker>,
    /// Mean of the deltas, `None` without markers.
    pub mean_delta_ms: Option<f64>,
    /// Mean of |delta|, `None` without markers.
    pub mean_abs_delta_ms: Option<f64>,
    /// Largest |delta|, `None` without markers.
    pub max_abs_delta_ms: Option<f64>,
    /// Comparison with the expected markers, when [`Options::expected_markers_s`] is set.
    pub expected: Option<ExpectedMatch>,
    /// Flashes with no beep within `max_pair_s` (seconds).
    pub unmatched_flashes_s: Vec<f64>,
    /// Beeps with no flash within `max_pair_s` (onset, seconds).
    pub unmatched_beeps_s: Vec<f64>,
    /// Time of the first audio sample / video frame, seconds.
    pub audio_start_s: f64,
    pub video_start_s: f64,
    /// Decoded audio and video durations, seconds.
    pub audio_duration_s: f64,
    pub video_duration_s: f64,
    /// Audio sample rate (Hz) and number of video frames decoded.
    pub audio_rate: u32,
    pub video_frames: usize,
    /// Index of the measured audio stream and number of audio streams in the file.
    pub audio_track: usize,
    pub audio_tracks: usize,
    /// Seconds added to the demuxer's running times to restore the file's timeline
    /// (non-zero for Matroska/FLV files whose timestamps do not start at 0).
    pub timeline_offset_s: f64,
}

/// Measures `path` with the default [`Options`] (first audio stream, no expected markers).
pub fn measure(path: &Path) -> Result<SyncReport, Error> {
    measure_with(path, &Options::default())
}

/// Measures `path`.
pub fn measure_with(path: &Path, opts: &Options) -> Result<SyncReport, Error> {
    let decoded = decode(path, opts.audio_track, opts.stall_timeout)?;
    analyze(path, &decoded, opts)
}

/// Reads the marker times (`markers_s`, seconds) of a fixture description such as
/// `fixtures/speech-60s.json`.
pub fn expected_markers(json: &Path) -> Result<Vec<f64>, Error> {
    let err = |message: String| Error::Markers {
        path: json.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(json).map_err(|e| err(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let list = value
        .get("markers_s")
        .and_then(|v| v.as_array())
        .ok_or_else(|| err("no \"markers_s\" array".into()))?;
    list.iter()
        .map(|v| {
            v.as_f64()
                .filter(|t| t.is_finite())
                .ok_or_else(|| err(format!("\"markers_s\" holds a non-number: {v}")))
        })
        .collect()
}

/// Matches found markers (`found_s`, video times) with `expected_s + offset_s`: closest
/// pairs first, each used once, at most `tolerance_s` apart.
pub fn match_expected(
    found_s: &[f64],
    expected_s: &[f64],
    offset_s: f64,
    tolerance_s: f64,
) -> ExpectedMatch {
    let shifted: Vec<f64> = expected_s.iter().map(|t| t + offset_s).collect();
    let (pairs, missing_s, unexpected_s) = pair_closest(&shifted, found_s, tolerance_s);
    ExpectedMatch {
        expected: expected_s.len(),
        found: pairs.len(),
        offset_s,
        missing_s,
        unexpected_s,
    }
}

/// Analyses already decoded streams (`path` only names the file in errors).
pub fn analyze(path: &Path, decoded: &Decoded, opts: &Options) -> Result<SyncReport, Error> {
    if decoded.audio.is_none() && decoded.audio_tracks > 0 {
        return Err(Error::NoSuchAudioTrack {
            path: path.to_path_buf(),
            index: opts.audio_track,
            available: decoded.audio_tracks,
        });
    }
    let audio = decoded
        .audio
        .as_ref()
        .filter(|a| a.rate > 0)
        .ok_or_else(|| Error::NoAudioStream(path.to_path_buf()))?;
    let frames = decoded
        .video
        .as_ref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::NoVideoStream(path.to_path_buf()))?;

    let mut frames = frames.clone();
    frames.sort_by(|a, b| a.time_s.total_cmp(&b.time_s));
    let flashes = detect_flashes(&frames, &opts.flash);
    let beeps: Vec<f64> = detect_beeps(&audio.samples, audio.rate, audio.start_s, &opts.beep)
        .iter()
        .map(|b| b.onset_s)
        .collect();
    let (markers, unmatched_flashes_s, unmatched_beeps_s) =
        pair_markers(&flashes, &beeps, opts.max_pair_s);

    let video_start_s = frames[0].time_s;
    let last = frames[frames.len() - 1];
    let frame_dur = last.duration_s.unwrap_or_else(|| {
        if frames.len() > 1 {
            (last.time_s - video_start_s) / (frames.len() - 1) as f64
        } else {
            0.0
        }
    });
    let expected = opts.expected_markers_s.as_ref().map(|exp| {
        let found: Vec<f64> = markers.iter().map(|m| m.video_s).collect();
        let offset = opts.expected_offset_s.unwrap_or(video_start_s);
        match_expected(&found, exp, offset, opts.expected_tolerance_s)
    });
    let n = markers.len() as f64;
    let mean = |f: fn(&Marker) -> f64| {
        (!markers.is_empty()).then(|| markers.iter().map(f).sum::<f64>() / n)
    };
    Ok(SyncReport {
        mean_delta_ms: mean(|m| m.delta_ms),
        mean_abs_delta_ms: mean(|m| m.delta_ms.abs()),
        max_abs_delta_ms: markers.iter().map(|m| m.delta_ms.abs()).reduce(f64::max),
        markers,
        expected,
        unmatched_flashes_s,
        unmatched_beeps_s,
        audio_start_s: audio.start_s,
        video_start_s,
        audio_duration_s: audio.duration_s(),
        video_duration_s: last.time_s + frame_dur - video_start_s,
        audio_rate: audio.rate,
        video_frames: frames.len(),
        audio_track: opts.audio_track,
        audio_tracks: decoded.audio_tracks,
        timeline_offset_s: decoded.timeline_offset_s,
    })
}

/// Pairs flashes and beeps (times in seconds): closest pairs first, each flash and each
/// beep used at most once, pairs further apart than `max_pair_s` rejected.
/// Returns (markers in video order, unmatched flashes, unmatched beeps).
pub fn pair_markers(
    flashes: &[f64],
    beeps: &[f64],
    max_pair_s: f64,
) -> (Vec<Marker>, Vec<f64>, Vec<f64>) {
    let (pairs, unmatched_flashes, unmatched_beeps) = pair_closest(flashes, beeps, max_pair_s);
    let markers = pairs
        .into_iter()
        .map(|(v, a)| Marker {
            video_s: v,
            audio_s: a,
            delta_ms: (a - v) * 1000.0,
        })
        .collect();
    (markers, unmatched_flashes, unmatched_beeps)
}

/// Pairs times of `a` with times of `b`, closest pairs first, each used at most once,
/// at most `max_dist` apart. Returns (pairs `(a, b)` sorted by `a`, unmatched `a`,
/// unmatched `b`).
fn pair_closest(a: &[f64], b: &[f64], max_dist: f64) -> (Vec<(f64, f64)>, Vec<f64>, Vec<f64>) {
    let mut candidates: Vec<(f64, usize, usize)> = Vec::new();
    for (i, &x) in a.iter().enumerate() {
        for (j, &y) in b.iter().enumerate() {
            let d = (y - x).abs();
            if d <= max_dist {
                candidates.push((d, i, j));
            }
        }
    }
    candidates.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut a_used = vec![false; a.len()];
    let mut b_used = vec![false; b.len()];
    let mut pairs = Vec::new();
    for (_, i, j) in candidates {
        if a_used[i] || b_used[j] {
            continue;
        }
        a_used[i] = true;
        b_used[j] = true;
        pairs.push((a[i], b[j]));
    }
    pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
    let unmatched = |times: &[f64], used: &[bool]| {
        times
            .iter()
            .zip(used)
            .filter(|(_, u)| !**u)
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
    };
    (pairs, unmatched(a, &a_used), unmatched(b, &b_used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_closest_flash_and_beep() {
        let (markers, flashes, beeps) = pair_markers(&[5.0, 14.0, 30.0], &[14.2, 5.001, 40.0], 2.0);
        assert_eq!(markers.len(), 2);
        assert_eq!((markers[0].video_s, markers[0].audio_s), (5.0, 5.001));
        assert!((markers[0].delta_ms - 1.0).abs() < 1e-9);
        assert!((markers[1].delta_ms - 200.0).abs() < 1e-9);
        assert_eq!(flashes, vec![30.0]);
        assert_eq!(beeps, vec![40.0]);
    }

    #[test]
    fn matches_expected_markers_with_offset() {
        let expected = [5.0, 14.0, 23.0];
        let m = match_expected(&[11.0, 29.02, 35.0], &expected, 6.0, 0.5);
        assert_eq!((m.expected, m.found), (3, 2));
        assert_eq!(m.missing_s, vec![20.0]);
        assert_eq!(m.unexpected_s, vec![35.0]);
        let none = match_expected(&[5.0, 14.0, 23.0], &expected, 6.0, 0.5);
        assert_eq!(none.found, 0);
    }

    #[test]
    fn reads_fixture_markers() {
        let json = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/speech-60s.json");
        assert_eq!(
            expected_markers(&json).unwrap(),
            vec![5.0, 14.0, 23.0, 32.0, 41.0, 50.0]
        );
        let missing = Path::new("/nonexistent/markers.json");
        assert!(matches!(
            expected_markers(missing),
            Err(Error::Markers { .. })
        ));
    }
}
