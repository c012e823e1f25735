//! `avoffset`: puts video and dubbed audio behind one fixed offset and keeps them in step.

use gst::glib;
use gst::prelude::*;

pub mod hold;
mod imp;

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
