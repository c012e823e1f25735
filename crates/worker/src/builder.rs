//! The dubbing pipelines, built from typed elements kept in structs: the live input
//! ([`SourceBin`]), one [`LanguageBranch`] per dubbed language, one [`Publication`] per
//! output, assembled into a [`LivePipeline`] (the worker) or a [`FilePipeline`] (`dub-file`,
//! the end-to-end tests). Nothing is looked up by name: callers use the fields. Secrets (the
//! STS `url` and `api-key`, the source and output locations) are set on the objects as they
//! are built and never recorded in the launch line ([`crate::graph`]), which
//! `to_launch_line()` prints for the README and the logs.
//!
//! ```text
//! rtspsrc ! rtpmp4gdepay ! aacparse ! avdec_aac ─▶ ain ─▶ audioconvert ! audioresample ! S16LE 48 kHz stereo ! tee atee
//!        └ rtph264depay ! h264parse ! h264timestamper ─▶ vin ─▶ av0.video_sink
//! atee ─▶ queue ! dubchunker ! stsbridge ! avoffset av<i> ─▶ audioconvert ! voaacenc ! aacparse ! queue ─▶ mux<i>
//! av0.video_src ─▶ tee vtee ─▶ queue ─▶ mux<i> (flvmux) ─▶ out<i> (appsink: the worker's publication; rtmpsink in the line)
//! ```
//!
//! With captions ([`Chain::captions`]), each language's text goes `stsbridge` → its
//! `avoffset` → a tee → a `cc608insert` on the video of its publication (after `vtee`, one per
//! RTMP publication, CC1 each; with one muxer, `cc0` on CC1 and `cc1` on CC3 in series). With
//! SRT ([`PublicationKind::SrtApp`]) one `mpegtsmux` takes the video and every language on a
//! track of its own (`taginject` with its ISO 639 code, pads requested in track order), and
//! optionally the original ([`Chain::original_track`]):
//!
//! ```text
//! av<i>.audio_src ! audioconvert ! voaacenc ! aacparse ! taginject lang<i> ! queue ─▶ tsmux.sink_<257+i>
//! av0.video_src ─▶ queue vq ! h264parse tsparse ! cc608insert cc0 (CC1) ! cc608insert cc1 (CC3) ─▶ tsmux.sink_256
//! tsmux (mpegtsmux alignment=7) ─▶ out (appsink: the worker's SRT publication; srtsink in the line)
//! ```

use std::sync::{Arc, Mutex};

use gst::prelude::*;

use gstdubbing::tsoutput;

use crate::graph::{End, Graph, el, pad};
use crate::pipeline::{Boundary, Chain, LiveInput, LiveUrls};

/// The live input in a bin of its own, `source<generation>`, with ghost pads `audio` (decoded
/// audio) and `video` (parsed H.264).
pub struct SourceBin {
    pub bin: gst::Bin,
    /// `rtspsrc` or `rtmp2src`, its `location` set.
    pub src: gst::Element,
    /// The H.264 parser: where the worker sees the source deliver (and where it is).
    pub video_parse: gst::Element,
    /// RTSP: the depayloaders, linked when `rtspsrc` has the stream's pads.
    pub depayloaders: Option<(gst::Element, gst::Element)>,
    /// RTSP: the tracks the server's description offers that the depayloaders take, known
    /// before any stream is set up (see [`SourceBin::on_all_pads`]).
    offered: Option<Arc<Mutex<Offered>>>,
    graph: Graph,
}

/// The tracks an RTSP server's description (SDP) offers that the worker can take: AAC audio
/// (`MPEG4-GENERIC`) and H.264 video, as `rtspsrc` announces them with `select-stream`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    pub audio: bool,
    pub video: bool,
}

impl SourceBin {
    /// The input `input` as generation `generation` (its `location` set, not recorded).
    pub fn build(input: &LiveInput, generation: u32) -> Result<SourceBin, String> {
        let bin = gst::Bin::with_name(&format!("source{generation}"));
        let mut g = Graph::new(&bin);
        let (src, adec, video_out, video_parse, depayloaders, offered) = match input {
            // buffer-mode=synced: the default mode shifts video ~40 ms against audio. RTP
            // carries no DTS: h264timestamper gives B-frame streams theirs (flvmux would
            // collapse the reordering into groups of frames with one timestamp).
            // wait-for-keyframe: a reconnected source starts at a keyframe.
            LiveInput::Rtsp(_) => {
                let src = g.make(
                    "rtspsrc",
                    "src",
                    &[("buffer-mode", "synced".into()), ("latency", "200".into())],
                )?;
                let adepay = g.make("rtpmp4gdepay", "adepay", &[])?;
                let aparse = g.make("aacparse", "aparse", &[])?;
                let adec = g.make("avdec_aac", "adec", &[])?;
                let vdepay = g.make(
                    "rtph264depay",
                    "vdepay",
                    &[("wait-for-keyframe", "true".into())],
                )?;
                let vparse = g.make("h264parse", "vparse", &[])?;
                let vts = g.make("h264timestamper", "vts", &[])?;
                g.delayed(&[el(&src), el(&adepay)]);
                g.chain(&[el(&adepay), el(&aparse), el(&adec)])?;
                g.delayed(&[el(&src), el(&vdepay)]);
                g.chain(&[el(&vdepay), el(&vparse), el(&vts)])?;
                // The stream's pads, to the depayloader of their media (the SDP's `media`
                // in the pad's caps); without one, to the first whose caps they fit (as a
                // launch line's delayed link does).
                let (a, v) = (adepay.downgrade(), vdepay.downgrade());
                src.connect_pad_added(move |_, new| {
                    let caps = new.current_caps().unwrap_or_else(|| new.query_caps(None));
                    let media = caps
                        .structure(0)
                        .and_then(|s| s.get::<String>("media").ok());
                    let candidates = match media.as_deref() {
                        Some("audio") => vec![&a],
                        Some("video") => vec![&v],
                        _ => vec![&a, &v],
                    };
                    for d in candidates.into_iter().filter_map(|d| d.upgrade()) {
                        if let Some(sink) = d.static_pad("sink")
                            && !sink.is_linked()
                            && (media.is_some() || new.can_link(&sink))
                        {
                            match new.link(&sink) {
                                Ok(_) => {
                                    tracing::debug!("source: {} linked to {}", new.name(), d.name());
                                    return;
                                }
                                Err(e) => tracing::warn!(
                                    "source: the server's stream {} ({caps}) does not link to {}: {e:?}",
                                    new.name(),
                                    d.name()
                                ),
                            }
                        }
                    }
                    tracing::debug!("source: {} ({caps}) left unlinked", new.name());
                });
                // What the description offers, stream by stream, before any is set up:
                // whether a track is missing is decided from this, not from which
                // depayloader is linked when `no-more-pads` comes (rtspsrc 1.22 can signal it
                // from one stream's thread before the other stream's pad is added).
                let offered = Arc::new(Mutex::new(Offered::default()));
                let (a, v, o) = (adepay.downgrade(), vdepay.downgrade(), offered.clone());
                src.connect("select-stream", false, move |vals| {
                    if let Some(mut caps) = vals.get(2).and_then(|c| c.get::<gst::Caps>().ok()) {
                        // The SDP's fields under a name of `application/x-unknown` (the
                        // pads are `application/x-rtp`): named as the depayloaders expect.
                        if let Some(s) = caps.make_mut().structure_mut(0) {
                            s.set_name("application/x-rtp");
                        }
                        let takes = |d: &gst::glib::WeakRef<gst::Element>| {
                            d.upgrade()
                                .and_then(|d| d.static_pad("sink"))
                                .is_some_and(|p| p.pad_template_caps().can_intersect(&caps))
                        };
                        let mut o = o.lock().unwrap_or_else(|e| e.into_inner());
                        o.audio |= takes(&a);
                        o.video |= takes(&v);
                    }
                    Some(true.to_value())
                });
                (
                    src,
                    adec,
                    vts,
                    vparse,
                    Some((adepay, vdepay)),
                    Some(offered),
                )
            }
            // rtmp2src, not rtmpsrc: it ends the stream when the publisher leaves (the
            // server's StreamEOF), and hands over every message as it comes (rtmpsrc reads
            // 4 KiB blocks: the end of a stream waits for bytes that never come).
            LiveInput::Rtmp(_) => {
                let src = g.make("rtmp2src", "src", &[])?;
                let demux = g.make("flvdemux", "demux", &[])?;
                let aq = g.make("queue", "aqueue", &[])?;
                let aparse = g.make("aacparse", "aparse", &[])?;
                let adec = g.make("avdec_aac", "adec", &[])?;
                let vq = g.make("queue", "vqueue", &[])?;
                let vparse = g.make("h264parse", "vparse", &[])?;
                g.chain(&[el(&src), el(&demux)])?;
                g.delayed(&[pad(&demux, "audio"), el(&aq)]);
                g.chain(&[el(&aq), el(&aparse), el(&adec)])?;
                g.delayed(&[pad(&demux, "video"), el(&vq)]);
                g.chain(&[el(&vq), el(&vparse)])?;
                let (a, v) = (aq.downgrade(), vq.downgrade());
                demux.connect_pad_added(move |_, new| {
                    let target = match new.name().as_str() {
                        "audio" => a.upgrade(),
                        "video" => v.upgrade(),
                        _ => None,
                    };
                    if let Some(sink) = target.and_then(|t| t.static_pad("sink"))
                        && !sink.is_linked()
                    {
                        let _ = new.link(&sink);
                    }
                });
                (src, adec, vparse.clone(), vparse, None, None)
            }
        };
        for (ghost, element) in [("audio", &adec), ("video", &video_out)] {
            let target = element.static_pad("src").ok_or("no src pad")?;
            let pad = gst::GhostPad::builder_with_target(&target)
                .map_err(|e| e.to_string())?
                .name(ghost)
                .build();
            bin.add_pad(&pad).map_err(|e| e.to_string())?;
        }
        // The URL (credentials, stream key) on the object, never in the line.
        src.set_property("location", input.url());
        Ok(SourceBin {
            bin,
            src,
            video_parse,
            depayloaders,
            offered,
            graph: g,
        })
    }

    /// RTSP: calls `f` with what the server's description offered once `rtspsrc` has added
    /// the pads of every stream it set up (`no-more-pads`), with the `rtspsrc` itself; a
    /// track it did not offer is one the input does not have. Nothing for RTMP.
    pub fn on_all_pads(&self, f: impl Fn(&gst::Element, Offered) + Send + Sync + 'static) {
        let Some(offered) = self.offered.clone() else {
            return;
        };
        self.src.connect("no-more-pads", false, move |vals| {
            let src = vals[0].get::<gst::Element>().ok()?;
            f(&src, *offered.lock().unwrap_or_else(|e| e.into_inner()));
            None
        });
    }

    /// Adds the bin to `pipeline` and links its pads to `ain` and `vin`.
    pub fn link(
        &self,
        pipeline: &gst::Pipeline,
        ain: &gst::Element,
        vin: &gst::Element,
    ) -> Result<(), String> {
        pipeline.add(&self.bin).map_err(|e| e.to_string())?;
        for (ghost, joint) in [("audio", ain), ("video", vin)] {
            let sink = joint.static_pad("sink").ok_or("no sink pad on the joint")?;
            self.bin
                .static_pad(ghost)
                .ok_or_else(|| format!("no {ghost} pad on the source"))?
                .link(&sink)
                .map_err(|e| format!("cannot link the source's {ghost}: {e:?}"))?;
        }
        Ok(())
    }

    /// The source's part of a launch line, its decoded audio ending at `adec`, its video at
    /// `vts` (RTSP) or `vparse` (RTMP).
    pub fn to_launch_line(&self) -> String {
        self.graph.to_launch_line()
    }
}

/// One dubbed language: the audio from the tee to its muxer.
pub struct LanguageBranch {
    pub language: String,
    /// `dubchunker ! stsbridge ! avoffset`, or `None` in the baseline (an `identity` instead).
    pub dubbing: Option<Dubbing>,
    /// The element the branch's audio leaves the dubbing at (`avoffset`'s `audio_src`, or the
    /// baseline's `identity`).
    pub audio_out: gst::Element,
    /// The AAC encoder's input (`audioconvert`), for probes on what goes into the encoder.
    pub encoder_in: gst::Element,
    /// The last element before the muxer (a `queue`).
    pub to_mux: gst::Element,
    /// With captions: the tee the translation leaves `avoffset` by (`ttee<i>`), to the
    /// caption inserter and whatever else takes the text (a file's subtitles).
    pub text_tee: Option<gst::Element>,
    /// The `cc608insert` that puts this language's captions into a video, if one does.
    pub caption_inserter: Option<gst::Element>,
}

/// The branch among `branches` whose dubbing elements include `object` (a bus message's
/// source).
pub fn language_of(branches: &[LanguageBranch], object: &gst::Object) -> Option<usize> {
    branches.iter().position(|b| {
        b.dubbing.as_ref().is_some_and(|d| {
            [&d.chunker, &d.bridge, &d.avoffset]
                .iter()
                .any(|e| e.upcast_ref::<gst::Object>() == object)
        })
    })
}

/// The dubbing elements of a branch.
pub struct Dubbing {
    pub chunker: gst::Element,
    pub bridge: gst::Element,
    pub avoffset: gst::Element,
}

/// How a publication goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationKind {
    /// FLV into an `appsink`: the worker hands each tag to its RTMP connection
    /// ([`crate::output`]).
    RtmpApp,
    /// FLV into `rtmpsink` (the launch line of the README, the benchmarks).
    RtmpSink,
    /// One MPEG-TS for every language into an `appsink`: the worker hands it to its SRT
    /// connection ([`crate::output`]).
    SrtApp,
    /// One MPEG-TS for every language into `srtsink` (the launch line).
    SrtSink,
}

impl PublicationKind {
    /// MPEG-TS with every language (SRT), not FLV per language (RTMP).
    pub fn is_ts(self) -> bool {
        matches!(self, PublicationKind::SrtApp | PublicationKind::SrtSink)
    }

    /// Into an `appsink` the worker publishes from.
    pub fn is_app(self) -> bool {
        matches!(self, PublicationKind::RtmpApp | PublicationKind::SrtApp)
    }
}

/// One output: a muxer and its sink.
pub struct Publication {
    pub language: String,
    pub kind: PublicationKind,
    pub mux: gst::Element,
    pub sink: gst::Element,
}

impl Publication {
    /// The sink as an `appsink` (kind [`PublicationKind::RtmpApp`]).
    pub fn app_sink(&self) -> Option<gst_app::AppSink> {
        self.sink.clone().downcast::<gst_app::AppSink>().ok()
    }
}

/// The live pipeline: the joint (`ain`, `vin`), the first source bin, the branches and the
/// publications.
pub struct LivePipeline {
    pub pipeline: gst::Pipeline,
    /// Where the source's decoded audio comes in (the joint's audio side).
    pub audio_in: gst::Element,
    /// Where the source's parsed video comes in (the joint's video side).
    pub video_in: gst::Element,
    pub source: SourceBin,
    pub branches: Vec<LanguageBranch>,
    pub publications: Vec<Publication>,
    graph: Graph,
}

impl LivePipeline {
    /// The equivalent `gst-launch-1.0` line, input to outputs (no URL, no key).
    pub fn to_launch_line(&self) -> String {
        let video_out = if self.source.depayloaders.is_some() {
            "vts"
        } else {
            "vparse"
        };
        format!(
            "{}  {}  adec. ! ain.  {video_out}. ! vin.",
            self.source.to_launch_line(),
            self.graph.to_launch_line()
        )
    }

    /// The branch an element (a bus message's source) belongs to.
    pub fn language_of(&self, object: &gst::Object) -> Option<usize> {
        language_of(&self.branches, object)
    }
}

/// A file in (H.264 + AAC in MP4, Matroska, FLV or MPEG-TS), a file out, the video copied.
pub struct FilePipeline {
    pub pipeline: gst::Pipeline,
    /// The input's demuxer (its pads show which tracks the file has).
    pub demux: gst::Element,
    pub branches: Vec<LanguageBranch>,
    pub mux: gst::Element,
    /// Each language's subtitles, when the muxer takes no text: a `fakesink` whose pad the
    /// application can probe.
    pub subtitle_sinks: Vec<gst::Element>,
    graph: Graph,
}

impl FilePipeline {
    /// The equivalent `gst-launch-1.0` line (no URL, no key).
    pub fn to_launch_line(&self) -> String {
        self.graph.to_launch_line()
    }

    /// The branch an element (a bus message's source) belongs to.
    pub fn language_of(&self, object: &gst::Object) -> Option<usize> {
        language_of(&self.branches, object)
    }
}

/// Which muxer writes a file, from its extension: (factory, properties).
pub fn file_muxer(path: &str) -> Option<(&'static str, Vec<(&'static str, String)>)> {
    let ext = path.rsplit('.').next()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "mp4" | "m4v" | "mov" => ("mp4mux", vec![]),
        "mkv" => ("matroskamux", vec![]),
        "flv" => (
            "flvmux",
            vec![
                ("streamable", "true".into()),
                ("start-time-selection", "first".into()),
            ],
        ),
        "ts" => ("mpegtsmux", vec![]),
        _ => return None,
    })
}

const UNBOUNDED: [(&str, &str); 3] = [
    ("max-size-time", "0"),
    ("max-size-buffers", "0"),
    ("max-size-bytes", "0"),
];

fn unbounded() -> Vec<(&'static str, String)> {
    UNBOUNDED.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Whether `mux` is an MPEG-TS muxer: every language on a track of its own, tagged with its
/// language, on pads requested in track order ([`gstdubbing::tsoutput::mux_pad_name`]).
fn is_ts(mux: &gst::Element) -> bool {
    mux.factory().is_some_and(|f| f.name() == "mpegtsmux")
}

/// Requests `mpegtsmux`'s pads in track order (video, then `audio_tracks`), so that the PMT
/// and every reader list them so.
fn request_ts_pads(mux: &gst::Element, audio_tracks: usize) -> Result<(), String> {
    for i in 0..=audio_tracks {
        let name = tsoutput::mux_pad_name(i);
        mux.request_pad_simple(&name)
            .ok_or_else(|| format!("mpegtsmux gave no pad {name}"))?;
    }
    Ok(())
}

/// The muxer's end of a link: a named track pad for MPEG-TS, else the pad linking picks.
fn mux_end<'a>(mux: &'a gst::Element, name: &'a Option<String>) -> End<'a> {
    match name {
        Some(n) => pad(mux, n),
        None => el(mux),
    }
}

/// The caption channel of the `i`-th captioned language on one video: CC1, then CC3 (field
/// 2's first channel).
fn caption_channel(i: usize) -> &'static str {
    if i == 0 { "cc1" } else { "cc3" }
}

/// Makes the caption inserter `cc`, after another one of latency `latency_ns` on the same
/// video, see that one's deadline as its own: the latency its sink pad is answered upstream
/// leaves out `latency_ns` (the one before added it, and this one adds it again, on the same
/// frames' same deadline).
fn share_deadline(cc: &gst::Element, latency_ns: u64) {
    let Some(sink) = cc.static_pad("sink") else {
        return;
    };
    sink.add_probe(
        gst::PadProbeType::QUERY_UPSTREAM | gst::PadProbeType::PULL,
        move |_, info| {
            if let Some(gst::PadProbeData::Query(q)) = &mut info.data
                && let gst::QueryViewMut::Latency(l) = q.view_mut()
            {
                let (live, min, max) = l.result();
                let d = gst::ClockTime::from_nseconds(latency_ns);
                l.set(
                    live,
                    min.saturating_sub(d),
                    max.map(|m| m.saturating_sub(d)),
                );
            }
            gst::PadProbeReturn::Ok
        },
    );
}

/// With one muxer for every language, how many languages get captions on the one video:
/// CC1 and CC3.
pub const CAPTIONED_LANGUAGES_PER_VIDEO: usize = 2;

impl Chain {
    /// The audio from `audio_in` (raw, any format) to one tee, then one branch per language
    /// into `muxes[i]` (one muxer per language, or all into one); the video from `video_in`
    /// through the first branch's `avoffset` (its `video_sink`/`video_src`) to the muxers.
    /// `dubbing: false` is the baseline (`identity` in place of the three elements).
    /// `video_wait_ns`: what the muxers and the caption inserters wait (live), out of the
    /// shift. `to_mux`: the properties of the queue between each AAC encoder and its muxer.
    /// Secrets set on the bridges.
    ///
    /// With [`Chain::captions`] (and dubbing), each language's text goes `stsbridge` →
    /// `tq<i>` → its `avoffset` → a tee `ttee<i>` → `tqc<i>` → a `cc608insert` on the video
    /// of its publication: `cc<i>` after `vq<i>` with one muxer per language; with one
    /// muxer, `cc0` (CC1) then `cc1` (CC3) after `vq`. An MPEG-TS muxer takes each language
    /// on its own track (`taginject` `lang<i>` with the language's code before the queue),
    /// and with [`Chain::original_track`] the original too (`atee` → `oq` → its own
    /// `avoffset` `avorig` (the same shift) → AAC → `langorig` → `omq`).
    #[allow(clippy::too_many_arguments)]
    fn branches(
        &self,
        g: &mut Graph,
        (audio_in, video_in): (&gst::Element, &gst::Element),
        muxes: &[gst::Element],
        video_wait_ns: u64,
        to_mux: &[(&'static str, String)],
        dubbing: bool,
        api_key: Option<&str>,
    ) -> Result<Vec<LanguageBranch>, String> {
        let conv = g.make("audioconvert", "aconv", &[])?;
        let res = g.make("audioresample", "ares", &[])?;
        let caps = g.caps("acaps", "audio/x-raw,format=S16LE,rate=48000,channels=2")?;
        let atee = g.make("tee", "atee", &[])?;
        g.chain(&[el(audio_in), el(&conv), el(&res), el(&caps), el(&atee)])?;
        let mut branches = Vec::new();
        let several = self.target_languages.len() > 1;
        let ts = muxes.len() == 1 && is_ts(&muxes[0]);
        let original = ts && self.original_track;
        if ts {
            request_ts_pads(
                &muxes[0],
                self.target_languages.len() + usize::from(original),
            )?;
        }
        let track_pad = |i: usize| ts.then(|| tsoutput::mux_pad_name(1 + i));
        let shift = self.offset_ns.saturating_sub(video_wait_ns).to_string();
        let captions = self.captions && dubbing;
        for (i, lang) in self.target_languages.iter().enumerate() {
            let q = g.make(
                "queue",
                &format!("aq{i}"),
                &[
                    ("max-size-time", "3000000000".into()),
                    ("max-size-buffers", "0".into()),
                    ("max-size-bytes", "0".into()),
                ],
            )?;
            g.chain(&[el(&atee), el(&q)])?;
            let (dub, audio_out) = if dubbing {
                let mut chunk_props = vec![("chunk-duration", self.chunk_duration_ns.to_string())];
                if let Boundary::Silence { min_ns, max_ns } = self.boundary {
                    chunk_props.push(("boundary", "silence".into()));
                    chunk_props.push(("min-duration", min_ns.to_string()));
                    chunk_props.push(("max-duration", max_ns.to_string()));
                }
                let chunker = g.make("dubchunker", &format!("chunk{i}"), &chunk_props)?;
                let mut props = vec![
                    ("source-language", self.source_language.clone()),
                    ("target-language", lang.clone()),
                ];
                if !self.stream_id.is_empty() {
                    let id = if several {
                        format!("{}-{lang}", self.stream_id)
                    } else {
                        self.stream_id.clone()
                    };
                    props.push(("stream-id", id));
                }
                if let Some(db) = self.original_mix_db {
                    props.push(("original-mix", db.to_string()));
                }
                props.push(("protocol", self.protocol.clone()));
                props.push(("timeout", self.timeout_ns.to_string()));
                props.push(("max-retries", self.max_retries.to_string()));
                props.push(("latency", self.sts_latency_ns().to_string()));
                let bridge = g.make("stsbridge", &format!("sts{i}"), &props)?;
                // Secrets on the object, never in the line.
                bridge.set_property("url", &self.url);
                if let Some(key) = api_key {
                    bridge.set_property("api-key", key);
                }
                let av = g.make("avoffset", &format!("av{i}"), &[("offset", shift.clone())])?;
                g.chain(&[el(&q), el(&chunker), el(&bridge), pad(&av, "audio_sink")])?;
                (
                    Some(Dubbing {
                        chunker,
                        bridge,
                        avoffset: av.clone(),
                    }),
                    av,
                )
            } else {
                let id = g.make("identity", &format!("baseline{i}"), &[])?;
                g.chain(&[el(&q), el(&id)])?;
                (None, id)
            };
            let econv = g.make("audioconvert", &format!("econv{i}"), &[])?;
            let enc = g.make(
                "voaacenc",
                &format!("enc{i}"),
                &[("bitrate", self.audio_bitrate.to_string())],
            )?;
            let parse = g.make("aacparse", &format!("eparse{i}"), &[])?;
            let mq = g.make("queue", &format!("amq{i}"), to_mux)?;
            let from = if dub.is_some() {
                pad(&audio_out, "audio_src")
            } else {
                el(&audio_out)
            };
            let mux = &muxes[i.min(muxes.len() - 1)];
            let track = track_pad(i);
            if ts {
                let code = tsoutput::ts_language(lang).map_err(|e| e.to_string())?;
                let tag = g.make(
                    "taginject",
                    &format!("lang{i}"),
                    &[("tags", tsoutput::language_tags(&code))],
                )?;
                g.chain(&[
                    from,
                    el(&econv),
                    el(&enc),
                    el(&parse),
                    el(&tag),
                    el(&mq),
                    mux_end(mux, &track),
                ])?;
            } else {
                g.chain(&[from, el(&econv), el(&enc), el(&parse), el(&mq), el(mux)])?;
            }
            // The translation, into this language's avoffset (shifted with the rest), then
            // to the caption inserters (and what else takes it: a tee).
            let text_tee = match &dub {
                Some(d) if captions => {
                    let tq = g.make("queue", &format!("tq{i}"), &[])?;
                    g.chain(&[
                        pad(&d.bridge, "text_src"),
                        el(&tq),
                        pad(&d.avoffset, "text_sink"),
                    ])?;
                    let tee = g.make("tee", &format!("ttee{i}"), &[])?;
                    g.chain(&[pad(&d.avoffset, "text_src"), el(&tee)])?;
                    Some(tee)
                }
                _ => None,
            };
            branches.push(LanguageBranch {
                language: lang.clone(),
                dubbing: dub,
                audio_out,
                encoder_in: econv,
                to_mux: mq,
                text_tee,
                caption_inserter: None,
            });
        }
        if original {
            let i = self.target_languages.len();
            let q = g.make(
                "queue",
                "oq",
                &[
                    ("max-size-time", "3000000000".into()),
                    ("max-size-buffers", "0".into()),
                    ("max-size-bytes", "0".into()),
                ],
            )?;
            let av = g.make("avoffset", "avorig", &[("offset", shift.clone())])?;
            let econv = g.make("audioconvert", "oconv", &[])?;
            let enc = g.make(
                "voaacenc",
                "oenc",
                &[("bitrate", self.audio_bitrate.to_string())],
            )?;
            let parse = g.make("aacparse", "oparse", &[])?;
            let code = tsoutput::ts_language(&self.source_language).map_err(|e| e.to_string())?;
            let tag = g.make(
                "taginject",
                "langorig",
                &[("tags", tsoutput::language_tags(&code))],
            )?;
            // Live, the original reaches the muxer an STS round trip before the dubs: its
            // queue holds the whole offset (the tee must never block on it).
            let mq = g.make(
                "queue",
                "omq",
                &[
                    (
                        "max-size-time",
                        (self.offset_ns + 3_000_000_000).to_string(),
                    ),
                    ("max-size-buffers", "0".into()),
                    ("max-size-bytes", "0".into()),
                ],
            )?;
            g.chain(&[el(&atee), el(&q), pad(&av, "audio_sink")])?;
            let track = track_pad(i);
            g.chain(&[
                pad(&av, "audio_src"),
                el(&econv),
                el(&enc),
                el(&parse),
                el(&tag),
                el(&mq),
                mux_end(&muxes[0], &track),
            ])?;
        }
        // The video, through the first branch's avoffset (the others' stay unlinked).
        let av0 = branches
            .first()
            .and_then(|b| b.dubbing.as_ref())
            .map(|d| d.avoffset.clone());
        let video = match &av0 {
            Some(av) => {
                g.chain(&[el(video_in), pad(av, "video_sink")])?;
                pad(av, "video_src")
            }
            None => el(video_in),
        };
        let video_track = ts.then(|| tsoutput::mux_pad_name(0));
        // A caption inserter for `branch` on `channel` (its text linked below, once the video
        // path has declared it in the line).
        let inserter = |g: &mut Graph,
                        branches: &[LanguageBranch],
                        branch: usize,
                        channel: &str|
         -> Result<Option<gst::Element>, String> {
            if branches[branch].text_tee.is_none() {
                return Ok(None);
            }
            g.make(
                "cc608insert",
                &format!("cc{branch}"),
                &[
                    ("channel", channel.into()),
                    ("latency", self.caption_latency_ns.to_string()),
                ],
            )
            .map(Some)
        };
        let mut inserters: Vec<(usize, gst::Element)> = Vec::new();
        if muxes.len() > 1 {
            let vtee = g.make("tee", "vtee", &[])?;
            g.chain(&[video, el(&vtee)])?;
            for (i, mux) in muxes.iter().enumerate() {
                let q = g.make("queue", &format!("vq{i}"), &unbounded())?;
                match inserter(g, &branches, i, caption_channel(0))? {
                    Some(cc) => {
                        g.chain(&[el(&vtee), el(&q), el(&cc), el(mux)])?;
                        inserters.push((i, cc));
                    }
                    None => g.chain(&[el(&vtee), el(&q), el(mux)])?,
                }
            }
        } else {
            let q = g.make("queue", "vq", &unbounded())?;
            for i in 0..branches.len().min(CAPTIONED_LANGUAGES_PER_VIDEO) {
                if let Some(cc) = inserter(g, &branches, i, caption_channel(inserters.len()))? {
                    inserters.push((i, cc));
                }
            }
            // Inserters in series share one deadline: each waits for its text up to each
            // frame's time + the caption latency, on the clock until then at most, so the
            // video is late by one caption latency, not by one per inserter. The latency
            // query says so: what a later inserter is told of its upstream leaves out the
            // earlier ones' latency (else each would add its own on top).
            for (_, cc) in inserters.iter().skip(1) {
                share_deadline(cc, self.caption_latency_ns);
            }
            let mut chain = vec![video, el(&q)];
            // MPEG-TS takes H.264 as byte-stream, with the parameter sets before every
            // keyframe (a reader joins anywhere): a parser converts what the source gives
            // (h264timestamper, after the source's parser, passes no caps query on).
            let tsparse = if ts {
                Some(g.make("h264parse", "tsparse", &[("config-interval", "-1".into())])?)
            } else {
                None
            };
            chain.extend(tsparse.iter().map(el));
            chain.extend(inserters.iter().map(|(_, cc)| el(cc)));
            chain.push(mux_end(&muxes[0], &video_track));
            g.chain(&chain)?;
        }
        for (i, cc) in inserters {
            let tee = branches[i]
                .text_tee
                .clone()
                .expect("captioned branch has its tee");
            let q = g.make("queue", &format!("tqc{i}"), &[])?;
            g.chain(&[el(&tee), el(&q), pad(&cc, "text_sink")])?;
            branches[i].caption_inserter = Some(cc);
        }
        Ok(branches)
    }

    /// The live muxers and their sinks (not linked yet): one FLV muxer per language, or one
    /// MPEG-TS muxer for every language.
    fn publications(
        &self,
        g: &mut Graph,
        kind: PublicationKind,
    ) -> Result<Vec<Publication>, String> {
        let mut out = Vec::new();
        // start-time-selection=first: a live muxer would otherwise start at running time 0
        // and mux whatever stream arrived first, seconds before the other (the output
        // runs `offset` ahead of the clock), giving backwards timestamps at the start.
        // latency: see [`Chain::mux_wait_ns`].
        let common = [
            ("start-time-selection", "first".to_string()),
            ("latency", self.mux_wait_ns().to_string()),
        ];
        let appsink = |g: &mut Graph, name: &str| {
            g.make(
                "appsink",
                name,
                &[
                    ("sync", "true".into()),
                    ("enable-last-sample", "false".into()),
                ],
            )
        };
        if kind.is_ts() {
            let mut props = vec![("alignment", tsoutput::MUX_ALIGNMENT.to_string())];
            props.extend(common.iter().cloned());
            let mux = g.make("mpegtsmux", "tsmux", &props)?;
            let sink = match kind {
                PublicationKind::SrtApp => appsink(g, "out")?,
                _ => g.make("srtsink", "out", &[("mode", "caller".into())])?,
            };
            out.push(Publication {
                language: self.target_languages.join(","),
                kind,
                mux,
                sink,
            });
            return Ok(out);
        }
        for (i, lang) in self.target_languages.iter().enumerate() {
            let mut props = vec![("streamable", "true".to_string())];
            props.extend(common.iter().cloned());
            let mux = g.make("flvmux", &format!("mux{i}"), &props)?;
            let sink = match kind {
                PublicationKind::RtmpApp => appsink(g, &format!("out{i}"))?,
                _ => g.make("rtmpsink", &format!("out{i}"), &[])?,
            };
            out.push(Publication {
                language: lang.clone(),
                kind,
                mux,
                sink,
            });
        }
        Ok(out)
    }

    /// The live pipeline: input (its first source bin, linked) to the publications of `kind`
    /// (one per language of the FLV kinds, one for every language of the MPEG-TS kinds); the
    /// outputs' URLs are the publications' (for [`PublicationKind::RtmpSink`] and
    /// [`PublicationKind::SrtSink`], set on the sink). `dubbing: false` is the baseline.
    pub fn live_pipeline(
        &self,
        urls: &LiveUrls,
        api_key: Option<&str>,
        kind: PublicationKind,
        dubbing: bool,
    ) -> Result<LivePipeline, String> {
        let wanted = if kind.is_ts() {
            1
        } else {
            self.target_languages.len()
        };
        if urls.outputs.len() != wanted {
            return Err(format!(
                "{} outputs for {} languages ({} wanted)",
                urls.outputs.len(),
                self.target_languages.len(),
                wanted
            ));
        }
        let pipeline = gst::Pipeline::new();
        let mut g = Graph::new(pipeline.upcast_ref());
        let ain = g.make("identity", "ain", &[("silent", "true".into())])?;
        let vin = g.make("identity", "vin", &[("silent", "true".into())])?;
        let publications = self.publications(&mut g, kind)?;
        let muxes: Vec<gst::Element> = publications.iter().map(|p| p.mux.clone()).collect();
        let to_mux: Vec<(&'static str, String)> = match self.live_audio_queue_ns() {
            Some(ns) if dubbing => vec![
                ("max-size-time", ns.to_string()),
                ("max-size-buffers", "0".into()),
                ("max-size-bytes", "0".into()),
            ],
            _ => vec![],
        };
        let branches = self.branches(
            &mut g,
            (&ain, &vin),
            &muxes,
            if dubbing {
                self.mux_wait_ns() + self.video_wait_ns()
            } else {
                self.mux_wait_ns()
            },
            &to_mux,
            dubbing,
            api_key,
        )?;
        for (p, url) in publications.iter().zip(&urls.outputs) {
            g.chain(&[el(&p.mux), el(&p.sink)])?;
            match kind {
                PublicationKind::RtmpSink => {
                    p.sink.set_property("location", format!("{url} live=1"))
                }
                PublicationKind::SrtSink => {
                    let srt = tsoutput::SrtPublish::from_url(url)?;
                    p.sink.set_property("uri", srt.uri());
                    p.sink
                        .set_property("latency", srt.latency_ms.min(i32::MAX as u32) as i32);
                    if let Some(id) = &srt.streamid {
                        p.sink.set_property("streamid", id);
                    }
                    if let Some(pass) = &srt.passphrase {
                        p.sink.set_property("passphrase", pass);
                    }
                    tsoutput::linger_before_close(&p.sink, srt.linger());
                }
                _ => {}
            }
        }
        let source = SourceBin::build(&urls.input, 0)?;
        source.link(&pipeline, &ain, &vin)?;
        // rtmp2src is not a live source: the pipeline would preroll on its data, and what it
        // delivered meanwhile would be a backlog for the whole run. The sinks do not wait
        // for a preroll (the pipeline plays at once, as with a live source), and the joint
        // makes the source live ([`crate::source::Joint::make_live`]).
        if matches!(urls.input, LiveInput::Rtmp(_)) && kind.is_app() {
            for p in &publications {
                p.sink.set_property("async", false);
            }
        }
        Ok(LivePipeline {
            pipeline,
            audio_in: ain,
            video_in: vin,
            source,
            branches,
            publications,
            graph: g,
        })
    }

    /// The worker's pipeline: [`Chain::live_pipeline`] into `appsink`s (FLV per language for
    /// RTMP outputs, one MPEG-TS for an SRT output).
    pub fn build_live(
        &self,
        urls: &LiveUrls,
        api_key: Option<&str>,
    ) -> Result<LivePipeline, String> {
        let kind = if urls.is_srt() {
            PublicationKind::SrtApp
        } else {
            PublicationKind::RtmpApp
        };
        self.live_pipeline(urls, api_key, kind, true)
    }

    /// `input` (a file: MP4, Matroska, FLV, MPEG-TS) dubbed into `output` (its muxer from the
    /// extension). With [`Chain::subtitles`], each language's translation goes through its
    /// `avoffset` into the muxer when it takes text (Matroska), else to a `fakesink`
    /// ([`FilePipeline::subtitle_sinks`]). `dubbing: false` is the baseline.
    pub fn file_pipeline(
        &self,
        input: &str,
        output: &str,
        api_key: Option<&str>,
        dubbing: bool,
    ) -> Result<FilePipeline, String> {
        let demux_factory =
            crate::pipeline::demuxer_for(input).ok_or_else(|| format!("no demuxer for {input}"))?;
        let (mux_factory, mux_props) =
            file_muxer(output).ok_or_else(|| format!("no muxer for {output}"))?;
        let pipeline = gst::Pipeline::new();
        let mut g = Graph::new(pipeline.upcast_ref());
        let src = g.make("filesrc", "file", &[("location", input.to_string())])?;
        let demux = g.make(demux_factory, "demux", &[])?;
        g.chain(&[el(&src), el(&demux)])?;
        let aq = g.make("queue", "dqa", &unbounded())?;
        let decode = g.make("decodebin", "decode", &[])?;
        // The first audio and video pads (flvdemux names them without a number).
        let (apad, vpad) = if demux_factory == "flvdemux" {
            ("audio", "video")
        } else {
            ("audio_0", "video_0")
        };
        g.delayed(&[pad(&demux, apad), el(&aq)]);
        g.chain(&[el(&aq), el(&decode)])?;
        let vq = g.make("queue", "dqv", &unbounded())?;
        let vparse = g.make("h264parse", "vparse", &[])?;
        g.delayed(&[pad(&demux, vpad), el(&vq)]);
        g.chain(&[el(&vq), el(&vparse)])?;
        {
            let (a, v) = (aq.downgrade(), vq.downgrade());
            demux.connect_pad_added(move |_, new| {
                let name = new.name();
                let target = if name.starts_with("audio") {
                    a.upgrade()
                } else if name.starts_with("video") {
                    v.upgrade()
                } else {
                    None
                };
                if let Some(sink) = target.and_then(|t| t.static_pad("sink"))
                    && !sink.is_linked()
                {
                    let _ = new.link(&sink);
                }
            });
        }
        // decodebin's audio pad, to the branches' first element.
        let mux = g.make(mux_factory, "mux", &mux_props)?;
        let audio_entry = g.make("identity", "decoded", &[("silent", "true".into())])?;
        g.delayed(&[el(&decode), el(&audio_entry)]);
        {
            let entry = audio_entry.downgrade();
            decode.connect_pad_added(move |_, new| {
                if let Some(sink) = entry.upgrade().and_then(|e| e.static_pad("sink"))
                    && !sink.is_linked()
                {
                    let _ = new.link(&sink);
                }
            });
        }
        let branches = self.branches(
            &mut g,
            (&audio_entry, &vparse),
            std::slice::from_ref(&mux),
            0,
            // Unbounded, like the video's: a muxer that waits for the sparse subtitle track
            // (matroskamux's collectpads waits for a new text item once the audio passes the
            // last text buffer's start) must be able to take a whole fragment's audio (up to
            // `max-duration`, 1.5 s) plus the speech run on past it before the next
            // fragment's text comes; a 1 s queue there deadlocked `.mkv` outputs.
            &unbounded(),
            dubbing,
            api_key,
        )?;
        let mut subtitle_sinks = Vec::new();
        if self.subtitles && dubbing {
            let text_mux = output.to_ascii_lowercase().ends_with(".mkv");
            for (i, b) in branches.iter().enumerate() {
                let d = b.dubbing.as_ref().expect("dubbing");
                // With captions the text already leaves avoffset by a tee.
                let from = match &b.text_tee {
                    Some(tee) => el(tee),
                    None => {
                        let q = g.make("queue", &format!("tq{i}"), &[])?;
                        g.chain(&[
                            pad(&d.bridge, "text_src"),
                            el(&q),
                            pad(&d.avoffset, "text_sink"),
                        ])?;
                        pad(&d.avoffset, "text_src")
                    }
                };
                let out_q = g.make("queue", &format!("tqo{i}"), &[])?;
                if text_mux {
                    g.chain(&[from, el(&out_q), el(&mux)])?;
                } else {
                    let sink = g.make(
                        "fakesink",
                        &format!("subs{i}"),
                        &[("sync", "false".into()), ("async", "false".into())],
                    )?;
                    g.chain(&[from, el(&out_q), el(&sink)])?;
                    subtitle_sinks.push(sink);
                }
            }
        }
        let sink = g.make("filesink", "sink", &[("location", output.to_string())])?;
        g.chain(&[el(&mux), el(&sink)])?;
        Ok(FilePipeline {
            pipeline,
            demux,
            branches,
            mux,
            subtitle_sinks,
            graph: g,
        })
    }

    /// [`Chain::file_pipeline`], dubbed.
    pub fn build_file(
        &self,
        input: &str,
        output: &str,
        api_key: Option<&str>,
    ) -> Result<FilePipeline, String> {
        self.file_pipeline(input, output, api_key, true)
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::graph::shape;

    fn two_languages() -> Chain {
        Chain {
            url: "http://user:pw@127.0.0.1:9/p?api_key=sk-q".into(),
            stream_id: "t".into(),
            target_languages: vec!["es".into(), "de".into()],
            ..Default::default()
        }
    }

    fn links(bin: &gst::Bin) -> Vec<String> {
        shape(bin).1
    }

    /// Whether the input lacks a track is what the server's description offered
    /// (`select-stream`), not which depayloader happens to be linked when `no-more-pads`
    /// comes: rtspsrc 1.22 can signal it from one stream's thread before the other stream's
    /// pad is added, and a reconnected worker then gave up on a good input ("no video track",
    /// seen in CI). Here nothing is linked when the signal comes.
    #[test]
    fn a_missing_track_is_one_the_description_did_not_offer() {
        crate::init().unwrap();
        let offer = |streams: &[&str]| {
            let input = LiveInput::Rtsp("rtsp://127.0.0.1:9/live/t/in".into());
            let source = SourceBin::build(&input, 1).unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let seen2 = seen.clone();
            source.on_all_pads(move |src, o| {
                seen2.lock().unwrap().push((src.name().to_string(), o));
            });
            // As rtspsrc 1.22 gives them: the SDP's fields, named `application/x-unknown`.
            for (id, caps) in streams.iter().enumerate() {
                let caps = gst::Caps::from_str(caps).unwrap();
                let selected = source
                    .src
                    .emit_by_name::<bool>("select-stream", &[&(id as u32), &caps]);
                assert!(selected, "every stream is set up");
            }
            source.src.emit_by_name::<()>("no-more-pads", &[]);
            let seen = seen.lock().unwrap().clone();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].0, "src");
            seen[0].1
        };
        let aac = "application/x-unknown, media=audio, clock-rate=48000, \
                   encoding-name=MPEG4-GENERIC, payload=97";
        let h264 = "application/x-unknown, media=video, clock-rate=90000, \
                    encoding-name=H264, payload=96";
        let h265 = "application/x-unknown, media=video, clock-rate=90000, \
                    encoding-name=H265, payload=96";
        let both = Offered {
            audio: true,
            video: true,
        };
        assert_eq!(offer(&[h264, aac]), both);
        assert_eq!(offer(&[aac, h264]), both);
        assert_eq!(
            offer(&[aac]),
            Offered {
                audio: true,
                video: false
            }
        );
        assert_eq!(
            offer(&[h265, aac]),
            Offered {
                audio: true,
                video: false
            }
        );
        assert_eq!(
            offer(&[h264]),
            Offered {
                audio: false,
                video: true
            }
        );
        // RTMP: flvdemux's pads say what there is; nothing to call.
        let rtmp =
            SourceBin::build(&LiveInput::Rtmp("rtmp://127.0.0.1:9/live/t".into()), 1).unwrap();
        rtmp.on_all_pads(|_, _| panic!("not for RTMP"));
    }

    /// The live pipeline's links (not substrings of a description): the joint to the tee,
    /// each language's chain to its own muxer, the video through the first avoffset to every
    /// muxer; the bridges carry their language and the secrets are on the objects.
    #[test]
    fn the_live_pipeline_is_linked_language_by_language() {
        crate::init().unwrap();
        let urls = LiveUrls::new(
            "rtsp://u:p@127.0.0.1:9/live/t/in",
            vec![
                "rtmp://127.0.0.1:9/live/k1".into(),
                "rtmp://127.0.0.1:9/live/k2".into(),
            ],
        )
        .unwrap();
        let c = two_languages();
        let p = c.build_live(&urls, Some("sk-1")).unwrap();
        let l = links(p.pipeline.upcast_ref());
        for link in [
            "ain -> aconv",
            "acaps -> atee",
            "atee -> aq0",
            "atee -> aq1",
            "aq0 -> chunk0",
            "chunk0 -> sts0",
            "sts0 -> av0",
            "av0 -> econv0",
            "amq0 -> mux0",
            "amq1 -> mux1",
            "vin -> av0",
            "av0 -> vtee",
            "vtee -> vq0",
            "vq1 -> mux1",
            "mux0 -> out0",
            "vts -> vin",
            "adec -> ain",
        ] {
            assert!(l.iter().any(|x| x == link), "{link} missing from {l:#?}");
        }
        assert!(
            !l.iter().any(|x| x == "av1 -> vtee"),
            "one avoffset carries video"
        );
        assert_eq!(p.branches[1].language, "de");
        let d = p.branches[1].dubbing.as_ref().unwrap();
        assert_eq!(d.bridge.property::<String>("target-language"), "de");
        assert_eq!(d.bridge.property::<String>("stream-id"), "t-de");
        assert_eq!(
            p.language_of(d.avoffset.upcast_ref()),
            Some(1),
            "a message's language from its element, not its name"
        );
        assert_eq!(
            p.source.src.property::<String>("location"),
            "rtsp://u:p@127.0.0.1:9/live/t/in"
        );
        // stsbridge never reads credentials or query values back.
        assert_eq!(
            d.bridge.property::<String>("url"),
            "http://***@127.0.0.1:9/p?api_key=***"
        );
        assert!(p.publications[1].app_sink().is_some());
        // No URL, no key in the line.
        let line = p.to_launch_line();
        for secret in ["pw", "sk-", "location", "://"] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
        let too_few = LiveUrls::new("rtsp://h/x", vec!["rtmp://h/a/b".into()]).unwrap();
        assert!(c.build_live(&too_few, None).is_err());
    }

    /// The launch line is the pipeline: parsed, it has the same elements and links (the
    /// source's pads come when it connects, in both).
    #[test]
    fn the_launch_line_parses_into_the_same_graph() {
        crate::init().unwrap();
        for input in [
            "rtsp://127.0.0.1:9/live/t/in",
            "rtmp://127.0.0.1:9/live/t/in",
        ] {
            let urls = LiveUrls::new(
                input,
                vec![
                    "rtmp://127.0.0.1:9/live/a".into(),
                    "rtmp://127.0.0.1:9/live/b".into(),
                ],
            )
            .unwrap();
            let c = two_languages();
            for dubbing in [true, false] {
                let p = c
                    .live_pipeline(&urls, None, PublicationKind::RtmpSink, dubbing)
                    .unwrap();
                let line = p.to_launch_line();
                let parsed = gst::parse::launch(&line)
                    .unwrap_or_else(|e| panic!("{e}: {line}"))
                    .downcast::<gst::Bin>()
                    .unwrap();
                assert_eq!(shape(&parsed), shape(p.pipeline.upcast_ref()), "{line}");
                assert_eq!(line.contains("stsbridge"), dubbing, "{line}");
            }
        }
        let f = two_languages()
            .file_pipeline("in.mp4", "out dir/o.mkv", None, true)
            .unwrap();
        let line = f.to_launch_line();
        let parsed = gst::parse::launch(&line)
            .unwrap()
            .downcast::<gst::Bin>()
            .unwrap();
        assert_eq!(shape(&parsed), shape(f.pipeline.upcast_ref()), "{line}");
    }

    #[test]
    fn the_file_pipeline_muxes_every_language_and_its_subtitles() {
        crate::init().unwrap();
        let c = Chain {
            subtitles: true,
            ..two_languages()
        };
        let f = c.file_pipeline("in.mp4", "o.mkv", None, true).unwrap();
        let l = links(f.pipeline.upcast_ref());
        for link in [
            "file -> demux",
            "dqa -> decode",
            "decoded -> aconv",
            "amq0 -> mux",
            "amq1 -> mux",
            "vparse -> av0",
            "av0 -> vq",
            "vq -> mux",
            "sts1 -> tq1",
            "tq1 -> av1",
            "av1 -> tqo1",
            "tqo1 -> mux",
            "mux -> sink",
        ] {
            assert!(l.iter().any(|x| x == link), "{link} missing from {l:#?}");
        }
        assert!(f.subtitle_sinks.is_empty(), "Matroska takes the text");
        let mp4 = c.file_pipeline("in.mp4", "o.mp4", None, true).unwrap();
        assert_eq!(mp4.subtitle_sinks.len(), 2);
        assert!(c.file_pipeline("in.xyz", "o.mp4", None, true).is_err());
        // The baseline: the same chain with nothing dubbed.
        let b = c.file_pipeline("in.mp4", "o.mp4", None, false).unwrap();
        let l = links(b.pipeline.upcast_ref());
        assert!(l.iter().any(|x| x == "baseline0 -> econv0"), "{l:#?}");
        assert!(l.iter().any(|x| x == "vparse -> vq"), "{l:#?}");
        assert!(b.branches.iter().all(|b| b.dubbing.is_none()));
    }

    fn captioned(kind: PublicationKind) -> (Chain, LivePipeline) {
        let outputs = if kind.is_ts() {
            vec!["srt://127.0.0.1:9?streamid=publish:live/t/out:u:pw-srt".into()]
        } else {
            vec![
                "rtmp://127.0.0.1:9/live/a".into(),
                "rtmp://127.0.0.1:9/live/b".into(),
            ]
        };
        let urls = LiveUrls::new("rtsp://127.0.0.1:9/live/t/in", outputs).unwrap();
        let c = Chain {
            captions: true,
            original_track: true,
            ..two_languages()
        };
        let p = c.live_pipeline(&urls, None, kind, true).unwrap();
        (c, p)
    }

    /// Captions over RTMP: each publication's video gets its own language's captions on CC1
    /// (the video teed once, an inserter after the tee per publication, fed by the
    /// language's avoffset text pads); the caption latency comes out of avoffset's shift and
    /// the audio queues before the muxers hold it and a fragment.
    #[test]
    fn each_rtmp_publication_carries_its_own_languages_captions() {
        crate::init().unwrap();
        let (c, p) = captioned(PublicationKind::RtmpSink);
        let l = links(p.pipeline.upcast_ref());
        for link in [
            "sts0 -> tq0",
            "tq0 -> av0",
            "av0 -> ttee0",
            "ttee0 -> tqc0",
            "tqc0 -> cc0",
            "vtee -> vq0",
            "vq0 -> cc0",
            "cc0 -> mux0",
            "ttee1 -> tqc1",
            "tqc1 -> cc1",
            "vq1 -> cc1",
            "cc1 -> mux1",
        ] {
            assert!(l.iter().any(|x| x == link), "{link} missing from {l:#?}");
        }
        for (i, b) in p.branches.iter().enumerate() {
            let cc = b.caption_inserter.as_ref().unwrap();
            assert_eq!(cc.name(), format!("cc{i}"));
            assert_eq!(
                cc.property::<gstdubbing::cc608insert::Channel>("channel"),
                gstdubbing::cc608insert::Channel::Cc1
            );
            assert_eq!(cc.property::<u64>("latency"), c.caption_latency_ns);
            let av = &b.dubbing.as_ref().unwrap().avoffset;
            assert_eq!(av.property::<u64>("offset"), c.live_shift_ns());
            assert_eq!(
                b.to_mux.property::<u64>("max-size-time"),
                c.live_audio_queue_ns().unwrap()
            );
        }
        assert_eq!(c.live_shift_ns(), 4_300_000_000);
        // No original track in FLV.
        assert!(!l.iter().any(|x| x.starts_with("avorig")), "{l:#?}");
        let line = p.to_launch_line();
        let parsed = gst::parse::launch(&line)
            .unwrap_or_else(|e| panic!("{e}: {line}"))
            .downcast::<gst::Bin>()
            .unwrap();
        assert_eq!(shape(&parsed), shape(p.pipeline.upcast_ref()), "{line}");
    }

    /// SRT: one MPEG-TS muxer, the video on its first pad through CC1 (first language) and
    /// CC3 (second), each language's AAC tagged on a pad of its own in order, the original
    /// last (shifted by its own avoffset); no credential in the line.
    #[test]
    fn the_srt_publication_has_every_language_on_a_tagged_track() {
        crate::init().unwrap();
        let (c, p) = captioned(PublicationKind::SrtSink);
        assert_eq!(p.publications.len(), 1);
        let mux = &p.publications[0].mux;
        assert_eq!(mux.property::<i32>("alignment"), 7);
        let peer = |pad: &str| {
            mux.static_pad(pad)
                .and_then(|p| p.peer())
                .and_then(|p| p.parent_element())
                .map(|e| e.name().to_string())
        };
        assert_eq!(peer("sink_256").as_deref(), Some("cc1"));
        assert_eq!(peer("sink_257").as_deref(), Some("amq0"));
        assert_eq!(peer("sink_258").as_deref(), Some("amq1"));
        assert_eq!(peer("sink_259").as_deref(), Some("omq"));
        let l = links(p.pipeline.upcast_ref());
        for link in [
            "av0 -> vq",
            "vq -> tsparse",
            "tsparse -> cc0",
            "cc0 -> cc1",
            "tqc0 -> cc0",
            "tqc1 -> cc1",
            "eparse0 -> lang0",
            "lang0 -> amq0",
            "atee -> oq",
            "oq -> avorig",
            "avorig -> oconv",
            "langorig -> omq",
            "tsmux -> out",
        ] {
            assert!(l.iter().any(|x| x == link), "{link} missing from {l:#?}");
        }
        let channel = |b: &LanguageBranch| {
            b.caption_inserter
                .as_ref()
                .unwrap()
                .property::<gstdubbing::cc608insert::Channel>("channel")
        };
        assert_eq!(
            channel(&p.branches[0]),
            gstdubbing::cc608insert::Channel::Cc1
        );
        assert_eq!(
            channel(&p.branches[1]),
            gstdubbing::cc608insert::Channel::Cc3
        );
        let sink = &p.publications[0].sink;
        assert_eq!(
            sink.property::<String>("streamid"),
            "publish:live/t/out:u:pw-srt"
        );
        let line = p.to_launch_line();
        assert!(
            line.contains("taginject name=lang1 tags=\"language-code=de\""),
            "{line}"
        );
        assert!(
            line.contains("taginject name=langorig tags=\"language-code=en\""),
            "{line}"
        );
        for secret in ["pw-srt", "streamid", "127.0.0.1"] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
        let parsed = gst::parse::launch(&line)
            .unwrap_or_else(|e| panic!("{e}: {line}"))
            .downcast::<gst::Bin>()
            .unwrap();
        assert_eq!(shape(&parsed), shape(p.pipeline.upcast_ref()), "{line}");
        assert_eq!(
            p.branches[0]
                .dubbing
                .as_ref()
                .unwrap()
                .avoffset
                .property::<u64>("offset"),
            c.live_shift_ns()
        );
    }

    /// A `.ts` file: every language on its own tagged track, the captions of the first two
    /// on CC1 and CC3, the subtitles taken from the text tees.
    #[test]
    fn a_ts_file_tags_every_language_and_captions_two() {
        crate::init().unwrap();
        let c = Chain {
            captions: true,
            subtitles: true,
            ..two_languages()
        };
        let f = c.file_pipeline("in.mp4", "o.ts", None, true).unwrap();
        let l = links(f.pipeline.upcast_ref());
        for link in [
            "tsparse -> cc0",
            "cc0 -> cc1",
            "cc1 -> mux",
            "lang0 -> amq0",
            "amq1 -> mux",
            "ttee0 -> tqo0",
            "tqo0 -> subs0",
            "ttee1 -> tqc1",
        ] {
            assert!(l.iter().any(|x| x == link), "{link} missing from {l:#?}");
        }
        let peer = |pad: &str| {
            f.mux
                .static_pad(pad)
                .and_then(|p| p.peer())
                .and_then(|p| p.parent_element())
                .map(|e| e.name().to_string())
        };
        assert_eq!(peer("sink_256").as_deref(), Some("cc1"));
        assert_eq!(peer("sink_258").as_deref(), Some("amq1"));
        // Files are not live: the shift is the offset.
        assert_eq!(
            f.branches[0]
                .dubbing
                .as_ref()
                .unwrap()
                .avoffset
                .property::<u64>("offset"),
            c.offset_ns
        );
        let line = f.to_launch_line();
        let parsed = gst::parse::launch(&line)
            .unwrap_or_else(|e| panic!("{e}: {line}"))
            .downcast::<gst::Bin>()
            .unwrap();
        assert_eq!(shape(&parsed), shape(f.pipeline.upcast_ref()), "{line}");
    }
}
