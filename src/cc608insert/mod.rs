//! `cc608insert`: timed text in, CEA-608 captions inside the H.264 video out (SEI, "GA94").
//!
//! The encoding is plain Rust, usable without GStreamer:
//! * [`cea608`]: character sets, control codes, layout of a cue on the caption grid;
//! * [`schedule`]: the per-frame byte budget and the pop-on scheduler;
//! * [`sei`]: `cc_data`, the ITU-T T.35 SEI message and where it goes in an access unit;
//! * [`reorder`]: presentation order of frames that arrive in decode order.

use gst::glib;
use gst::prelude::*;

pub mod cea608;
mod imp;
pub mod reorder;
pub mod schedule;
pub mod sei;

/// Name of the `stats` structure.
pub const STATS_STRUCTURE: &str = "application/x-cc608insert-stats";

/// The `channel` property.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstCc608InsertChannel")]
pub enum Channel {
    #[default]
    #[enum_value(name = "CC1: field 1, first channel (what players show)", nick = "cc1")]
    Cc1 = 1,
    #[enum_value(name = "CC2: field 1, second channel", nick = "cc2")]
    Cc2 = 2,
    #[enum_value(name = "CC3: field 2, first channel", nick = "cc3")]
    Cc3 = 3,
    #[enum_value(name = "CC4: field 2, second channel", nick = "cc4")]
    Cc4 = 4,
}

impl From<Channel> for cea608::Channel {
    fn from(c: Channel) -> Self {
        match c {
            Channel::Cc1 => cea608::Channel::Cc1,
            Channel::Cc2 => cea608::Channel::Cc2,
            Channel::Cc3 => cea608::Channel::Cc3,
            Channel::Cc4 => cea608::Channel::Cc4,
        }
    }
}

/// The `mode` property.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstCc608InsertMode")]
pub enum Mode {
    #[default]
    #[enum_value(
        name = "Pop-on: each caption is loaded off screen and appears whole at its start",
        nick = "pop-on"
    )]
    PopOn = 0,
}

glib::wrapper! {
    pub struct Cc608Insert(ObjectSubclass<imp::Cc608Insert>) @extends gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "cc608insert",
        gst::Rank::NONE,
        Cc608Insert::static_type(),
    )
}
