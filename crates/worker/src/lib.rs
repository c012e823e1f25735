//! The stream worker, one per live stream: pulls it over RTSP (or RTMP), dubs it through
//! `dubchunker ! stsbridge ! avoffset` (the `gst-plugin-dubbing` elements, registered
//! statically), publishes it over RTMP and serves Prometheus `/metrics`.
//!
//! * [`settings`]: command line and environment ([`settings::Args`]), checked into
//!   [`settings::Settings`].
//! * [`pipeline`]: the chain's settings and what they imply (STS budget, muxer wait, latency
//!   floor), the live URLs.
//! * [`builder`]: the pipelines from typed elements kept in structs ([`builder::SourceBin`],
//!   [`builder::LanguageBranch`], [`builder::Publication`], [`builder::LivePipeline`],
//!   [`builder::FilePipeline`]), each with its `gst-launch-1.0` line ([`graph`]).
//! * [`metrics`]: the Prometheus metrics and the `/metrics`, `/health`, `/status` endpoints.
//! * [`output`]: the RTMP publications, each in a pipeline of its own, reconnected after an
//!   output outage.
//! * [`source`]: the input as a bin rebuilt after a source outage, behind a joint that
//!   keeps one timeline.
//! * [`status`]: what `/health` and `/status` report.
//! * [`supervisor`]: every decision (outage, reconnect, end of the programme, exit), as a
//!   state machine in plain Rust; its transition table is in its docs.
//! * [`run()`]: one worker run: the input and output plumbing around the supervisor;
//!   returns the exit code.
//!
//! The `dubbing-worker` binary is [`settings::Args`] → [`settings::resolve`] → [`run()`].

pub mod builder;
pub mod graph;
pub mod log;
pub mod metrics;
pub mod output;
pub mod pipeline;
mod run;
pub mod settings;
pub mod sockets;
pub mod source;
pub mod status;
pub mod subtitles;
pub mod supervisor;

pub use run::run;

/// Initializes GStreamer and registers the dubbing plugin's elements, once per process (later
/// calls return the first call's result).
pub fn init() -> Result<(), String> {
    static INIT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().map_err(|e| format!("cannot initialize GStreamer: {e}"))?;
        gstdubbing::plugin_register_static()
            .map_err(|e| format!("cannot register the dubbing plugin: {e}"))
    })
    .clone()
}
