//! Decoding a media file with GStreamer into mono audio samples and per-frame mean luma.
//!
//! Pipeline: `uridecodebin` → for the selected audio stream (`audio_track`, counted from 0
//! in the order `uridecodebin` exposes them, which is the container's track order)
//! `audioconvert ! capsfilter(F32, mono) ! appsink`, for the first video stream
//! `videoconvert ! videoscale ! capsfilter(GRAY8, small) ! appsink`; every other stream goes
//! to a `fakesink`. Both appsinks run unsynchronised (as fast as decoding allows).
//!
//! ## Timestamps
//! Buffer PTS are converted to running time with each sample's segment, the same
//! conversion for both streams, so an edit list or a shift of one stream is honoured exactly
//! as a player would. Some demuxers (`matroskademux`, `flvdemux`) rebase the running time
//! of the whole file to start at 0: they open one segment whose `start` is the file's first
//! timestamp, the same for every stream. When the first segments of the audio and the video
//! agree on such a `start` (> 0, `base` 0), that amount is added back to both streams
//! ([`Decoded::timeline_offset_s`]), so MP4, Matroska and FLV times are on the file's own
//! timeline (what `ffprobe` shows as `start_time`). Deltas never change: both streams always
//! get the same offset. (`qtdemux` does not rebase: its per-stream segments come from the
//! MP4 edit lists, whose running time already is the presentation time. MPEG-TS times
//! follow `tsdemux`'s own mapping, not the raw PTS.)

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_video::prelude::*;

use crate::Error;

/// Width and height the video is scaled to before the luma is averaged.
const VIDEO_W: i32 = 64;
const VIDEO_H: i32 = 36;

/// Decoded mono audio, continuous from `start_s` (running time of the first sample).
#[derive(Debug, Clone, Default)]
pub struct AudioTrack {
    /// Sample rate in Hz.
    pub rate: u32,
    /// Running time of `samples[0]`, in seconds.
    pub start_s: f64,
    /// Mono samples in [-1, 1]; gaps in the stream are filled with silence.
    pub samples: Vec<f32>,
}

impl AudioTrack {
    /// Duration of the samples, in seconds.
    pub fn duration_s(&self) -> f64 {
        if self.rate == 0 {
            0.0
        } else {
            self.samples.len() as f64 / f64::from(self.rate)
        }
    }
}

/// One decoded video frame reduced to its mean luma.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    /// Running time of the frame's PTS, in seconds.
    pub time_s: f64,
    /// Frame duration in seconds, when the buffer had one.
    pub duration_s: Option<f64>,
    /// Mean luma, 0 (black) to 255 (white).
    pub luma: f32,
}

/// What [`decode`] found in a file.
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    /// The selected audio stream, `None` if the file has no audio stream with that index.
    pub audio: Option<AudioTrack>,
    pub video: Option<Vec<Frame>>,
    /// Number of audio streams in the file.
    pub audio_tracks: usize,
    /// Stream id of the selected audio stream, when it has one.
    pub audio_stream_id: Option<String>,
    /// Seconds added to every running time to undo a demuxer's rebase of the file to 0
    /// (see the module documentation); already included in all times above.
    pub timeline_offset_s: f64,
}

/// `start` and `base` (ns) of the segment of a stream's first sample.
type SegmentOrigin = (u64, u64);

#[derive(Default)]
struct AudioChunks {
    rate: u32,
    /// (running time in ns if known, samples)
    chunks: Vec<(Option<i64>, Vec<f32>)>,
    first_segment: Option<SegmentOrigin>,
}

#[derive(Default)]
struct Shared {
    /// Index of the audio stream to decode.
    audio_track: usize,
    /// Audio streams exposed so far.
    audio_pads: usize,
    audio_stream_id: Option<String>,
    audio: Option<AudioChunks>,
    video: Option<Vec<Frame>>,
    video_first_segment: Option<SegmentOrigin>,
    /// First error raised in a streaming callback (bad caps, unmappable buffer…).
    error: Option<String>,
}

fn signed_ns(t: Option<gst::Signed<gst::ClockTime>>) -> Option<i64> {
    match t? {
        gst::Signed::Positive(t) => i64::try_from(t.nseconds()).ok(),
        gst::Signed::Negative(t) => i64::try_from(t.nseconds()).ok().map(|n| -n),
    }
}

fn running_time_ns(sample: &gst::Sample, pts: Option<gst::ClockTime>) -> Option<i64> {
    let pts = pts?;
    let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
    signed_ns(segment.to_running_time_full(pts))
}

fn segment_origin(sample: &gst::Sample) -> Option<SegmentOrigin> {
    let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
    Some((segment.start()?.nseconds(), segment.base()?.nseconds()))
}

/// The offset that undoes a common rebase of both streams (see the module docs), in ns.
fn timeline_offset_ns(audio: Option<SegmentOrigin>, video: Option<SegmentOrigin>) -> u64 {
    match (audio, video) {
        (Some((a_start, 0)), Some((v_start, 0))) if a_start == v_start => a_start,
        _ => 0,
    }
}

fn make(name: &str) -> Result<gst::Element, Error> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|_| Error::MissingElement(name.to_owned()))
}

/// Decodes `path` completely: the first video stream and the audio stream number
/// `audio_track` (0 = first). `stall_timeout` aborts when no buffer arrives for that long.
pub fn decode(path: &Path, audio_track: usize, stall_timeout: Duration) -> Result<Decoded, Error> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::FileNotFound(path.to_path_buf()),
        _ => Error::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    })?;
    if !meta.is_file() {
        return Err(Error::NotAFile(path.to_path_buf()));
    }
    let abs = std::fs::canonicalize(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    gst::init().map_err(|e| Error::Init(e.to_string()))?;
    let uri = gst::glib::filename_to_uri(&abs, None).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        message: format!("cannot make a URI: {e}"),
    })?;

    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("uridecodebin")
        .property("uri", uri.as_str())
        .build()
        .map_err(|_| Error::MissingElement("uridecodebin".into()))?;
    pipeline
        .add(&src)
        .map_err(|e| Error::Pipeline(e.to_string()))?;

    // Check up front that the converters exist, so a broken install is a clear error
    // rather than a link failure inside a callback.
    for name in [
        "audioconvert",
        "videoconvert",
        "videoscale",
        "appsink",
        "fakesink",
    ] {
        make(name)?;
    }

    let shared = Arc::new(Mutex::new(Shared {
        audio_track,
        ..Shared::default()
    }));
    let progress = Arc::new(AtomicU64::new(0));

    let pipeline_weak = pipeline.downgrade();
    let shared_pad = shared.clone();
    let progress_pad = progress.clone();
    src.connect_pad_added(move |_src, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let media = caps
            .structure(0)
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let kind = {
            let mut st = shared_pad.lock().unwrap_or_else(|p| p.into_inner());
            if media.starts_with("audio/") {
                let index = st.audio_pads;
                st.audio_pads += 1;
                if index == st.audio_track {
                    st.audio = Some(AudioChunks::default());
                    st.audio_stream_id = pad.stream_id().map(|id| id.to_string());
                    Some(true)
                } else {
                    None
                }
            } else if media.starts_with("video/") && st.video.is_none() {
                st.video = Some(Vec::new());
                Some(false)
            } else {
                None
            }
        };
        let result = match kind {
            Some(true) => link_audio(&pipeline, pad, shared_pad.clone(), progress_pad.clone()),
            Some(false) => link_video(&pipeline, pad, shared_pad.clone(), progress_pad.clone()),
            None => link_fakesink(&pipeline, pad),
        };
        if let Err(e) = result {
            let mut st = shared_pad.lock().unwrap_or_else(|p| p.into_inner());
            st.error
                .get_or_insert(format!("cannot link {media} stream: {e}"));
        }
    });

    let bus = pipeline
        .bus()
        .ok_or_else(|| Error::Pipeline("pipeline has no bus".into()))?;
    let outcome = run(&pipeline, &bus, path, &shared, &progress, stall_timeout);
    let _ = pipeline.set_state(gst::State::Null);
    outcome?;

    let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = st.error.take() {
        return Err(Error::Decode {
            path: path.to_path_buf(),
            message: e,
        });
    }
    let offset_ns = timeline_offset_ns(
        st.audio.as_ref().and_then(|a| a.first_segment),
        st.video_first_segment,
    );
    let offset_s = offset_ns as f64 / 1e9;
    let mut audio = st.audio.take().map(assemble_audio);
    if let Some(a) = audio.as_mut() {
        a.start_s += offset_s;
    }
    let mut video = st.video.take();
    for f in video.iter_mut().flatten() {
        f.time_s += offset_s;
    }
    Ok(Decoded {
        audio,
        video,
        audio_tracks: st.audio_pads,
        audio_stream_id: st.audio_stream_id.take(),
        timeline_offset_s: offset_s,
    })
}

fn run(
    pipeline: &gst::Pipeline,
    bus: &gst::Bus,
    path: &Path,
    shared: &Arc<Mutex<Shared>>,
    progress: &Arc<AtomicU64>,
    stall_timeout: Duration,
) -> Result<(), Error> {
    let decode_err = |message: String| Error::Decode {
        path: path.to_path_buf(),
        message,
    };
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The reason is on the bus.
        let msg = bus
            .timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(e.error().to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "the pipeline refused to start".into());
        return Err(decode_err(msg));
    }
    let mut last_progress = progress.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        if let Some(msg) = msg {
            match msg.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(e) => {
                    let mut text = e.error().to_string();
                    if let Some(d) = e.debug() {
                        text.push_str(&format!(" ({d})"));
                    }
                    return Err(decode_err(text));
                }
                _ => {}
            }
        }
        if let Some(e) = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error
            .clone()
        {
            return Err(decode_err(e));
        }
        let now = progress.load(Ordering::Relaxed);
        if now != last_progress {
            last_progress = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > stall_timeout {
            return Err(Error::Timeout {
                path: path.to_path_buf(),
                seconds: stall_timeout.as_secs_f64(),
            });
        }
    }
}

fn add_chain(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    elements: &[gst::Element],
) -> Result<(), String> {
    pipeline.add_many(elements).map_err(|e| e.to_string())?;
    gst::Element::link_many(elements).map_err(|e| e.to_string())?;
    for e in elements {
        e.sync_state_with_parent().map_err(|e| e.to_string())?;
    }
    let sink = elements[0]
        .static_pad("sink")
        .ok_or_else(|| "no sink pad".to_string())?;
    pad.link(&sink).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

fn link_fakesink(pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), String> {
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
        .map_err(|e| e.to_string())?;
    add_chain(pipeline, pad, &[sink])
}

fn link_audio(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    shared: Arc<Mutex<Shared>>,
    progress: Arc<AtomicU64>,
) -> Result<(), String> {
    let convert = gst::ElementFactory::make("audioconvert")
        .build()
        .map_err(|e| e.to_string())?;
    let caps = gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AUDIO_FORMAT_F32)
        .channels(1)
        .build();
    let sink = gst_app::AppSink::builder()
        .caps(&caps)
        .sync(false)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    progress.fetch_add(1, Ordering::Relaxed);
                    let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
                    match audio_sample(&sample) {
                        Ok((rate, time, samples)) => {
                            if let Some(a) = st.audio.as_mut() {
                                a.rate = rate;
                                a.chunks.push((time, samples));
                                if a.first_segment.is_none() {
                                    a.first_segment = segment_origin(&sample);
                                }
                            }
                            Ok(gst::FlowSuccess::Ok)
                        }
                        Err(e) => {
                            st.error.get_or_insert(e);
                            Err(gst::FlowError::Error)
                        }
                    }
                })
                .build(),
        )
        .build();
    add_chain(pipeline, pad, &[convert, sink.upcast()])
}

fn audio_sample(sample: &gst::Sample) -> Result<(u32, Option<i64>, Vec<f32>), String> {
    let caps = sample.caps().ok_or("audio sample without caps")?;
    let info = gst_audio::AudioInfo::from_caps(caps).map_err(|e| e.to_string())?;
    let buffer = sample.buffer().ok_or("audio sample without buffer")?;
    let map = buffer.map_readable().map_err(|e| e.to_string())?;
    let samples = map
        .as_slice()
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((info.rate(), running_time_ns(sample, buffer.pts()), samples))
}

fn link_video(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    shared: Arc<Mutex<Shared>>,
    progress: Arc<AtomicU64>,
) -> Result<(), String> {
    let convert = gst::ElementFactory::make("videoconvert")
        .build()
        .map_err(|e| e.to_string())?;
    let scale = gst::ElementFactory::make("videoscale")
        .build()
        .map_err(|e| e.to_string())?;
    let caps = gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::Gray8)
        .width(VIDEO_W)
        .height(VIDEO_H)
        .build();
    let sink = gst_app::AppSink::builder()
        .caps(&caps)
        .sync(false)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    progress.fetch_add(1, Ordering::Relaxed);
                    let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
                    match video_sample(&sample) {
                        Ok(Some(frame)) => {
                            if let Some(v) = st.video.as_mut() {
                                v.push(frame);
                            }
                            if st.video_first_segment.is_none() {
                                st.video_first_segment = segment_origin(&sample);
                            }
                            Ok(gst::FlowSuccess::Ok)
                        }
                        Ok(None) => Ok(gst::FlowSuccess::Ok),
                        Err(e) => {
                            st.error.get_or_insert(e);
                            Err(gst::FlowError::Error)
                        }
                    }
                })
                .build(),
        )
        .build();
    add_chain(pipeline, pad, &[convert, scale, sink.upcast()])
}

/// Mean luma of a GRAY8 frame; `None` for a frame without a usable timestamp.
fn video_sample(sample: &gst::Sample) -> Result<Option<Frame>, String> {
    let caps = sample.caps().ok_or("video sample without caps")?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
    let buffer = sample.buffer().ok_or("video sample without buffer")?;
    let Some(time) = running_time_ns(sample, buffer.pts()) else {
        return Ok(None);
    };
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|e| e.to_string())?;
    let data = frame.plane_data(0).map_err(|e| e.to_string())?;
    let stride = usize::try_from(frame.plane_stride()[0]).map_err(|e| e.to_string())?;
    let (w, h) = (info.width() as usize, info.height() as usize);
    let mut sum = 0u64;
    for row in 0..h {
        let start = row * stride;
        let line = data
            .get(start..start + w)
            .ok_or("video frame shorter than its caps")?;
        sum += line.iter().map(|&p| u64::from(p)).sum::<u64>();
    }
    let n = (w * h).max(1) as f64;
    Ok(Some(Frame {
        time_s: time as f64 / 1e9,
        duration_s: buffer.duration().map(|d| d.nseconds() as f64 / 1e9),
        luma: (sum as f64 / n) as f32,
    }))
}

/// Lays the decoded chunks on one continuous sample grid starting at the first chunk's
/// running time. Chunks that continue the previous one within 2 ms are appended as they
/// are (timestamp jitter); a real gap is filled with silence; an overlap overwrites.
fn assemble_audio(a: AudioChunks) -> AudioTrack {
    let rate = a.rate;
    let mut out = AudioTrack {
        rate,
        start_s: 0.0,
        samples: Vec::new(),
    };
    if rate == 0 {
        return out;
    }
    let tolerance = i64::from(rate / 500).max(1); // 2 ms
    let mut t0: Option<i64> = None;
    for (time, chunk) in a.chunks {
        let Some(t0v) = t0 else {
            t0 = Some(time.unwrap_or(0));
            out.start_s = time.unwrap_or(0) as f64 / 1e9;
            out.samples.extend_from_slice(&chunk);
            continue;
        };
        let len = out.samples.len() as i64;
        let expected = match time {
            Some(t) => ((t - t0v) as f64 * f64::from(rate) / 1e9).round() as i64,
            None => len,
        };
        if (expected - len).abs() <= tolerance {
            out.samples.extend_from_slice(&chunk);
        } else if expected > len {
            out.samples.resize(expected as usize, 0.0);
            out.samples.extend_from_slice(&chunk);
        } else {
            let at = expected.max(0) as usize;
            let end = at + chunk.len();
            if end > out.samples.len() {
                out.samples.resize(end, 0.0);
            }
            out.samples[at..end].copy_from_slice(&chunk);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_rebase_is_undone_only_when_both_streams_share_it() {
        // matroskademux / flvdemux: one segment starting at the first timestamp.
        assert_eq!(
            timeline_offset_ns(Some((5_979_000_000, 0)), Some((5_979_000_000, 0))),
            5_979_000_000
        );
        // qtdemux: the audio edit list skips the AAC priming, the video has none.
        assert_eq!(timeline_offset_ns(Some((21_333_333, 0)), Some((0, 0))), 0);
        // qtdemux after an empty edit: the running time already holds the offset.
        assert_eq!(
            timeline_offset_ns(Some((0, 5_978_000_000)), Some((0, 6_000_000_000))),
            0
        );
        assert_eq!(timeline_offset_ns(None, Some((1, 0))), 0);
    }

    #[test]
    fn audio_chunks_are_laid_on_one_grid() {
        let a = AudioChunks {
            rate: 1000,
            chunks: vec![
                (Some(1_000_000_000), vec![1.0; 10]),
                // 1 ms jitter: appended as is
                (Some(1_011_000_000), vec![2.0; 10]),
                // gap of 10 samples: filled with silence
                (Some(1_030_000_000), vec![3.0; 5]),
            ],
            first_segment: None,
        };
        let t = assemble_audio(a);
        assert_eq!(t.start_s, 1.0);
        assert_eq!(t.samples.len(), 35);
        assert_eq!(t.samples[19], 2.0);
        assert_eq!(t.samples[20], 0.0);
        assert_eq!(t.samples[30], 3.0);
    }
}
