//! `dubchunker`: raw S16LE audio in, fragments of a target duration out.

use gst::glib;
use gst::prelude::*;

pub mod accumulator;
mod imp;

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
