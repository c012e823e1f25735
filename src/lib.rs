//! gst-dubbing: GStreamer elements for live dubbing.
//!
//! * `dubchunker`: raw PCM in, sample-exact fragments of a target duration out.
//! * `stsbridge`: each fragment through a remote speech-to-speech translation service, in
//!   order, sample-exact, with fallback so a live stream never stalls.
//! * `avoffset`: video and dubbed audio behind one fixed offset, in step.
//! * `cc608insert`: timed text into H.264 as CEA-608 captions (A/53 SEI), no re-encoding.
//!
//! [`tsoutput`] builds an MPEG-TS output (file or SRT) with one language-tagged AAC track per
//! language, for applications.
//!
//! Load the plugin with `GST_PLUGIN_PATH` pointing at the directory holding
//! `libgstdubbing.so`, or install it with meson (see the README).

use gst::glib;

pub mod avoffset;
pub mod cc608insert;
pub mod dubchunker;
pub mod redact;
pub mod runtime;
pub mod stsbridge;
pub mod timeline;
pub mod tsoutput;

/// Caps of the audio the elements handle: interleaved S16LE, 8–192 kHz, 1–8 channels.
pub fn s16le_caps() -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate_range(8000..=192_000)
        .channels_range(1..=8)
        .build()
}

/// The always `sink` and `src` pads of the S16LE filters (`dubchunker`, `stsbridge`).
pub(crate) fn s16le_pad_templates() -> Vec<gst::PadTemplate> {
    let caps = s16le_caps();
    [
        ("sink", gst::PadDirection::Sink),
        ("src", gst::PadDirection::Src),
    ]
    .into_iter()
    .map(|(name, dir)| {
        gst::PadTemplate::new(name, dir, gst::PadPresence::Always, &caps).expect(name)
    })
    .collect()
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    dubchunker::register(plugin)?;
    stsbridge::register(plugin)?;
    avoffset::register(plugin)?;
    cc608insert::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    dubbing,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
