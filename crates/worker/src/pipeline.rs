//! The dubbing pipeline as a `gst-launch-1.0` description: the same element chain for files
//! (the demo, the end-to-end tests) and live streams (the worker).
//!
//! Secrets never go into a description (GStreamer logs descriptions while parsing): set
//! `api-key` on the `stsbridge` elements (named `sts0`, `sts1`, …) after parsing.

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

/// Settings of the dubbing chain shared by files and live streams.
#[derive(Debug, Clone)]
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

/// What the network source and the encoder and muxer take out of the offset: rtspsrc's
/// jitter buffer (200 ms) and AAC encoding plus muxing with room for a loaded machine.
pub const DOWNSTREAM_BUDGET_NS: u64 = 700_000_000;

impl Chain {
    /// `stsbridge`'s `latency`: what is left of the offset once a fragment is complete and the
    /// source, encoder and muxer have had their share, so that a fragment's fallback (at its
    /// deadline) still reaches the muxer before the muxer needs it. At least 1 s.
    pub fn sts_latency_ns(&self) -> u64 {
        self.offset_ns
            .saturating_sub(self.longest_fragment_ns())
            .saturating_sub(DOWNSTREAM_BUDGET_NS)
            .max(1_000_000_000)
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
    fn branches(&self, audio_in: &str, video_in: &str) -> String {
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
            d.push_str(&format!(
                "atee. ! queue max-size-time=3000000000 max-size-buffers=0 max-size-bytes=0 \
                 ! dubchunker name=chunk{i} chunk-duration={}{} \
                 ! stsbridge name=sts{i} url={} source-language={} target-language={}{stream_id}{} \
                   timeout={} max-retries={} latency={} \
                 ! avoffset name={av} offset={} \
                 {av}.audio_src ! audioconvert ! voaacenc bitrate={} ! aacparse ! queue ! mux. ",
                self.chunk_duration_ns,
                self.boundary.properties(),
                q(&self.url),
                q(&self.source_language),
                q(lang),
                self.original_mix_db
                    .map_or(String::new(), |db| format!(" original-mix={db}")),
                self.timeout_ns,
                self.max_retries,
                self.sts_latency_ns(),
                self.offset_ns,
                self.audio_bitrate,
            ));
        }
        d.push_str(&format!(
            "{video_in} ! av.video_sink av.video_src ! queue max-size-time=0 max-size-buffers=0 max-size-bytes=0 ! mux. "
        ));
        d
    }

    /// A file in (H.264 + AAC in MP4, Matroska, FLV or MPEG-TS), a file out, the video copied.
    pub fn file_description(&self, input: &str, output: &str) -> Result<String, String> {
        let demux = demuxer_for(input).ok_or_else(|| format!("no demuxer for {input}"))?;
        let mux = muxer_for(output).ok_or_else(|| format!("no muxer for {output}"))?;
        let mut d = format!("filesrc location={} ! {demux} name=demux ", q(input));
        d.push_str(&self.branches(
            "demux.audio_0 ! queue max-size-time=0 max-size-buffers=0 max-size-bytes=0 ! decodebin",
            "demux.video_0 ! queue max-size-time=0 max-size-buffers=0 max-size-bytes=0 ! h264parse",
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

/// Where a live stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveInput {
    Rtsp(String),
    Rtmp(String),
}

impl LiveInput {
    pub fn parse(url: &str) -> Result<LiveInput, String> {
        match url.split_once("://").map(|(s, _)| s.to_ascii_lowercase()) {
            Some(s) if s == "rtsp" || s == "rtsps" || s == "rtspt" => {
                Ok(LiveInput::Rtsp(url.into()))
            }
            Some(s) if s == "rtmp" || s == "rtmps" => Ok(LiveInput::Rtmp(url.into())),
            _ => Err(format!("input {url:?} is not an rtsp:// or rtmp:// URL")),
        }
    }
}

impl Chain {
    /// A live stream in (RTSP or RTMP, H.264 + AAC), RTMP out: the README's pipeline. The
    /// depayloaders/demuxer are named `vdepay`/`adepay` (RTSP) or `demux` (RTMP), the source
    /// `src`, the muxer `mux`, the sink `out`.
    pub fn live_description(&self, input: &LiveInput, output: &str) -> Result<String, String> {
        if !(output.starts_with("rtmp://") || output.starts_with("rtmps://")) {
            return Err(format!("output {output:?} is not an rtmp:// URL"));
        }
        let mut d = String::new();
        let (audio_in, video_in) = match input {
            LiveInput::Rtsp(url) => {
                // buffer-mode=synced: the default mode shifts video ~40 ms against audio.
                d.push_str(&format!(
                    "rtspsrc name=src location={} buffer-mode=synced latency=200 ",
                    q(url)
                ));
                // RTP carries no DTS: h264timestamper gives B-frame streams theirs (flvmux
                // would collapse the reordering into groups of frames with one timestamp).
                (
                    "src. ! rtpmp4gdepay name=adepay ! aacparse ! avdec_aac",
                    "src. ! rtph264depay name=vdepay ! h264parse ! h264timestamper",
                )
            }
            LiveInput::Rtmp(url) => {
                // rtmp2src, not rtmpsrc: it ends the stream when the publisher leaves (the
                // server's StreamEOF), and hands over every message as it comes (rtmpsrc
                // reads 4 KiB blocks: the end of a stream waits for bytes that never come).
                d.push_str(&format!(
                    "rtmp2src name=src location={} ! flvdemux name=demux ",
                    q(url)
                ));
                (
                    "demux.audio ! queue ! aacparse ! avdec_aac",
                    "demux.video ! queue ! h264parse",
                )
            }
        };
        d.push_str(&self.branches(audio_in, video_in));
        d.push_str(&format!(
            // start-time-selection=first: a live muxer would otherwise start at running time 0
            // and mux whatever stream arrived first, seconds before the other (the output runs
            // `offset` ahead of the clock), giving backwards timestamps at the start.
            "flvmux name=mux streamable=true start-time-selection=first ! rtmpsink name=out location={}",
            q(&format!("{output} live=1"))
        ));
        Ok(d)
    }
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
            url: "http://sts/p".into(),
            ..Default::default()
        };
        let rtsp = LiveInput::parse("rtsp://h:8554/live/t/in").unwrap();
        let d = c
            .live_description(&rtsp, "rtmp://h:1935/live/t/out")
            .unwrap();
        for part in [
            "rtspsrc name=src",
            "buffer-mode=synced",
            "rtph264depay name=vdepay ! h264parse ! h264timestamper",
            "rtpmp4gdepay name=adepay",
            "dubchunker",
            "stsbridge name=sts0",
            "avoffset name=av",
            "flvmux name=mux streamable=true",
            "rtmpsink name=out",
        ] {
            assert!(d.contains(part), "{part} missing from {d}");
        }
        let rtmp = LiveInput::parse("rtmp://h/live/t/in").unwrap();
        let d = c.live_description(&rtmp, "rtmp://h/live/t/out").unwrap();
        assert!(d.contains("rtmp2src name=src") && d.contains("flvdemux name=demux"));
        assert!(LiveInput::parse("http://x").is_err());
        assert!(c.live_description(&rtsp, "file:///tmp/x").is_err());
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
        assert_eq!(short.sts_latency_ns(), 1_000_000_000);
    }

    #[test]
    fn values_are_quoted() {
        assert_eq!(q(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}
