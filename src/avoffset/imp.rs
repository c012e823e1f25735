//! # avoffset
//!
//! Dubbed audio comes back seconds after its video. `avoffset` puts both streams behind one
//! fixed `offset` and keeps them in step, so the muxer downstream gets interleaved audio and
//! video without a multi-second queue and without stalling.
//!
//! ```text
//! gst-launch-1.0 filesrc location=fixtures/speech-60s.mp4 ! qtdemux name=d \
//!   d.video_0 ! queue ! h264parse ! av.video_sink \
//!   d.audio_0 ! queue ! aacparse ! avdec_aac ! audioconvert ! audioresample \
//!     ! audio/x-raw,format=S16LE,rate=48000,channels=2 ! dubchunker \
//!     ! stsbridge url=http://127.0.0.1:8000/api/v1/sts/process ! avoffset name=av \
//!   av.video_src ! queue ! mux. \
//!   av.audio_src ! audioconvert ! voaacenc ! aacparse ! queue ! mux. \
//!   mp4mux name=mux ! filesink location=dubbed.mp4
//! ```
//!
//! Pads: `audio_sink` → `audio_src` and `video_sink` → `video_src`. `… ! stsbridge ! avoffset`
//! links the audio pair by itself (it is the first compatible pad); video links by pad name.
//! Caps queries pass through the video pair (a parser upstream learns the muxer's stream
//! format, e.g. H.264 byte-stream for MPEG-TS).
//!
//! ## Timestamps
//! Both outputs are shifted by `offset`: PTS and DTS of every buffer and GAP event, and the
//! segment's stop and position, so output running time = input running time + offset. Audio is
//! shifted by `offset − audio-compensation`: AAC encoders delay what they encode (voaacenc by
//! 1024 samples plus its look-ahead) and FLV cannot signal that, so a published stream is
//! otherwise late by that much. Samples and video frames are never touched.
//!
//! ## Holding video
//! Audio passes at once. Video is held in a queue until the audio covering its timestamp has
//! gone out, so the two leave in step; if audio does not come, a video buffer goes out anyway
//! after `offset + max-hold` (live: a single-shot clock id on the pipeline clock, unscheduled
//! when audio, a flush or a new `max-hold` changes the decision; files: once newer video is
//! that far ahead), counted in `stats` as released without audio. Nothing is dropped. An audio EOS
//! releases all video; a video EOS goes out after the video held before it. EOS on one stream
//! never blocks the other. Flushes and state changes release everything at once.
//!
//! ## Sync report
//! Once per second of video output the A/V delta (end of the audio output − end of the video
//! output, running time) is sampled into `stats` and posted as an `avoffset/sync` element
//! message (`delta`, `video-held`, `video-without-audio`, `audio-late`, all ns or counts). A
//! positive delta is audio ahead of video (normal: audio arrives in fragments); below
//! `-sync-threshold` the video is ahead of its audio and a warning is logged.
//!
//! ## Threads and locks
//! * The **audio** and **text** streaming threads shift and push at once; audio updates the
//!   state (how far audio has gone) before its push, so a muxer blocking that push waits for
//!   video this releases.
//! * The **video** streaming thread only queues (bounded by `MAX_HELD_ITEMS`).
//! * The **video task** (`video_src`'s pad task) decides ([`super::hold::decide`]) and pushes:
//!   it waits on the condition variable for data, or on a clock id for a live max-hold.
//!
//! Two locks, `settings` and `state`, never held together: the task copies the settings, then
//! takes the state; property setters release the settings before waking the task. Neither is
//! held while pushing, posting or waiting on the clock.
//!
//! ## Latency
//! The shift itself delays the output by `offset`, which already absorbs that much upstream
//! latency: the latency query answers upstream's minimum minus the shift (`offset`, and
//! `offset − audio-compensation` for audio; never below zero).
//! With `dubchunker` (1 s) and `stsbridge` (5 s) upstream and the default 6 s offset, sinks
//! add nothing more and the published stream is exactly 6 s behind its input.

use std::collections::VecDeque;
use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use parking_lot::{Condvar, Mutex};

use super::hold::{Decision, Release, Situation, SyncMeter, decide};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "avoffset",
        gst::DebugColorFlags::empty(),
        Some("A/V offset and sync"),
    )
});

use super::{
    DEFAULT_AUDIO_COMPENSATION, DEFAULT_MAX_HOLD, DEFAULT_OFFSET, DEFAULT_SYNC_THRESHOLD,
    MAX_AUDIO_COMPENSATION, MAX_MAX_HOLD, MAX_OFFSET, MAX_SYNC_THRESHOLD,
};
/// Memory bound of the video queue, whatever the timestamps say.
const MAX_HELD_ITEMS: usize = 50_000;

#[derive(Debug, Clone, Copy)]
struct Settings {
    offset: u64,
    max_hold: u64,
    sync_threshold: u64,
    audio_compensation: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            offset: DEFAULT_OFFSET,
            max_hold: DEFAULT_MAX_HOLD,
            sync_threshold: DEFAULT_SYNC_THRESHOLD,
            audio_compensation: DEFAULT_AUDIO_COMPENSATION,
        }
    }
}

impl Settings {
    /// How far video (and text) move: `offset`, or the compensation when the offset is
    /// smaller (audio cannot move before its own time, so the video waits for the rest).
    fn video_shift(&self) -> u64 {
        self.offset.max(self.audio_compensation)
    }

    /// How far audio moves: the video's shift less the encoder delay it cancels.
    fn audio_shift(&self) -> u64 {
        self.video_shift() - self.audio_compensation
    }
}

#[derive(Debug)]
enum Held {
    Buffer { buffer: gst::Buffer, rt: u64 },
    Event(gst::Event),
}

#[derive(Debug, Default)]
struct Stats {
    video_without_audio: u64,
    audio_late: u64,
    video_buffers: u64,
    audio_buffers: u64,
    max_held: u64,
}

#[derive(Debug)]
struct State {
    audio_segment: gst::FormattedSegment<gst::ClockTime>,
    video_segment: gst::FormattedSegment<gst::ClockTime>,
    /// End of the audio gone out, input running time.
    audio_pos: Option<u64>,
    audio_done: bool,
    queue: VecDeque<Held>,
    eos_queued: bool,
    newest_video_rt: Option<u64>,
    /// Input running time of the newest video released without audio.
    released_without_audio_to: Option<u64>,
    video_flushing: bool,
    live: Option<bool>,
    /// The video task's wait on the pipeline clock (live max-hold), unscheduled by whatever
    /// can change its decision: audio, a flush, a new `max-hold`.
    clock_wait: Option<gst::SingleShotClockId>,
    meter: SyncMeter,
    stats: Stats,
}

impl Default for State {
    fn default() -> Self {
        State {
            audio_segment: gst::FormattedSegment::new(),
            video_segment: gst::FormattedSegment::new(),
            audio_pos: None,
            audio_done: false,
            queue: VecDeque::new(),
            eos_queued: false,
            newest_video_rt: None,
            released_without_audio_to: None,
            video_flushing: true,
            live: None,
            clock_wait: None,
            meter: SyncMeter::default(),
            stats: Stats::default(),
        }
    }
}

impl State {
    fn held_span(&self) -> u64 {
        let first = self.queue.iter().find_map(|h| match h {
            Held::Buffer { rt, .. } => Some(*rt),
            Held::Event(_) => None,
        });
        match (first, self.newest_video_rt) {
            (Some(f), Some(n)) => n.saturating_sub(f),
            _ => 0,
        }
    }
}

pub struct AvOffset {
    audio_sink: gst::Pad,
    audio_src: gst::Pad,
    video_sink: gst::Pad,
    video_src: gst::Pad,
    text_sink: gst::Pad,
    text_src: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<State>,
    cond: Condvar,
}

fn shift_buffer(buffer: &mut gst::BufferRef, by: u64) {
    if let Some(p) = buffer.pts() {
        buffer.set_pts(p + gst::ClockTime::from_nseconds(by));
    }
    if let Some(d) = buffer.dts() {
        buffer.set_dts(d + gst::ClockTime::from_nseconds(by));
    }
}

fn shift_segment(
    seg: &gst::FormattedSegment<gst::ClockTime>,
    by: u64,
) -> gst::FormattedSegment<gst::ClockTime> {
    let mut s = seg.clone();
    let by = gst::ClockTime::from_nseconds(by);
    if let Some(stop) = s.stop() {
        s.set_stop(stop + by);
    }
    if let Some(pos) = s.position() {
        s.set_position(pos + by);
    }
    if let Some(d) = s.duration() {
        s.set_duration(d + by);
    }
    s
}

/// Rewrites timestamped events for the shifted timeline.
fn shift_event(event: gst::Event, by: u64) -> gst::Event {
    match event.view() {
        gst::EventView::Segment(s) => match s.segment().downcast_ref::<gst::ClockTime>() {
            Some(seg) => gst::event::Segment::builder(&shift_segment(seg, by))
                .seqnum(event.seqnum())
                .running_time_offset(event.running_time_offset())
                .build(),
            None => event,
        },
        gst::EventView::Gap(g) => {
            let (ts, dur) = g.get();
            gst::event::Gap::builder(ts + gst::ClockTime::from_nseconds(by))
                .duration(dur)
                .seqnum(event.seqnum())
                .build()
        }
        _ => event,
    }
}

impl AvOffset {
    fn pair(&self, pad: &gst::Pad) -> &gst::Pad {
        if pad == &self.audio_sink {
            &self.audio_src
        } else if pad == &self.audio_src {
            &self.audio_sink
        } else if pad == &self.video_sink {
            &self.video_src
        } else if pad == &self.text_sink {
            &self.text_src
        } else if pad == &self.text_src {
            &self.text_sink
        } else {
            &self.video_sink
        }
    }

    // ---- text: passes at once, shifted like the video ----

    fn text_chain(
        &self,
        _pad: &gst::Pad,
        mut buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let shift = self.settings.lock().video_shift();
        shift_buffer(buffer.make_mut(), shift);
        self.text_src.push(buffer)
    }

    fn text_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        let shift = self.settings.lock().video_shift();
        gst::log!(CAT, obj = pad, "text event {:?}", event.type_());
        self.text_src.push_event(shift_event(event, shift))
    }

    // ---- audio: passes at once, shifted ----

    fn audio_chain(
        &self,
        _pad: &gst::Pad,
        mut buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = *self.settings.lock();
        let shift = settings.audio_shift();
        {
            let mut st = self.state.lock();
            let seg = st.audio_segment.clone();
            let start = buffer.pts().and_then(|p| seg.to_running_time(p));
            let end = buffer
                .pts()
                .map(|p| p + buffer.duration().unwrap_or(gst::ClockTime::ZERO))
                .and_then(|e| seg.to_running_time(e));
            if let Some(end) = end {
                // Covered before the push: a muxer blocking this push waits for the video
                // this releases.
                st.audio_pos = Some(
                    st.audio_pos
                        .map_or(end.nseconds(), |a| a.max(end.nseconds())),
                );
                st.meter.audio_out(end.nseconds() + shift);
            }
            if let (Some(s), Some(to)) = (start, st.released_without_audio_to)
                && s.nseconds() < to
            {
                st.stats.audio_late += 1;
            }
            st.stats.audio_buffers += 1;
            self.wake(&st);
        }
        shift_buffer(buffer.make_mut(), shift);
        self.audio_src.push(buffer)
    }

    fn audio_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        let shift = self.settings.lock().audio_shift();
        match event.view() {
            gst::EventView::Segment(s) => {
                let Some(seg) = s.segment().downcast_ref::<gst::ClockTime>() else {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("avoffset needs TIME segments on audio_sink")
                    );
                    return false;
                };
                self.state.lock().audio_segment = seg.clone();
            }
            gst::EventView::Gap(g) => {
                let (ts, dur) = g.get();
                let mut st = self.state.lock();
                if let Some(end) = st
                    .audio_segment
                    .to_running_time(ts + dur.unwrap_or(gst::ClockTime::ZERO))
                {
                    st.audio_pos = Some(
                        st.audio_pos
                            .map_or(end.nseconds(), |a| a.max(end.nseconds())),
                    );
                    self.wake(&st);
                }
            }
            gst::EventView::Eos(_) => {
                let mut st = self.state.lock();
                st.audio_done = true;
                self.wake(&st);
            }
            gst::EventView::FlushStop(_) => {
                let mut st = self.state.lock();
                st.audio_pos = None;
                st.audio_done = false;
                st.audio_segment = gst::FormattedSegment::new();
                st.meter.reset();
            }
            gst::EventView::StreamStart(_) => {
                let mut st = self.state.lock();
                st.audio_done = false;
            }
            _ => {}
        }
        gst::log!(CAT, obj = pad, "audio event {:?}", event.type_());
        self.audio_src.push_event(shift_event(event, shift))
    }

    // ---- video: held in a queue, released by the video task ----

    fn video_chain(
        &self,
        _pad: &gst::Pad,
        mut buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let shift = self.settings.lock().video_shift();
        if self.state.lock().live.is_none() {
            let live = self.query_live();
            self.state.lock().live = Some(live);
        }
        let mut st = self.state.lock();
        while st.queue.len() >= MAX_HELD_ITEMS && !st.video_flushing {
            self.cond.wait(&mut st);
        }
        if st.video_flushing {
            return Err(gst::FlowError::Flushing);
        }
        let ts = buffer.dts_or_pts();
        let rt = ts
            .and_then(|t| st.video_segment.to_running_time(t))
            .map(|t| t.nseconds())
            .or(st.newest_video_rt)
            .unwrap_or(0);
        // DTS can run before PTS; the release order follows arrival anyway.
        st.newest_video_rt = Some(st.newest_video_rt.map_or(rt, |n| n.max(rt)));
        shift_buffer(buffer.make_mut(), shift);
        st.queue.push_back(Held::Buffer { buffer, rt });
        st.stats.video_buffers += 1;
        let span = st.held_span();
        st.stats.max_held = st.stats.max_held.max(span);
        self.cond.notify_all();
        Ok(gst::FlowSuccess::Ok)
    }

    fn query_live(&self) -> bool {
        let mut q = gst::query::Latency::new();
        self.video_sink.peer_query(&mut q) && q.result().0
    }

    fn video_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        let shift = self.settings.lock().video_shift();
        match event.view() {
            gst::EventView::FlushStart(_) => {
                {
                    let mut st = self.state.lock();
                    st.video_flushing = true;
                    self.wake(&st);
                }
                let ret = self.video_src.push_event(event);
                let _ = self.video_src.pause_task();
                ret
            }
            gst::EventView::FlushStop(_) => {
                {
                    let mut st = self.state.lock();
                    st.queue.clear();
                    st.eos_queued = false;
                    st.newest_video_rt = None;
                    st.video_segment = gst::FormattedSegment::new();
                    st.video_flushing = false;
                }
                let ret = self.video_src.push_event(event);
                self.start_video_task();
                ret
            }
            _ if event.is_serialized() => {
                let mut st = self.state.lock();
                if st.video_flushing {
                    return false;
                }
                match event.view() {
                    gst::EventView::Segment(s) => {
                        let Some(seg) = s.segment().downcast_ref::<gst::ClockTime>() else {
                            drop(st);
                            gst::element_imp_error!(
                                self,
                                gst::StreamError::Format,
                                ("avoffset needs TIME segments on video_sink")
                            );
                            return false;
                        };
                        st.video_segment = seg.clone();
                    }
                    gst::EventView::Eos(_) => st.eos_queued = true,
                    gst::EventView::StreamStart(_) => st.eos_queued = false,
                    _ => {}
                }
                st.queue.push_back(Held::Event(shift_event(event, shift)));
                self.wake(&st);
                true
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    fn start_video_task(&self) {
        let obj = self.obj().clone();
        if let Err(e) = self.video_src.start_task(move || obj.imp().video_loop()) {
            gst::error!(CAT, imp = self, "cannot start the video task: {e}");
        }
    }

    /// Wakes the video task to decide again: it may wait for data (the condition variable)
    /// or on the pipeline clock (the clock id, unscheduled here).
    fn wake(&self, st: &State) {
        self.cond.notify_all();
        if let Some(id) = &st.clock_wait {
            id.unschedule();
        }
    }

    /// The video task: releases the oldest held item when [`decide`] says so, and otherwise
    /// waits for data (files, or no clock) or until the decision's running time on the
    /// pipeline clock (live max-hold). Every iteration copies the settings (a leaf lock) then
    /// takes the state lock; neither is held while pushing or waiting on the clock.
    fn video_loop(&self) {
        loop {
            let settings = *self.settings.lock();
            let mut st = self.state.lock();
            if st.video_flushing {
                drop(st);
                let _ = self.video_src.pause_task();
                return;
            }
            let now_rt = if st.live == Some(true) {
                self.clock_running_time()
            } else {
                None
            };
            let decision = match st.queue.front() {
                None => None,
                Some(Held::Event(_)) => Some(Decision::Release(Release::Draining)),
                Some(Held::Buffer { rt, .. }) => Some(decide(&Situation {
                    video_rt: *rt,
                    audio_pos: st.audio_pos,
                    audio_done: st.audio_done,
                    eos_queued: st.eos_queued,
                    newest_video_rt: st.newest_video_rt.unwrap_or(*rt),
                    now_rt,
                    offset: settings.video_shift(),
                    max_hold: settings.max_hold,
                })),
            };
            let why = match decision {
                None | Some(Decision::Wait) => {
                    self.cond.wait(&mut st);
                    continue;
                }
                Some(Decision::WaitUntil(limit)) => {
                    let Some(id) = self.clock_id_at(limit) else {
                        self.cond.wait(&mut st);
                        continue;
                    };
                    st.clock_wait = Some(id.clone());
                    drop(st);
                    // Unscheduled by `wake` (audio, flush, new max-hold), even before this
                    // wait starts: then it returns at once.
                    let (res, _) = id.wait();
                    gst::trace!(CAT, imp = self, "clock wait until {limit}: {res:?}");
                    self.state.lock().clock_wait = None;
                    continue;
                }
                Some(Decision::Release(why)) => why,
            };
            let item = st.queue.pop_front().expect("front exists");
            self.cond.notify_all();
            let flow = match item {
                Held::Event(e) => {
                    drop(st);
                    let _ = self.video_src.push_event(e);
                    Ok(gst::FlowSuccess::Ok)
                }
                Held::Buffer { buffer, rt } => {
                    let out_end = buffer
                        .pts()
                        .map(|p| p + buffer.duration().unwrap_or(gst::ClockTime::ZERO))
                        .and_then(|e| st.video_segment.to_running_time(e))
                        .map(|e| e.nseconds());
                    if why.without_audio() {
                        st.stats.video_without_audio += 1;
                        st.released_without_audio_to = Some(rt);
                        gst::debug!(CAT, imp = self, "video at {rt} released without audio");
                    }
                    let sample = out_end.and_then(|e| st.meter.video_out(e));
                    let held = st.held_span();
                    let (without, late) = (st.stats.video_without_audio, st.stats.audio_late);
                    drop(st);
                    if let Some(delta) = sample {
                        self.post_sync(delta, held, without, late);
                    }
                    self.video_src.push(buffer)
                }
            };
            if let Err(e) = flow {
                if !matches!(e, gst::FlowError::Flushing | gst::FlowError::Eos) {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ("internal data flow error on video_src"),
                        ["streaming stopped, reason {e:?}"]
                    );
                }
                let _ = self.video_src.pause_task();
                return;
            }
        }
    }

    /// A single-shot id at `running_time` on the pipeline clock; `None` without a clock.
    fn clock_id_at(&self, running_time: u64) -> Option<gst::SingleShotClockId> {
        let obj = self.obj();
        let (clock, base) = (obj.clock()?, obj.base_time()?);
        Some(clock.new_single_shot_id(base + gst::ClockTime::from_nseconds(running_time)))
    }

    fn clock_running_time(&self) -> Option<u64> {
        let obj = self.obj();
        let (clock, base) = (obj.clock()?, obj.base_time()?);
        Some(clock.time().nseconds().saturating_sub(base.nseconds()))
    }

    fn post_sync(&self, delta: i64, held: u64, without: u64, late: u64) {
        let threshold = self.settings.lock().sync_threshold;
        if delta < -(threshold as i64) {
            gst::warning!(
                CAT,
                imp = self,
                "video is {} ms ahead of its audio (threshold {} ms)",
                -delta / 1_000_000,
                threshold / 1_000_000
            );
        }
        let s = super::SyncReport {
            delta,
            video_held: held,
            video_without_audio: without,
            audio_late: late,
        }
        .to_structure();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let mut peer = gst::query::Latency::new();
            if !self.pair(pad).peer_query(&mut peer) {
                return false;
            }
            let (live, min, max) = peer.result();
            // Audio is shifted by offset − audio-compensation: it absorbs that much less.
            let settings = *self.settings.lock();
            let shift = if pad == &self.audio_src {
                settings.audio_shift()
            } else {
                settings.video_shift()
            };
            let offset = gst::ClockTime::from_nseconds(shift);
            let ours = min.saturating_sub(offset);
            gst::debug!(
                CAT,
                obj = pad,
                "upstream min {min}, after the {offset} shift {ours}"
            );
            q.set(live, ours, max);
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn stats(&self) -> gst::Structure {
        let st = self.state.lock();
        gst::Structure::builder(super::STATS_STRUCTURE)
            .field("delta", st.meter.current.unwrap_or(0))
            .field("max-delta", st.meter.max_abs)
            .field("video-held", st.held_span())
            .field("max-video-held", st.stats.max_held)
            .field("video-without-audio", st.stats.video_without_audio)
            .field("audio-late", st.stats.audio_late)
            .field("video-buffers", st.stats.video_buffers)
            .field("audio-buffers", st.stats.audio_buffers)
            .field("sync-samples", st.meter.samples)
            .build()
    }

    fn video_activate(&self, active: bool) -> Result<(), gst::LoggableError> {
        if active {
            {
                let mut st = self.state.lock();
                st.video_flushing = false;
                st.queue.clear();
                st.eos_queued = false;
            }
            self.start_video_task();
        } else {
            {
                let mut st = self.state.lock();
                st.video_flushing = true;
                self.wake(&st);
            }
            self.video_src
                .stop_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot stop the video task: {e}"))?;
        }
        Ok(())
    }
}

#[glib::object_subclass]
impl ObjectSubclass for AvOffset {
    const NAME: &'static str = "GstAvOffset";
    type Type = super::AvOffset;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let links = |pad: &gst::Pad, parent: Option<&gst::Object>| {
            AvOffset::catch_panic_pad_function(
                parent,
                || gst::Iterator::from_vec(vec![]),
                |imp| gst::Iterator::from_vec(vec![imp.pair(pad).clone()]),
            )
        };
        let audio_sink =
            gst::Pad::builder_from_template(&klass.pad_template("audio_sink").unwrap())
                .chain_function(|pad, parent, buffer| {
                    AvOffset::catch_panic_pad_function(
                        parent,
                        || Err(gst::FlowError::Error),
                        |imp| imp.audio_chain(pad, buffer),
                    )
                })
                .event_function(|pad, parent, event| {
                    AvOffset::catch_panic_pad_function(
                        parent,
                        || false,
                        |imp| imp.audio_event(pad, event),
                    )
                })
                .iterate_internal_links_function(links)
                .flags(gst::PadFlags::PROXY_ALLOCATION)
                .build();
        let audio_src = gst::Pad::builder_from_template(&klass.pad_template("audio_src").unwrap())
            .query_function(|pad, parent, query| {
                AvOffset::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .iterate_internal_links_function(links)
            .build();
        let video_sink =
            gst::Pad::builder_from_template(&klass.pad_template("video_sink").unwrap())
                .chain_function(|pad, parent, buffer| {
                    AvOffset::catch_panic_pad_function(
                        parent,
                        || Err(gst::FlowError::Error),
                        |imp| imp.video_chain(pad, buffer),
                    )
                })
                .event_function(|pad, parent, event| {
                    AvOffset::catch_panic_pad_function(
                        parent,
                        || false,
                        |imp| imp.video_event(pad, event),
                    )
                })
                .iterate_internal_links_function(links)
                // Caps queries go through to the muxer: h264parse must learn that MPEG-TS
                // takes byte-stream, not MP4's avc.
                .flags(gst::PadFlags::PROXY_CAPS)
                .build();
        let video_src = gst::Pad::builder_from_template(&klass.pad_template("video_src").unwrap())
            .query_function(|pad, parent, query| {
                AvOffset::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .activatemode_function(|_pad, parent, mode, active| {
                AvOffset::catch_panic_pad_function(
                    parent,
                    || Err(gst::loggable_error!(CAT, "panic in activatemode")),
                    |imp| {
                        if mode != gst::PadMode::Push {
                            return Err(gst::loggable_error!(CAT, "push mode only"));
                        }
                        imp.video_activate(active)
                    },
                )
            })
            .iterate_internal_links_function(links)
            .flags(gst::PadFlags::PROXY_CAPS)
            .build();
        let text_sink = gst::Pad::builder_from_template(&klass.pad_template("text_sink").unwrap())
            .chain_function(|pad, parent, buffer| {
                AvOffset::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.text_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                AvOffset::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.text_event(pad, event),
                )
            })
            .iterate_internal_links_function(links)
            .flags(gst::PadFlags::PROXY_CAPS)
            .build();
        let text_src = gst::Pad::builder_from_template(&klass.pad_template("text_src").unwrap())
            .query_function(|pad, parent, query| {
                AvOffset::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .iterate_internal_links_function(links)
            .flags(gst::PadFlags::PROXY_CAPS)
            .build();
        AvOffset {
            audio_sink,
            audio_src,
            video_sink,
            video_src,
            text_sink,
            text_src,
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        }
    }
}

impl ObjectImpl for AvOffset {
    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        for p in [
            &self.audio_sink,
            &self.audio_src,
            &self.video_sink,
            &self.video_src,
            &self.text_sink,
            &self.text_src,
        ] {
            obj.add_pad(p).expect("add pad");
        }
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecUInt64::builder("offset")
                    .nick("Offset")
                    .blurb("Delay of both outputs, in nanoseconds: output time = input time + offset (WORKER_AV_OFFSET_NS)")
                    .maximum(MAX_OFFSET)
                    .default_value(DEFAULT_OFFSET)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("max-hold")
                    .nick("Maximum hold")
                    .blurb("How much longer than the offset video waits for its audio before it goes out anyway, in nanoseconds")
                    .maximum(MAX_MAX_HOLD)
                    .default_value(DEFAULT_MAX_HOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("sync-threshold")
                    .nick("Sync threshold")
                    .blurb("Warn when video runs ahead of its audio by more than this, in nanoseconds")
                    .maximum(MAX_SYNC_THRESHOLD)
                    .default_value(DEFAULT_SYNC_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("audio-compensation")
                    .nick("Audio compensation")
                    .blurb("Moves audio this much earlier than the offset, in nanoseconds, to cancel the delay of the AAC encoder downstream (FLV cannot signal it)")
                    .maximum(MAX_AUDIO_COMPENSATION)
                    .default_value(DEFAULT_AUDIO_COMPENSATION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("delta (ns, i64: audio − video output position, sampled each second), max-delta, video-held, max-video-held (ns), video-without-audio, audio-late, video-buffers, audio-buffers, sync-samples")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock();
        match pspec.name() {
            "offset" => s.offset = value.get().expect("type checked"),
            "max-hold" => {
                s.max_hold = value.get().expect("type checked");
                drop(s);
                // The video task decides again with the new hold at once.
                self.wake(&self.state.lock());
            }
            "sync-threshold" => {
                s.sync_threshold = value.get().expect("type checked");
            }
            "audio-compensation" => s.audio_compensation = value.get().expect("type checked"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock();
        match pspec.name() {
            "offset" => s.offset.to_value(),
            "max-hold" => s.max_hold.to_value(),
            "sync-threshold" => s.sync_threshold.to_value(),
            "audio-compensation" => s.audio_compensation.to_value(),
            "stats" => {
                drop(s);
                self.stats().to_value()
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for AvOffset {}

impl ElementImpl for AvOffset {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "A/V offset",
                "Generic/Audio/Video",
                "Delays video and dubbed audio by one fixed offset and keeps them in step",
                "gst-dubbing developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let audio = "audio/x-raw; audio/mpeg"
                .parse::<gst::Caps>()
                .expect("audio caps");
            let video = "video/x-raw(ANY); video/x-h264; video/x-h265; video/x-vp8; \
                         video/x-vp9; video/x-av1; video/mpeg; image/jpeg"
                .parse::<gst::Caps>()
                .expect("video caps");
            let t = |name: &str, dir, caps: &gst::Caps| {
                gst::PadTemplate::new(name, dir, gst::PadPresence::Always, caps).expect(name)
            };
            let text = "text/x-raw; application/x-subtitle"
                .parse::<gst::Caps>()
                .expect("text caps");
            vec![
                t("audio_sink", gst::PadDirection::Sink, &audio),
                t("audio_src", gst::PadDirection::Src, &audio),
                t("video_sink", gst::PadDirection::Sink, &video),
                t("video_src", gst::PadDirection::Src, &video),
                t("text_sink", gst::PadDirection::Sink, &text),
                t("text_src", gst::PadDirection::Src, &text),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::ReadyToPaused {
            *self.state.lock() = State::default();
        }
        if transition == gst::StateChange::PausedToReady {
            let mut st = self.state.lock();
            st.video_flushing = true;
            self.wake(&st);
        }
        self.parent_change_state(transition)
    }
}
