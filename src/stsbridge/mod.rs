//! `stsbridge`: sends each audio fragment to a speech-to-speech translation service and pushes
//! the dubbed audio downstream with the fragment's own timestamps.

use gst::glib;
use gst::prelude::*;

pub mod breaker;
pub mod client;
pub mod codec;
pub mod convert;
mod imp;
pub mod loudness;
pub mod mix;
pub mod output;
pub mod overflow;
pub mod queue;
pub mod report;
pub mod response;
pub mod retry;
pub mod session;
pub mod sio;
pub mod text;

const SECOND: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

// Property defaults and ranges, as gst-inspect-1.0 shows them (times in ns); the worker uses
// them.
/// `timeout` default.
pub const DEFAULT_TIMEOUT: u64 = 8 * SECOND;
/// `timeout` minimum.
pub const MIN_TIMEOUT: u64 = 100 * MS;
/// `timeout` maximum.
pub const MAX_TIMEOUT: u64 = 600 * SECOND;
/// `max-retries` default.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// `max-retries` maximum.
pub const MAX_MAX_RETRIES: u32 = 10;
/// `max-in-flight` default.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 3;
/// `latency` default.
pub const DEFAULT_LATENCY: u64 = 5 * SECOND;
/// `latency` maximum.
pub const MAX_LATENCY: u64 = 300 * SECOND;
/// `fallback-gain` default, dB.
pub const DEFAULT_FALLBACK_GAIN: f64 = -12.0;
/// `original-mix` default, dB (off).
pub const DEFAULT_ORIGINAL_MIX: f64 = f64::NEG_INFINITY;
/// `original-mix` maximum, dB.
pub const MAX_ORIGINAL_MIX: f64 = 12.0;
/// `crossfade` default.
pub const DEFAULT_CROSSFADE: u64 = 10 * MS;
/// `breaker-threshold` default.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// `breaker-cooldown` default.
pub const DEFAULT_BREAKER_COOLDOWN: u64 = 30 * SECOND;
/// `max-response-size` default, bytes.
pub const DEFAULT_MAX_RESPONSE_SIZE: u64 = 16 * 1024 * 1024;
/// `max-backlog` default.
pub const DEFAULT_MAX_BACKLOG: u64 = 1500 * MS;
/// `max-tempo` default.
pub const DEFAULT_MAX_TEMPO: f64 = 1.25;
/// `max-gain` default, dB.
pub const DEFAULT_MAX_GAIN: f64 = 12.0;

pub use breaker::BreakerState;
pub use report::{
    BREAKER_MESSAGE, BreakerReport, FRAGMENT_MESSAGE, FragmentReport, LATE_MESSAGE, LateReport,
    Outcome, STATS_STRUCTURE, stats_field, stats_summary,
};
pub use response::Reason;

/// What goes out when a fragment gets no usable answer in time.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstStsBridgeFallback")]
pub enum Fallback {
    #[default]
    #[enum_value(
        name = "Original: the untranslated audio, unchanged",
        nick = "original"
    )]
    Original = 0,
    #[enum_value(name = "Silence: digital silence", nick = "silence")]
    Silence = 1,
    #[enum_value(
        name = "Ducked: the untranslated audio attenuated by fallback-gain",
        nick = "ducked"
    )]
    Ducked = 2,
}

/// What happens to a dub longer than its fragment.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstStsBridgeOverflow")]
pub enum Overflow {
    #[enum_value(
        name = "Trim: each dub is cut (or padded) to its fragment; the end of longer speech is lost",
        nick = "trim"
    )]
    Trim = 0,
    #[enum_value(
        name = "Shift: speech runs on into the following fragments (up to max-backlog), never compressed",
        nick = "shift"
    )]
    Shift = 1,
    #[default]
    #[enum_value(
        name = "Compress: like shift, and past max-backlog the speech is time-compressed (pitch kept) up to max-tempo",
        nick = "compress"
    )]
    Compress = 2,
}

/// How fragments travel to the STS.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstStsBridgeProtocol")]
pub enum Protocol {
    #[default]
    #[enum_value(
        name = "HTTP: one POST per fragment to url (docs/sts-api.md)",
        nick = "http"
    )]
    Http = 0,
    #[enum_value(
        name = "Socket.IO: one session per stream at url, the server's base URL (docs/sts-asyncapi.yaml), as the seeds' STS services speak it",
        nick = "socketio"
    )]
    SocketIo = 1,
}

/// The audio format of fragments sent over Socket.IO.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstStsBridgeWireFormat")]
pub enum WireFormat {
    #[enum_value(name = "Raw signed 16-bit little-endian PCM", nick = "pcm_s16le")]
    PcmS16le = 0,
    #[enum_value(
        name = "Raw 32-bit float little-endian PCM (what the seeds' full service takes raw, at 16 kHz mono)",
        nick = "pcm_f32le"
    )]
    PcmF32le = 1,
    #[default]
    #[enum_value(
        name = "WAV (16-bit PCM with its header: read by the seeds' full service at any rate and channel count)",
        nick = "wav"
    )]
    Wav = 2,
}

impl From<WireFormat> for codec::WireFormat {
    fn from(w: WireFormat) -> codec::WireFormat {
        match w {
            WireFormat::PcmS16le => codec::WireFormat::PcmS16le,
            WireFormat::PcmF32le => codec::WireFormat::PcmF32le,
            WireFormat::Wav => codec::WireFormat::Wav,
        }
    }
}

impl From<Overflow> for output::Mode {
    fn from(o: Overflow) -> output::Mode {
        match o {
            Overflow::Trim => output::Mode::Trim,
            Overflow::Shift => output::Mode::Shift,
            Overflow::Compress => output::Mode::Compress,
        }
    }
}

glib::wrapper! {
    pub struct StsBridge(ObjectSubclass<imp::StsBridge>) @extends gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "stsbridge",
        gst::Rank::NONE,
        StsBridge::static_type(),
    )
}
