//! `avoffset` in `appsrc`/`appsink` pipelines: the offset, holding video for audio, max-hold
//! on files and on the (test) clock, EOS on either side, latency, stats.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{MS, SECOND, init};
use gst::prelude::*;

#[derive(Debug, Clone)]
enum Out {
    Buffer(u64),
    Event(String),
}

struct AvPipe {
    pipeline: gst::Pipeline,
    asrc: gst_app::AppSrc,
    vsrc: gst_app::AppSrc,
    av: gst::Element,
    audio: Arc<Mutex<Vec<Out>>>,
    video: Arc<Mutex<Vec<Out>>>,
    clock: Option<gst_check::TestClock>,
    segments: Arc<Mutex<Vec<gst::Segment>>>,
}

const FRAME: u64 = 40 * MS;

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
        let asink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false)
            .build()
            .unwrap();
        let vsink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false)
            .build()
            .unwrap();
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
        let segments: Arc<Mutex<Vec<gst::Segment>>> = Arc::default();
        let record = |pad: &str, store: Arc<Mutex<Vec<Out>>>| {
            let segs = segments.clone();
            let kept = store.clone();
            av.static_pad(pad).unwrap().add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
                move |_, info| {
                    match &info.data {
                        Some(gst::PadProbeData::Buffer(b)) => store
                            .lock()
                            .unwrap()
                            .push(Out::Buffer(b.pts().unwrap().nseconds())),
                        Some(gst::PadProbeData::Event(e)) => {
                            if let gst::EventView::Segment(s) = e.view() {
                                segs.lock().unwrap().push(s.segment().clone());
                            }
                            store
                                .lock()
                                .unwrap()
                                .push(Out::Event(e.type_().name().to_string()))
                        }
                        _ => {}
                    }
                    gst::PadProbeReturn::Ok
                },
            );
            kept
        };
        let audio = record("audio_src", Arc::default());
        let video = record("video_src", Arc::default());
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
            audio,
            video,
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

    fn buffers(store: &Arc<Mutex<Vec<Out>>>) -> Vec<u64> {
        store
            .lock()
            .unwrap()
            .iter()
            .filter_map(|o| match o {
                Out::Buffer(p) => Some(*p),
                Out::Event(_) => None,
            })
            .collect()
    }

    fn video_buffers(&self) -> Vec<u64> {
        Self::buffers(&self.video)
    }

    fn audio_buffers(&self) -> Vec<u64> {
        Self::buffers(&self.audio)
    }

    /// Waits until `f` holds (or 3 s).
    fn wait(&self, f: impl Fn(&AvPipe) -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        f(self)
    }

    fn settle(&self) {
        std::thread::sleep(Duration::from_millis(150));
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

#[test]
fn offset_applied_and_video_waits_for_its_audio() {
    let p = AvPipe::new(false, |_| {});
    p.push_video(0, SECOND);
    p.settle();
    assert!(
        p.video_buffers().is_empty(),
        "video went out before its audio"
    );
    p.push_audio(0, SECOND / 2);
    assert!(p.wait(|p| p.video_buffers().len() == 13));
    p.settle();
    // Frames at 0..=480 ms are covered by 500 ms of audio.
    assert_eq!(p.video_buffers().len(), 13);
    p.push_audio(SECOND / 2, SECOND);
    assert!(p.wait(|p| p.video_buffers().len() == 25));
    let v = p.video_buffers();
    for (i, pts) in v.iter().enumerate() {
        assert_eq!(*pts, 6 * SECOND + i as u64 * FRAME);
    }
    assert_eq!(p.audio_buffers(), vec![6 * SECOND, 6 * SECOND + SECOND / 2]);
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
    assert!(p.wait(|p| p.video_buffers().len() == 2 && p.audio_buffers().len() == 1));
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
    assert!(p.wait(|p| p.video_buffers().len() == 25));
    p.settle();
    assert_eq!(p.video_buffers().len(), 25, "frames 0..=0.96 s released");
    assert_eq!(p.stats().get::<u64>("video-without-audio").unwrap(), 25);
    // Late audio for released video is counted.
    p.push_audio(0, SECOND / 2);
    assert!(p.wait(|p| p.stats().get::<u64>("audio-late").unwrap() == 1));
}

#[test]
fn live_releases_video_after_max_hold_on_the_clock() {
    let p = AvPipe::new(true, |e| {
        e.set_property("offset", 2 * SECOND);
        e.set_property("max-hold", SECOND);
    });
    let clock = p.clock.as_ref().unwrap();
    p.push_video(0, FRAME);
    clock.set_time(gst::ClockTime::from_nseconds(2900 * MS));
    p.settle();
    assert!(p.video_buffers().is_empty());
    clock.set_time(gst::ClockTime::from_nseconds(3 * SECOND));
    assert!(
        p.wait(|p| p.video_buffers().len() == 1),
        "released at offset + max-hold"
    );
    assert_eq!(p.video_buffers(), vec![2 * SECOND]);
    assert_eq!(p.stats().get::<u64>("video-without-audio").unwrap(), 1);
}

#[test]
fn eos_on_either_side() {
    // Video EOS: held video goes out first, then EOS; audio keeps flowing meanwhile.
    let p = AvPipe::new(false, |_| {});
    p.push_video(0, 10 * FRAME);
    p.vsrc.end_of_stream().unwrap();
    p.push_audio(0, SECOND / 10);
    assert!(p.wait(|p| {
        p.video
            .lock()
            .unwrap()
            .iter()
            .any(|o| matches!(o, Out::Event(e) if e == "eos"))
    }));
    let v = p.video.lock().unwrap().clone();
    let eos_at = v
        .iter()
        .position(|o| matches!(o, Out::Event(e) if e == "eos"))
        .unwrap();
    assert_eq!(
        v[..eos_at]
            .iter()
            .filter(|o| matches!(o, Out::Buffer(_)))
            .count(),
        10
    );
    assert_eq!(p.audio_buffers().len(), 1);

    // Audio EOS releases all held video at once.
    let p = AvPipe::new(false, |_| {});
    p.push_video(0, 10 * FRAME);
    p.settle();
    assert!(p.video_buffers().is_empty());
    p.asrc.end_of_stream().unwrap();
    assert!(p.wait(|p| p.video_buffers().len() == 10));
    assert_eq!(p.stats().get::<u64>("video-without-audio").unwrap(), 0);
}

#[test]
fn state_change_releases_everything_at_once() {
    let p = AvPipe::new(false, |_| {});
    p.push_video(0, 50 * FRAME);
    p.settle();
    let t = Instant::now();
    p.pipeline.set_state(gst::State::Null).unwrap();
    assert!(t.elapsed() < Duration::from_millis(500));
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
        assert!(p.wait(|p| p.video_buffers().len() == 2 && p.audio_buffers().len() == 1));
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
    clock.set_time(gst::ClockTime::from_nseconds(2500 * MS));
    p.settle();
    assert!(p.video_buffers().is_empty(), "held until 3 s");
    // 2.5 s is past offset + the new 200 ms hold: out now, not at the old 3 s.
    p.av.set_property("max-hold", 200 * MS);
    assert!(p.wait(|p| p.video_buffers().len() == 1));
    // And raising it again holds the next frame longer.
    p.av.set_property("max-hold", 5 * SECOND);
    p.push_video(FRAME, 2 * FRAME);
    clock.set_time(gst::ClockTime::from_nseconds(4 * SECOND));
    p.settle();
    assert_eq!(p.video_buffers().len(), 1);
}
