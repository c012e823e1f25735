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
        "flv" => Some("flvmux streamable=true"),
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
        }
    }
}

/// Quotes a property value for a launch description.
fn q(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Chain {
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
                 ! dubchunker name=chunk{i} chunk-duration={} \
                 ! stsbridge name=sts{i} url={} source-language={} target-language={}{stream_id} \
                   timeout={} max-retries={} \
                 ! avoffset name={av} offset={} \
                 {av}.audio_src ! audioconvert ! voaacenc bitrate={} ! aacparse ! queue ! mux. ",
                self.chunk_duration_ns,
                q(&self.url),
                q(&self.source_language),
                q(lang),
                self.timeout_ns,
                self.max_retries,
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
        d.push_str(&format!("{mux} name=mux ! filesink location={}", q(output)));
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_containers_by_extension() {
        assert_eq!(demuxer_for("a/b.MP4"), Some("qtdemux"));
        assert_eq!(demuxer_for("x.mkv"), Some("matroskademux"));
        assert_eq!(demuxer_for("x"), None);
        assert_eq!(muxer_for("out.flv"), Some("flvmux streamable=true"));
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
    fn values_are_quoted() {
        assert_eq!(q(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}
