//! `stsbridge` live in a `gst_check::Harness` on a `TestClock`: the harness is a live source
//! upstream (its latency the fragment's duration, as `dubchunker` reports), nothing syncs
//! downstream, and the test moves the clock. The element's wait for its earliest pending
//! deadline is the `TestClock`'s pending clock id: its time is the element's decision, and no
//! deadline passes until the test moves the clock there. What left the element is one log in
//! order (buffers with the clock's time when they left, events, bus messages), and a test
//! waits on that log's condition variable, never by sleeping.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_check::Harness;

use super::{MS, OutFrag, Output, caps, frames_to_ns, from_bytes, init, to_bytes};

/// Bound on every wait for what the element does (a failure bound, never a pacing).
pub const WAIT: Duration = Duration::from_secs(30);

/// What left the element, in order.
#[derive(Debug, Clone)]
pub enum Rec {
    Buffer(OutFrag),
    Event(String),
    /// An element message, or an error ("error: ...").
    Message(gst::Structure),
    Error(String),
}

#[derive(Default)]
pub struct Log {
    recs: Mutex<Vec<Rec>>,
    cond: Condvar,
}

impl Log {
    fn push(&self, r: Rec) {
        self.recs.lock().unwrap().push(r);
        self.cond.notify_all();
    }

    pub fn snapshot(&self) -> Vec<Rec> {
        self.recs.lock().unwrap().clone()
    }

    /// Waits (notified by every record, at most [`WAIT`]) until `f` holds for the log.
    pub fn wait(&self, f: impl Fn(&[Rec]) -> bool) -> bool {
        let recs = self.recs.lock().unwrap();
        let (recs, _) = self.cond.wait_timeout_while(recs, WAIT, |r| !f(r)).unwrap();
        f(&recs)
    }
}

pub fn buffers(recs: &[Rec]) -> Vec<&OutFrag> {
    recs.iter()
        .filter_map(|r| match r {
            Rec::Buffer(b) => Some(b),
            _ => None,
        })
        .collect()
}

pub fn messages<'a>(recs: &'a [Rec], name: &'a str) -> impl Iterator<Item = &'a gst::Structure> {
    recs.iter().filter_map(move |r| match r {
        Rec::Message(s) if s.name() == name => Some(s),
        _ => None,
    })
}

/// The live deadline of a fragment at `pts`: pts + upstream + `latency` − the margin kept for
/// downstream (100 ms, at most half of `latency`).
pub fn deadline(pts: u64, upstream: u64, latency: u64) -> u64 {
    pts + upstream + latency - (100 * MS).min(latency / 2)
}

/// `stsbridge` in a harness on a `TestClock` (base time 0: running time = clock time).
pub struct Clocked {
    pub h: Harness,
    pub clock: gst_check::TestClock,
    pub bridge: gst::Element,
    pub rate: u32,
    pub channels: u32,
    /// Upstream latency (the live source's), ns.
    pub upstream: u64,
    pub log: Arc<Log>,
    frames_pushed: u64,
    pub inputs: Vec<gst::Buffer>,
}

impl Clocked {
    /// The element configured by `configure` (before it starts), in PLAYING, the clock at 0.
    pub fn new(
        rate: u32,
        channels: u32,
        upstream: u64,
        configure: impl FnOnce(&gst::Element),
    ) -> Clocked {
        init();
        let bridge = gst::ElementFactory::make("stsbridge").build().unwrap();
        configure(&bridge);
        let log = Arc::new(Log::default());
        let bus = gst::Bus::new();
        {
            let log = log.clone();
            bus.set_sync_handler(move |_, msg| {
                match msg.view() {
                    gst::MessageView::Element(e) => {
                        if let Some(s) = e.structure() {
                            log.push(Rec::Message(s.to_owned()));
                        }
                    }
                    gst::MessageView::Error(e) => {
                        log.push(Rec::Error(format!("{} ({:?})", e.error(), e.debug())))
                    }
                    _ => {}
                }
                gst::BusSyncReply::Drop
            });
        }
        bridge.set_bus(Some(&bus));
        let mut h = Harness::with_element(&bridge, Some("sink"), Some("src"));
        h.use_testclock();
        let clock = h.testclock().expect("the harness's test clock");
        h.set_upstream_latency(gst::ClockTime::from_nseconds(upstream));
        {
            let (log, clock) = (log.clone(), clock.clone());
            bridge.static_pad("src").unwrap().add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
                move |_, info| {
                    match &info.data {
                        Some(gst::PadProbeData::Buffer(b)) => {
                            let map = b.map_readable().unwrap();
                            log.push(Rec::Buffer(OutFrag {
                                pts: b.pts().map(|t| t.nseconds()),
                                duration: b.duration().map(|t| t.nseconds()),
                                offset: b.offset(),
                                offset_end: b.offset_end(),
                                flags: b.flags(),
                                samples: from_bytes(&map),
                                at: Instant::now(),
                                // Base time 0: the clock's time is the running time.
                                running_time: Some(clock.time().nseconds()),
                            }));
                        }
                        Some(gst::PadProbeData::Event(e)) => {
                            log.push(Rec::Event(e.type_().name().to_string()));
                        }
                        _ => {}
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        }
        h.play();
        h.set_src_caps(caps(rate, channels));
        Clocked {
            h,
            clock,
            bridge,
            rate,
            channels,
            upstream,
            log,
            frames_pushed: 0,
            inputs: Vec::new(),
        }
    }

    /// The clock's time (= running time), ns.
    pub fn now(&self) -> u64 {
        self.clock.time().nseconds()
    }

    /// Moves the clock forward to `t` (never back) and releases the clock waits due by then
    /// (a wait that starts later for a time already passed returns at once).
    pub fn advance_to(&self, t: u64) {
        if t > self.now() {
            self.clock.set_time(gst::ClockTime::from_nseconds(t));
        }
        while self.clock.process_next_clock_id().is_some() {}
    }

    /// The next fragment's PTS and duration (contiguous from 0, sample-exact).
    fn next_span(&self, frames: u64) -> (u64, u64) {
        let start = self.frames_pushed;
        let pts = frames_to_ns(start, self.rate);
        (pts, frames_to_ns(start + frames, self.rate) - pts)
    }

    /// Pushes one fragment, PTS from the sample count, as a live source does once it has
    /// captured it: the clock first moves to the fragment's end (if it is not past it).
    pub fn push(&mut self, samples: &[i16]) -> gst::Buffer {
        let frames = samples.len() as u64 / u64::from(self.channels);
        let (pts, dur) = self.next_span(frames);
        self.advance_to(pts + dur);
        let start = self.frames_pushed;
        self.frames_pushed += frames;
        let mut buf = gst::Buffer::from_mut_slice(to_bytes(samples));
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_nseconds(pts));
            b.set_duration(gst::ClockTime::from_nseconds(dur));
            b.set_offset(start);
            b.set_offset_end(start + frames);
        }
        self.h
            .push(buf.clone())
            .expect("the element takes the fragment");
        self.inputs.push(buf.clone());
        buf
    }

    /// The live deadline of input fragment `i` for `latency`.
    pub fn deadline_of(&self, i: usize, latency: u64) -> u64 {
        let pts = self.inputs[i].pts().unwrap().nseconds();
        deadline(pts, self.upstream, latency)
    }

    /// Runs the clock to the deadline of every fragment pushed and not out yet that falls at
    /// or before `until` (all of them: `None`), in order: the element waits on the clock for
    /// exactly that deadline, nothing goes out a nanosecond before it, and the fragment goes
    /// out then.
    pub fn expire_through(&self, latency: u64, until: Option<u64>) {
        loop {
            let k = self.output_count();
            if k == self.inputs.len() {
                return;
            }
            let d = self.deadline_of(k, latency);
            if until.is_some_and(|u| d > u) {
                return;
            }
            assert_eq!(
                self.next_clock_wait(),
                d,
                "fragment {k} waits for its deadline"
            );
            self.advance_to(d - 1);
            assert_eq!(
                self.next_clock_wait(),
                d,
                "fragment {k} still waits at {}",
                d - 1
            );
            assert_eq!(
                self.output_count(),
                k,
                "fragment {k} went out before its deadline"
            );
            self.advance_to(d);
            assert!(
                self.wait_output(k + 1),
                "fragment {k} did not go out at its deadline"
            );
        }
    }

    /// Buffers out so far.
    pub fn output_count(&self) -> usize {
        buffers(&self.log.snapshot()).len()
    }

    /// Waits until `n` buffers went out.
    pub fn wait_output(&self, n: usize) -> bool {
        self.log.wait(|r| buffers(r).len() >= n)
    }

    /// Waits until the element waits on the clock; the running time it waits for (the
    /// earliest pending deadline).
    pub fn next_clock_wait(&self) -> u64 {
        let (waiting, ids) = self
            .clock
            .timed_wait_for_multiple_pending_ids(1, WAIT.as_millis() as u32);
        assert!(waiting, "the element waits on the clock");
        ids[0].time().nseconds()
    }

    /// Whether the element waits on the clock now (no waiting for it).
    pub fn has_clock_wait(&self) -> bool {
        self.clock.peek_next_pending_id().is_some()
    }

    pub fn stats(&self) -> gst::Structure {
        self.bridge.property::<gst::Structure>("stats")
    }

    /// EOS, waits for it to go out, stops the element; what went out. An error ends the
    /// wait too (it is in `errors`).
    pub fn finish(mut self) -> Output {
        assert!(self.h.push_event(gst::event::Eos::new()));
        let mut errors = Vec::new();
        let done = self.log.wait(|r| {
            r.iter()
                .any(|x| matches!(x, Rec::Event(e) if e == "eos") || matches!(x, Rec::Error(_)))
        });
        if !done {
            errors.push("timeout waiting for EOS".to_string());
        }
        self.stop_collect(errors)
    }

    /// Stops the element without EOS; what went out.
    pub fn stop(self) -> Output {
        self.stop_collect(Vec::new())
    }

    fn stop_collect(self, mut errors: Vec<String>) -> Output {
        let stats = self.stats();
        self.bridge.set_state(gst::State::Null).unwrap();
        let recs = self.log.snapshot();
        let mut out = Output {
            frags: Vec::new(),
            fragment_msgs: Vec::new(),
            breaker_msgs: Vec::new(),
            late_msgs: Vec::new(),
            stats,
            errors: Vec::new(),
            flow: Vec::new(),
        };
        for r in recs {
            match r {
                Rec::Buffer(b) => {
                    out.flow.push("buffer".into());
                    out.frags.push(b);
                }
                Rec::Event(e) => out.flow.push(e),
                Rec::Message(s) => match s.name().as_str() {
                    gstdubbing::stsbridge::FRAGMENT_MESSAGE => out.fragment_msgs.push(s),
                    gstdubbing::stsbridge::BREAKER_MESSAGE => out.breaker_msgs.push(s),
                    gstdubbing::stsbridge::LATE_MESSAGE => out.late_msgs.push(s),
                    _ => {}
                },
                Rec::Error(e) => errors.push(e),
            }
        }
        out.errors = errors;
        drop(self.h);
        out
    }
}
