//! `avoffset`: puts video and dubbed audio behind one fixed offset and keeps them in step.

use gst::glib;
use gst::prelude::*;

pub mod hold;
mod imp;

const SECOND: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

// Property defaults and ranges (ns), as gst-inspect-1.0 shows them; the worker uses them.
/// `offset` default.
pub const DEFAULT_OFFSET: u64 = 6 * SECOND;
/// `offset` maximum.
pub const MAX_OFFSET: u64 = 600 * SECOND;
/// `max-hold` default.
pub const DEFAULT_MAX_HOLD: u64 = SECOND;
/// `max-hold` maximum.
pub const MAX_MAX_HOLD: u64 = 600 * SECOND;
/// `sync-threshold` default.
pub const DEFAULT_SYNC_THRESHOLD: u64 = 120 * MS;
/// `sync-threshold` maximum.
pub const MAX_SYNC_THRESHOLD: u64 = 60 * SECOND;
/// `audio-compensation` default: voaacenc's delay at 48 kHz, measured on the fixture with
/// syncmeter: 1600 samples, 33.3 ms (its 1024-sample priming plus look-ahead). The README's
/// pipelines encode with voaacenc.
pub const DEFAULT_AUDIO_COMPENSATION: u64 = 33_333_333;
/// `audio-compensation` maximum.
pub const MAX_AUDIO_COMPENSATION: u64 = SECOND;

/// Name of the element message posted once per second of video with the sampled A/V delta.
pub const SYNC_MESSAGE: &str = "avoffset/sync";
/// Name of the `stats` structure.
pub const STATS_STRUCTURE: &str = "application/x-avoffset-stats";

/// The `avoffset/sync` message. Times in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// End of the audio output − end of the video output, running time (positive: audio
    /// ahead).
    pub delta: i64,
    /// Span of video held right now.
    pub video_held: u64,
    /// Video buffers released without their audio so far.
    pub video_without_audio: u64,
    /// Audio buffers that came after their video was released.
    pub audio_late: u64,
}

impl SyncReport {
    pub fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder(SYNC_MESSAGE)
            .field("delta", self.delta)
            .field("video-held", self.video_held)
            .field("video-without-audio", self.video_without_audio)
            .field("audio-late", self.audio_late)
            .build()
    }

    /// Parses an `avoffset/sync` structure; `None` for any other.
    pub fn from_structure(s: &gst::StructureRef) -> Option<SyncReport> {
        if s.name() != SYNC_MESSAGE {
            return None;
        }
        Some(SyncReport {
            delta: s.get("delta").ok()?,
            video_held: s.get("video-held").ok()?,
            video_without_audio: s.get("video-without-audio").ok()?,
            audio_late: s.get("audio-late").ok()?,
        })
    }
}

glib::wrapper! {
    pub struct AvOffset(ObjectSubclass<imp::AvOffset>) @extends gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "avoffset",
        gst::Rank::NONE,
        AvOffset::static_type(),
    )
}
