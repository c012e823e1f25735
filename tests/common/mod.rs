//! Shared helpers of the element tests: plugin registration, an `appsrc ! stsbridge ! appsink`
//! pipeline driven fragment by fragment, deterministic test audio.

#![allow(dead_code)]

pub mod clocked;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

pub const SECOND: u64 = 1_000_000_000;
pub const MS: u64 = 1_000_000;

pub fn init() {
    use std::sync::Once;
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstdubbing::plugin_register_static().expect("register plugin");
    });
}

pub fn caps(rate: u32, channels: u32) -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate(rate as i32)
        .channels(channels as i32)
        .build()
}

/// Deterministic test audio for fragment `seq` of `frames` frames: two incommensurate tones
/// under a slow envelope, continuous across fragments of equal size (so any jump at a
/// fragment boundary in the output is the element's doing), never silent, never the same
/// twice.
pub fn test_audio(seq: u64, frames: usize, channels: u32) -> Vec<i16> {
    let start = seq as usize * frames;
    let mut out = Vec::with_capacity(frames * channels as usize);
    for i in start..start + frames {
        let t = i as f64 / 16000.0;
        let env = 0.75 + 0.25 * (std::f64::consts::TAU * 0.7 * t).sin();
        let v = env
            * (9000.0 * (std::f64::consts::TAU * 211.0 * t).sin()
                + 3000.0 * (std::f64::consts::TAU * 1234.5 * t).sin());
        for c in 0..channels {
            out.push((v * (1.0 - 0.1 * f64::from(c))) as i16 + 1);
        }
    }
    out
}

pub fn to_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn from_bytes(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// `frames` at `rate` in nanoseconds, rounded down.
pub fn frames_to_ns(frames: u64, rate: u32) -> u64 {
    (u128::from(frames) * u128::from(SECOND) / u128::from(rate)) as u64
}

/// One output buffer as the sink saw it.
#[derive(Debug, Clone)]
pub struct OutFrag {
    pub pts: Option<u64>,
    pub duration: Option<u64>,
    pub offset: u64,
    pub offset_end: u64,
    pub flags: gst::BufferFlags,
    pub samples: Vec<i16>,
    /// When it left stsbridge.
    pub at: Instant,
    /// Pipeline running time when it left stsbridge.
    pub running_time: Option<u64>,
}

#[derive(Debug)]
pub struct Output {
    pub frags: Vec<OutFrag>,
    /// `stsbridge/fragment` messages, in posting order.
    pub fragment_msgs: Vec<gst::Structure>,
    /// `stsbridge/breaker` messages, in posting order.
    pub breaker_msgs: Vec<gst::Structure>,
    /// `stsbridge/late-response` messages, in posting order.
    pub late_msgs: Vec<gst::Structure>,
    pub stats: gst::Structure,
    pub errors: Vec<String>,
    /// What left stsbridge, in order: "buffer" or the event's name.
    pub flow: Vec<String>,
}

impl Output {
    pub fn outcomes(&self) -> Vec<String> {
        self.fragment_msgs
            .iter()
            .map(|m| m.get::<String>("outcome").unwrap())
            .collect()
    }

    pub fn reasons(&self) -> Vec<String> {
        self.fragment_msgs
            .iter()
            .map(|m| m.get::<String>("reason").unwrap())
            .collect()
    }

    pub fn stat(&self, name: &str) -> u64 {
        self.stats
            .get::<u64>(name)
            .unwrap_or_else(|e| panic!("stat {name}: {e}"))
    }

    pub fn all_samples(&self) -> Vec<i16> {
        self.frags.iter().flat_map(|f| f.samples.clone()).collect()
    }
}

/// `appsrc ! stsbridge ! appsink`.
pub struct Bridge {
    pub pipeline: gst::Pipeline,
    pub appsrc: gst_app::AppSrc,
    pub bridge: gst::Element,
    pub rate: u32,
    pub channels: u32,
    pub live: bool,
    frames_pushed: u64,
    live_base: Option<u64>,
    collected: Arc<Mutex<Vec<OutFrag>>>,
    /// Signalled (with `collected`) by every buffer out.
    collected_cond: Arc<Condvar>,
    events: Arc<Mutex<Vec<String>>>,
    bus: gst::Bus,
    pending_msgs: Vec<gst::Message>,
}

impl Bridge {
    /// A pipeline in PLAYING. `live`: appsrc is live with `min-latency` = `upstream_latency`
    /// and the sink syncs to the clock, as in a broadcast pipeline.
    pub fn new(
        live: bool,
        rate: u32,
        channels: u32,
        upstream_latency: u64,
        configure: impl FnOnce(&gst::Element),
    ) -> Bridge {
        init();
        let pipeline = gst::Pipeline::new();
        let appsrc = gst_app::AppSrc::builder()
            .caps(&caps(rate, channels))
            .format(gst::Format::Time)
            .is_live(live)
            .min_latency(if live { upstream_latency as i64 } else { 0 })
            .max_bytes(0)
            .block(false)
            .build();
        let bridge = gst::ElementFactory::make("stsbridge").build().unwrap();
        configure(&bridge);
        let appsink = gst_app::AppSink::builder()
            .sync(live)
            .max_lateness(-1)
            .max_buffers(1)
            .drop(true)
            .wait_on_eos(false)
            .build();
        pipeline
            .add_many([appsrc.upcast_ref(), &bridge, appsink.upcast_ref()])
            .unwrap();
        gst::Element::link_many([appsrc.upcast_ref(), &bridge, appsink.upcast_ref()]).unwrap();

        let collected: Arc<Mutex<Vec<OutFrag>>> = Arc::default();
        let collected_cond: Arc<Condvar> = Arc::default();
        let events: Arc<Mutex<Vec<String>>> = Arc::default();
        let src = bridge.static_pad("src").unwrap();
        let (c, cc, ev, p) = (
            collected.clone(),
            collected_cond.clone(),
            events.clone(),
            pipeline.downgrade(),
        );
        src.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, info| {
                match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => {
                        ev.lock().unwrap().push("buffer".to_string());
                        let map = b.map_readable().unwrap();
                        c.lock().unwrap().push(OutFrag {
                            pts: b.pts().map(|t| t.nseconds()),
                            duration: b.duration().map(|t| t.nseconds()),
                            offset: b.offset(),
                            offset_end: b.offset_end(),
                            flags: b.flags(),
                            samples: from_bytes(&map),
                            at: Instant::now(),
                            running_time: p
                                .upgrade()
                                .and_then(|p| p.current_running_time())
                                .map(|t| t.nseconds()),
                        });
                        cc.notify_all();
                    }
                    Some(gst::PadProbeData::Event(e)) => {
                        ev.lock().unwrap().push(e.type_().name().to_string());
                    }
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            },
        );
        let bus = pipeline.bus().unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        if live {
            // A live sink completes PLAYING only with data; wait for the clock to run instead.
            let t = Instant::now();
            while pipeline.current_running_time().is_none() && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            assert!(
                pipeline.current_running_time().is_some(),
                "the pipeline clock runs"
            );
        }
        Bridge {
            pipeline,
            appsrc,
            bridge,
            rate,
            channels,
            live,
            frames_pushed: 0,
            live_base: None,
            collected,
            collected_cond,
            events,
            bus,
            pending_msgs: Vec::new(),
        }
    }

    /// Pushes one fragment with PTS from the sample count (live: counted from the running time
    /// of the first push).
    pub fn push(&mut self, samples: &[i16]) -> gst::Buffer {
        let frames = samples.len() as u64 / u64::from(self.channels);
        let start = self.frames_pushed;
        self.frames_pushed += frames;
        // Live: contiguous from the running time of the first push, as a live source stamps.
        if self.live && self.live_base.is_none() {
            self.live_base = Some(self.pipeline.current_running_time().unwrap().nseconds());
        }
        let pts = self.live_base.unwrap_or(0) + frames_to_ns(start, self.rate);
        // Sample-exact: the duration is the distance to the next fragment's PTS.
        let dur = frames_to_ns(start + frames, self.rate) - frames_to_ns(start, self.rate);
        let mut buf = gst::Buffer::from_mut_slice(to_bytes(samples));
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_nseconds(pts));
            b.set_duration(gst::ClockTime::from_nseconds(dur));
            b.set_offset(start);
            b.set_offset_end(start + frames);
        }
        self.appsrc.push_buffer(buf.clone()).unwrap();
        buf
    }

    pub fn push_gap(&mut self, frames: usize) -> gst::Buffer {
        let samples = vec![0i16; frames * self.channels as usize];
        let start = self.frames_pushed;
        self.frames_pushed += frames as u64;
        let pts = frames_to_ns(start, self.rate);
        let mut buf = gst::Buffer::from_mut_slice(to_bytes(&samples));
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_nseconds(pts));
            b.set_duration(gst::ClockTime::from_nseconds(
                frames_to_ns(start + frames as u64, self.rate) - pts,
            ));
            b.set_offset(start);
            b.set_offset_end(start + frames as u64);
            b.set_flags(gst::BufferFlags::GAP);
        }
        self.appsrc.push_buffer(buf.clone()).unwrap();
        buf
    }

    pub fn output_count(&self) -> usize {
        self.collected.lock().unwrap().len()
    }

    pub fn stats(&self) -> gst::Structure {
        self.bridge.property::<gst::Structure>("stats")
    }

    /// Waits until `n` buffers went out (or `timeout`).
    pub fn wait_output(&self, n: usize, timeout: Duration) -> bool {
        let out = self.collected.lock().unwrap();
        let (out, _) = self
            .collected_cond
            .wait_timeout_while(out, timeout, |o| o.len() < n)
            .unwrap();
        out.len() >= n
    }

    /// EOS, waits for it at the sink (or an error), stops the pipeline.
    pub fn finish(mut self, timeout: Duration) -> Output {
        self.appsrc.end_of_stream().unwrap();
        let mut errors = Vec::new();
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let Some(msg) = self
                .bus
                .timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64))
            else {
                errors.push("timeout waiting for EOS".to_string());
                break;
            };
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(e) => {
                    errors.push(format!("{} ({:?})", e.error(), e.debug()));
                    break;
                }
                _ => self.pending_msgs.push(msg),
            }
        }
        self.stop_collect(errors)
    }

    /// Stops the pipeline without EOS and collects what went out.
    pub fn stop(self) -> Output {
        self.stop_collect(Vec::new())
    }

    fn stop_collect(mut self, mut errors: Vec<String>) -> Output {
        let stats = self.stats();
        self.pipeline.set_state(gst::State::Null).unwrap();
        while let Some(msg) = self.bus.pop() {
            if let gst::MessageView::Error(e) = msg.view() {
                errors.push(format!("{} ({:?})", e.error(), e.debug()));
            }
            self.pending_msgs.push(msg);
        }
        let mut fragment_msgs = Vec::new();
        let mut breaker_msgs = Vec::new();
        let mut late_msgs = Vec::new();
        for m in &self.pending_msgs {
            if let gst::MessageView::Element(e) = m.view()
                && let Some(s) = e.structure()
            {
                match s.name().as_str() {
                    gstdubbing::stsbridge::FRAGMENT_MESSAGE => fragment_msgs.push(s.to_owned()),
                    gstdubbing::stsbridge::BREAKER_MESSAGE => breaker_msgs.push(s.to_owned()),
                    gstdubbing::stsbridge::LATE_MESSAGE => late_msgs.push(s.to_owned()),
                    _ => {}
                }
            }
        }
        Output {
            frags: std::mem::take(&mut *self.collected.lock().unwrap()),
            fragment_msgs,
            breaker_msgs,
            late_msgs,
            stats,
            errors,
            flow: self.events.lock().unwrap().clone(),
        }
    }
}

/// Asserts the output is the input's timeline exactly: same count, PTS, DURATION, offsets and
/// sample counts.
pub fn assert_same_timeline(inputs: &[gst::Buffer], out: &Output) {
    assert_eq!(out.frags.len(), inputs.len(), "fragment count");
    for (i, (inb, o)) in inputs.iter().zip(&out.frags).enumerate() {
        assert_eq!(o.pts, inb.pts().map(|t| t.nseconds()), "pts of {i}");
        assert_eq!(
            o.duration,
            inb.duration().map(|t| t.nseconds()),
            "duration of {i}"
        );
        assert_eq!(o.offset, inb.offset(), "offset of {i}");
        assert_eq!(o.offset_end, inb.offset_end(), "offset_end of {i}");
        assert_eq!(o.samples.len() * 2, inb.size(), "sample count of {i}");
    }
}
