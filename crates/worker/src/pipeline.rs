//! The dubbing chain's settings and what they imply ([`Chain`]: the STS budget, the muxers'
//! wait, the latency floor, the stall limit), the live input and output URLs ([`LiveUrls`]),
//! and the containers of files. The pipelines themselves are built from typed elements in
//! [`crate::builder`], their secrets set on the objects, never in a launch line.

use gst::prelude::*;

/// Which demuxer reads a file, from its extension.
pub fn demuxer_for(path: &str) -> Option<&'static str> {
    let ext = path.rsplit('.').next()?.to_ascii_lowercase();
    match ext.as_str() {
        "mp4" | "m4v" | "mov" => Some("qtdemux"),
        "mkv" | "webm" => Some("matroskademux"),
        "flv" => Some("flvdemux"),
        "ts" | "m2ts" => Some("tsdemux"),
        _ => None,
    }
}

/// Settings of the dubbing chain shared by files and live streams. (`Debug` shows the STS URL
/// without credentials.)
#[derive(Clone)]
pub struct Chain {
    /// STS endpoint; empty = passthrough.
    pub url: String,
    pub stream_id: String,
    pub source_language: String,
    /// One dubbed audio track per language (the first is the one video is kept in step with).
    pub target_languages: Vec<String>,
    pub chunk_duration_ns: u64,
    pub timeout_ns: u64,
    pub max_retries: u32,
    /// `stsbridge protocol`: `http` or `socketio`.
    pub protocol: String,
    pub offset_ns: u64,
    /// AAC bitrate of the dubbed audio.
    pub audio_bitrate: u32,
    /// How `dubchunker` cuts fragments.
    pub boundary: Boundary,
    /// Files: each language's translation as a subtitle stream (linked from `stsbridge`'s
    /// `text_src` through `avoffset`: into the muxer when it takes text, else to a `fakesink`
    /// named `subs<i>` whose pad the application can probe).
    pub subtitles: bool,
    /// `stsbridge original-mix`: the original under the dub, dB (`None`: off), as voice-over
    /// keeps the crowd, the music and the effects.
    pub original_mix_db: Option<f64>,
    /// Each language's translation as CEA-608 captions inside the video (`cc608insert`, fed
    /// from the language's `avoffset` text pads): in each publication of its own language
    /// (CC1); with one muxer for every language (MPEG-TS, files), the first language on CC1
    /// and the second on CC3.
    pub captions: bool,
    /// How far ahead of each frame `cc608insert` waits for the text (its `latency`). Live, it
    /// is added to the pipeline's latency and taken out of `avoffset`'s shift
    /// ([`Chain::live_shift_ns`]), so the published delay is still the offset.
    pub caption_latency_ns: u64,
    /// MPEG-TS outputs: the original audio as a track of its own (tagged with
    /// `source_language`), after the dubbed ones.
    pub original_track: bool,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("url", &crate::log::redact_url(&self.url))
            .field("stream_id", &self.stream_id)
            .field("source_language", &self.source_language)
            .field("target_languages", &self.target_languages)
            .field("chunk_duration_ns", &self.chunk_duration_ns)
            .field("timeout_ns", &self.timeout_ns)
            .field("max_retries", &self.max_retries)
            .field("offset_ns", &self.offset_ns)
            .field("boundary", &self.boundary)
            .field("subtitles", &self.subtitles)
            .field("original_mix_db", &self.original_mix_db)
            .field("captions", &self.captions)
            .field("caption_latency_ns", &self.caption_latency_ns)
            .field("original_track", &self.original_track)
            .finish_non_exhaustive()
    }
}

/// Where fragments are cut (`dubchunker boundary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// Every `chunk_duration_ns`.
    Fixed,
    /// In the quietest 20 ms between the two durations (ns).
    Silence { min_ns: u64, max_ns: u64 },
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            url: String::new(),
            stream_id: String::new(),
            source_language: "en".into(),
            target_languages: vec!["es".into()],
            chunk_duration_ns: gstdubbing::dubchunker::DEFAULT_CHUNK_DURATION,
            timeout_ns: gstdubbing::stsbridge::DEFAULT_TIMEOUT,
            max_retries: gstdubbing::stsbridge::DEFAULT_MAX_RETRIES,
            protocol: "http".into(),
            offset_ns: gstdubbing::avoffset::DEFAULT_OFFSET,
            audio_bitrate: 128_000,
            boundary: Boundary::Fixed,
            subtitles: false,
            original_mix_db: None,
            captions: false,
            caption_latency_ns: CAPTION_LATENCY_NS,
            original_track: false,
        }
    }
}

/// `cc608insert`'s `latency` in the worker: about what a two-row caption takes to load at
/// 29.97 pairs a second, so a cue known this long before its start appears on time.
pub const CAPTION_LATENCY_NS: u64 = 1_500_000_000;

/// What the network source and the encoder and muxer take out of the offset when it has room:
/// rtspsrc's jitter buffer (200 ms) and AAC encoding plus muxing with room for a loaded machine.
pub const DOWNSTREAM_BUDGET_NS: u64 = 700_000_000;
/// The least they are left near the floor: the jitter buffer and 100 ms to encode and mux.
pub const DOWNSTREAM_FLOOR_NS: u64 = 300_000_000;
/// The least STS budget (`stsbridge latency`) a chain is built with: an STS answering within
/// ~100 ms (stsbridge keeps 100 ms of it for downstream) still dubs.
pub const MIN_STS_LATENCY_NS: u64 = 200_000_000;
/// The most a live muxer waits for a late stream ([`Chain::mux_wait_ns`]).
const MUX_WAIT_NS: u64 = 200_000_000;
/// rtspsrc's jitter buffer, the first share of the downstream budget.
const JITTERBUFFER_NS: u64 = 200_000_000;
/// What an RTMP source (not live itself) declares as its latency once the worker makes it live
/// ([`crate::source::Joint::make_live`]): the same share as RTSP's jitter buffer.
pub const RTMP_JITTER: gst::ClockTime = gst::ClockTime::from_nseconds(JITTERBUFFER_NS);
/// What a fragment completed with silence after a stall keeps of its STS budget.
const STALL_MARGIN_NS: u64 = 500_000_000;

impl Chain {
    /// `stsbridge`'s `latency`: what is left of the offset once a fragment is complete and the
    /// source, encoder and muxer have had their share ([`DOWNSTREAM_BUDGET_NS`], shrinking
    /// to [`DOWNSTREAM_FLOOR_NS`] for short offsets), so that a fragment's fallback (at its
    /// deadline) still reaches the muxer before the muxer needs it. At least
    /// [`MIN_STS_LATENCY_NS`].
    ///
    /// With captions, the caption inserter's latency comes out of it too: the inserter waits
    /// for the text of each frame's next `caption_latency_ns`, and that text comes with the
    /// dub, as late as the STS budget lets it ([`Chain::video_wait_ns`]).
    pub fn sts_latency_ns(&self) -> u64 {
        self.offset_ns
            .saturating_sub(self.longest_fragment_ns())
            .saturating_sub(DOWNSTREAM_BUDGET_NS)
            .saturating_sub(self.video_wait_ns())
            .max(MIN_STS_LATENCY_NS)
    }

    /// How far behind the clock a stalled source's audio may fall before the worker fills it
    /// with silence ([`crate::source`]): the STS budget less 500 ms, at least 500 ms. A
    /// fragment the stall cut short is completed by then and still reaches `stsbridge` 500 ms
    /// before its deadline (about its start + the jitter buffer + its length + the STS
    /// budget), so it is dubbed or falls back in time for the muxer; a stall shorter than
    /// this loses nothing (the offset absorbs it).
    pub fn stall_fill_after(&self) -> gst::ClockTime {
        gst::ClockTime::from_nseconds(
            self.sts_latency_ns()
                .saturating_sub(STALL_MARGIN_NS)
                .max(STALL_MARGIN_NS),
        )
    }

    /// How long a live muxer waits for one stream's data before it writes the other's (its
    /// `latency`; GStreamer's default is 0, and the pipeline's own 20 ms then decide): on a
    /// loaded machine the audio encoder's thread can be scheduled late, and `flvmux` would
    /// write the video first and clamp the audio's FLV timestamps onto it (seen as runs of
    /// AAC frames with one timestamp). Half of what the downstream budget leaves after the
    /// jitter buffer, at most 200 ms. It is taken out of `avoffset`'s shift, so the published
    /// delay is still the offset.
    pub fn mux_wait_ns(&self) -> u64 {
        let downstream = self
            .offset_ns
            .saturating_sub(self.longest_fragment_ns())
            .saturating_sub(self.sts_latency_ns())
            .saturating_sub(self.video_wait_ns());
        (downstream.saturating_sub(JITTERBUFFER_NS) / 2).min(MUX_WAIT_NS)
    }

    /// The shortest offset this chain delivers: the longest fragment, the least STS budget, the
    /// source's jitter buffer and the encoder and muxer. A shorter offset would be exceeded
    /// silently (the sinks add the missing latency): [`Chain::with_deliverable_offset`] raises
    /// it to this, and the worker says so.
    /// With captions, also the caption latency ([`Chain::video_wait_ns`]).
    pub fn min_offset_ns(&self) -> u64 {
        self.longest_fragment_ns() + MIN_STS_LATENCY_NS + DOWNSTREAM_FLOOR_NS + self.video_wait_ns()
    }

    /// What the video waits for on its way to a live muxer besides the muxer's own wait: the
    /// caption inserter's latency with captions, else nothing. It comes out of the STS
    /// budget: a frame is captioned once the text of its next `caption_latency_ns` is known
    /// (or its deadline passed), and that text comes with the dub of the fragment after it.
    pub fn video_wait_ns(&self) -> u64 {
        if self.captions {
            self.caption_latency_ns
        } else {
            0
        }
    }

    /// `avoffset`'s shift in a live pipeline: the offset less what the sinks add back as the
    /// pipeline's latency (the muxers' wait, [`Chain::mux_wait_ns`], and with captions the
    /// caption inserter's, [`Chain::video_wait_ns`]), so that the published delay is the
    /// offset.
    pub fn live_shift_ns(&self) -> u64 {
        self.offset_ns
            .saturating_sub(self.mux_wait_ns() + self.video_wait_ns())
    }

    /// The queue between each AAC encoder and a live muxer with captions: `stsbridge`
    /// queues a fragment's text before it pushes the fragment's audio, so its text runs ahead
    /// of the video only as far as this queue lets its audio run ahead of the muxer; the
    /// caption inserter wants it `caption_latency_ns` ahead. The caption latency, the longest
    /// fragment and a second of margin (4 s by default); without captions, `None` (a default
    /// queue).
    pub fn live_audio_queue_ns(&self) -> Option<u64> {
        self.captions
            .then(|| self.caption_latency_ns + self.longest_fragment_ns() + 1_000_000_000)
    }

    /// This chain with its offset raised to [`Chain::min_offset_ns`] if below.
    pub fn with_deliverable_offset(mut self) -> Chain {
        self.offset_ns = self.offset_ns.max(self.min_offset_ns());
        self
    }

    /// The longest fragment `dubchunker` cuts.
    pub fn longest_fragment_ns(&self) -> u64 {
        match self.boundary {
            Boundary::Fixed => self.chunk_duration_ns,
            Boundary::Silence { max_ns, .. } => max_ns,
        }
    }
}

/// Checks a stream id: 1–64 letters, digits, `_` or `-` (it becomes part of URLs and labels).
pub fn validate_stream_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("stream id {id:?} must be 1 to 64 characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "stream id {id:?} contains {c:?}: only letters, digits, '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Where a live stream comes from. (`Debug` shows the URL redacted.)
#[derive(Clone, PartialEq, Eq)]
pub enum LiveInput {
    Rtsp(String),
    Rtmp(String),
}

impl LiveInput {
    /// The URL.
    pub fn url(&self) -> &str {
        match self {
            LiveInput::Rtsp(u) | LiveInput::Rtmp(u) => u,
        }
    }

    pub fn parse(url: &str) -> Result<LiveInput, String> {
        match url.split_once("://").map(|(s, _)| s.to_ascii_lowercase()) {
            Some(s) if s == "rtsp" || s == "rtsps" || s == "rtspt" => {
                Ok(LiveInput::Rtsp(url.into()))
            }
            Some(s) if s == "rtmp" || s == "rtmps" => Ok(LiveInput::Rtmp(url.into())),
            _ => Err(format!(
                "input {:?} is not an rtsp:// or rtmp:// URL",
                crate::log::redact(url)
            )),
        }
    }
}

impl std::fmt::Debug for LiveInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, url) = match self {
            LiveInput::Rtsp(u) => ("Rtsp", u),
            LiveInput::Rtmp(u) => ("Rtmp", u),
        };
        f.debug_tuple(kind)
            .field(&crate::log::redact_url(url))
            .finish()
    }
}

/// Where a live stream goes: one RTMP URL per target language, in the order of
/// [`Chain::target_languages`]. Set on the parsed pipeline ([`LiveUrls::configure`]), never
/// written into its description.
#[derive(Clone, PartialEq, Eq)]
pub struct LiveUrls {
    pub input: LiveInput,
    pub outputs: Vec<String>,
}

impl std::fmt::Debug for LiveUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveUrls")
            .field("input", &crate::log::redact_url(self.input.url()))
            .field(
                "outputs",
                &self
                    .outputs
                    .iter()
                    .map(|o| LiveUrls::display_output(o))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl LiveUrls {
    /// Checks the URLs: rtsp:// or rtmp:// in; rtmp:// out (one per language), or one srt://
    /// out (one MPEG-TS for every language).
    pub fn new(input: &str, outputs: Vec<String>) -> Result<LiveUrls, String> {
        let input = LiveInput::parse(input)?;
        if outputs.is_empty() {
            return Err("no output URL".into());
        }
        let srt = outputs.iter().filter(|o| o.starts_with("srt://")).count();
        if srt > 0 {
            if outputs.len() > 1 {
                return Err("one srt:// output carries every language: give only one".into());
            }
            gstdubbing::tsoutput::SrtPublish::from_url(&outputs[0])?;
            return Ok(LiveUrls { input, outputs });
        }
        for o in &outputs {
            if !(o.starts_with("rtmp://") || o.starts_with("rtmps://")) {
                return Err(format!(
                    "output {:?} is not an rtmp:// or srt:// URL",
                    crate::log::redact_url(o)
                ));
            }
        }
        Ok(LiveUrls { input, outputs })
    }

    /// One SRT output (MPEG-TS with every language), not RTMP per language.
    pub fn is_srt(&self) -> bool {
        self.outputs
            .first()
            .is_some_and(|o| o.starts_with("srt://"))
    }

    /// An output as logs may show it (no credentials, key or passphrase).
    pub fn display_output(output: &str) -> String {
        if output.starts_with("srt://") {
            gstdubbing::tsoutput::SrtPublish::from_url(output)
                .map(|p| p.display())
                .unwrap_or_else(|_| "<invalid srt url>".into())
        } else {
            crate::log::redact_url(output)
        }
    }
}

/// Sets `pipeline` to NULL on another thread; gives up waiting after `limit` (rtspsrc's
/// teardown can block on a dead server), leaving it behind.
pub fn stop_pipeline(pipeline: &gst::Pipeline, limit: std::time::Duration) {
    let p = pipeline.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = p.set_state(gst::State::Null);
        let _ = tx.send(());
    });
    if rx.recv_timeout(limit).is_err() {
        tracing::warn!("pipeline shutdown took longer than {limit:?}; leaving it behind");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_checked() {
        assert!(validate_stream_id("test").is_ok());
        assert!(validate_stream_id("Match_42-b").is_ok());
        assert!(validate_stream_id("").is_err());
        assert!(validate_stream_id("a/b").unwrap_err().contains("'/'"));
        assert!(validate_stream_id("a b").is_err());
        assert!(validate_stream_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn inputs_and_outputs_are_checked_and_shown_redacted() {
        let rtsp = LiveInput::parse("rtsp://u:p@h:8554/live/t/in").unwrap();
        assert!(matches!(
            LiveInput::parse("rtmp://h/live/t/in"),
            Ok(LiveInput::Rtmp(_))
        ));
        assert!(LiveInput::parse("http://x").is_err());
        assert!(LiveUrls::new("rtsp://h/x", vec!["file:///tmp/x".into()]).is_err());
        assert_eq!(
            format!("{rtsp:?}"),
            r#"Rtsp("rtsp://***@h:8554/live/t/in")"#
        );
        let c = Chain {
            url: "http://user:pw@sts/p".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn picks_containers_by_extension() {
        assert_eq!(demuxer_for("a/b.MP4"), Some("qtdemux"));
        assert_eq!(demuxer_for("x.mkv"), Some("matroskademux"));
        assert_eq!(demuxer_for("x"), None);
        assert_eq!(crate::builder::file_muxer("out.flv").unwrap().0, "flvmux");
        assert!(crate::builder::file_muxer("out.wav").is_none());
    }

    #[test]
    fn live_muxers_wait_for_late_audio_out_of_the_offset() {
        crate::init().unwrap();
        let c = Chain {
            target_languages: vec!["es".into(), "de".into()],
            ..Chain::default()
        };
        // 6 s − 1 s fragments − 4.3 s STS = 700 ms; (700 − 200 jitter buffer) / 2 → 200 max.
        assert_eq!(c.mux_wait_ns(), 200_000_000);
        let urls = LiveUrls::new(
            "rtsp://h/x",
            vec!["rtmp://h/a/b".into(), "rtmp://h/a/c".into()],
        )
        .unwrap();
        let p = c.build_live(&urls, None).unwrap();
        for (b, out) in p.branches.iter().zip(&p.publications) {
            let av = &b.dubbing.as_ref().unwrap().avoffset;
            assert_eq!(av.property::<u64>("offset"), 5_800_000_000);
            assert_eq!(
                out.mux.property::<gst::ClockTime>("latency"),
                gst::ClockTime::from_mseconds(200)
            );
        }
        // A file is not live: its muxer waits for nothing and the shift is the offset.
        let f = Chain::default()
            .build_file("in.mp4", "o.flv", None)
            .unwrap();
        let av = &f.branches[0].dubbing.as_ref().unwrap().avoffset;
        assert_eq!(av.property::<u64>("offset"), 6_000_000_000);
        assert_eq!(
            f.mux.property::<gst::ClockTime>("latency"),
            gst::ClockTime::ZERO
        );
        // At the floor (1.5 s with 1 s fragments): 300 ms downstream leave 50 ms.
        let floor = Chain {
            offset_ns: 1_500_000_000,
            ..Chain::default()
        };
        assert_eq!(floor.mux_wait_ns(), 50_000_000);
    }

    #[test]
    fn a_stall_is_filled_with_half_a_second_of_the_sts_budget_left() {
        let c = Chain::default();
        assert_eq!(c.sts_latency_ns(), 4_300_000_000);
        assert_eq!(c.stall_fill_after().mseconds(), 3800);
        let short = Chain {
            offset_ns: 2_000_000_000,
            ..Chain::default()
        };
        assert_eq!(short.stall_fill_after().mseconds(), 500);
    }

    #[test]
    fn sts_latency_leaves_room_within_the_offset() {
        crate::init().unwrap();
        let c = Chain::default();
        // 6 s offset − 1 s fragments − 0.7 s for source, encoder and muxer.
        assert_eq!(c.sts_latency_ns(), 4_300_000_000);
        let f = c.build_file("in.mp4", "o.mp4", None).unwrap();
        let bridge = &f.branches[0].dubbing.as_ref().unwrap().bridge;
        assert_eq!(bridge.property::<u64>("latency"), 4_300_000_000);
        let short = Chain {
            offset_ns: 2_000_000_000,
            ..Default::default()
        };
        assert_eq!(short.sts_latency_ns(), 300_000_000);
        // 1 s fragments: 1.5 s is the floor (1 s + 200 ms STS + 300 ms source and encoder).
        assert_eq!(short.min_offset_ns(), 1_500_000_000);
        let floor = Chain {
            offset_ns: 1_000_000_000,
            ..Default::default()
        }
        .with_deliverable_offset();
        assert_eq!(floor.offset_ns, 1_500_000_000);
        assert_eq!(floor.sts_latency_ns(), MIN_STS_LATENCY_NS);
        let silence = Chain {
            boundary: Boundary::Silence {
                min_ns: 500_000_000,
                max_ns: 1_500_000_000,
            },
            ..Default::default()
        };
        assert_eq!(silence.min_offset_ns(), 2_000_000_000);
        assert_eq!(silence.with_deliverable_offset().offset_ns, 6_000_000_000);
    }
}
