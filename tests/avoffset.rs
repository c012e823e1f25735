//! `avoffset` in `appsrc`/`appsink` pipelines: the offset, holding video for audio, max-hold
//! on files and on the (test) clock, EOS on either side, latency, stats.
//!
//! Nothing here sleeps. What goes in and out is one log in the order it happened (probes on
//! the sink pads record arrivals before the element sees them, probes on the source pads
//! record what it pushes), and a test waits on that log's condition variable. "Video waits
//! for its audio" is then an ordering: no frame leaves before an input that allows it. On the
//! clock, the video task's wait is a pending clock id of the `TestClock`: its time is the
//! element's decision, and nothing leaves until the test advances the clock.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{MS, SECOND, init};
use gst::prelude::*;

/// One thing that crossed the element, in order.
#[derive(Debug, Clone, PartialEq)]
enum Rec {
    /// Audio arriving at `audio_sink`: its end, input running time.
    AudioIn(u64),
    /// Video arriving at `video_sink`.
    VideoIn(u64),
    /// An event arriving at a sink pad: pad, event name.
    EventIn(&'static str, String),
    /// Audio pushed on `audio_src`: PTS.
    Audio(u64),
    /// Video pushed on `video_src`: PTS.
    Video(u64),
    /// An event pushed on a source pad.
    Event(&'static str, String),
}

#[derive(Default)]
struct Log {
    recs: Mutex<Vec<Rec>>,
    cond: Condvar,
}

impl Log {
    fn push(&self, r: Rec) {
        self.recs.lock().unwrap().push(r);
        self.cond.notify_all();
    }

    fn snapshot(&self) -> Vec<Rec> {
        self.recs.lock().unwrap().clone()
    }

    /// Waits (notified by every record, at most 5 s) until `f` holds for the log.
    fn wait(&self, f: impl Fn(&[Rec]) -> bool) -> bool {
        let recs = self.recs.lock().unwrap();
        let (recs, _) = self
            .cond
            .wait_timeout_while(recs, Duration::from_secs(5), |r| !f(r))
            .unwrap();
        f(&recs)
    }
}

struct AvPipe {
    pipeline: gst::Pipeline,
    asrc: gst_app::AppSrc,
    vsrc: gst_app::AppSrc,
    av: gst::Element,
    log: Arc<Log>,
    clock: Option<gst_check::TestClock>,
    segments: Arc<Mutex<Vec<gst::Segment>>>,
}

const FRAME: u64 = 40 * MS;

fn videos(recs: &[Rec]) -> Vec<u64> {
    recs.iter()
        .filter_map(|r| match r {
            Rec::Video(p) => Some(*p),
            _ => None,
        })
        .collect()
}

fn audios(recs: &[Rec]) -> Vec<u64> {
    recs.iter()
        .filter_map(|r| match r {
            Rec::Audio(p) => Some(*p),
            _ => None,
        })
        .collect()
}

fn has_event(recs: &[Rec], pad: &str, name: &str) -> bool {
    recs.iter()
        .any(|r| matches!(r, Rec::Event(p, n) if *p == pad && n == name))
}

/// Where `r` is in the log.
fn position(recs: &[Rec], r: &Rec) -> usize {
    recs.iter()
        .position(|x| x == r)
        .unwrap_or_else(|| panic!("{r:?} not in the log"))
}

impl AvPipe {
    fn new(live: bool, configure: impl FnOnce(&gst::Element)) -> AvPipe {
        init();
        let pipeline = gst::Pipeline::new();
        let acaps = common::caps(48000, 2);
        let vcaps = gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .build();
        let mk = |caps: &gst::Caps| {
            gst_app::AppSrc::builder()
                .caps(caps)
                .format(gst::Format::Time)
                .is_live(live)
                .max_bytes(0)
                .build()
        };
        let asrc = mk(&acaps);
        let vsrc = mk(&vcaps);
        let av = gst::ElementFactory::make("avoffset").build().unwrap();
        av.set_property("audio-compensation", 0u64);
        configure(&av);
        let sink = || {
            gst::ElementFactory::make("fakesink")
                .property("sync", false)
                .property("async", false)
                .build()
                .unwrap()
        };
        let (asink, vsink) = (sink(), sink());
        pipeline
            .add_many([asrc.upcast_ref(), vsrc.upcast_ref(), &av, &asink, &vsink])
            .unwrap();
        asrc.link_pads(Some("src"), &av, Some("audio_sink"))
            .unwrap();
        vsrc.link_pads(Some("src"), &av, Some("video_sink"))
            .unwrap();
        av.link_pads(Some("audio_src"), &asink, Some("sink"))
            .unwrap();
        av.link_pads(Some("video_src"), &vsink, Some("sink"))
            .unwrap();
        let log = Arc::new(Log::default());
        let segments: Arc<Mutex<Vec<gst::Segment>>> = Arc::default();
        for pad in ["audio_sink", "video_sink", "audio_src", "video_src"] {
            let (log, segs) = (log.clone(), segments.clone());
            av.static_pad(pad).unwrap().add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
                move |_, info| {
                    match &info.data {
                        Some(gst::PadProbeData::Buffer(b)) => {
                            let pts = b.pts().unwrap().nseconds();
                            let end = pts + b.duration().map_or(0, |d| d.nseconds());
                            log.push(match pad {
                                // The tests' segments start at 0: running time = PTS.
                                "audio_sink" => Rec::AudioIn(end),
                                "video_sink" => Rec::VideoIn(pts),
                                "audio_src" => Rec::Audio(pts),
                                _ => Rec::Video(pts),
                            })
                        }
                        Some(gst::PadProbeData::Event(e)) => {
                            let name = e.type_().name().to_string();
                            if pad.ends_with("_src") {
                                if let gst::EventView::Segment(s) = e.view() {
                                    segs.lock().unwrap().push(s.segment().clone());
                                }
                                log.push(Rec::Event(pad, name))
                            } else {
                                log.push(Rec::EventIn(pad, name))
                            }
                        }
                        _ => {}
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        }
        let clock = live.then(|| {
            let c = gst_check::TestClock::new();
            pipeline.use_clock(Some(&c));
            pipeline.set_start_time(gst::ClockTime::NONE);
            pipeline.set_base_time(gst::ClockTime::ZERO);
            c
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        AvPipe {
            pipeline,
            asrc,
            vsrc,
            av,
            log,
            clock,
            segments,
        }
    }

    fn push_video(&self, from: u64, to: u64) {
        let mut t = from;
        while t < to {
            let mut b = gst::Buffer::from_slice(vec![0u8, 0, 0, 1, 0x65, 0x88]);
            {
                let b = b.get_mut().unwrap();
                b.set_pts(gst::ClockTime::from_nseconds(t));
                b.set_dts(gst::ClockTime::from_nseconds(t));
                b.set_duration(gst::ClockTime::from_nseconds(FRAME));
            }
            self.vsrc.push_buffer(b).unwrap();
            t += FRAME;
        }
    }

    fn push_audio(&self, from: u64, to: u64) {
        let frames = ((to - from) * 48000 / SECOND) as usize;
        let mut b = gst::Buffer::from_mut_slice(vec![0u8; frames * 4]);
        {
            let b = b.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_nseconds(from));
            b.set_duration(gst::ClockTime::from_nseconds(to - from));
        }
        self.asrc.push_buffer(b).unwrap();
    }

    fn video_buffers(&self) -> Vec<u64> {
        videos(&self.log.snapshot())
    }

    fn audio_buffers(&self) -> Vec<u64> {
        audios(&self.log.snapshot())
    }

    fn wait_video(&self, n: usize) -> bool {
        self.log.wait(|r| videos(r).len() >= n)
    }

    /// Live: the video task's next wait on the clock, as a running time (base time 0).
    fn next_clock_wait(&self) -> u64 {
        let clock = self.clock.as_ref().expect("live");
        let (waiting, ids) = clock.timed_wait_for_multiple_pending_ids(1, 5000);
        assert!(waiting, "the video task waits on the clock");
        ids[0].time().nseconds()
    }

    fn stats(&self) -> gst::Structure {
        self.av.property("stats")
    }
}

impl Drop for AvPipe {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Every video frame (output PTS − `shift`) left after an audio input that covers it, or after
/// the given record (an EOS, say) that releases it.
fn assert_video_after_its_audio(recs: &[Rec], shift: u64, or_after: Option<&Rec>) {
    let release_at = or_after.map(|r| position(recs, r));
    for (i, r) in recs.iter().enumerate() {
        let Rec::Video(pts) = r else { continue };
        let t = pts - shift;
        let covered = recs[..i]
            .iter()
            .any(|x| matches!(x, Rec::AudioIn(end) if *end >= t));
        let released = release_at.is_some_and(|at| at < i);
        assert!(
            covered || released,
            "video at {t} went out before anything allowed it: {recs:?}"
        );
    }
}

#[test]
fn offset_applied_and_video_waits_for_its_audio() {
    let p = AvPipe::new(false, |_| {});
    p.push_video(0, SECOND);
    p.push_audio(0, SECOND / 2);
    assert!(p.wait_video(13));
    p.push_audio(SECOND / 2, SECOND);
    // Audio records how far it covers before its own push (a muxer blocking that push waits
    // for the video it releases): the video may leave before the audio's push is logged.
    assert!(
        p.log
            .wait(|r| videos(r).len() == 25 && audios(r).len() == 2)
    );
    let recs = p.log.snapshot();
    // Frames at 0..=480 ms are covered by the first 500 ms of audio, the rest only by the
    // second buffer: none of them may leave before it came.
    assert_video_after_its_audio(&recs, 6 * SECOND, None);
    let v = videos(&recs);
    assert_eq!(v.len(), 25);
    for (i, pts) in v.iter().enumerate() {
        assert_eq!(*pts, 6 * SECOND + i as u64 * FRAME);
    }
    assert_eq!(audios(&recs), vec![6 * SECOND, 6 * SECOND + SECOND / 2]);
    // Segments keep their start: the running time moved by the offset.
    let segs = p.segments.lock().unwrap().clone();
    assert!(!segs.is_empty());
    for s in segs {
        assert_eq!(s.start().value(), 0);
    }
    let st = p.stats();
    assert_eq!(st.get::<u64>("video-without-audio").unwrap(), 0);
    assert!(st.get::<u64>("sync-samples").unwrap() >= 1);
    // First sample: audio out to 6.5 s, first frame out to 6.04 s.
    let d = st.get::<u64>("max-delta").unwrap() as f64 / 1e6;
    assert!(
        (d - 460.0).abs() < 1.0 || (d - 960.0).abs() < 1.0,
        "delta {d}"
    );
}

#[test]
fn audio_compensation_moves_audio_earlier() {
    let p = AvPipe::new(false, |e| {
        e.set_property("audio-compensation", 33_333_333u64)
    });
    p.push_audio(0, SECOND);
    p.push_video(0, 2 * FRAME);
    assert!(p.log.wait(|r| videos(r).len() == 2 && audios(r).len() == 1));
    assert_eq!(p.audio_buffers(), vec![6 * SECOND - 33_333_333]);
    assert_eq!(p.video_buffers()[0], 6 * SECOND);
}

#[test]
fn files_release_video_after_max_hold_in_stream_time() {
    let p = AvPipe::new(false, |e| {
        e.set_property("offset", 2 * SECOND);
        e.set_property("max-hold", SECOND);
    });
    // 4 s of video and no audio: video more than 3 s behind the newest goes out anyway.
    p.push_video(0, 4 * SECOND);
    assert!(p.wait_video(25));
    // The end of the video releases the rest: no frame after 0.96 s may leave before it.
    p.vsrc.end_of_stream().unwrap();
    assert!(p.log.wait(|r| has_event(r, "video_src", "eos")));
    let recs = p.log.snapshot();
    let eos_in = position(&recs, &Rec::EventIn("video_sink", "eos".into()));
    for (i, r) in recs.iter().enumerate() {
        if let Rec::Video(pts) = r {
            let t = pts - 2 * SECOND;
            // Frame t is released by max-hold once video at t + 3 s came in.
            let allowed = recs[..i]
                .iter()
                .any(|x| matches!(x, Rec::VideoIn(n) if *n >= t + 3 * SECOND));
            assert!(allowed || i > eos_in, "video at {t} released early");
        }
    }
    assert_eq!(videos(&recs).len(), 100);
    assert_eq!(
        p.stats().get::<u64>("video-without-audio").unwrap(),
        25,
        "frames 0..=0.96 s by max-hold, the rest by the end of the video"
    );
    // Late audio for released video is counted.
    p.push_audio(0, SECOND / 2);
    assert!(p.log.wait(|r| audios(r).len() == 1));
    assert_eq!(p.stats().get::<u64>("audio-late").unwrap(), 1);
}

#[test]
fn live_releases_video_after_max_hold_on_the_clock() {
    let p = AvPipe::new(true, |e| {
        e.set_property("offset", 2 * SECOND);
        e.set_property("max-hold", SECOND);
    });
    let clock = p.clock.as_ref().unwrap();
    p.push_video(0, FRAME);
    // The video task waits on the pipeline clock until offset + max-hold, and only then.
    assert_eq!(p.next_clock_wait(), 3 * SECOND);
    clock.set_time(gst::ClockTime::from_nseconds(2900 * MS));
    assert!(p.video_buffers().is_empty());
    assert_eq!(
        clock.crank().then(|| clock.time().nseconds()),
        Some(3 * SECOND)
    );
    assert!(p.wait_video(1), "released at offset + max-hold");
    assert_eq!(p.video_buffers(), vec![2 * SECOND]);
    assert_eq!(p.stats().get::<u64>("video-without-audio").unwrap(), 1);
}

#[test]
fn live_audio_ends_the_clock_wait() {
    let p = AvPipe::new(true, |e| {
        e.set_property("offset", 2 * SECOND);
        e.set_property("max-hold", SECOND);
    });
    p.push_video(0, 2 * FRAME);
    assert_eq!(p.next_clock_wait(), 3 * SECOND);
    // Audio covering the first frame (not the second, at 40 ms) unschedules the wait: it
    // goes out with no clock movement, and the task waits again for the second frame's hold.
    p.push_audio(0, FRAME / 2);
    assert!(p.wait_video(1));
    assert_eq!(p.next_clock_wait(), 3 * SECOND + FRAME);
    assert_eq!(p.video_buffers(), vec![2 * SECOND]);
    assert_eq!(p.stats().get::<u64>("video-without-audio").unwrap(), 0);
}

#[test]
fn live_state_change_while_waiting_on_the_clock_is_prompt() {
    let p = AvPipe::new(true, |e| e.set_property("offset", 2 * SECOND));
    p.push_video(0, FRAME);
    assert_eq!(p.next_clock_wait(), 3 * SECOND);
    let pipeline = p.pipeline.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(pipeline.set_state(gst::State::Null)).unwrap());
    let res = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("stopping while the video task waits on the clock");
    assert!(res.is_ok());
    assert!(
        p.video_buffers().is_empty(),
        "nothing pushed while stopping"
    );
}

#[test]
fn eos_on_either_side() {
    // Video EOS: held video goes out first, then EOS; audio keeps flowing meanwhile.
    let p = AvPipe::new(false, |_| {});
    p.push_video(0, 10 * FRAME);
    p.vsrc.end_of_stream().unwrap();
    p.push_audio(0, SECOND / 10);
    assert!(
        p.log
            .wait(|r| has_event(r, "video_src", "eos") && audios(r).len() == 1)
    );
    let v = p.log.snapshot();
    let eos_at = position(&v, &Rec::Event("video_src", "eos".into()));
    assert_eq!(
        v[..eos_at]
            .iter()
            .filter(|o| matches!(o, Rec::Video(_)))
            .count(),
        10
    );
    assert_eq!(audios(&v).len(), 1);

    // Audio EOS releases all held video at once, and nothing went out before it.
    let p = AvPipe::new(false, |_| {});
    p.push_video(0, 10 * FRAME);
    p.asrc.end_of_stream().unwrap();
    assert!(p.wait_video(10));
    let recs = p.log.snapshot();
    assert_video_after_its_audio(
        &recs,
        6 * SECOND,
        Some(&Rec::EventIn("audio_sink", "eos".into())),
    );
    assert_eq!(p.stats().get::<u64>("video-without-audio").unwrap(), 0);
}

#[test]
fn state_change_releases_everything_at_once() {
    let p = AvPipe::new(false, |_| {});
    p.push_video(0, 50 * FRAME);
    assert!(
        p.log
            .wait(|r| r.iter().filter(|x| matches!(x, Rec::VideoIn(_))).count() == 50)
    );
    let pipeline = p.pipeline.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(pipeline.set_state(gst::State::Null)).unwrap());
    let res = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("stopping with video held");
    assert!(res.is_ok());
}

#[test]
fn latency_query_subtracts_the_offset() {
    init();
    let pipeline = gst::parse::launch(
        "audiotestsrc is-live=true ! audio/x-raw,format=S16LE,rate=48000,channels=2 \
         ! queue min-threshold-time=0 ! avoffset name=av offset=1000000000 ! fakesink name=s",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let av = pipeline.by_name("av").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(5));
    let mut q = gst::query::Latency::new();
    assert!(av.static_pad("audio_src").unwrap().query(&mut q));
    let (live, min, _) = q.result();
    assert!(live);
    // audiotestsrc reports one buffer (~10 ms); the 1 s shift absorbs it.
    assert_eq!(min, gst::ClockTime::ZERO);
    av.set_property("offset", 0u64);
    pipeline.set_state(gst::State::Null).unwrap();
    let mut q = gst::query::Latency::new();
    pipeline.set_state(gst::State::Playing).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(5));
    assert!(av.static_pad("audio_src").unwrap().query(&mut q));
    assert!(
        q.result().1 > gst::ClockTime::ZERO,
        "without offset upstream latency shows"
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn properties_round_trip() {
    init();
    let e = gst::ElementFactory::make("avoffset").build().unwrap();
    assert_eq!(e.property::<u64>("offset"), 6 * SECOND);
    assert_eq!(e.property::<u64>("max-hold"), SECOND);
    assert_eq!(e.property::<u64>("sync-threshold"), 120 * MS);
    assert_eq!(e.property::<u64>("audio-compensation"), 33_333_333);
    e.set_property("offset", 3 * SECOND);
    e.set_property("max-hold", 2 * SECOND);
    e.set_property("sync-threshold", 50 * MS);
    e.set_property("audio-compensation", 21 * MS);
    assert_eq!(e.property::<u64>("offset"), 3 * SECOND);
    assert_eq!(e.property::<u64>("max-hold"), 2 * SECOND);
    assert_eq!(e.property::<u64>("sync-threshold"), 50 * MS);
    assert_eq!(e.property::<u64>("audio-compensation"), 21 * MS);
    let s = e.property::<gst::Structure>("stats");
    assert_eq!(s.get::<u64>("video-without-audio").unwrap(), 0);
}

#[test]
fn text_is_shifted_like_the_video() {
    init();
    let pipeline = gst::Pipeline::new();
    let caps = gst::Caps::builder("text/x-raw")
        .field("format", "utf8")
        .build();
    let tsrc = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .build();
    let av = gst::ElementFactory::make("avoffset").build().unwrap();
    let sink = gst_app::AppSink::builder().sync(false).build();
    pipeline
        .add_many([tsrc.upcast_ref(), &av, sink.upcast_ref()])
        .unwrap();
    tsrc.link_pads(Some("src"), &av, Some("text_sink")).unwrap();
    av.link_pads(Some("text_src"), &sink, Some("sink")).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut b = gst::Buffer::from_slice(b"hola".to_vec());
    {
        let b = b.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_nseconds(SECOND));
        b.set_duration(gst::ClockTime::from_nseconds(1300 * MS));
    }
    tsrc.push_buffer(b).unwrap();
    let s = sink
        .try_pull_sample(gst::ClockTime::from_seconds(3))
        .expect("the text goes through");
    let out = s.buffer().unwrap();
    // The text follows what is heard: input + offset (the audio's compensation cancels the
    // encoder's delay, the text needs none).
    assert_eq!(out.pts(), Some(gst::ClockTime::from_nseconds(7 * SECOND)));
    assert_eq!(
        out.duration(),
        Some(gst::ClockTime::from_nseconds(1300 * MS))
    );
    assert_eq!(&*out.map_readable().unwrap(), b"hola");
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn an_offset_below_the_compensation_keeps_sync_by_delaying_the_video() {
    for offset in [0u64, 10 * MS] {
        let p = AvPipe::new(false, |e| {
            e.set_property("offset", offset);
            e.set_property("audio-compensation", 33_333_333u64);
        });
        p.push_audio(0, SECOND);
        p.push_video(0, 2 * FRAME);
        assert!(p.log.wait(|r| videos(r).len() == 2 && audios(r).len() == 1));
        // Audio cannot go before its own time: it stays, the video waits 33.3 ms, so what is
        // heard (audio + the encoder's 33.3 ms) and seen stay together.
        assert_eq!(p.audio_buffers(), vec![0], "offset {offset}");
        assert_eq!(p.video_buffers()[0], 33_333_333, "offset {offset}");
    }
}

#[test]
fn max_hold_lowered_while_playing_releases_held_video_at_once() {
    let p = AvPipe::new(true, |e| {
        e.set_property("offset", 2 * SECOND);
        e.set_property("max-hold", SECOND);
    });
    let clock = p.clock.as_ref().unwrap();
    p.push_video(0, FRAME);
    assert_eq!(p.next_clock_wait(), 3 * SECOND, "held until 3 s");
    clock.set_time(gst::ClockTime::from_nseconds(2500 * MS));
    assert!(p.video_buffers().is_empty());
    // 2.5 s is past offset + the new 200 ms hold: out now, not at the old 3 s.
    p.av.set_property("max-hold", 200 * MS);
    assert!(p.wait_video(1));
    assert_eq!(
        clock.time().nseconds(),
        2500 * MS,
        "without the clock moving"
    );
    // And raising it again holds the next frame longer: until 40 ms + 2 s + 5 s.
    p.av.set_property("max-hold", 5 * SECOND);
    p.push_video(FRAME, 2 * FRAME);
    assert_eq!(p.next_clock_wait(), 7 * SECOND + FRAME);
    clock.set_time(gst::ClockTime::from_nseconds(4 * SECOND));
    assert_eq!(p.video_buffers().len(), 1);
}
