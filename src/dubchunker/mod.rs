//! `dubchunker`: raw S16LE audio in, fragments of a target duration out.

use gst::glib;
use gst::prelude::*;

pub mod accumulator;
mod imp;

// Property defaults and ranges (ns), as gst-inspect-1.0 shows them; the worker uses them.
/// `chunk-duration` default.
pub const DEFAULT_CHUNK_DURATION: u64 = 1_000_000_000;
/// `min-duration` default.
pub const DEFAULT_MIN_DURATION: u64 = 500_000_000;
/// `max-duration` default.
pub const DEFAULT_MAX_DURATION: u64 = 1_500_000_000;
/// The shortest fragment any of the durations may ask for.
pub const MIN_FRAGMENT: u64 = 100_000_000;
/// The longest fragment any of the durations may ask for.
pub const MAX_FRAGMENT: u64 = 10_000_000_000;
/// `silence-threshold` default, dBFS.
pub const DEFAULT_SILENCE_THRESHOLD: f64 = -40.0;

/// Name of the `stats` structure.
pub const STATS_STRUCTURE: &str = "application/x-dubchunker-stats";

/// How `dubchunker` delimits fragments.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstDubChunkerBoundary")]
pub enum Boundary {
    #[default]
    #[enum_value(name = "Fixed: every fragment lasts chunk-duration", nick = "fixed")]
    Fixed = 0,
    #[enum_value(
        name = "Silence: cut in the quietest 20 ms window between min-duration and max-duration",
        nick = "silence"
    )]
    Silence = 1,
}

glib::wrapper! {
    pub struct DubChunker(ObjectSubclass<imp::DubChunker>) @extends gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "dubchunker",
        gst::Rank::NONE,
        DubChunker::static_type(),
    )
}
