//! A/V sync meter.
//!
//! Decodes a media file (anything GStreamer's `uridecodebin` plays: MP4, MKV, FLV…) and
//! measures the audio/video offset at sync markers: a white full-frame flash in the video
//! and a short 1 kHz beep in the audio that were made at the same instant (see
//! `scripts/make-fixture.sh` and `fixtures/speech-60s.json`).
//!
//! For each flash the nearest beep is paired with it and the marker's delta is
//! `audio onset − video flash`, in milliseconds: positive means the audio is late.
//! Both streams are timed by their buffers' running time (PTS through the segment),
//! so a shift of the whole file does not change the deltas.
//!
//! ```no_run
//! let report = dubbing_syncmeter::measure(std::path::Path::new("fixtures/speech-60s.mp4"))?;
//! for m in &report.markers {
//!     println!("{:.3} s: {:+.1} ms", m.video_s, m.delta_ms);
//! }
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
        }
    }
}

impl std::error::Error for Error {}

/// Tuning of [`measure_with`]; [`Options::default`] suits the fixture markers.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
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

/// Result of a measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncReport {
    /// Paired markers, in video time order.
    pub markers: Vec<Marker>,
    /// Flashes with no beep within `max_pair_s` (seconds).
    pub unmatched_flashes_s: Vec<f64>,
    /// Beeps with no flash within `max_pair_s` (onset, seconds).
    pub unmatched_beeps_s: Vec<f64>,
    /// Running time of the first audio sample / video frame, seconds.
    pub audio_start_s: f64,
    pub video_start_s: f64,
    /// Decoded audio and video durations, seconds.
    pub audio_duration_s: f64,
    pub video_duration_s: f64,
    /// Audio sample rate (Hz) and number of video frames decoded.
    pub audio_rate: u32,
    pub video_frames: usize,
}

impl SyncReport {
    /// Mean of the deltas (ms), `None` without markers.
    pub fn mean_delta_ms(&self) -> Option<f64> {
        (!self.markers.is_empty()).then(|| {
            self.markers.iter().map(|m| m.delta_ms).sum::<f64>() / self.markers.len() as f64
        })
    }

    /// Mean of |delta| (ms), `None` without markers.
    pub fn mean_abs_delta_ms(&self) -> Option<f64> {
        (!self.markers.is_empty()).then(|| {
            self.markers.iter().map(|m| m.delta_ms.abs()).sum::<f64>() / self.markers.len() as f64
        })
    }

    /// Largest |delta| (ms), `None` without markers.
    pub fn max_abs_delta_ms(&self) -> Option<f64> {
        self.markers
            .iter()
            .map(|m| m.delta_ms.abs())
            .reduce(f64::max)
    }
}

/// Measures `path` with the default [`Options`].
pub fn measure(path: &Path) -> Result<SyncReport, Error> {
    measure_with(path, &Options::default())
}

/// Measures `path`.
pub fn measure_with(path: &Path, opts: &Options) -> Result<SyncReport, Error> {
    let decoded = decode(path, opts.stall_timeout)?;
    analyze(path, &decoded, opts)
}

/// Analyses already decoded streams (`path` only names the file in errors).
pub fn analyze(path: &Path, decoded: &Decoded, opts: &Options) -> Result<SyncReport, Error> {
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
    Ok(SyncReport {
        markers,
        unmatched_flashes_s,
        unmatched_beeps_s,
        audio_start_s: audio.start_s,
        video_start_s,
        audio_duration_s: audio.duration_s(),
        video_duration_s: last.time_s + frame_dur - video_start_s,
        audio_rate: audio.rate,
        video_frames: frames.len(),
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
    let mut candidates: Vec<(f64, usize, usize)> = Vec::new();
    for (i, &v) in flashes.iter().enumerate() {
        for (j, &a) in beeps.iter().enumerate() {
            let d = (a - v).abs();
            if d <= max_pair_s {
                candidates.push((d, i, j));
            }
        }
    }
    candidates.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut flash_used = vec![false; flashes.len()];
    let mut beep_used = vec![false; beeps.len()];
    let mut markers = Vec::new();
    for (_, i, j) in candidates {
        if flash_used[i] || beep_used[j] {
            continue;
        }
        flash_used[i] = true;
        beep_used[j] = true;
        markers.push(Marker {
            video_s: flashes[i],
            audio_s: beeps[j],
            delta_ms: (beeps[j] - flashes[i]) * 1000.0,
        });
    }
    markers.sort_by(|a, b| a.video_s.total_cmp(&b.video_s));
    let unmatched = |times: &[f64], used: &[bool]| {
        times
            .iter()
            .zip(used)
            .filter(|(_, u)| !**u)
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
    };
    (
        markers,
        unmatched(flashes, &flash_used),
        unmatched(beeps, &beep_used),
    )
}
