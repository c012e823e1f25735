//! # dubchunker
//!
//! Cuts raw audio into fragments for a speech-to-speech translation service: each output buffer
//! is one fragment. In `fixed` mode every fragment lasts exactly `chunk-duration` (1 s by
//! default: 48000 samples at 48 kHz); in `silence` mode each fragment ends in the quietest
//! 20 ms window between `min-duration` and `max-duration`, so words stay whole for the ASR.
//!
//! ```text
//! gst-launch-1.0 audiotestsrc num-buffers=500 samplesperbuffer=1024 \
//!   ! audio/x-raw,format=S16LE,rate=48000,channels=2 \
//!   ! dubchunker chunk-duration=1000000000 ! fakesink silent=false -v
//! ```
//!
//! ## Timestamps
//! The output is sample-exact: a fragment's PTS is the timeline start plus the number of samples
//! before it × 1 s / rate (integer arithmetic, never a sum of durations), its DURATION the
//! difference to the next fragment's PTS, OFFSET/OFFSET_END its sample positions. The output
//! holds exactly the input samples, in order.
//!
//! The timeline restarts (the pending partial fragment goes out first, the next fragment has
//! DISCONT) on a DISCONT buffer or when a buffer's PTS is more than half its duration away from
//! where the previous samples end; smaller jitter is absorbed. Caps and segment changes and EOS
//! push the partial fragment first; FLUSH_STOP drops it.
//!
//! GAP events keep the timeline contiguous: the gap is filled with silence up to the end of the
//! gap, and a fragment made only of such silence carries the GAP flag (so `stsbridge` does not
//! send it to the STS). The first buffer must carry a PTS.
//!
//! Other serialized events (tags…) are forwarded as they arrive, ahead of the fragment in
//! progress.
//!
//! ## Latency
//! The element holds up to one fragment: it adds the longest fragment it can produce
//! (`chunk-duration`, or `max-duration` in silence mode) to the upstream latency.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use parking_lot::Mutex;
use std::sync::LazyLock;

use super::Boundary;
use super::accumulator::{self, Accumulator, Cut, CutKind};
use crate::timeline::{Timeline, ns_to_frames};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "dubchunker",
        gst::DebugColorFlags::empty(),
        Some("Dubbing audio fragmenter"),
    )
});

use super::{
    DEFAULT_CHUNK_DURATION, DEFAULT_MAX_DURATION, DEFAULT_MIN_DURATION, DEFAULT_SILENCE_THRESHOLD,
    MAX_FRAGMENT, MIN_FRAGMENT,
};

#[derive(Debug, Clone, Copy)]
struct Settings {
    chunk_duration: u64,
    boundary: Boundary,
    min_duration: u64,
    max_duration: u64,
    silence_threshold: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            chunk_duration: DEFAULT_CHUNK_DURATION,
            boundary: Boundary::Fixed,
            min_duration: DEFAULT_MIN_DURATION,
            max_duration: DEFAULT_MAX_DURATION,
            silence_threshold: DEFAULT_SILENCE_THRESHOLD,
        }
    }
}

impl Settings {
    /// The longest fragment the element can output (its added latency).
    fn max_fragment(&self) -> u64 {
        match self.boundary {
            Boundary::Fixed => self.chunk_duration,
            Boundary::Silence => self.max_duration,
        }
    }

    fn to_boundary(self, rate: u32) -> accumulator::Boundary {
        match self.boundary {
            Boundary::Fixed => accumulator::Boundary::Fixed {
                frames: ns_to_frames(self.chunk_duration, rate).max(1),
            },
            Boundary::Silence => accumulator::Boundary::Silence {
                min_frames: ns_to_frames(self.min_duration, rate),
                max_frames: ns_to_frames(self.max_duration, rate).max(1),
                threshold_db: self.silence_threshold,
            },
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Stats {
    fragments: u64,
    samples_in: u64,
    samples_out: u64,
    partial_fragments: u64,
    discontinuities: u64,
    gap_samples: u64,
    pause_cuts: u64,
    forced_cuts: u64,
}

impl Stats {
    fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder(super::STATS_STRUCTURE)
            .field("fragments", self.fragments)
            .field("samples-in", self.samples_in)
            .field("samples-out", self.samples_out)
            .field("partial-fragments", self.partial_fragments)
            .field("discontinuities", self.discontinuities)
            .field("gap-samples", self.gap_samples)
            .field("pause-cuts", self.pause_cuts)
            .field("forced-cuts", self.forced_cuts)
            .build()
    }
}

#[derive(Default)]
struct State {
    info: Option<gst_audio::AudioInfo>,
    segment: Option<gst::Segment>,
    adapter: gst_base::UniqueAdapter,
    acc: Option<Accumulator>,
    timeline: Option<Timeline>,
    /// The next fragment starts a new timeline.
    discont: bool,
    stats: Stats,
}

impl State {
    /// Takes `cut.frames` frames from the adapter and stamps them.
    fn emit(&mut self, cut: Cut) -> Option<gst::Buffer> {
        let info = self.info.as_ref()?;
        let timeline = self.timeline.as_mut()?;
        let bytes = usize::try_from(cut.frames).ok()? * info.bpf() as usize;
        let mut buffer = self.adapter.take_buffer(bytes).ok()?;
        let place = timeline.take_out(cut.frames);
        {
            let b = buffer.make_mut();
            b.set_pts(gst::ClockTime::from_nseconds(place.pts));
            b.set_dts(gst::ClockTime::NONE);
            b.set_duration(gst::ClockTime::from_nseconds(place.duration));
            b.set_offset(place.offset);
            b.set_offset_end(place.offset_end);
            b.unset_flags(
                gst::BufferFlags::DISCONT | gst::BufferFlags::GAP | gst::BufferFlags::RESYNC,
            );
            if std::mem::take(&mut self.discont) {
                b.set_flags(gst::BufferFlags::DISCONT);
            }
            if cut.gap {
                b.set_flags(gst::BufferFlags::GAP);
            }
        }
        let s = &mut self.stats;
        s.fragments += 1;
        s.samples_out += cut.frames;
        match cut.kind {
            CutKind::Partial => s.partial_fragments += 1,
            CutKind::Pause { .. } => s.pause_cuts += 1,
            CutKind::Forced { .. } => s.forced_cuts += 1,
            CutKind::Full => {}
        }
        Some(buffer)
    }

    /// Every full fragment pending.
    fn emit_full(&mut self, out: &mut Vec<gst::Buffer>) {
        while let Some(cut) = self.acc.as_mut().and_then(Accumulator::next_cut) {
            out.extend(self.emit(cut));
        }
    }

    /// Whatever is pending, as a partial fragment.
    fn emit_partial(&mut self, out: &mut Vec<gst::Buffer>) {
        if let Some(cut) = self.acc.as_mut().and_then(Accumulator::take_partial) {
            out.extend(self.emit(cut));
        }
    }

    fn start_timeline(&mut self, pts: u64) {
        if let Some(info) = &self.info {
            self.timeline = Some(Timeline::new(pts, info.rate()));
            self.discont = true;
        }
    }

    /// Drops pending audio and the timeline (flush, stop).
    fn reset_stream(&mut self) {
        self.adapter.clear();
        if let Some(acc) = self.acc.as_mut() {
            acc.clear();
        }
        self.timeline = None;
        self.discont = true;
    }
}

pub struct DubChunker {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<State>,
}

impl DubChunker {
    fn push_all(&self, out: Vec<gst::Buffer>) -> Result<gst::FlowSuccess, gst::FlowError> {
        for buffer in out {
            gst::trace!(CAT, imp = self, "fragment {buffer:?}");
            self.srcpad.push(buffer)?;
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn sink_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = *self.settings.lock();
        let mut out = Vec::new();
        {
            let mut state = self.state.lock();
            let Some(info) = state.info.clone() else {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ("Received a buffer before caps")
                );
                return Err(gst::FlowError::NotNegotiated);
            };
            let bpf = info.bpf() as usize;
            let size = buffer.size();
            if !size.is_multiple_of(bpf) {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Format,
                    (
                        "Buffer of {size} bytes is not a whole number of {bpf}-byte frames ({} channels, S16LE)",
                        info.channels()
                    )
                );
                return Err(gst::FlowError::Error);
            }
            let frames = (size / bpf) as u64;
            if frames == 0 {
                return Ok(gst::FlowSuccess::Ok);
            }

            let pts = buffer.pts().map(gst::ClockTime::nseconds);
            match (&state.timeline, pts) {
                (None, None) => {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("The first audio buffer has no timestamp (PTS): cannot place fragments on the timeline")
                    );
                    return Err(gst::FlowError::Error);
                }
                (None, Some(pts)) => state.start_timeline(pts),
                (Some(timeline), Some(pts))
                    if buffer.flags().contains(gst::BufferFlags::DISCONT)
                        || timeline.is_discont(pts, frames) =>
                {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "discontinuity: expected {} got {} (DISCONT flag {})",
                        gst::ClockTime::from_nseconds(timeline.expected_pts()),
                        gst::ClockTime::from_nseconds(pts),
                        buffer.flags().contains(gst::BufferFlags::DISCONT)
                    );
                    state.emit_partial(&mut out);
                    state.stats.discontinuities += 1;
                    state.start_timeline(pts);
                }
                _ => {}
            }

            let boundary = settings.to_boundary(info.rate());
            let state = &mut *state;
            let acc = state
                .acc
                .get_or_insert_with(|| Accumulator::new(info.rate(), info.channels(), boundary));
            if acc.boundary() != boundary {
                acc.set_boundary(boundary);
            }
            {
                let map = buffer.map_readable().map_err(|_| {
                    gst::element_imp_error!(self, gst::ResourceError::Read, ("Cannot map buffer"));
                    gst::FlowError::Error
                })?;
                acc.push(map.as_slice());
            }
            if let Some(timeline) = state.timeline.as_mut() {
                timeline.advance_in(frames);
            }
            state.stats.samples_in += frames;
            state.adapter.push(buffer);
            state.emit_full(&mut out);
        }
        self.push_all(out)
    }

    /// Fills a gap with silence up to its end, one fragment at a time so that an hour-long gap
    /// never sits in memory at once.
    fn handle_gap(&self, event: &gst::event::Gap) -> Result<(), gst::FlowError> {
        let (ts, duration) = event.get();
        let end = ts.nseconds() + duration.map_or(0, gst::ClockTime::nseconds);
        loop {
            let settings = *self.settings.lock();
            let mut out = Vec::new();
            let done = {
                let mut state = self.state.lock();
                let Some(info) = state.info.clone() else {
                    return Ok(());
                };
                if state.timeline.is_none() {
                    state.start_timeline(ts.nseconds());
                }
                let rate = info.rate();
                let boundary = settings.to_boundary(rate);
                let timeline = state.timeline.as_ref().expect("timeline started");
                let target = ns_to_frames(end.saturating_sub(timeline.start_pts()), rate);
                let missing = target.saturating_sub(timeline.frames_in());
                if missing == 0 {
                    true
                } else {
                    let state = &mut *state;
                    let acc = state
                        .acc
                        .get_or_insert_with(|| Accumulator::new(rate, info.channels(), boundary));
                    let room = boundary.max_frames().saturating_sub(acc.pending_frames());
                    let n = missing.min(room.max(1));
                    acc.push_gap(n);
                    let bytes = n as usize * info.bpf() as usize;
                    state
                        .adapter
                        .push(gst::Buffer::from_mut_slice(vec![0u8; bytes]));
                    if let Some(t) = state.timeline.as_mut() {
                        t.advance_in(n);
                    }
                    state.stats.gap_samples += n;
                    state.emit_full(&mut out);
                    false
                }
            };
            self.push_all(out)?;
            if done {
                return Ok(());
            }
        }
    }

    /// Pushes the pending partial fragment downstream (before a caps/segment change or EOS).
    fn drain(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut out = Vec::new();
        self.state.lock().emit_partial(&mut out);
        self.push_all(out)
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "event {event:?}");
        match event.view() {
            EventView::Caps(c) => {
                let info = match gst_audio::AudioInfo::from_caps(c.caps()) {
                    Ok(info) => info,
                    Err(_) => {
                        gst::element_imp_error!(
                            self,
                            gst::CoreError::Negotiation,
                            ("Unusable caps {}: need S16LE interleaved audio", c.caps())
                        );
                        return false;
                    }
                };
                if self.state.lock().info.as_ref() != Some(&info) {
                    if self.drain().is_err() {
                        gst::debug!(CAT, imp = self, "downstream refused the partial fragment");
                    }
                    let mut state = self.state.lock();
                    state.reset_stream();
                    state.acc = None;
                    state.info = Some(info);
                }
                gst::Pad::event_default(pad, Some(&*self.obj()), event)
            }
            EventView::Segment(s) => {
                let segment = s.segment().clone();
                if segment.format() != gst::Format::Time {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("Need a TIME segment, got {:?}", segment.format())
                    );
                    return false;
                }
                if self.state.lock().segment.as_ref() != Some(&segment) {
                    let _ = self.drain();
                    self.state.lock().segment = Some(segment);
                }
                gst::Pad::event_default(pad, Some(&*self.obj()), event)
            }
            EventView::Gap(g) => self.handle_gap(g).is_ok(),
            EventView::Eos(_) => {
                let _ = self.drain();
                gst::Pad::event_default(pad, Some(&*self.obj()), event)
            }
            EventView::FlushStop(_) => {
                let mut state = self.state.lock();
                state.reset_stream();
                state.segment = None;
                drop(state);
                gst::Pad::event_default(pad, Some(&*self.obj()), event)
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            if !self.sinkpad.peer_query(q.query_mut()) {
                return false;
            }
            let (live, min, max) = q.result();
            let ours = gst::ClockTime::from_nseconds(self.settings.lock().max_fragment());
            gst::debug!(
                CAT,
                imp = self,
                "upstream latency {min}-{max:?}, adding {ours}"
            );
            q.set(live, min + ours, max.map(|m| m + ours));
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn post_latency(&self) {
        let _ = self
            .obj()
            .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
    }
}

#[glib::object_subclass]
impl ObjectSubclass for DubChunker {
    const NAME: &'static str = "GstDubChunker";
    type Type = super::DubChunker;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let templ = klass.pad_template("sink").unwrap();
        let sinkpad = gst::Pad::builder_from_template(&templ)
            .chain_function(|_pad, parent, buffer| {
                DubChunker::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(buffer),
                )
            })
            .event_function(|pad, parent, event| {
                DubChunker::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        let templ = klass.pad_template("src").unwrap();
        let srcpad = gst::Pad::builder_from_template(&templ)
            .query_function(|pad, parent, query| {
                DubChunker::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        DubChunker {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(State::default()),
        }
    }
}

impl ObjectImpl for DubChunker {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecUInt64::builder("chunk-duration")
                    .nick("Chunk duration")
                    .blurb("Duration of each fragment in fixed mode, in nanoseconds (every fragment holds round(duration × rate) samples)")
                    .minimum(MIN_FRAGMENT)
                    .maximum(MAX_FRAGMENT)
                    .default_value(DEFAULT_CHUNK_DURATION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("boundary", Boundary::Fixed)
                    .nick("Boundary")
                    .blurb("Where fragments end: fixed duration, or in the quietest window (silence)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("min-duration")
                    .nick("Minimum duration")
                    .blurb("Silence mode: shortest fragment, in nanoseconds (clamped to max-duration)")
                    .minimum(MIN_FRAGMENT)
                    .maximum(MAX_FRAGMENT)
                    .default_value(DEFAULT_MIN_DURATION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("max-duration")
                    .nick("Maximum duration")
                    .blurb("Silence mode: longest fragment, in nanoseconds (never exceeded)")
                    .minimum(MIN_FRAGMENT)
                    .maximum(MAX_FRAGMENT)
                    .default_value(DEFAULT_MAX_DURATION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("silence-threshold")
                    .nick("Silence threshold")
                    .blurb("Silence mode: a 20 ms window quieter than this level (dBFS, RMS) is a pause between words")
                    .minimum(-96.0)
                    .maximum(0.0)
                    .default_value(DEFAULT_SILENCE_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("fragments, samples-in, samples-out, partial-fragments, discontinuities, gap-samples (silence filled in for GAP events), pause-cuts and forced-cuts (silence mode)")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock();
        let old_latency = settings.max_fragment();
        match pspec.name() {
            "chunk-duration" => settings.chunk_duration = value.get().expect("type checked"),
            "boundary" => settings.boundary = value.get().expect("type checked"),
            "min-duration" => settings.min_duration = value.get().expect("type checked"),
            "max-duration" => settings.max_duration = value.get().expect("type checked"),
            "silence-threshold" => settings.silence_threshold = value.get().expect("type checked"),
            other => unreachable!("unknown property {other}"),
        }
        gst::debug!(CAT, imp = self, "set {} = {value:?}", pspec.name());
        let changed = settings.max_fragment() != old_latency;
        drop(settings);
        if changed {
            self.post_latency();
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock();
        match pspec.name() {
            "chunk-duration" => settings.chunk_duration.to_value(),
            "boundary" => settings.boundary.to_value(),
            "min-duration" => settings.min_duration.to_value(),
            "max-duration" => settings.max_duration.to_value(),
            "silence-threshold" => settings.silence_threshold.to_value(),
            "stats" => self.state.lock().stats.to_structure().to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).unwrap();
        obj.add_pad(&self.srcpad).unwrap();
    }
}

impl GstObjectImpl for DubChunker {}

impl ElementImpl for DubChunker {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Dubbing fragmenter",
                "Filter/Audio",
                "Cuts raw audio into sample-exact fragments of a target duration (fixed, or ending in pauses) for speech-to-speech translation",
                "gst-dubbing developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> =
            LazyLock::new(crate::s16le_pad_templates);
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::ReadyToPaused {
            *self.state.lock() = State::default();
        }
        let ret = self.parent_change_state(transition)?;
        if transition == gst::StateChange::PausedToReady {
            let mut state = self.state.lock();
            state.reset_stream();
            state.info = None;
            state.acc = None;
            state.segment = None;
        }
        Ok(ret)
    }
}
