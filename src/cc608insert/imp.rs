//! # cc608insert
//!
//! Puts timed text into H.264 video as CEA-608 closed captions, without re-encoding: each cue
//! becomes a pop-on caption on CC1 (or `channel`), carried as ATSC A/53 `cc_data` in an SEI
//! NAL unit (ITU-T T.35, "GA94") added to every access unit. This is what YouTube, Twitch and
//! TV players read from RTMP, HLS and MPEG-TS. The video's own NAL units pass byte-identical.
//!
//! ```text
//! gst-launch-1.0 filesrc location=fixtures/speech-60s.mp4 ! qtdemux ! h264parse \
//!   ! cc608insert name=cc ! h264parse ! mp4mux ! filesink location=captioned.mp4 \
//!   filesrc location=cues.srt ! subparse ! queue ! cc.text_sink
//! ```
//!
//! In the dubbing pipeline: `stsbridge`'s `text_src` → `avoffset`'s `text_sink`/`text_src` →
//! `cc608insert`'s `text_sink`, and `avoffset`'s `video_src` → `cc608insert` → muxer.
//!
//! ## Pads
//! `sink` → `src`: `video/x-h264`, `stream-format` avc, avc3 or byte-stream, `alignment=au`.
//! `text_sink` (request): `text/x-raw, format=utf8`, one buffer per cue (PTS, DURATION; none:
//! until the next cue), GAP events in between. Without a `text_sink` the video passes through
//! untouched; with one, every access unit gets an SEI (padding when there is nothing to say).
//!
//! ## Captions
//! Layout, characters and timing are [`super::cea608`] and [`super::schedule`]: rows of at
//! most 32 columns centred on the bottom rows (two lines: rows 14–15), at most `max-lines` per
//! caption (a longer cue becomes several captions sharing its time), characters outside 608
//! mapped to the nearest it has (Spanish accents through the special and extended sets).
//! 608 carries ~30 byte pairs a second: one per frame at 29.97/30 fps, 1.2 at 25 fps. Each
//! caption is loaded while the previous one shows and appears on the frame nearest its start;
//! a two-row caption takes ~1.3 s to load, so a cue known `latency` ahead appears on time.
//! Caption data follows presentation order: with B-frames, frames are held (a few frames, in
//! decode order) until no frame still to come can be presented before them.
//!
//! ## Waiting for the text
//! A frame presented at running time t is given its caption data once the text is known up to
//! t + `latency` (a cue or a GAP event beyond it, or the text's EOS), if the text pad is
//! linked. Live: it waits on the clock at most until t + upstream latency + `latency`, which is what this element adds to
//! the latency query, so a sparse or missing text stream never stalls the video. Not live: it
//! waits while the text pad is linked and the text moves. A text that stands still for 10 s
//! (on the clock; longer than a slow STS answer) cannot run ahead of the video: `stsbridge`
//! pushes its text and audio from one thread, and a full audio queue before the muxer holds
//! that thread until the video comes. Then a warning is posted, the video goes on, and from
//! then on waits only for the text of each frame's own time t, and not at all until the text
//! moves; if it stands still again for `latency`, the video stops waiting for it
//! (`lookahead-reduced`, `text-timeouts`). Give that queue `latency` plus a fragment (e.g.
//! `max-size-time=4000000000`) and captions are on time; with the default 1 s queue they come
//! up to a load time late.
//!
//! ## Threads and locks
//! The video streaming thread does all the work (holds, waits, inserts, pushes); the text
//! streaming thread turns cues into captions and wakes it (condition variable, and the clock
//! id it waits on). Locks: `settings` and `state` are never held together (settings are copied
//! first); nothing is pushed while `state` is held. Flushes and PAUSED→READY cancel the wait.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::reorder::Reorder;
use super::schedule::{FrameBudget, Scheduler, captions};
use super::sei::{NalFraming, cc_data, insertion_point, sei_nal};
use super::{Channel, Mode, STATS_STRUCTURE};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cc608insert",
        gst::DebugColorFlags::empty(),
        Some("CEA-608 caption inserter"),
    )
});

const SECOND: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const DEFAULT_MAX_LINES: u32 = 2;
/// About what a two-row caption takes to load at 29.97 pairs a second (40 pairs) plus margin.
const DEFAULT_LATENCY: u64 = 1500 * MS;
/// Not live: how long the text may stand still before the video stops waiting for it to run
/// `latency` ahead (at least `latency`). Long enough for a slow STS answer to come.
const TEXT_STALL: u64 = 10 * SECOND;
/// Most frames held for presentation order (B-frame streams need a few).
const MAX_HELD: usize = 64;
/// Frame duration when neither caps nor buffers say (29.97 fps).
const DEFAULT_FRAME_DURATION: u64 = 33_366_667;

#[derive(Debug, Clone, Copy)]
struct Settings {
    channel: Channel,
    mode: Mode,
    max_lines: u32,
    latency: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            channel: Channel::default(),
            mode: Mode::default(),
            max_lines: DEFAULT_MAX_LINES,
            latency: DEFAULT_LATENCY,
        }
    }
}

#[derive(Debug)]
enum Item {
    Buffer(gst::Buffer),
    Event(gst::Event),
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    frames: u64,
    seis: u64,
    passthrough: u64,
    cues: u64,
    captions: u64,
    text_timeouts: u64,
    lookahead_reduced: u64,
    bad_access_units: u64,
}

struct State {
    framing: Option<NalFraming>,
    budget: FrameBudget,
    frame_duration: u64,
    caps_frame_duration: Option<u64>,
    video_segment: gst::FormattedSegment<gst::ClockTime>,
    video_flushing: bool,
    reorder: Reorder<Item, Vec<u8>>,
    scheduler: Scheduler,
    field: u8,
    text_pad: Option<gst::Pad>,
    text_segment: gst::FormattedSegment<gst::ClockTime>,
    /// Running time up to which the text is known.
    text_pos: Option<u64>,
    text_eos: bool,
    text_flushing: bool,
    /// Not live: the lookahead when lowered (to 0, after the text stood still).
    lookahead: Option<u64>,
    /// Not live: times the text stood still while the video waited.
    stalls: u32,
    /// Not live: the text position when a wait was last given up (no wait until it moves).
    stalled_at: Option<Option<u64>>,
    /// Upstream latency of the video: (live, min).
    upstream: Option<(bool, u64)>,
    wait_id: Option<gst::SingleShotClockId>,
    stats: Stats,
}

impl State {
    fn new(settings: &Settings, text_pad: Option<gst::Pad>) -> State {
        let channel: super::cea608::Channel = settings.channel.into();
        State {
            framing: None,
            budget: FrameBudget::new(0, 1),
            frame_duration: DEFAULT_FRAME_DURATION,
            caps_frame_duration: None,
            video_segment: gst::FormattedSegment::new(),
            video_flushing: true,
            reorder: Reorder::default(),
            scheduler: Scheduler::new(channel),
            field: channel.field(),
            text_pad,
            text_segment: gst::FormattedSegment::new(),
            text_pos: None,
            text_eos: false,
            text_flushing: false,
            lookahead: None,
            stalls: 0,
            stalled_at: None,
            upstream: None,
            wait_id: None,
            stats: Stats::default(),
        }
    }

    fn wake(&mut self, cond: &Condvar) {
        if let Some(id) = self.wait_id.take() {
            id.unschedule();
        }
        cond.notify_all();
    }

    fn video_rt(&self, ts: u64) -> u64 {
        self.video_segment
            .to_running_time(gst::ClockTime::from_nseconds(ts))
            .map_or(0, |t| t.nseconds())
    }

    fn text_rt(&self, ts: gst::ClockTime) -> Option<u64> {
        self.text_segment.to_running_time(ts).map(|t| t.nseconds())
    }
}

pub struct Cc608Insert {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<State>,
    cond: Condvar,
}

#[glib::object_subclass]
impl ObjectSubclass for Cc608Insert {
    const NAME: &'static str = "GstCc608Insert";
    type Type = super::Cc608Insert;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad = gst::Pad::builder_from_template(&klass.pad_template("sink").unwrap())
            .chain_function(|pad, parent, buffer| {
                Cc608Insert::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                Cc608Insert::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .iterate_internal_links_function(|pad, parent| {
                Cc608Insert::catch_panic_pad_function(
                    parent,
                    || gst::Iterator::from_vec(vec![]),
                    |imp| imp.internal_links(pad),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        let srcpad = gst::Pad::builder_from_template(&klass.pad_template("src").unwrap())
            .query_function(|pad, parent, query| {
                Cc608Insert::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .event_function(|pad, parent, event| {
                Cc608Insert::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_event(pad, event),
                )
            })
            .iterate_internal_links_function(|pad, parent| {
                Cc608Insert::catch_panic_pad_function(
                    parent,
                    || gst::Iterator::from_vec(vec![]),
                    |imp| imp.internal_links(pad),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        let settings = Settings::default();
        Cc608Insert {
            sinkpad,
            srcpad,
            state: Mutex::new(State::new(&settings, None)),
            settings: Mutex::new(settings),
            cond: Condvar::new(),
        }
    }
}

impl Cc608Insert {
    fn settings(&self) -> Settings {
        *self.settings.lock()
    }

    /// Video only: caps, allocation and queries go between `sink` and `src`; the text pad has
    /// no internal link.
    fn internal_links(&self, pad: &gst::Pad) -> gst::Iterator<gst::Pad> {
        if pad == &self.srcpad {
            gst::Iterator::from_vec(vec![self.sinkpad.clone()])
        } else if pad == &self.sinkpad {
            gst::Iterator::from_vec(vec![self.srcpad.clone()])
        } else {
            gst::Iterator::from_vec(vec![])
        }
    }

    /// Upstream events go to the video; a seek goes to the text as well, so both flush.
    fn src_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        if let gst::EventView::Seek(_) = event.view() {
            let text_pad = self.state.lock().text_pad.clone();
            if let Some(tp) = text_pad {
                tp.push_event(event.clone());
            }
        }
        gst::Pad::event_default(pad, Some(&*self.obj()), event)
    }

    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut st = self.state.lock();
        if st.video_flushing {
            return Err(gst::FlowError::Flushing);
        }
        if st.text_pad.is_none() && st.reorder.is_empty() {
            st.stats.frames += 1;
            st.stats.passthrough += 1;
            drop(st);
            return self.srcpad.push(buffer);
        }
        if st.framing.is_none() {
            drop(st);
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["no caps on the video sink pad before its first buffer"]
            );
            return Err(gst::FlowError::NotNegotiated);
        }
        if st.caps_frame_duration.is_none()
            && let Some(d) = buffer.duration().filter(|d| d.nseconds() > 0)
        {
            st.frame_duration = d.nseconds();
        }
        let (pts, dts) = (
            buffer.pts().map(|t| t.nseconds()),
            buffer.dts().map(|t| t.nseconds()),
        );
        st.stats.frames += 1;
        st.reorder.push_frame(Item::Buffer(buffer), pts, dts);
        // Timestamps that never let a frame be final (DTS far behind PTS) must not hold the
        // video: past this many, everything held is given its data.
        let overflow = st.reorder.len() > MAX_HELD;
        if overflow {
            gst::warning!(
                CAT,
                imp = self,
                "{} frames held for reordering: DTS far behind PTS? going on",
                st.reorder.len()
            );
        }
        let need_latency = st.upstream.is_none();
        drop(st);
        if need_latency {
            self.query_upstream_latency();
        }
        self.process(overflow)
    }

    /// Latency of the video upstream, for the live wait's deadline.
    fn query_upstream_latency(&self) -> (bool, u64) {
        let mut q = gst::query::Latency::new();
        let res = if self.sinkpad.peer_query(&mut q) {
            let (live, min, _) = q.result();
            (live, min.nseconds())
        } else {
            (false, 0)
        };
        self.state.lock().upstream = Some(res);
        res
    }

    /// Gives every frame whose turn has come in presentation order its caption data (waiting
    /// for the text as needed), then pushes what is ready from the front. `all`: every held
    /// frame (end of stream).
    fn process(&self, all: bool) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = self.settings();
        let mut st = self.state.lock();
        loop {
            if st.video_flushing {
                return Err(gst::FlowError::Flushing);
            }
            let Some(due) = st.reorder.next_due(all) else {
                break;
            };
            let pts_rt = st.video_rt(due.pts);
            st = self.wait_for_text(st, pts_rt, &settings)?;
            if st.reorder.next_due(all) != Some(due) {
                continue;
            }
            let budget = st.budget.next_frame();
            let duration = st.frame_duration;
            let pairs = st.scheduler.frame(pts_rt, duration, budget);
            let framing = st.framing.unwrap_or(NalFraming::StartCode);
            let sei = framing.frame(&sei_nal(&cc_data(st.field, &pairs)));
            st.reorder.assign(due.key, sei);
        }
        let ready = st.reorder.pop_ready();
        let framing = st.framing;
        drop(st);

        for (item, sei) in ready {
            match item {
                Item::Event(e) => {
                    self.srcpad.push_event(e);
                }
                Item::Buffer(b) => {
                    let b = match (sei, framing) {
                        (Some(sei), Some(framing)) => self.insert(b, &sei, framing),
                        _ => b,
                    };
                    // A flow error ends the stream: what is left goes with it.
                    self.srcpad.push(b)?;
                }
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// The access unit with the framed SEI before its first slice; unchanged (counted) when
    /// it has none or cannot be parsed.
    fn insert(&self, buffer: gst::Buffer, sei: &[u8], framing: NalFraming) -> gst::Buffer {
        let at = {
            let Ok(map) = buffer.map_readable() else {
                return buffer;
            };
            insertion_point(&map, framing)
        };
        let at = match at {
            Ok(at) => at,
            Err(e) => {
                let mut st = self.state.lock();
                st.stats.bad_access_units += 1;
                if st.stats.bad_access_units <= 10 {
                    gst::warning!(CAT, imp = self, "access unit left without captions: {e}");
                }
                return buffer;
            }
        };
        let mut out = gst::Buffer::new();
        {
            let o = out.get_mut().expect("new buffer is writable");
            if buffer
                .copy_into(
                    o,
                    gst::BufferCopyFlags::FLAGS
                        | gst::BufferCopyFlags::TIMESTAMPS
                        | gst::BufferCopyFlags::META,
                    ..,
                )
                .is_err()
            {
                return buffer;
            }
        }
        let parts = [
            (at > 0).then(|| buffer.copy_region(gst::BufferCopyFlags::MEMORY, ..at)),
            Some(Ok(gst::Buffer::from_mut_slice(sei.to_vec()))),
            Some(buffer.copy_region(gst::BufferCopyFlags::MEMORY, at..)),
        ];
        for part in parts.into_iter().flatten() {
            match part {
                Ok(p) => out.append(p),
                Err(_) => return buffer,
            }
        }
        self.state.lock().stats.seis += 1;
        out
    }

    /// Waits until the text is known up to `pts_rt + latency` (not live, after the text stood
    /// still: up to `pts_rt`), the text is gone or at EOS, or the wait is given up: live, at the
    /// frame's deadline on the clock; not live, when the text has not moved for 10 s (see the
    /// module doc).
    fn wait_for_text<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        pts_rt: u64,
        settings: &Settings,
    ) -> Result<MutexGuard<'a, State>, gst::FlowError> {
        loop {
            if st.video_flushing {
                return Err(gst::FlowError::Flushing);
            }
            let Some(text_pad) = st.text_pad.clone() else {
                return Ok(st);
            };
            let (live, upstream_min) = st.upstream.unwrap_or((false, 0));
            let lookahead = if live {
                settings.latency
            } else {
                st.lookahead
                    .unwrap_or(settings.latency)
                    .min(settings.latency)
            };

            let target = pts_rt + lookahead;
            if st.text_eos || st.text_pos.is_some_and(|p| p >= target) {
                return Ok(st);
            }
            if !text_pad.is_linked()
                || (!live && (st.stalls >= 2 || st.stalled_at == Some(st.text_pos)))
            {
                // Nothing can come, given up on, or still where it stood when a wait was
                // given up.
                return Ok(st);
            }
            let obj = self.obj();
            let (Some(clock), Some(base)) = (obj.clock(), obj.base_time()) else {
                return Ok(st);
            };
            let deadline = if live {
                base + gst::ClockTime::from_nseconds(pts_rt + upstream_min + settings.latency)
            } else if st.stalls == 0 {
                clock.time() + gst::ClockTime::from_nseconds(settings.latency.max(TEXT_STALL))
            } else {
                clock.time() + gst::ClockTime::from_nseconds(settings.latency)
            };
            let id = clock.new_single_shot_id(deadline);
            st.wait_id = Some(id.clone());
            drop(st);
            let (res, _) = id.wait();
            st = self.state.lock();
            st.wait_id = None;
            if res == Err(gst::ClockError::Unscheduled)
                || st.text_eos
                || st.text_pos.is_some_and(|p| p >= target)
            {
                continue;
            }
            st.stats.text_timeouts += 1;
            if live {
                gst::debug!(
                    CAT,
                    imp = self,
                    "text not known up to {} in time, going on",
                    gst::ClockTime::from_nseconds(target)
                );
                return Ok(st);
            }
            // Not live, the text stood still: it cannot run ahead of the video (a full queue
            // downstream holds up its thread). First: wait only for each frame's own time, and
            // not at all until the text moves. Second: stop waiting for it.
            st.stalls += 1;
            st.stalled_at = Some(st.text_pos);
            if st.lookahead.is_none() {
                st.lookahead = Some(0);
                st.stats.lookahead_reduced += 1;
            }
            let stalls = st.stalls;
            drop(st);
            if stalls == 1 {
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Failed,
                    (
                        "The text does not run {} ahead of the video: captions may be late",
                        gst::ClockTime::from_nseconds(settings.latency)
                    ),
                    [
                        "its thread is held up, e.g. by a full queue before the muxer (stsbridge pushes text and audio together): give that queue latency plus a fragment, e.g. max-size-time=4000000000"
                    ]
                );
            } else {
                gst::warning!(
                    CAT,
                    imp = self,
                    "the text stood still twice: no more waiting for it"
                );
            }
            st = self.state.lock();
            return Ok(st);
        }
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        match event.view() {
            EventView::Caps(c) => {
                if let Err(msg) = self.set_caps(c.caps()) {
                    gst::element_imp_error!(self, gst::StreamError::Format, ["{}", msg]);
                    return false;
                }
                self.serialized(event)
            }
            EventView::Segment(s) => {
                let Ok(seg) = s.segment().clone().downcast::<gst::ClockTime>() else {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ["video segment is not in time format"]
                    );
                    return false;
                };
                self.state.lock().video_segment = seg;
                self.serialized(event)
            }
            EventView::Eos(_) => {
                let _ = self.process(true);
                self.srcpad.push_event(event)
            }
            EventView::FlushStart(_) => {
                {
                    let mut st = self.state.lock();
                    st.video_flushing = true;
                    st.wake(&self.cond);
                }
                self.srcpad.push_event(event)
            }
            EventView::FlushStop(_) => {
                {
                    let mut st = self.state.lock();
                    st.reorder.clear();
                    st.scheduler.reset();
                    st.budget.reset();
                    st.video_flushing = false;
                    st.video_segment = gst::FormattedSegment::new();
                }
                self.srcpad.push_event(event)
            }
            EventView::StreamStart(_) => {
                self.state.lock().video_flushing = false;
                self.serialized(event)
            }
            _ if event.is_serialized() => self.serialized(event),
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    /// A serialized event keeps its place among the frames held for reordering.
    fn serialized(&self, event: gst::Event) -> bool {
        let mut st = self.state.lock();
        if st.reorder.is_empty() {
            drop(st);
            return self.srcpad.push_event(event);
        }
        st.reorder.push_other(Item::Event(event));
        drop(st);
        self.process(false).is_ok()
    }

    fn set_caps(&self, caps: &gst::CapsRef) -> Result<(), String> {
        let s = caps
            .structure(0)
            .ok_or_else(|| "empty caps on the video sink pad".to_string())?;
        let format = s.get::<&str>("stream-format").unwrap_or("byte-stream");
        let framing = match format {
            "avc" | "avc3" => {
                let codec_data = s.get::<gst::Buffer>("codec_data").map_err(|_| {
                    format!(
                        "stream-format={format} without codec_data: cannot tell the NAL length size"
                    )
                })?;
                let map = codec_data
                    .map_readable()
                    .map_err(|_| "unreadable codec_data".to_string())?;
                NalFraming::from_avcc(&map).map_err(|e| e.to_string())?
            }
            "byte-stream" => NalFraming::StartCode,
            other => return Err(format!("unsupported stream-format {other}")),
        };
        if let Ok(a) = s.get::<&str>("alignment")
            && a != "au"
        {
            return Err(format!(
                "alignment={a}: captions go into whole access units, use alignment=au (h264parse)"
            ));
        }
        let fps = s
            .get::<gst::Fraction>("framerate")
            .ok()
            .filter(|f| f.numer() > 0 && f.denom() > 0);
        let mut st = self.state.lock();
        st.framing = Some(framing);
        match fps {
            Some(f) => {
                let (n, d) = (f.numer() as u32, f.denom() as u32);
                st.budget = FrameBudget::new(n, d);
                let dur = u64::from(d) * SECOND / u64::from(n);
                st.frame_duration = dur;
                st.caps_frame_duration = Some(dur);
            }
            None => {
                st.budget = FrameBudget::new(0, 1);
                st.caps_frame_duration = None;
            }
        }
        gst::debug!(
            CAT,
            imp = self,
            "framing {framing:?}, {} pairs per frame",
            st.budget.per_frame()
        );
        Ok(())
    }

    fn text_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = self.settings();
        let text = {
            let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
            String::from_utf8_lossy(&map)
                .trim_end_matches('\0')
                .to_string()
        };
        let mut st = self.state.lock();
        if st.text_flushing {
            return Err(gst::FlowError::Flushing);
        }
        let Some(pts) = buffer.pts() else {
            gst::warning!(CAT, imp = self, "cue without timestamp dropped: {text:?}");
            return Ok(gst::FlowSuccess::Ok);
        };
        let Some(start) = st.text_rt(pts) else {
            gst::debug!(CAT, imp = self, "cue outside its segment dropped");
            return Ok(gst::FlowSuccess::Ok);
        };
        let end = buffer
            .duration()
            .and_then(|d| st.text_rt(pts + d))
            .filter(|e| *e > start);
        st.stats.cues += 1;
        let cs = captions(
            settings.channel.into(),
            settings.max_lines as usize,
            start,
            end,
            &text,
        );
        gst::debug!(
            CAT,
            imp = self,
            "cue {}–{:?}: {} caption(s) for {text:?}",
            gst::ClockTime::from_nseconds(start),
            end.map(gst::ClockTime::from_nseconds),
            cs.len()
        );
        st.stats.captions += cs.len() as u64;
        for c in cs {
            st.scheduler.push(c);
        }
        st.text_pos = Some(st.text_pos.map_or(start, |p| p.max(start)));
        st.wake(&self.cond);
        Ok(gst::FlowSuccess::Ok)
    }

    fn text_event(&self, _pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        let mut st = self.state.lock();
        match event.view() {
            EventView::StreamStart(_) => {
                st.text_eos = false;
            }
            EventView::Segment(s) => match s.segment().clone().downcast::<gst::ClockTime>() {
                Ok(seg) => st.text_segment = seg,
                Err(_) => {
                    drop(st);
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ["text segment is not in time format"]
                    );
                    return false;
                }
            },
            EventView::Gap(g) => {
                let (ts, dur) = g.get();
                let end = dur.map_or(ts, |d| ts + d);
                if let Some(rt) = st.text_rt(end) {
                    st.text_pos = Some(st.text_pos.map_or(rt, |p| p.max(rt)));
                    st.wake(&self.cond);
                }
            }
            EventView::Eos(_) => {
                st.text_eos = true;
                st.wake(&self.cond);
            }
            EventView::FlushStart(_) => {
                st.text_flushing = true;
                st.wake(&self.cond);
            }
            EventView::FlushStop(_) => {
                st.text_flushing = false;
                st.text_eos = false;
                st.text_pos = None;
                st.lookahead = None;
                st.stalls = 0;
                st.stalled_at = None;
                st.text_segment = gst::FormattedSegment::new();
            }
            _ => {}
        }
        true
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        match query.view_mut() {
            gst::QueryViewMut::Latency(q) => {
                let mut upstream = gst::query::Latency::new();
                if !self.sinkpad.peer_query(&mut upstream) {
                    return false;
                }
                let (mut live, mut min, mut max) = upstream.result();
                let text_pad = self.state.lock().text_pad.clone();
                if let Some(tp) = text_pad.filter(|p| p.is_linked()) {
                    let mut tq = gst::query::Latency::new();
                    if tp.peer_query(&mut tq) {
                        let (tlive, tmin, tmax) = tq.result();
                        live |= tlive;
                        min = min.max(tmin);
                        max = match (max, tmax) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                }
                self.state.lock().upstream = Some((live, min.nseconds()));
                let ours = if text_pad_present(&self.state.lock()) {
                    gst::ClockTime::from_nseconds(self.settings().latency)
                } else {
                    gst::ClockTime::ZERO
                };
                q.set(live, min + ours, max.map(|m| m + ours));
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }

    fn stats(&self) -> gst::Structure {
        let st = self.state.lock();
        let s = st.stats;
        let sched = st.scheduler.stats();
        gst::Structure::builder(STATS_STRUCTURE)
            .field("frames", s.frames)
            .field("sei-inserted", s.seis)
            .field("passthrough", s.passthrough)
            .field("bad-access-units", s.bad_access_units)
            .field("cues", s.cues)
            .field("captions", s.captions)
            .field("shown", sched.shown)
            .field("late", sched.late)
            .field("max-late", sched.max_late)
            .field("dropped", sched.dropped)
            .field("caption-pairs", sched.caption_pairs)
            .field("padding-pairs", sched.padding_pairs)
            .field("pairs-per-frame", st.budget.per_frame())
            .field("text-timeouts", s.text_timeouts)
            .field("lookahead-reduced", s.lookahead_reduced)
            .field("held", st.reorder.len() as u64)
            .build()
    }
}

fn text_pad_present(st: &State) -> bool {
    st.text_pad.is_some()
}

impl ObjectImpl for Cc608Insert {
    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).expect("add sink pad");
        obj.add_pad(&self.srcpad).expect("add src pad");
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecEnum::builder_with_default("channel", Channel::default())
                    .nick("Channel")
                    .blurb("608 caption channel the captions go to (CC1 is what players show)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("mode", Mode::default())
                    .nick("Mode")
                    .blurb("How captions appear")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-lines")
                    .nick("Maximum lines")
                    .blurb("Rows per caption (32 columns each, on the bottom rows); a longer cue becomes several captions sharing its time. Applies to the next cue")
                    .minimum(1)
                    .maximum(4)
                    .default_value(DEFAULT_MAX_LINES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("latency")
                    .nick("Latency")
                    .blurb("How far ahead of each frame the text is waited for, in nanoseconds: a cue known this long before its start appears on time (a two-row caption takes ~1.3 s to load). Added to the latency of live pipelines; the video never waits longer")
                    .maximum(60 * SECOND)
                    .default_value(DEFAULT_LATENCY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames, sei-inserted, passthrough (frames without a text pad), bad-access-units (left without captions), cues, captions, shown, late (shown over half a frame after their start), max-late (ns), dropped (over before they could be shown), caption-pairs, padding-pairs, pairs-per-frame, text-timeouts (waits given up), lookahead-reduced (not live: 1 once the text stood still and the lookahead went to 0), held (frames held for reordering)")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock();
        match pspec.name() {
            "channel" => s.channel = value.get().expect("type checked"),
            "mode" => s.mode = value.get().expect("type checked"),
            "max-lines" => s.max_lines = value.get().expect("type checked"),
            "latency" => s.latency = value.get().expect("type checked"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock();
        match pspec.name() {
            "channel" => s.channel.to_value(),
            "mode" => s.mode.to_value(),
            "max-lines" => s.max_lines.to_value(),
            "latency" => s.latency.to_value(),
            "stats" => {
                drop(s);
                self.stats().to_value()
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for Cc608Insert {}

impl ElementImpl for Cc608Insert {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "CEA-608 caption inserter",
                "Codec/Video/Subtitle",
                "Encodes timed text as CEA-608 pop-on captions and inserts them into H.264 as A/53 SEI, without re-encoding",
                "gst-dubbing developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let video = gst::Caps::builder("video/x-h264")
                .field(
                    "stream-format",
                    gst::List::new(["avc", "avc3", "byte-stream"]),
                )
                .field("alignment", "au")
                .build();
            let text = gst::Caps::builder("text/x-raw")
                .field("format", "utf8")
                .build();
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &video,
                )
                .expect("sink"),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &video,
                )
                .expect("src"),
                gst::PadTemplate::new(
                    "text_sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &text,
                )
                .expect("text_sink"),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn request_new_pad(
        &self,
        templ: &gst::PadTemplate,
        _name: Option<&str>,
        _caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        let mut st = self.state.lock();
        if st.text_pad.is_some() {
            gst::warning!(CAT, imp = self, "there is only one text_sink pad");
            return None;
        }
        let pad = gst::Pad::builder_from_template(templ)
            .name("text_sink")
            .chain_function(|pad, parent, buffer| {
                Cc608Insert::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.text_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                Cc608Insert::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.text_event(pad, event),
                )
            })
            .iterate_internal_links_function(|_, _| gst::Iterator::from_vec(vec![]))
            .build();
        let weak = self.obj().downgrade();
        pad.connect_unlinked(move |_, _| {
            if let Some(obj) = weak.upgrade() {
                let imp = obj.imp();
                imp.state.lock().wake(&imp.cond);
            }
        });
        st.text_pad = Some(pad.clone());
        drop(st);
        if self.obj().current_state() > gst::State::Ready {
            let _ = pad.set_active(true);
        }
        self.obj().add_pad(&pad).ok()?;
        Some(pad)
    }

    fn release_pad(&self, pad: &gst::Pad) {
        {
            let mut st = self.state.lock();
            if st.text_pad.as_ref() == Some(pad) {
                st.text_pad = None;
                st.wake(&self.cond);
            }
        }
        let _ = pad.set_active(false);
        let _ = self.obj().remove_pad(pad);
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        match transition {
            gst::StateChange::ReadyToPaused => {
                let settings = self.settings();
                let mut st = self.state.lock();
                let text_pad = st.text_pad.take();
                *st = State::new(&settings, text_pad);
                st.video_flushing = false;
            }
            gst::StateChange::PausedToReady => {
                let mut st = self.state.lock();
                st.video_flushing = true;
                st.text_flushing = true;
                st.wake(&self.cond);
            }
            _ => {}
        }
        self.parent_change_state(transition)
    }
}
