//! The dubbing pipeline as a `gst-launch-1.0` description: the same element chain for files
//! (the demo, the end-to-end tests) and live streams (the worker).
//!
//! Nothing that may carry a secret goes into a description (GStreamer logs descriptions while
//! parsing, from `GST_DEBUG` level 4): the STS `url` (`https://user:password@…`), the `api-key`,
//! the source and RTMP locations (credentials, stream keys) are set on the elements after
//! parsing ([`Chain::configure`], [`Chain::build_file`], [`LiveUrls::configure`]). The
//! elements are named `sts0`, `sts1`, … (one per language), `src`, `out0`, `out1`, ….

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

/// Which muxer writes a file, from its extension.
pub fn muxer_for(path: &str) -> Option<&'static str> {
    let ext = path.rsplit('.').next()?.to_ascii_lowercase();
    match ext.as_str() {
        "mp4" | "m4v" | "mov" => Some("mp4mux"),
        "mkv" => Some("matroskamux"),
        "flv" => Some("flvmux streamable=true start-time-selection=first"),
        "ts" => Some("mpegtsmux"),
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

impl Boundary {
    /// The `dubchunker` properties of this boundary.
    fn properties(self) -> String {
        match self {
            Boundary::Fixed => String::new(),
            Boundary::Silence { min_ns, max_ns } => {
                format!(" boundary=silence min-duration={min_ns} max-duration={max_ns}")
            }
        }
    }
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            url: String::new(),
            stream_id: String::new(),
            source_language: "en".into(),
            target_languages: vec!["es".into()],
            chunk_duration_ns: 1_000_000_000,
            timeout_ns: 8_000_000_000,
            max_retries: 2,
            protocol: "http".into(),
            offset_ns: 6_000_000_000,
            audio_bitrate: 128_000,
            boundary: Boundary::Fixed,
            subtitles: false,
            original_mix_db: None,
        }
    }
}

/// Quotes a property value for a launch description.
fn q(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

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
/// What a fragment completed with silence after a stall keeps of its STS budget.
const STALL_MARGIN_NS: u64 = 500_000_000;

impl Chain {
    /// `stsbridge`'s `latency`: what is left of the offset once a fragment is complete and the
    /// source, encoder and muxer have had their share ([`DOWNSTREAM_BUDGET_NS`], shrinking
    /// to [`DOWNSTREAM_FLOOR_NS`] for short offsets), so that a fragment's fallback (at its
    /// deadline) still reaches the muxer before the muxer needs it. At least
    /// [`MIN_STS_LATENCY_NS`].
    pub fn sts_latency_ns(&self) -> u64 {
        self.offset_ns
            .saturating_sub(self.longest_fragment_ns())
            .saturating_sub(DOWNSTREAM_BUDGET_NS)
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
            .saturating_sub(self.sts_latency_ns());
        (downstream.saturating_sub(JITTERBUFFER_NS) / 2).min(MUX_WAIT_NS)
    }

    /// The shortest offset this chain delivers: the longest fragment, the least STS budget, the
    /// source's jitter buffer and the encoder and muxer. A shorter offset would be exceeded
    /// silently (the sinks add the missing latency): [`Chain::with_deliverable_offset`] raises
    /// it to this, and the worker says so.
    pub fn min_offset_ns(&self) -> u64 {
        self.longest_fragment_ns() + MIN_STS_LATENCY_NS + DOWNSTREAM_FLOOR_NS
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

    /// `raw audio ! …` branches from the element named `audio_in` to the muxer `mux`, and the
    /// video from `video_in` through `av`.
    /// With `per_language_mux`, language `i` goes to the muxer `mux{i}` and the video, demuxed
    /// once, to every muxer through a `tee` (no re-encoding).
    /// `mux_wait_ns`: what the muxers wait ([`Chain::mux_wait_ns`], live), out of the shift.
    fn branches(
        &self,
        audio_in: &str,
        video_in: &str,
        per_language_mux: bool,
        mux_wait_ns: u64,
    ) -> String {
        let langs: Vec<&String> = if self.target_languages.is_empty() {
            Vec::new()
        } else {
            self.target_languages.iter().collect()
        };
        let mut d = String::new();
        d.push_str(&format!(
            "{audio_in} ! audioconvert ! audioresample ! audio/x-raw,format=S16LE,rate=48000,channels=2 ! tee name=atee "
        ));
        for (i, lang) in langs.iter().enumerate() {
            let av = if i == 0 {
                "av".to_string()
            } else {
                format!("av{i}")
            };
            let stream_id = if self.stream_id.is_empty() {
                String::new()
            } else if langs.len() > 1 {
                format!(" stream-id={}", q(&format!("{}-{lang}", self.stream_id)))
            } else {
                format!(" stream-id={}", q(&self.stream_id))
            };
            let mux = if per_language_mux {
                format!("mux{i}")
            } else {
                "mux".to_string()
            };
            d.push_str(&format!(
                "atee. ! queue max-size-time=3000000000 max-size-buffers=0 max-size-bytes=0 \
                 ! dubchunker name=chunk{i} chunk-duration={}{} \
                 ! stsbridge name=sts{i} source-language={} target-language={}{stream_id}{} \
                   timeout={} max-retries={} latency={} \
                 ! avoffset name={av} offset={} \
                 {av}.audio_src ! audioconvert ! voaacenc bitrate={} ! aacparse ! queue ! {mux}. ",
                self.chunk_duration_ns,
                self.boundary.properties(),
                q(&self.source_language),
                q(lang),
                self.original_mix_db
                    .map_or(String::new(), |db| format!(" original-mix={db}")),
                self.timeout_ns,
                self.max_retries,
                self.sts_latency_ns(),
                self.offset_ns.saturating_sub(mux_wait_ns),
                self.audio_bitrate,
            ));
        }
        let unbounded = "queue max-size-time=0 max-size-buffers=0 max-size-bytes=0";
        if per_language_mux {
            d.push_str(&format!(
                "{video_in} ! av.video_sink av.video_src ! tee name=vtee "
            ));
            for i in 0..langs.len() {
                d.push_str(&format!("vtee. ! {unbounded} ! mux{i}. "));
            }
        } else {
            d.push_str(&format!(
                "{video_in} ! av.video_sink av.video_src ! {unbounded} ! mux. "
            ));
        }
        d
    }

    /// Sets what stays out of descriptions on the parsed pipeline: each `stsbridge`'s `url`
    /// and, when given, `api-key`.
    pub fn configure(&self, bin: &gst::Bin, api_key: Option<&str>) -> Result<(), String> {
        for i in 0..self.target_languages.len() {
            let sts = bin
                .by_name(&format!("sts{i}"))
                .ok_or_else(|| format!("no stsbridge sts{i} in the pipeline"))?;
            sts.set_property_from_str("protocol", &self.protocol);
            sts.set_property("url", &self.url);
            if let Some(key) = api_key {
                sts.set_property("api-key", key);
            }
        }
        Ok(())
    }

    /// [`Chain::file_description`], parsed and [configured](Chain::configure).
    pub fn build_file(
        &self,
        input: &str,
        output: &str,
        api_key: Option<&str>,
    ) -> Result<gst::Pipeline, String> {
        let desc = self.file_description(input, output)?;
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| format!("cannot build the pipeline: {e}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| "the description is not a pipeline".to_string())?;
        self.configure(pipeline.upcast_ref(), api_key)?;
        Ok(pipeline)
    }

    /// A file in (H.264 + AAC in MP4, Matroska, FLV or MPEG-TS), a file out, the video copied.
    pub fn file_description(&self, input: &str, output: &str) -> Result<String, String> {
        let demux = demuxer_for(input).ok_or_else(|| format!("no demuxer for {input}"))?;
        let mux = muxer_for(output).ok_or_else(|| format!("no muxer for {output}"))?;
        let mut d = format!("filesrc location={} ! {demux} name=demux ", q(input));
        d.push_str(&self.branches(
            "demux.audio_0 ! queue max-size-time=0 max-size-buffers=0 max-size-bytes=0 ! decodebin",
            "demux.video_0 ! queue max-size-time=0 max-size-buffers=0 max-size-bytes=0 ! h264parse",
            false,
            0,
        ));
        if self.subtitles {
            let text_mux = output.to_ascii_lowercase().ends_with(".mkv");
            for i in 0..self.target_languages.len() {
                let av = if i == 0 {
                    "av".into()
                } else {
                    format!("av{i}")
                };
                let to = if text_mux {
                    "mux.".to_string()
                } else {
                    format!("fakesink name=subs{i} sync=false async=false")
                };
                d.push_str(&format!(
                    "sts{i}.text_src ! queue ! {av}.text_sink {av}.text_src ! queue ! {to} "
                ));
            }
        }
        d.push_str(&format!("{mux} name=mux ! filesink location={}", q(output)));
        Ok(d)
    }
}

/// For benchmarks: `desc` (a [`Chain`] description, one language) with `identity` in place of
/// `dubchunker ! stsbridge ! avoffset`: the same demux, decode, encode and mux, nothing dubbed.
pub fn without_dubbing(desc: &str) -> Result<String, String> {
    let start = desc
        .find("! dubchunker ")
        .ok_or("no dubchunker in the chain")?;
    let end_marker = "av.audio_src ";
    let end = desc
        .find(end_marker)
        .ok_or("no av.audio_src in the chain")?
        + end_marker.len();
    let mut d = format!(
        "{}! identity name=baseline {}",
        &desc[..start],
        &desc[end..]
    );
    d = d.replacen(" ! av.video_sink av.video_src ! ", " ! ", 1);
    for gone in ["dubchunker", "stsbridge", "avoffset", "av."] {
        if d.contains(gone) {
            return Err(format!("baseline still has {gone}: {d}"));
        }
    }
    Ok(d)
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
                    .map(|o| crate::log::redact_url(o))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl LiveUrls {
    /// Checks the URLs: rtsp:// or rtmp:// in, rtmp:// out.
    pub fn new(input: &str, outputs: Vec<String>) -> Result<LiveUrls, String> {
        let input = LiveInput::parse(input)?;
        if outputs.is_empty() {
            return Err("no output URL".into());
        }
        for o in &outputs {
            if !(o.starts_with("rtmp://") || o.starts_with("rtmps://")) {
                return Err(format!(
                    "output {:?} is not an rtmp:// URL",
                    crate::log::redact_url(o)
                ));
            }
        }
        Ok(LiveUrls { input, outputs })
    }
}

impl Chain {
    /// The input part of a live stream, the source `src` to the decoded audio (`adec`) and the
    /// parsed video (returned: `vts` over RTSP, `vparse` over RTMP). The depayloaders/demuxer
    /// are named `vdepay`/`adepay` (RTSP) or `demux` (RTMP), the video parser `vparse`.
    fn source_part(input: &LiveInput) -> (&'static str, &'static str) {
        match input {
            // buffer-mode=synced: the default mode shifts video ~40 ms against audio. RTP
            // carries no DTS: h264timestamper gives B-frame streams theirs (flvmux would
            // collapse the reordering into groups of frames with one timestamp).
            // wait-for-keyframe: a reconnected source starts at a keyframe.
            LiveInput::Rtsp(_) => (
                "rtspsrc name=src buffer-mode=synced latency=200 \
                 src. ! rtpmp4gdepay name=adepay ! aacparse ! avdec_aac name=adec \
                 src. ! rtph264depay name=vdepay wait-for-keyframe=true ! h264parse name=vparse \
                 ! h264timestamper name=vts ",
                "vts",
            ),
            // rtmp2src, not rtmpsrc: it ends the stream when the publisher leaves (the
            // server's StreamEOF), and hands over every message as it comes (rtmpsrc reads
            // 4 KiB blocks: the end of a stream waits for bytes that never come).
            LiveInput::Rtmp(_) => (
                "rtmp2src name=src ! flvdemux name=demux \
                 demux.audio ! queue ! aacparse ! avdec_aac name=adec \
                 demux.video ! queue ! h264parse name=vparse ",
                "vparse",
            ),
        }
    }

    /// The muxers `mux0`, `mux1`, … each into `sink` (`appsink` or `rtmpsink`) `out0`, `out1`, ….
    fn muxers(&self, sink: &str) -> String {
        (0..self.target_languages.len())
            .map(|i| {
                // start-time-selection=first: a live muxer would otherwise start at running
                // time 0 and mux whatever stream arrived first, seconds before the other (the
                // output runs `offset` ahead of the clock), giving backwards timestamps at
                // the start.
                // latency: see [`Chain::mux_wait_ns`].
                format!(
                    "flvmux name=mux{i} streamable=true start-time-selection=first latency={} ! {sink} name=out{i} ",
                    self.mux_wait_ns()
                )
            })
            .collect()
    }

    /// A live stream, without its input and without its URLs (see [`LiveUrls`]): the chain
    /// from `ain` (decoded audio) and `vin` (parsed video), where the worker links its
    /// source bin ([`Chain::build_source`]), to one `appsink` per language (`out0`, `out1`,
    /// …), which paces the stream and hands it to its publication ([`crate::output`]).
    pub fn live_description(&self) -> String {
        let mut d = self.branches(
            "identity name=ain silent=true",
            "identity name=vin silent=true",
            true,
            self.mux_wait_ns(),
        );
        d.push_str(&self.muxers("appsink sync=true enable-last-sample=false"));
        d
    }

    /// The whole live pipeline as one `gst-launch-1.0` description (the README's), input to
    /// `rtmpsink`s, without URLs: what the worker runs, minus its reconnections.
    pub fn launch_description(&self, input: &LiveInput) -> String {
        let (source, video) = Self::source_part(input);
        let mut d = source.to_string();
        d.push_str(&self.branches("adec.", &format!("{video}."), true, self.mux_wait_ns()));
        d.push_str(&self.muxers("rtmpsink"));
        d
    }

    /// The input as a bin named `source<generation>` with ghost pads `audio` (decoded) and
    /// `video` (parsed H.264), its `location` set.
    pub fn build_source(input: &LiveInput, generation: u32) -> Result<gst::Bin, String> {
        let (desc, video) = Self::source_part(input);
        let bin = gst::parse::bin_from_description(desc, false)
            .map_err(|e| format!("cannot build the source: {e}"))?;
        bin.set_property("name", format!("source{generation}"));
        for (ghost, element) in [("audio", "adec"), ("video", video)] {
            let target = bin
                .by_name(element)
                .and_then(|e| e.static_pad("src"))
                .ok_or_else(|| format!("no {element} in the source"))?;
            let pad = gst::GhostPad::builder_with_target(&target)
                .map_err(|e| e.to_string())?
                .name(ghost)
                .build();
            bin.add_pad(&pad).map_err(|e| e.to_string())?;
        }
        bin.by_name("src")
            .ok_or("no src in the source")?
            .set_property("location", input.url());
        Ok(bin)
    }

    /// [`Chain::live_description`], parsed, with its secrets set and its first source bin
    /// linked.
    pub fn build_live(
        &self,
        urls: &LiveUrls,
        api_key: Option<&str>,
    ) -> Result<gst::Pipeline, String> {
        if urls.outputs.len() != self.target_languages.len() {
            return Err(format!(
                "{} outputs for {} languages",
                urls.outputs.len(),
                self.target_languages.len()
            ));
        }
        let desc = self.live_description();
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| format!("cannot build the pipeline: {e}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| "the description is not a pipeline".to_string())?;
        self.configure(pipeline.upcast_ref(), api_key)?;
        let source = Self::build_source(&urls.input, 0)?;
        link_source(&pipeline, &source)?;
        Ok(pipeline)
    }
}

/// Adds `source` to `pipeline` and links its `audio`/`video` pads to `ain`/`vin`.
pub fn link_source(pipeline: &gst::Pipeline, source: &gst::Bin) -> Result<(), String> {
    pipeline.add(source).map_err(|e| e.to_string())?;
    for (ghost, joint) in [("audio", "ain"), ("video", "vin")] {
        let sink = pipeline
            .by_name(joint)
            .and_then(|e| e.static_pad("sink"))
            .ok_or_else(|| format!("no {joint} in the pipeline"))?;
        source
            .static_pad(ghost)
            .ok_or_else(|| format!("no {ghost} pad on the source"))?
            .link(&sink)
            .map_err(|e| format!("cannot link the source's {ghost}: {e:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_ids_are_checked() {
        assert!(validate_stream_id("test").is_ok());
        assert!(validate_stream_id("Match_42-b").is_ok());
        assert!(validate_stream_id("").is_err());
        assert!(validate_stream_id("a/b").unwrap_err().contains("'/'"));
        assert!(validate_stream_id("a b").is_err());
        assert!(validate_stream_id(&"x".repeat(65)).is_err());
    }

    use super::*;

    #[test]
    fn live_description_for_rtsp_and_rtmp() {
        let c = Chain {
            url: "http://user:pw@sts/p".into(),
            target_languages: vec!["es".into(), "de".into()],
            ..Default::default()
        };
        let rtsp = LiveInput::parse("rtsp://u:p@h:8554/live/t/in").unwrap();
        let d = c.launch_description(&rtsp);
        for part in [
            "rtspsrc name=src",
            "buffer-mode=synced",
            "rtph264depay name=vdepay",
            "h264parse name=vparse ! h264timestamper name=vts",
            "rtpmp4gdepay name=adepay",
            "dubchunker",
            "stsbridge name=sts0",
            "stsbridge name=sts1",
            "avoffset name=av ",
            "tee name=vtee",
            "flvmux name=mux0 streamable=true",
            "flvmux name=mux1 streamable=true",
            "rtmpsink name=out0",
            "rtmpsink name=out1",
        ] {
            assert!(d.contains(part), "{part} missing from {d}");
        }
        // What the worker parses: no source (a bin of its own), appsinks.
        let w = c.live_description();
        assert!(
            !w.contains("rtspsrc")
                && w.contains("identity name=ain")
                && w.contains("appsink sync=true enable-last-sample=false name=out1"),
            "{w}"
        );
        // No URL in the description: it is logged while parsing.
        assert!(!d.contains("://") && !d.contains("location"), "{d}");
        let rtmp = LiveInput::parse("rtmp://h/live/t/in").unwrap();
        let d = c.launch_description(&rtmp);
        assert!(d.contains("rtmp2src name=src") && d.contains("flvdemux name=demux"));
        assert!(LiveInput::parse("http://x").is_err());
        assert!(LiveUrls::new("rtsp://h/x", vec!["file:///tmp/x".into()]).is_err());
        assert_eq!(
            format!("{rtsp:?}"),
            r#"Rtsp("rtsp://***@h:8554/live/t/in")"#
        );
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn urls_and_keys_are_set_on_the_elements() {
        crate::init().unwrap();
        let c = Chain {
            url: "http://user:pw@127.0.0.1:9/p".into(),
            target_languages: vec!["es".into(), "de".into()],
            ..Default::default()
        };
        let urls = LiveUrls::new(
            "rtsp://u:p@127.0.0.1:9/live/t/in",
            vec![
                "rtmp://127.0.0.1:9/live/k1".into(),
                "rtmp://127.0.0.1:9/live/k2".into(),
            ],
        )
        .unwrap();
        let p = c.build_live(&urls, Some("sk-1")).unwrap();
        let get = |name: &str, prop: &str| {
            p.by_name(name)
                .unwrap_or_else(|| panic!("{name}"))
                .property::<Option<String>>(prop)
        };
        assert_eq!(
            get("src", "location").as_deref(),
            Some("rtsp://u:p@127.0.0.1:9/live/t/in")
        );
        // The outputs are appsinks; their publications get the URLs (crate::output).
        assert_eq!(
            p.by_name("out1").unwrap().factory().unwrap().name(),
            "appsink"
        );
        // stsbridge never reads credentials back.
        assert_eq!(get("sts1", "url").as_deref(), Some("http://127.0.0.1:9/p"));
        let too_few = LiveUrls::new("rtsp://h/x", vec!["rtmp://h/a/b".into()]).unwrap();
        assert!(c.build_live(&too_few, None).is_err());
    }

    #[test]
    fn picks_containers_by_extension() {
        assert_eq!(demuxer_for("a/b.MP4"), Some("qtdemux"));
        assert_eq!(demuxer_for("x.mkv"), Some("matroskademux"));
        assert_eq!(demuxer_for("x"), None);
        assert_eq!(
            muxer_for("out.flv"),
            Some("flvmux streamable=true start-time-selection=first")
        );
        assert_eq!(muxer_for("out.wav"), None);
    }

    #[test]
    fn file_description_has_the_whole_chain() {
        let c = Chain {
            url: "http://127.0.0.1:8000/api/v1/sts/process".into(),
            target_languages: vec!["es".into(), "de".into()],
            ..Default::default()
        };
        let d = c.file_description("in.mp4", "out dir/o.mkv").unwrap();
        for part in [
            "qtdemux name=demux",
            "dubchunker name=chunk0",
            "stsbridge name=sts0",
            "target-language=\"es\"",
            "stsbridge name=sts1",
            "target-language=\"de\"",
            "avoffset name=av offset=6000000000",
            "avoffset name=av1",
            "av.video_sink",
            "voaacenc",
            "matroskamux name=mux",
            "location=\"out dir/o.mkv\"",
        ] {
            assert!(d.contains(part), "{part} missing from {d}");
        }
        assert!(c.file_description("in.xyz", "o.mp4").is_err());
    }

    #[test]
    fn live_muxers_wait_for_late_audio_out_of_the_offset() {
        let c = Chain {
            target_languages: vec!["es".into(), "de".into()],
            ..Chain::default()
        };
        // 6 s − 1 s fragments − 4.3 s STS = 700 ms; (700 − 200 jitter buffer) / 2 → 200 max.
        assert_eq!(c.mux_wait_ns(), 200_000_000);
        let d = c.live_description();
        assert!(d.contains("avoffset name=av offset=5800000000"), "{d}");
        assert!(d.contains("avoffset name=av1 offset=5800000000"), "{d}");
        for i in 0..2 {
            assert!(
                d.contains(&format!(
                    "flvmux name=mux{i} streamable=true start-time-selection=first latency=200000000"
                )),
                "{d}"
            );
        }
        // A file is not live: its muxer waits for nothing and the shift is the offset.
        let f = c.file_description("in.mp4", "o.flv").unwrap();
        assert!(
            f.contains("avoffset name=av offset=6000000000") && !f.contains("latency=200000000"),
            "{f}"
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
        let c = Chain::default();
        // 6 s offset − 1 s fragments − 0.7 s for source, encoder and muxer.
        assert_eq!(c.sts_latency_ns(), 4_300_000_000);
        let d = c.file_description("in.mp4", "o.mp4").unwrap();
        assert!(d.contains("latency=4300000000"), "{d}");
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

    #[test]
    fn baseline_has_no_dubbing_element() {
        let c = Chain::default();
        let live = c.launch_description(&LiveInput::parse("rtsp://h/x").unwrap());
        let d = without_dubbing(&live).unwrap();
        assert!(
            d.contains("identity name=baseline") && d.contains("voaacenc"),
            "{d}"
        );
        assert!(d.contains("vts. ! tee name=vtee"), "{d}");
        let multi = Chain {
            target_languages: vec!["es".into(), "de".into()],
            ..Default::default()
        };
        assert!(without_dubbing(&multi.file_description("a.mp4", "b.mp4").unwrap()).is_err());
    }

    #[test]
    fn values_are_quoted() {
        assert_eq!(q(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}
