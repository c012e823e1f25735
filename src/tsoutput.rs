//! MPEG-TS output holding the video and one AAC track per language, written to a file or
//! published over SRT (to MediaMTX: `srt://host:8890` with `streamid=publish:<path>`).
//!
//! [`TsOutput::new`] builds a `gst::Bin` of typed elements: `mpegtsmux` and its sink
//! (`filesink` or `srtsink`), a `queue` before each mux pad, and on each audio track a
//! `taginject` that gives it its language. The bin has ghost sink pads to link to: one for the
//! video (`video/x-h264`, parsed, `alignment=au`; B-frames need DTS) and one per language
//! (`audio/mpeg`, AAC, parsed: `aacparse`), in the order the languages were given.
//!
//! ```no_run
//! # use gst::prelude::*;
//! # use gstdubbing::tsoutput::{SrtPublish, TsDestination, TsOutput};
//! # fn f(pipeline: &gst::Pipeline, h264: &gst::Pad, aac: &[gst::Pad]) -> Result<(), Box<dyn std::error::Error>> {
//! let out = TsOutput::new(
//!     &TsDestination::Srt(SrtPublish::mediamtx("127.0.0.1", 8890, "live/1/out")),
//!     &["es", "fr"],
//!     true,
//! )?;
//! pipeline.add(&out.bin)?;
//! h264.link(out.video_sink())?;
//! for (pad, sink) in aac.iter().zip(out.audio_sinks()) {
//!     pad.link(sink)?;
//! }
//! # Ok(()) }
//! ```
//!
//! What it takes care of (each one a pitfall found while testing with ffmpeg 5.1 as the SRT
//! listener and GStreamer 1.22):
//! * **Language descriptors**: `mpegtsmux` writes the PMT's ISO 639 language descriptor from a
//!   `language-code` tag event on the pad, converted to ISO 639-2/B (`es` → `spa`, `fr` →
//!   `fre`, not `fra`). The tag must reach the pad before the first buffer: `taginject` sends it
//!   there.
//! * **Order**: the mux pads are requested as `sink_<PID>` (video 0x100, then 0x101, 0x102, … per
//!   language), so the PMT and every reader list the tracks in the order given.
//! * **alignment=7**: `srtsink` sends each buffer as one SRT message (at most 1316 bytes of TS in
//!   live mode); with `mpegtsmux`'s default alignment the video's larger buffers were lost
//!   (the listener got the audio only). Seven 188-byte packets per buffer fit.
//! * **srtsink**: caller mode; `latency` in milliseconds (SRT's default 125 ms; the listener's
//!   own latency setting wins if larger); `sync` follows `live`. Without a listener it posts an
//!   error ("Connection does not exist") after SRT's ~3 s connect timeout, and a broken
//!   connection is an error too: treat them as an outage of the output. In live mode SRT drops
//!   what it has not delivered when the connection closes: without holding the EOS
//!   ([`SrtPublish::linger`]) the listener lost the last 0.2 s of every track. The URI is set without
//!   its query string and the passphrase through the write-only property, so neither shows in
//!   `uri` or pipeline dumps; `streamid` is readable (keep credentials out of it, or dumps off).
//! * **MediaMTX** takes SRT publications on port 8890 with `streamid=publish:<path>` (this
//!   module's [`SrtPublish::mediamtx`]) and serves them as HLS with one audio rendition per
//!   track, named by its language.
//! * Readers: `ffmpeg -i srt://… -c copy` keeps one video and one audio stream; use `-map 0`
//!   to keep every language. `mpegtsmux` starts timestamps at 3600 s (ffprobe `start_time`).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gst::prelude::*;

/// First elementary stream PID: the video; the languages follow.
pub const VIDEO_PID: u32 = 0x100;

/// Where the transport stream goes.
#[derive(Debug, Clone)]
pub enum TsDestination {
    /// A `.ts` file.
    File(PathBuf),
    /// An SRT publication (caller mode).
    Srt(SrtPublish),
}

/// An SRT publication.
#[derive(Clone)]
pub struct SrtPublish {
    pub host: String,
    pub port: u16,
    /// SRT stream id (access control). MediaMTX: `publish:<path>`.
    pub streamid: Option<String>,
    /// Encryption passphrase (10–79 characters); never logged.
    pub passphrase: Option<String>,
    /// SRT latency, ms.
    pub latency_ms: u32,
}

impl SrtPublish {
    /// SRT's default latency, ms.
    pub const DEFAULT_LATENCY_MS: u32 = 125;

    /// A publication to `host:port` without stream id.
    pub fn new(host: &str, port: u16) -> SrtPublish {
        SrtPublish {
            host: host.to_string(),
            port,
            streamid: None,
            passphrase: None,
            latency_ms: Self::DEFAULT_LATENCY_MS,
        }
    }

    /// A publication to MediaMTX's SRT listener (port 8890 by default) at `path`
    /// (`live/<id>/out`): stream id `publish:<path>`.
    pub fn mediamtx(host: &str, port: u16, path: &str) -> SrtPublish {
        SrtPublish {
            streamid: Some(format!("publish:{}", path.trim_start_matches('/'))),
            ..SrtPublish::new(host, port)
        }
    }

    /// How long the end of the stream is held before `srtsink` closes the connection: twice
    /// the latency and 100 ms. In live mode SRT drops what it has not delivered when the
    /// connection closes (measured: the last 0.2 s of every track with 200 ms latency).
    pub fn linger(&self) -> gst::ClockTime {
        gst::ClockTime::from_mseconds(2 * u64::from(self.latency_ms) + 100)
    }

    /// A publication from an `srt://host:port?streamid=…&passphrase=…&latency=…` URL (the
    /// query keys `srtsink` and ffmpeg take; others are refused). The caller mode is implied.
    pub fn from_url(url: &str) -> Result<SrtPublish, String> {
        let u = reqwest::Url::parse(url)
            .map_err(|e| format!("{} is not a URL: {e}", crate::redact::redact_url(url)))?;
        if u.scheme() != "srt" {
            return Err(format!(
                "{} is not an srt:// URL",
                crate::redact::redact_url(url)
            ));
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{} has no host", crate::redact::redact_url(url)))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = u
            .port()
            .ok_or_else(|| format!("{} has no port", crate::redact::redact_url(url)))?;
        let mut p = SrtPublish::new(&host, port);
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "streamid" => p.streamid = Some(v.into_owned()),
                "passphrase" => {
                    if !(10..=79).contains(&v.chars().count()) {
                        return Err("the SRT passphrase must have 10 to 79 characters".into());
                    }
                    p.passphrase = Some(v.into_owned())
                }
                "latency" => {
                    p.latency_ms = v
                        .parse()
                        .map_err(|_| format!("SRT latency {v:?} is not a number of milliseconds"))?
                }
                "mode" if v == "caller" => {}
                other => {
                    return Err(format!(
                        "SRT URL parameter {other:?} is not supported (streamid, passphrase, latency)"
                    ));
                }
            }
        }
        Ok(p)
    }

    /// The URL as logs may show it: host, port, latency and the stream id with any
    /// credentials (`publish:path:user:pass`) and the passphrase redacted.
    pub fn display(&self) -> String {
        let mut s = self.uri();
        let mut q = Vec::new();
        if let Some(id) = &self.streamid {
            q.push(format!("streamid={}", redact_streamid(id)));
        }
        if self.passphrase.is_some() {
            q.push("passphrase=***".to_string());
        }
        if !q.is_empty() {
            s.push('?');
            s.push_str(&q.join("&"));
        }
        s
    }

    /// What must never reach a log: the passphrase and the stream id's credentials.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = self.passphrase.iter().cloned().collect();
        if let Some(id) = &self.streamid {
            let parts: Vec<&str> = id.splitn(4, ':').collect();
            if parts.len() >= 3 {
                out.extend(parts[2..].iter().map(|s| s.to_string()));
            }
        }
        out
    }

    /// `srt://host:port` (IPv6 hosts bracketed), no query string.
    pub fn uri(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("srt://[{}]:{}", self.host, self.port)
        } else {
            format!("srt://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for SrtPublish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtPublish")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("streamid", &self.streamid.as_deref().map(redact_streamid))
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("latency_ms", &self.latency_ms)
            .finish()
    }
}

/// `publish:path:user:pass` → `publish:path:<redacted>` (MediaMTX's credentials in a stream id).
pub fn redact_streamid(id: &str) -> String {
    let parts: Vec<&str> = id.splitn(3, ':').collect();
    if parts.len() == 3 {
        format!("{}:{}:<redacted>", parts[0], parts[1])
    } else {
        id.to_string()
    }
}

/// Holds the EOS event before `sink` for `linger` on the pipeline clock (cancelled by a
/// flush), so that the stream's last packets reach the peer before the connection closes.
pub fn linger_before_close(sink: &gst::Element, linger: gst::ClockTime) {
    let pad = sink.static_pad("sink").expect("srtsink has a sink pad");
    let waiting: Arc<Mutex<Option<gst::SingleShotClockId>>> = Arc::default();
    pad.add_probe(
        gst::PadProbeType::EVENT_DOWNSTREAM | gst::PadProbeType::EVENT_FLUSH,
        move |pad, info| {
            let Some(ev) = info.event() else {
                return gst::PadProbeReturn::Ok;
            };
            match ev.type_() {
                gst::EventType::FlushStart => {
                    if let Some(id) = waiting.lock().expect("linger lock").take() {
                        id.unschedule();
                    }
                }
                gst::EventType::Eos => {
                    let clock = pad.parent_element().and_then(|e| e.clock());
                    if let Some(clock) = clock {
                        let id = clock.new_single_shot_id(clock.time() + linger);
                        *waiting.lock().expect("linger lock") = Some(id.clone());
                        let _ = id.wait();
                        waiting.lock().expect("linger lock").take();
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
}

/// Why the output could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsOutputError {
    /// A GStreamer element is not installed.
    MissingElement(&'static str),
    /// Not an ISO 639 code (2 or 3 lowercase ASCII letters).
    BadLanguage(String),
    NoLanguage,
    /// Building the bin failed.
    Build(String),
}

impl fmt::Display for TsOutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TsOutputError::MissingElement(e) => write!(
                f,
                "GStreamer element {e} is missing (gstreamer1.0-plugins-bad has mpegtsmux and srtsink, -good has taginject)"
            ),
            TsOutputError::BadLanguage(l) => write!(
                f,
                "language {l:?} is not an ISO 639 code (two or three lowercase letters, e.g. es or spa)"
            ),
            TsOutputError::NoLanguage => write!(f, "an MPEG-TS output needs at least one language"),
            TsOutputError::Build(e) => write!(f, "building the MPEG-TS output failed: {e}"),
        }
    }
}

impl std::error::Error for TsOutputError {}

fn make(factory: &'static str, name: &str) -> Result<gst::Element, TsOutputError> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|_| TsOutputError::MissingElement(factory))
}

fn build_err(e: impl fmt::Display) -> TsOutputError {
    TsOutputError::Build(e.to_string())
}

/// Checks an ISO 639 code (`es`, `spa`).
pub fn check_language(code: &str) -> Result<(), TsOutputError> {
    if (2..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(TsOutputError::BadLanguage(code.to_string()))
    }
}

/// `mpegtsmux`'s sink pad of track `index` (0: the video, then the audio tracks in order):
/// `sink_<PID>`. Request them in this order: the PMT lists the tracks as they were requested.
pub fn mux_pad_name(index: usize) -> String {
    format!("sink_{}", VIDEO_PID as usize + index)
}

/// `mpegtsmux`'s `alignment`: seven 188-byte packets per buffer, one SRT message each.
pub const MUX_ALIGNMENT: i32 = 7;

/// The ISO 639 code an MPEG-TS track is tagged with for a language such as `es`, `spa` or
/// `pt-BR` (the primary subtag, lowercase), if it is one.
pub fn ts_language(language: &str) -> Result<String, TsOutputError> {
    let primary = language
        .split(['-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    check_language(&primary)
        .map(|_| primary)
        .map_err(|_| TsOutputError::BadLanguage(language.to_string()))
}

/// `taginject`'s `tags` for a track in `language` (an ISO 639 code): `mpegtsmux` writes it
/// as the PMT's language descriptor, as ISO 639-2/B.
pub fn language_tags(language: &str) -> String {
    format!("language-code={language}")
}

/// The MPEG-TS output bin and its parts.
#[derive(Debug)]
pub struct TsOutput {
    /// Add this to the pipeline.
    pub bin: gst::Bin,
    /// `mpegtsmux` (e.g. to set its `latency` in live pipelines).
    pub mux: gst::Element,
    /// `filesink` or `srtsink`.
    pub sink: gst::Element,
    video: gst::Pad,
    audio: Vec<gst::Pad>,
    languages: Vec<String>,
}

impl TsOutput {
    /// Builds the bin for `languages` (ISO 639, in track order). `live`: the sink syncs on the
    /// clock (a live pipeline publishing in real time); otherwise it writes as fast as it can.
    pub fn new(
        destination: &TsDestination,
        languages: &[&str],
        live: bool,
    ) -> Result<TsOutput, TsOutputError> {
        if languages.is_empty() {
            return Err(TsOutputError::NoLanguage);
        }
        for l in languages {
            check_language(l)?;
        }
        let bin = gst::Bin::with_name("tsoutput");
        let mux = make("mpegtsmux", "tsmux")?;
        mux.set_property("alignment", MUX_ALIGNMENT);
        let sink = match destination {
            TsDestination::File(path) => {
                let s = make("filesink", "tssink")?;
                s.set_property("location", path.to_string_lossy().as_ref());
                s.set_property("sync", live);
                s
            }
            TsDestination::Srt(srt) => {
                let s = make("srtsink", "tssink")?;
                s.set_property("uri", srt.uri());
                s.set_property_from_str("mode", "caller");
                s.set_property("latency", srt.latency_ms.min(i32::MAX as u32) as i32);
                if let Some(id) = &srt.streamid {
                    s.set_property("streamid", id);
                }
                if let Some(p) = &srt.passphrase {
                    s.set_property("passphrase", p);
                }
                s.set_property("sync", live);
                linger_before_close(&s, srt.linger());
                s
            }
        };
        bin.add_many([&mux, &sink]).map_err(build_err)?;
        mux.link(&sink).map_err(build_err)?;

        let mux_pad = |index: usize| {
            let name = mux_pad_name(index);
            mux.request_pad_simple(&name)
                .ok_or_else(|| TsOutputError::Build(format!("mpegtsmux gave no pad {name}")))
        };
        let ghost = |name: &str, target: &gst::Pad| -> Result<gst::Pad, TsOutputError> {
            let g = gst::GhostPad::builder_with_target(target)
                .map_err(build_err)?
                .name(name)
                .build();
            bin.add_pad(&g).map_err(build_err)?;
            Ok(g.upcast())
        };

        let vqueue = make("queue", "video_queue")?;
        bin.add(&vqueue).map_err(build_err)?;
        vqueue
            .static_pad("src")
            .expect("queue src")
            .link(&mux_pad(0)?)
            .map_err(build_err)?;
        let video = ghost("video", &vqueue.static_pad("sink").expect("queue sink"))?;

        let mut audio = Vec::with_capacity(languages.len());
        for (i, lang) in languages.iter().enumerate() {
            let tag = make("taginject", &format!("language_{i}"))?;
            tag.set_property("tags", language_tags(lang));
            let queue = make("queue", &format!("audio_queue_{i}"))?;
            bin.add_many([&tag, &queue]).map_err(build_err)?;
            tag.link(&queue).map_err(build_err)?;
            queue
                .static_pad("src")
                .expect("queue src")
                .link(&mux_pad(1 + i)?)
                .map_err(build_err)?;
            audio.push(ghost(
                &format!("audio_{i}"),
                &tag.static_pad("sink").expect("taginject sink"),
            )?);
        }
        Ok(TsOutput {
            bin,
            mux,
            sink,
            video,
            audio,
            languages: languages.iter().map(|l| l.to_string()).collect(),
        })
    }

    /// The video's sink pad (`video/x-h264`).
    pub fn video_sink(&self) -> &gst::Pad {
        &self.video
    }

    /// The audio sink pads (AAC), in the order of the languages.
    pub fn audio_sinks(&self) -> &[gst::Pad] {
        &self.audio
    }

    /// The audio sink pad of `language` as given to [`TsOutput::new`].
    pub fn audio_sink(&self, language: &str) -> Option<&gst::Pad> {
        self.languages
            .iter()
            .position(|l| l == language)
            .map(|i| &self.audio[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mediamtx_stream_id_and_uri() {
        let p = SrtPublish::mediamtx("media.example", 8890, "/live/7/out");
        assert_eq!(p.streamid.as_deref(), Some("publish:live/7/out"));
        assert_eq!(p.uri(), "srt://media.example:8890");
        assert_eq!(SrtPublish::new("::1", 9000).uri(), "srt://[::1]:9000");
        assert_eq!(p.latency_ms, 125);
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let mut p = SrtPublish::mediamtx("h", 1, "live/x:user:hunter2");
        p.passphrase = Some("correct horse battery".into());
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("horse"), "{dbg}");
        assert!(dbg.contains("publish:live/x"), "{dbg}");
    }

    #[test]
    fn urls_are_read_and_shown_without_secrets() {
        let p = SrtPublish::from_url(
            "srt://mtx:8890?streamid=publish:live/7/out:pub:hunter22&passphrase=0123456789ab&latency=200",
        )
        .unwrap();
        assert_eq!((p.host.as_str(), p.port, p.latency_ms), ("mtx", 8890, 200));
        assert_eq!(
            p.streamid.as_deref(),
            Some("publish:live/7/out:pub:hunter22")
        );
        assert_eq!(
            p.display(),
            "srt://mtx:8890?streamid=publish:live/7/out:<redacted>&passphrase=***"
        );
        assert_eq!(p.secrets(), vec!["0123456789ab", "pub", "hunter22"]);
        assert!(SrtPublish::from_url("srt://mtx?streamid=x").is_err());
        assert!(SrtPublish::from_url("rtmp://mtx:1/a").is_err());
        assert!(SrtPublish::from_url("srt://mtx:1?pbkeylen=16").is_err());
        assert!(SrtPublish::from_url("srt://mtx:1?passphrase=short").is_err());
        assert_eq!(
            SrtPublish::from_url("srt://[::1]:9").unwrap().uri(),
            "srt://[::1]:9"
        );
        assert_eq!(
            SrtPublish::mediamtx("h", 1, "live/1/out").display(),
            "srt://h:1?streamid=publish:live/1/out"
        );
    }

    #[test]
    fn track_pads_and_languages() {
        assert_eq!(mux_pad_name(0), "sink_256");
        assert_eq!(mux_pad_name(2), "sink_258");
        assert_eq!(ts_language("pt-BR").unwrap(), "pt");
        assert_eq!(ts_language("DE").unwrap(), "de");
        assert!(ts_language("klingon").is_err());
        assert_eq!(language_tags("es"), "language-code=es");
    }

    #[test]
    fn languages_are_checked() {
        assert!(check_language("es").is_ok());
        assert!(check_language("spa").is_ok());
        assert_eq!(
            check_language("Spanish"),
            Err(TsOutputError::BadLanguage("Spanish".into()))
        );
        assert!(check_language("e").is_err());
        assert!(check_language("ES").is_err());
    }
}
