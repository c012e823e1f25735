//! The input, in a bin of its own that is torn down and rebuilt while the rest of the pipeline
//! keeps running:
//!
//! ```text
//! source<N> (rtspsrc … ! avdec_aac, … ! h264timestamper) ─audio─▶ ain ─▶ dubbing chain
//!                                                         ─video─▶ vin ─▶ avoffset
//! ```
//!
//! `ain` and `vin` are the joint: their sink pads carry a probe ([`Joint`]) that makes every
//! generation of the source look like one stream downstream. The first generation passes
//! unchanged. A later one has its stream-start and segment dropped and its timestamps mapped
//! through the running time onto the first segment (the new bin shares the pipeline's clock
//! and base time, so its running time is the output's); its first buffers are DISCONT,
//! audio that would overlap what already went out is dropped (never a timestamp backwards),
//! and video waits for a keyframe. While no source delivers, GAP events go down the audio
//! path ([`Joint::fill_event`]): `dubchunker` fills them with silence (not sent to the STS), so
//! the published audio timeline keeps running; the video holds its last frame.
//!
//! The filling starts before an outage is declared, as soon as the audio is behind the clock
//! by more than [`crate::pipeline::Chain::stall_fill_after`] (the STS budget less 500 ms): a fragment cut short
//! by a stalled source is then completed with silence in time for `stsbridge` to dub it (or
//! fall back) before its deadline, instead of after the source timeout, when it is too late
//! for the muxer (whose FLV timestamps then collapse). A stalled source's audio that arrives
//! for time already filled is dropped; its video, late by less than the offset, passes.
//!
//! An end of stream from a source that had been silent for `WORKER_SOURCE_TIMEOUT_MS`
//! (rtspsrc giving up on a dead server) is an outage, not the end: the joint drops it.
//!
//! Lock order: [`Joint`]'s mutex is the only lock; no event is pushed while it is held.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use tracing::info;

use crate::builder::SourceBin;
use crate::pipeline::LiveInput;

/// The custom event the worker sends into the joint to fill up to a running time: the probe
/// turns it into the GAP event (or drops it) in order with the buffers.
const FILL_EVENT: &str = "dubbing-fill";

/// Which of the joint's two pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audio = 0,
    Video = 1,
}

#[derive(Default)]
struct Track {
    /// The segment downstream has (the first generation's).
    downstream: Option<gst::FormattedSegment<gst::ClockTime>>,
    /// The current generation's segment.
    current: Option<gst::FormattedSegment<gst::ClockTime>>,
    /// Running time where the last buffer or gap sent downstream ends.
    end_rt: Option<gst::ClockTime>,
    /// The next buffer sent is marked DISCONT (and, for video, must be a keyframe).
    resync: bool,
    /// A stream-start went downstream (a later generation's is dropped; the first one to
    /// come passes, whichever generation it is from: the first connection may have failed).
    started: bool,
}

#[derive(Default)]
struct JointInner {
    generation: u32,
    /// No source delivers audio (gone, or stalled): the worker loop sends the gaps
    /// ([`Joint::fill_event`]).
    filling: bool,
    tracks: [Track; 2],
    /// The current source's end of stream is the end of the programme (else it is dropped).
    end_accepted: bool,
    /// An end of stream was dropped as an outage.
    lost: bool,
    /// When the current source sent an end of stream that is not decided yet.
    eos_at: Option<Instant>,
    dropped_late: u64,
    /// How far the source's timeline is moved back onto the clock, ns (negative: forward).
    early: i64,
    /// The first buffer (once PLAYING) is put on the clock: for a source that is not live
    /// (`rtmp2src`: its timestamps are the publisher's, and what it delivered while the
    /// pipeline prerolled would be a backlog).
    anchor: bool,
    anchored: bool,
}

/// The probes' state, shared with the worker loop.
#[derive(Default)]
pub struct Joint {
    inner: Mutex<JointInner>,
}

/// What the probe does with one item.
enum Verdict {
    Pass,
    Drop,
    /// Pass this event instead.
    Replace(gst::Event),
    /// Pass with new timestamps (`pts`, `dts`), DISCONT if set, after the GAP event given
    /// (the silence from where the audio ended to this buffer).
    Retime(
        Option<gst::ClockTime>,
        Option<gst::ClockTime>,
        bool,
        Option<gst::Event>,
    ),
}

impl Joint {
    /// Puts the probes on `ain`'s and `vin`'s sink pads; `silent_too_long` tells whether the
    /// source has been silent for longer than the source timeout (its EOS is then an outage).
    pub fn attach(
        self: &Arc<Self>,
        pipeline: &gst::Pipeline,
        audio_in: &gst::Element,
        video_in: &gst::Element,
        silent_too_long: impl Fn() -> bool + Send + Sync + Clone + 'static,
    ) -> Result<(), String> {
        for (element, kind) in [(audio_in, Kind::Audio), (video_in, Kind::Video)] {
            let name = element.name();
            let pad = element
                .static_pad("sink")
                .ok_or_else(|| format!("no sink pad on {name}"))?;
            let joint = self.clone();
            let silent = silent_too_long.clone();
            // The running time now, once PLAYING (before, it is the clock's absolute time).
            let weak = pipeline.downgrade();
            let now = move || {
                let p = weak.upgrade()?;
                (p.current_state() == gst::State::Playing)
                    .then(|| p.current_running_time())
                    .flatten()
            };
            let src = element
                .static_pad("src")
                .ok_or_else(|| format!("no src pad on {name}"))?;
            pad.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
                move |_, info| {
                    let verdict = match &info.data {
                        Some(gst::PadProbeData::Buffer(b)) => joint.on_buffer_at(kind, b, now()),
                        Some(gst::PadProbeData::Event(e)) => joint.on_event(kind, e, &silent),
                        _ => Verdict::Pass,
                    };
                    match verdict {
                        Verdict::Pass => gst::PadProbeReturn::Ok,
                        // Handled (the binding releases the item; a buffer's flow stays OK),
                        // not Drop, which makes GStreamer 1.22 unref it a second time
                        // ("gst_mini_object_unref: assertion 'mini_object != NULL'", fixed in
                        // 1.24.8), for buffers as for events.
                        Verdict::Drop => gst::PadProbeReturn::Handled,
                        Verdict::Replace(event) => {
                            info.data = Some(gst::PadProbeData::Event(event));
                            gst::PadProbeReturn::Ok
                        }
                        Verdict::Retime(pts, dts, discont, gap) => {
                            // On this streaming thread, ahead of the buffer: in order.
                            if let Some(gap) = gap {
                                let _ = src.push_event(gap);
                            }
                            if let Some(gst::PadProbeData::Buffer(b)) = &mut info.data {
                                let b = b.make_mut();
                                b.set_pts(pts);
                                b.set_dts(dts);
                                if discont {
                                    b.set_flags(gst::BufferFlags::DISCONT);
                                }
                            }
                            gst::PadProbeReturn::Ok
                        }
                    }
                },
            );
        }
        Ok(())
    }

    /// A new generation of the source is about to be linked.
    pub fn new_generation(&self) {
        let mut i = self.inner.lock().unwrap();
        i.generation += 1;
        // A source that is not live is put on the clock again at its first buffer (its
        // timestamps start anew; a live one's running time is the clock's).
        i.anchored = false;
        if i.anchor {
            i.early = 0;
        }
        i.lost = false;
        i.eos_at = None;
        for t in i.tracks.iter_mut() {
            t.current = None;
            t.resync = true;
        }
    }

    /// The end of stream that comes next is the end of the programme (SIGTERM, or the
    /// source's announced range played out).
    pub fn accept_end(&self) {
        self.inner.lock().unwrap().end_accepted = true;
    }

    /// Whether the current source ended its stream after an outage (the EOS was dropped),
    /// cleared by reading.
    pub fn take_lost(&self) -> bool {
        std::mem::take(&mut self.inner.lock().unwrap().lost)
    }

    /// Whether the current source sent an end of stream at least `settle` ago (the messages
    /// it posted before are read by then), cleared by reading. The caller decides: the end
    /// of the programme ([`Input::end`]) or an outage.
    pub fn take_end(&self, settle: Duration) -> bool {
        let mut i = self.inner.lock().unwrap();
        if i.eos_at.is_some_and(|t| t.elapsed() >= settle) {
            i.eos_at = None;
            true
        } else {
            false
        }
    }

    /// Audio buffers dropped because they would have overlapped what already went out.
    pub fn dropped_late(&self) -> u64 {
        self.inner.lock().unwrap().dropped_late
    }

    fn on_event(&self, kind: Kind, e: &gst::Event, silent: &impl Fn() -> bool) -> Verdict {
        let mut i = self.inner.lock().unwrap();
        let later = i.generation > 0;
        match e.view() {
            gst::EventView::CustomDownstream(c)
                if c.structure().is_some_and(|s| s.name() == FILL_EVENT) =>
            {
                let until = c
                    .structure()
                    .and_then(|s| s.get::<u64>("until").ok())
                    .map(gst::ClockTime::from_nseconds);
                match until.and_then(|u| Self::gap_until(&mut i, u)) {
                    Some(gap) => Verdict::Replace(gap),
                    None => Verdict::Drop,
                }
            }
            gst::EventView::StreamStart(_) => {
                let t = &mut i.tracks[kind as usize];
                if std::mem::replace(&mut t.started, true) {
                    Verdict::Drop
                } else {
                    Verdict::Pass
                }
            }
            gst::EventView::Segment(s) => {
                let Ok(seg) = s.segment().clone().downcast::<gst::ClockTime>() else {
                    return Verdict::Pass;
                };
                let t = &mut i.tracks[kind as usize];
                t.current = Some(seg.clone());
                if t.downstream.is_none() {
                    // Open-ended downstream: a file served over RTSP announces its range as
                    // the segment's stop, and a later source goes on past it.
                    let mut open = seg;
                    open.set_stop(gst::ClockTime::NONE);
                    let event = gst::event::Segment::builder(&open)
                        .seqnum(e.seqnum())
                        .build();
                    t.downstream = Some(open);
                    Verdict::Replace(event)
                } else {
                    Verdict::Drop
                }
            }
            gst::EventView::Eos(_) => {
                if i.end_accepted {
                    Verdict::Pass
                } else {
                    // Held back: after a silence it is an outage; else the worker decides
                    // once the source's messages before it are read ([`Joint::take_end`]).
                    if silent() {
                        i.lost = true;
                    } else {
                        i.eos_at = Some(Instant::now());
                    }
                    Verdict::Drop
                }
            }
            // Flushes of a source being replaced would flush the whole chain.
            gst::EventView::FlushStart(_) | gst::EventView::FlushStop(_) if later => Verdict::Drop,
            _ => Verdict::Pass,
        }
    }

    #[cfg(test)]
    fn on_buffer(&self, kind: Kind, b: &gst::BufferRef) -> Verdict {
        self.on_buffer_at(kind, b, None)
    }

    /// What to do with a buffer that came at running time `now` (`None`: not PLAYING).
    fn on_buffer_at(&self, kind: Kind, b: &gst::BufferRef, now: Option<gst::ClockTime>) -> Verdict {
        let mut i = self.inner.lock().unwrap();
        let first_generation = i.generation == 0;
        let t = &mut i.tracks[kind as usize];
        let (Some(cur), Some(down)) = (t.current.clone(), t.downstream.clone()) else {
            return Verdict::Pass;
        };
        let Some(pts) = b.pts() else {
            return if first_generation && i.early == 0 {
                Verdict::Pass
            } else {
                Verdict::Drop
            };
        };
        let Some(source_rt) = cur.to_running_time(pts) else {
            return Verdict::Drop;
        };
        let source_ns = source_rt.nseconds() as i64;
        if let Some(now) = now.map(|n| n.nseconds() as i64) {
            let mut moved = None;
            if i.anchor && !i.anchored {
                // A source that is not live: its first buffer on the clock.
                i.anchored = true;
                moved = Some(source_ns - now);
            } else if source_ns - i.early > now + EARLY_LIMIT.nseconds() as i64 {
                // A source ahead of the clock delivers a backlog it queued before the
                // pipeline played: left as it is, that backlog would be published late for the
                // whole run. Its timeline moves back to the clock (the live edge); what would
                // overlap what went out is dropped, as after a reconnection.
                moved = Some(source_ns - i.early - now);
            }
            if let Some(by) = moved.filter(|by| *by != 0) {
                i.early += by;
                for t in i.tracks.iter_mut() {
                    t.resync = true;
                }
                info!(
                    "the source's timeline moves {} ms {} onto the clock ({} ms in all): its first data, or a backlog delivered at once",
                    by.abs() / 1_000_000,
                    if by > 0 { "back" } else { "forward" },
                    i.early / 1_000_000
                );
            }
        }
        let early = i.early;
        let t = &mut i.tracks[kind as usize];
        let Some(rt) = u64::try_from(source_ns - early)
            .ok()
            .map(gst::ClockTime::from_nseconds)
        else {
            return Verdict::Drop;
        };
        let end = rt + b.duration().unwrap_or(gst::ClockTime::ZERO);
        if first_generation && !t.resync && early == 0 {
            t.end_rt = Some(t.end_rt.map_or(end, |e| e.max(end)));
            return Verdict::Pass;
        }
        // The first audio of a new source must not start before what went out (the gaps'
        // end); after it, the source's own jitter is left to dubchunker, as for the first.
        if kind == Kind::Audio && t.resync && t.end_rt.is_some_and(|e| rt < e) {
            i.dropped_late += 1;
            return Verdict::Drop;
        }
        // Video resumes at a keyframe, not before what went out (after a backlog's move, the
        // moved video would go back in time: the muxer would clamp it).
        if kind == Kind::Video
            && t.resync
            && (b.flags().contains(gst::BufferFlags::DELTA_UNIT)
                || t.end_rt.is_some_and(|e| rt + VIDEO_OVERLAP_TOLERANCE < e))
        {
            return Verdict::Drop;
        }
        let Some(new_pts) = down.position_from_running_time(rt) else {
            return Verdict::Drop;
        };
        // The DTS moves with the PTS (it may be before the segment's start: B-frames).
        let moved = new_pts.nseconds() as i64 - pts.nseconds() as i64;
        let new_dts = b
            .dts()
            .and_then(|d| u64::try_from(d.nseconds() as i64 + moved).ok())
            .map(gst::ClockTime::from_nseconds);
        let discont = std::mem::take(&mut t.resync);
        // The silence between the last audio (or gap) and this first buffer of a new source.
        let gap = match (kind, discont, t.end_rt) {
            (Kind::Audio, true, Some(e)) if rt > e => down
                .position_from_running_time(e)
                .map(|start| gst::event::Gap::builder(start).duration(rt - e).build()),
            _ => None,
        };
        t.end_rt = Some(t.end_rt.map_or(end, |e| e.max(end)));
        if kind == Kind::Audio {
            i.filling = false;
        }
        Verdict::Retime(Some(new_pts), new_dts, discont, gap)
    }

    /// Makes a source that is not live (`rtmp2src`) one: its first buffer is put on the
    /// clock (and a reconnected one's), and the latency queries through `ain` and `vin`
    /// answer live with `latency` for its jitter (as `rtspsrc`'s jitter buffer), so that the
    /// pipeline is live: the sinks sync with that latency, `stsbridge` has its deadlines,
    /// `avoffset` its hold on the clock, the muxers their wait.
    pub fn make_live(
        &self,
        audio_in: &gst::Element,
        video_in: &gst::Element,
        latency: gst::ClockTime,
    ) -> Result<(), String> {
        self.inner.lock().unwrap().anchor = true;
        for element in [audio_in, video_in] {
            let pad = element
                .static_pad("sink")
                .ok_or_else(|| format!("no sink pad on {}", element.name()))?;
            pad.add_probe(
                gst::PadProbeType::QUERY_UPSTREAM | gst::PadProbeType::PULL,
                move |_, info| {
                    if let Some(gst::PadProbeData::Query(q)) = &mut info.data
                        && let gst::QueryViewMut::Latency(l) = q.view_mut()
                    {
                        let (live, min, max) = l.result();
                        if !live {
                            let max = max.map(|m| m.max(min + latency));
                            l.set(true, min + latency, max);
                        }
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        }
        Ok(())
    }

    /// The source is gone: until a new one delivers audio, the worker loop fills the time.
    pub fn start_filling(&self) {
        self.inner.lock().unwrap().filling = true;
    }

    /// Starts the filling if the audio that went out ends more than `stall` before running
    /// time `now` (the source delivers nothing, or too late to be dubbed in time): returns
    /// how far behind it is. Not once the end of the programme is accepted.
    pub fn start_filling_if_stalled(
        &self,
        now: gst::ClockTime,
        stall: gst::ClockTime,
    ) -> Option<gst::ClockTime> {
        let mut i = self.inner.lock().unwrap();
        if i.filling || i.end_accepted {
            return None;
        }
        let behind = now.checked_sub(i.tracks[Kind::Audio as usize].end_rt?)?;
        (behind > stall).then(|| {
            i.filling = true;
            behind
        })
    }

    /// The event that fills the audio with silence up to running time `until` while filling
    /// ([`Joint::start_filling`]): sent into `ain`'s sink pad, in order with the buffers,
    /// where the probe makes it a GAP event, or drops it when there is nothing to fill.
    pub fn fill_event(until: gst::ClockTime) -> gst::Event {
        gst::event::CustomDownstream::new(
            gst::Structure::builder(FILL_EVENT)
                .field("until", until.nseconds())
                .build(),
        )
    }

    /// Whether the worker loop fills the audio.
    pub fn filling(&self) -> bool {
        let i = self.inner.lock().unwrap();
        i.filling && !i.end_accepted
    }

    /// While filling: the GAP event (in `ain`'s downstream segment) that takes the audio from
    /// where it ends to running time `until`, if that is ahead, recorded as sent. The next
    /// audio must start after it (earlier audio, late, is dropped) and is DISCONT.
    fn gap_until(i: &mut JointInner, until: gst::ClockTime) -> Option<gst::Event> {
        if !i.filling || i.end_accepted {
            return None;
        }
        let t = &mut i.tracks[Kind::Audio as usize];
        let (down, end) = (t.downstream.as_ref()?, t.end_rt?);
        if until <= end {
            return None;
        }
        let start = down.position_from_running_time(end)?;
        t.end_rt = Some(until);
        t.resync = true;
        Some(
            gst::event::Gap::builder(start)
                .duration(until - end)
                .build(),
        )
    }
}

/// The input's source bins, one generation at a time. What to do when is the supervisor's
/// ([`crate::supervisor`]): this connects, drops, fills and ends.
pub struct Input {
    input: LiveInput,
    pipeline: gst::Pipeline,
    joint: Arc<Joint>,
    /// The joint's elements.
    audio_in: gst::Element,
    video_in: gst::Element,
    source: Option<SourceBin>,
    generation: u32,
    /// How far behind the clock the audio may fall before it is filled with silence.
    stall: gst::ClockTime,
    /// To the filler thread: fill up to this running time. Sending a fill event into `ain`
    /// takes its stream lock, which a streaming thread blocked downstream holds: the worker
    /// loop never waits on it (a tick whose fill is still pending is skipped).
    filler: std::sync::mpsc::SyncSender<gst::ClockTime>,
}

impl Input {
    /// The input of `pipeline`: its first source bin `first` (generation 0, linked to the
    /// joint's `audio_in` and `video_in`); `stall` is how far behind the clock its audio may
    /// fall before it is filled with silence ([`crate::pipeline::Chain::stall_fill_after`]).
    pub fn new(
        pipeline: &gst::Pipeline,
        (audio_in, video_in): (&gst::Element, &gst::Element),
        input: &LiveInput,
        joint: Arc<Joint>,
        first: SourceBin,
        stall: gst::ClockTime,
    ) -> Input {
        let (filler, fills) = std::sync::mpsc::sync_channel::<gst::ClockTime>(1);
        let ain = audio_in.static_pad("sink");
        std::thread::Builder::new()
            .name("source-fill".into())
            .spawn(move || {
                // Ends when the input is dropped.
                while let Ok(until) = fills.recv() {
                    if let Some(pad) = &ain {
                        let _ = pad.send_event(Joint::fill_event(until));
                    }
                }
            })
            .expect("spawn the fill thread");
        Input {
            input: input.clone(),
            pipeline: pipeline.clone(),
            joint,
            audio_in: audio_in.clone(),
            video_in: video_in.clone(),
            source: Some(first),
            generation: 0,
            stall,
            filler,
        }
    }

    /// The input's kind and URL.
    pub fn input(&self) -> &LiveInput {
        &self.input
    }

    /// The source bin now linked.
    pub fn current(&self) -> Option<&SourceBin> {
        self.source.as_ref()
    }

    /// Whether an element (its path) belongs to the current source bin; `Some(false)` for
    /// one of an earlier generation (its messages are stale), `None` outside any.
    pub fn owns(&self, path: &str) -> Option<bool> {
        let at = path.find(":source")?;
        let rest = &path[at + ":source".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(digits.parse::<u32>().ok()? == self.generation && self.source.is_some())
    }

    /// Tears the current source bin down (unlinked at once, stopped on a thread of its own:
    /// rtspsrc may wait on a dead server); its audio time is filled with silence until a new
    /// one delivers.
    pub fn drop_source(&mut self) {
        self.joint.start_filling();
        if let Some(SourceBin { bin, .. }) = self.source.take() {
            let _ = bin.set_locked_state(true);
            for ghost in ["audio", "video"] {
                if let Some(pad) = bin.static_pad(ghost)
                    && let Some(peer) = pad.peer()
                {
                    let _ = pad.unlink(&peer);
                }
            }
            let pipeline = self.pipeline.clone();
            std::thread::spawn(move || {
                let _ = bin.set_state(gst::State::Null);
                let _ = pipeline.remove(&bin);
            });
        }
    }

    /// Builds and links the next generation's source bin; `watch` sets up its probes.
    pub fn connect(
        &mut self,
        attempt: u32,
        stream_id: &str,
        watch: impl Fn(&SourceBin),
    ) -> Result<(), String> {
        if self.source.is_some() {
            self.drop_source();
        }
        self.generation += 1;
        self.joint.new_generation();
        let source = SourceBin::build(&self.input, self.generation)?;
        watch(&source);
        source.link(&self.pipeline, &self.audio_in, &self.video_in)?;
        let _ = source.bin.sync_state_with_parent();
        info!(
            stream_id,
            "source: reconnecting to {} (attempt {})",
            crate::log::redact_url(self.input.url()),
            attempt + 1
        );
        self.source = Some(source);
        Ok(())
    }

    /// Fills the audio with silence while no source delivers it in time: after an outage, or
    /// (`may_stall`: not at the start nor at the end of an announced range, where the source
    /// is ending) once it is more than `stall` behind the clock.
    pub fn fill(&self, may_stall: bool, stream_id: &str) {
        // Only on the running clock: before PLAYING the "running time" is the clock's
        // absolute time (hours), and an RTMP source may already deliver while prerolling.
        if self.pipeline.current_state() != gst::State::Playing {
            return;
        }
        let Some(rt) = self.pipeline.current_running_time() else {
            return;
        };
        if may_stall && let Some(behind) = self.joint.start_filling_if_stalled(rt, self.stall) {
            info!(
                stream_id,
                "source stalled: its audio is {} ms behind the clock; filling with silence (audio arriving late for that time is dropped)",
                behind.mseconds()
            );
        }
        // What goes out ends `FILL_BEHIND` before now: the source's own audio arrives about
        // its jitterbuffer latency late.
        if self.joint.filling()
            && let Some(until) = rt.checked_sub(FILL_BEHIND)
        {
            let _ = self.filler.try_send(until);
        }
    }

    /// The end of the programme: the next end of stream passes the joint, and one is sent
    /// into it now (whether or not a source is linked).
    pub fn end(&self) {
        self.joint.accept_end();
        for joint in [&self.audio_in, &self.video_in] {
            if let Some(pad) = joint.static_pad("sink") {
                let _ = pad.send_event(gst::event::Eos::new());
            }
        }
    }
}

/// A video keyframe may start this much before the end of the video that went out (the last
/// frame's duration is an estimate) and still resume it.
const VIDEO_OVERLAP_TOLERANCE: gst::ClockTime = gst::ClockTime::from_mseconds(50);

/// A source more than this ahead of the clock has its timeline moved back (a backlog); less
/// is the jitter of a publisher's start (ffmpeg's first packets come in a burst of ~200 ms),
/// which the sinks' wait absorbs.
const EARLY_LIMIT: gst::ClockTime = gst::ClockTime::from_mseconds(500);

/// How far behind the clock the silence sent during an outage ends.
const FILL_BEHIND: gst::ClockTime = gst::ClockTime::from_mseconds(500);

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start_s: u64) -> gst::Event {
        let mut s = gst::FormattedSegment::<gst::ClockTime>::new();
        s.set_start(gst::ClockTime::from_seconds(start_s));
        s.set_time(gst::ClockTime::from_seconds(start_s));
        // A file's range.
        s.set_stop(gst::ClockTime::from_seconds(start_s + 60));
        gst::event::Segment::new(&s)
    }

    fn buf(pts_ms: u64, dur_ms: u64, delta: bool) -> gst::Buffer {
        let mut b = gst::Buffer::new();
        let m = b.get_mut().unwrap();
        m.set_pts(gst::ClockTime::from_mseconds(pts_ms));
        m.set_duration(gst::ClockTime::from_mseconds(dur_ms));
        if delta {
            m.set_flags(gst::BufferFlags::DELTA_UNIT);
        }
        b
    }

    fn pts(v: &Verdict, original: &gst::Buffer) -> Option<u64> {
        match v {
            Verdict::Pass => original.pts().map(|t| t.mseconds()),
            Verdict::Retime(p, _, _, _) => p.map(|t| t.mseconds()),
            Verdict::Drop | Verdict::Replace(_) => None,
        }
    }

    /// What the probe makes of a fill event up to `until_s`.
    fn fill(j: &Joint, until_s: u64) -> Option<gst::Event> {
        let e = Joint::fill_event(gst::ClockTime::from_seconds(until_s));
        match j.on_event(Kind::Audio, &e, &|| false) {
            Verdict::Replace(gap) => Some(gap),
            Verdict::Drop => None,
            _ => panic!("a fill event went downstream as it is"),
        }
    }

    fn gap_span_ms(gap: &gst::Event) -> (u64, Option<u64>) {
        let gst::EventView::Gap(g) = gap.view() else {
            panic!("not a gap: {gap:?}")
        };
        (g.get().0.mseconds(), g.get().1.map(|d| d.mseconds()))
    }

    /// A source that stalls (no reconnection): once its audio is more than the stall limit
    /// behind, the time is filled; its late audio for that time is dropped, the rest passes
    /// DISCONT, and the filling stops.
    #[test]
    fn a_stalled_source_is_filled_and_its_late_audio_dropped() {
        gst::init().unwrap();
        let j = Joint::default();
        let never = || false;
        j.on_event(Kind::Audio, &seg(0), &never);
        j.on_event(Kind::Video, &seg(0), &never);
        let b = buf(19_980, 20, false);
        assert_eq!(pts(&j.on_buffer(Kind::Audio, &b), &b), Some(19_980));
        let stall = gst::ClockTime::from_mseconds(3300);
        let s = gst::ClockTime::from_mseconds;
        assert_eq!(j.start_filling_if_stalled(s(23_000), stall), None);
        assert!(!j.filling());
        assert!(fill(&j, 23).is_none(), "not filling: nothing sent");
        assert_eq!(j.start_filling_if_stalled(s(23_400), stall), Some(s(3400)));
        assert!(j.filling());
        assert_eq!(j.start_filling_if_stalled(s(24_000), stall), None, "once");
        let gap = fill(&j, 23).unwrap();
        assert_eq!(gap_span_ms(&gap), (20_000, Some(3000)));
        // The stalled source's audio arrives in a burst: what was filled is dropped.
        for pts_ms in [20_000, 21_000, 22_980] {
            let late = buf(pts_ms, 20, false);
            assert!(matches!(j.on_buffer(Kind::Audio, &late), Verdict::Drop));
        }
        assert_eq!(j.dropped_late(), 3);
        let b = buf(23_000, 20, false);
        let v = j.on_buffer(Kind::Audio, &b);
        assert!(
            matches!(v, Verdict::Retime(_, _, true, None)),
            "DISCONT, no gap"
        );
        assert_eq!(pts(&v, &b), Some(23_000));
        assert!(!j.filling(), "the source delivers again");
        assert!(fill(&j, 30).is_none());
        let b = buf(23_020, 20, false);
        assert!(matches!(j.on_buffer(Kind::Audio, &b), Verdict::Pass));
        // Its late video passes as it is (within the offset, the muxer still takes it).
        let v = buf(21_000, 33, true);
        assert!(matches!(j.on_buffer(Kind::Video, &v), Verdict::Pass));
        // Once the end of the programme is accepted, nothing is filled.
        j.accept_end();
        assert_eq!(j.start_filling_if_stalled(s(40_000), stall), None);
        j.start_filling();
        assert!(!j.filling());
        assert!(fill(&j, 40).is_none());
    }

    #[test]
    fn a_second_source_continues_the_first_ones_timeline() {
        gst::init().unwrap();
        let j = Arc::new(Joint::default());
        let never = || false;
        // Generation 0: its stream-start, its segment (made open-ended), buffers as they are.
        assert!(matches!(
            j.on_event(Kind::Audio, &gst::event::StreamStart::new("x"), &never),
            Verdict::Pass
        ));
        assert!(matches!(
            j.on_event(Kind::Audio, &seg(0), &never),
            Verdict::Replace(_)
        ));
        assert!(matches!(
            j.on_event(Kind::Video, &seg(0), &never),
            Verdict::Replace(_)
        ));
        let b = buf(20_000, 20, false);
        assert_eq!(pts(&j.on_buffer(Kind::Audio, &b), &b), Some(20_000));
        // The source is lost at 20.02 s; gaps keep the audio going to 24 s.
        assert!(fill(&j, 24).is_none(), "not filling yet");
        j.start_filling();
        let gap = fill(&j, 24).unwrap();
        let gst::EventView::Gap(g) = gap.view() else {
            panic!()
        };
        assert_eq!(g.get().0.mseconds(), 20_020);
        assert!(fill(&j, 23).is_none());
        // Generation 1: its own segment, starting at 100 s (its timestamps 100 s + rt).
        j.new_generation();
        assert!(matches!(
            j.on_event(Kind::Audio, &gst::event::StreamStart::new("x"), &never),
            Verdict::Drop
        ));
        assert!(matches!(
            j.on_event(Kind::Audio, &seg(100), &never),
            Verdict::Drop
        ));
        j.on_event(Kind::Video, &seg(100), &never);
        // Audio from before the gap's end is dropped; after it, retimed, DISCONT.
        let late = buf(123_900, 20, false);
        assert!(matches!(j.on_buffer(Kind::Audio, &late), Verdict::Drop));
        assert_eq!(j.dropped_late(), 1);
        // The first new audio, 0.5 s after the gaps' end: the silence between goes first.
        let b = buf(124_500, 20, false);
        let v = j.on_buffer(Kind::Audio, &b);
        assert_eq!(pts(&v, &b), Some(24_500));
        let Verdict::Retime(_, _, true, Some(gap)) = v else {
            panic!("no DISCONT or no gap")
        };
        let gst::EventView::Gap(g) = gap.view() else {
            panic!()
        };
        assert_eq!(
            (g.get().0.mseconds(), g.get().1.map(|d| d.mseconds())),
            (24_000, Some(500))
        );
        assert!(fill(&j, 30).is_none(), "a source delivers");
        // Jitter after that (a buffer starting a little before the previous one's end)
        // passes.
        let b = buf(124_519, 20, false);
        let v = j.on_buffer(Kind::Audio, &b);
        assert!(matches!(v, Verdict::Retime(_, _, false, None)));
        assert_eq!(pts(&v, &b), Some(24_519));
        let b = buf(124_540, 20, false);
        let v = j.on_buffer(Kind::Audio, &b);
        assert_eq!(pts(&v, &b), Some(24_540));
        // Video waits for a keyframe.
        assert!(matches!(
            j.on_buffer(Kind::Video, &buf(124_000, 40, true)),
            Verdict::Drop
        ));
        let k = buf(124_040, 40, false);
        let v = j.on_buffer(Kind::Video, &k);
        assert!(matches!(v, Verdict::Retime(_, _, true, None)));
        assert_eq!(pts(&v, &k), Some(24_040));
        // Past the first file's range (its segment's stop, 60 s), the timeline goes on.
        let b = buf(150_000, 40, true);
        assert_eq!(pts(&j.on_buffer(Kind::Video, &b), &b), Some(50_000));
    }

    /// An RTMP server hands a subscriber that came before the publisher a backlog at once
    /// when the pipeline plays: the timeline moves back to the clock, what overlaps is
    /// dropped, and from there the data is on time.
    #[test]
    fn a_backlog_ahead_of_the_clock_is_moved_to_the_live_edge() {
        gst::init().unwrap();
        let j = Joint::default();
        let never = || false;
        j.on_event(Kind::Audio, &seg(0), &never);
        j.on_event(Kind::Video, &seg(0), &never);
        let at = |ms: u64| Some(gst::ClockTime::from_mseconds(ms));
        // On time, then 150 ms ahead (jitter): as they are.
        let b = buf(0, 20, false);
        assert!(matches!(
            j.on_buffer_at(Kind::Audio, &b, at(5)),
            Verdict::Pass
        ));
        let b = buf(160, 20, false);
        assert!(matches!(
            j.on_buffer_at(Kind::Audio, &b, at(10)),
            Verdict::Pass
        ));
        let v = buf(0, 200, false);
        assert!(matches!(
            j.on_buffer_at(Kind::Video, &v, at(10)),
            Verdict::Pass
        ));
        // 2.5 s ahead: moved back 2.49 s; it starts before what went out (180 ms): dropped.
        let b = buf(2500, 20, false);
        assert!(matches!(
            j.on_buffer_at(Kind::Audio, &b, at(10)),
            Verdict::Drop
        ));
        // The next audio after what went out: DISCONT, on the clock.
        let b = buf(2680, 20, false);
        let v = j.on_buffer_at(Kind::Audio, &b, at(200));
        assert!(matches!(v, Verdict::Retime(_, _, true, _)), "DISCONT");
        assert_eq!(pts(&v, &b), Some(190));
        let b = buf(2700, 20, false);
        assert_eq!(
            pts(&j.on_buffer_at(Kind::Audio, &b, at(215)), &b),
            Some(210)
        );
        // Video: from its next keyframe not before what went out, moved back the same.
        assert!(matches!(
            j.on_buffer_at(Kind::Video, &buf(2700, 40, true), at(215)),
            Verdict::Drop
        ));
        assert!(
            matches!(
                j.on_buffer_at(Kind::Video, &buf(2560, 40, false), at(215)),
                Verdict::Drop
            ),
            "a keyframe at 70 ms, before the end of the video that went out (200 ms)"
        );
        let k = buf(3000, 40, false);
        assert_eq!(
            pts(&j.on_buffer_at(Kind::Video, &k, at(500)), &k),
            Some(510)
        );
    }

    /// rtmp2src is not live: its first buffer is put on the clock (back or forward), and so
    /// is a reconnected one's, whose timestamps start anew.
    #[test]
    fn a_source_that_is_not_live_is_put_on_the_clock() {
        gst::init().unwrap();
        let j = Joint::default();
        j.inner.lock().unwrap().anchor = true;
        let never = || false;
        j.on_event(Kind::Audio, &seg(0), &never);
        j.on_event(Kind::Video, &seg(0), &never);
        let at = |ms: u64| Some(gst::ClockTime::from_mseconds(ms));
        let b = buf(1900, 20, false);
        let v = j.on_buffer_at(Kind::Audio, &b, at(300));
        assert!(matches!(v, Verdict::Retime(_, _, true, None)), "DISCONT");
        assert_eq!(pts(&v, &b), Some(300));
        let b = buf(1920, 20, false);
        assert_eq!(
            pts(&j.on_buffer_at(Kind::Audio, &b, at(320)), &b),
            Some(320)
        );
        let k = buf(1900, 40, false);
        assert_eq!(
            pts(&j.on_buffer_at(Kind::Video, &k, at(330)), &k),
            Some(300)
        );
        // The publisher gone at 2 s, the time filled to 19 s; a new subscription's timestamps
        // start at 0 when the clock is at 20 s: they go on at 20 s, after the silence.
        j.start_filling();
        assert!(fill(&j, 19).is_some());
        j.new_generation();
        j.on_event(Kind::Audio, &seg(0), &never);
        j.on_event(Kind::Video, &seg(0), &never);
        let b = buf(0, 20, false);
        let v = j.on_buffer_at(Kind::Audio, &b, at(20_000));
        assert_eq!(pts(&v, &b), Some(20_000));
        let Verdict::Retime(_, _, true, Some(gap)) = v else {
            panic!("no DISCONT or no gap: the silence from 19 s")
        };
        assert_eq!(gap_span_ms(&gap), (19_000, Some(1000)));
        assert_eq!(j.dropped_late(), 0);
    }

    #[test]
    fn an_end_after_silence_is_an_outage() {
        gst::init().unwrap();
        let j = Joint::default();
        let eos = gst::event::Eos::new();
        assert!(matches!(
            j.on_event(Kind::Audio, &eos, &|| true),
            Verdict::Drop
        ));
        assert!(j.take_lost());
        assert!(!j.take_lost());
        // Not after a silence: held for the worker to decide.
        assert!(matches!(
            j.on_event(Kind::Audio, &eos, &|| false),
            Verdict::Drop
        ));
        assert!(!j.take_lost());
        assert!(j.take_end(Duration::ZERO));
        assert!(!j.take_end(Duration::ZERO));
        j.accept_end();
        assert!(matches!(
            j.on_event(Kind::Audio, &eos, &|| true),
            Verdict::Pass
        ));
    }
}
