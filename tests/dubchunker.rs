//! `dubchunker` through gst-check harnesses: timestamps, sample accounting, timeline events.

use gst::prelude::*;

const SECOND: u64 = 1_000_000_000;

fn init() {
    use std::sync::Once;
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstdubbing::plugin_register_static().expect("register plugin");
    });
}

fn caps(rate: u32, channels: u32) -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate(rate as i32)
        .channels(channels as i32)
        .build()
}

fn harness(rate: u32, channels: u32, props: &[(&str, &dyn ToValue)]) -> gst_check::Harness {
    init();
    let mut h = gst_check::Harness::new("dubchunker");
    for (k, v) in props {
        h.element()
            .unwrap()
            .set_property_from_value(k, &v.to_value());
    }
    h.set_src_caps(caps(rate, channels));
    h.play();
    h
}

/// `frames` frames where every sample is `value`.
fn audio(frames: usize, channels: u32, pts: Option<u64>, value: i16) -> gst::Buffer {
    let mut data = Vec::with_capacity(frames * channels as usize * 2);
    for _ in 0..frames * channels as usize {
        data.extend_from_slice(&value.to_le_bytes());
    }
    let mut b = gst::Buffer::from_mut_slice(data);
    b.get_mut()
        .unwrap()
        .set_pts(pts.map(gst::ClockTime::from_nseconds));
    b
}

fn ts(frames: u64, rate: u32) -> u64 {
    (frames as u128 * SECOND as u128 / rate as u128) as u64
}

fn pull_all(h: &mut gst_check::Harness) -> Vec<gst::Buffer> {
    std::iter::from_fn(|| h.try_pull()).collect()
}

fn frames_of(b: &gst::Buffer, channels: u32) -> u64 {
    (b.size() / (2 * channels as usize)) as u64
}

fn stats(h: &gst_check::Harness) -> gst::Structure {
    h.element().unwrap().property::<gst::Structure>("stats")
}

fn stat(h: &gst_check::Harness, field: &str) -> u64 {
    stats(h).get::<u64>(field).unwrap()
}

/// The seed's scenario: 50 × 20 ms at 48 kHz stereo make exactly one 1 s fragment, at the 50th push.
#[test]
fn fifty_20ms_buffers_make_one_second() {
    let mut h = harness(48000, 2, &[]);
    for i in 0..50u64 {
        h.push(audio(960, 2, Some(i * 20_000_000), 1)).unwrap();
        if i < 49 {
            assert_eq!(h.buffers_in_queue(), 0, "fragment before push {}", i + 1);
        }
    }
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 1);
    let b = &out[0];
    assert_eq!(frames_of(b, 2), 48000);
    assert_eq!(b.size(), 48000 * 4);
    assert_eq!(b.pts(), Some(gst::ClockTime::ZERO));
    assert_eq!(b.duration(), Some(gst::ClockTime::SECOND));
    assert_eq!((b.offset(), b.offset_end()), (0, 48000));
}

/// 60 s of 1024-sample buffers (what avdec_aac gives) → 60 fragments with PTS n × 1 s exactly.
fn sixty_seconds_of_aac_frames(rate: u32, channels: u32) {
    let mut h = harness(rate, channels, &[]);
    let total = 60 * rate as u64;
    let mut pushed = 0u64;
    while pushed < total {
        let n = 1024.min(total - pushed);
        h.push(audio(n as usize, channels, Some(ts(pushed, rate)), 3))
            .unwrap();
        pushed += n;
    }
    h.push_event(gst::event::Eos::new());
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 60, "{rate} Hz");
    for (n, b) in out.iter().enumerate() {
        assert_eq!(
            b.pts().unwrap().nseconds(),
            n as u64 * SECOND,
            "{rate} Hz #{n}"
        );
        assert_eq!(b.duration().unwrap().nseconds(), SECOND);
        assert_eq!(frames_of(b, channels), rate as u64);
        assert_eq!(b.offset(), n as u64 * rate as u64);
        assert_eq!(b.offset_end(), (n as u64 + 1) * rate as u64);
        assert_eq!(
            b.flags().contains(gst::BufferFlags::DISCONT),
            n == 0,
            "only the first fragment starts a timeline"
        );
    }
    assert_eq!(stat(&h, "samples-in"), total);
    assert_eq!(stat(&h, "samples-out"), total);
    assert_eq!(stat(&h, "partial-fragments"), 0);
}

#[test]
fn sixty_seconds_48k_stereo() {
    sixty_seconds_of_aac_frames(48000, 2);
}

#[test]
fn sixty_seconds_44k1_mono() {
    sixty_seconds_of_aac_frames(44100, 1);
}

#[test]
fn sixty_seconds_22k05_stereo() {
    sixty_seconds_of_aac_frames(22050, 2);
}

#[test]
fn small_jitter_is_absorbed() {
    let mut h = harness(48000, 1, &[]);
    for i in 0..100u64 {
        // ±3 ms of jitter on 20 ms buffers: less than half a buffer.
        let jitter = [0i64, 3_000_000, -3_000_000, 1_500_000][(i % 4) as usize];
        let pts = (i * 20_000_000) as i64 + if i == 0 { 0 } else { jitter };
        h.push(audio(960, 1, Some(pts as u64), 0)).unwrap();
    }
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].pts().unwrap().nseconds(), SECOND);
    assert!(!out[1].flags().contains(gst::BufferFlags::DISCONT));
    assert_eq!(stat(&h, "discontinuities"), 0);
}

#[test]
fn timestamp_jump_pushes_partial_and_restarts() {
    let mut h = harness(48000, 2, &[]);
    for i in 0..75u64 {
        h.push(audio(960, 2, Some(i * 20_000_000), 0)).unwrap();
    }
    // Jump 10 s ahead.
    let restart = 11_500_000_000u64;
    for i in 0..50u64 {
        h.push(audio(960, 2, Some(restart + i * 20_000_000), 0))
            .unwrap();
    }
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 3);
    assert_eq!(frames_of(&out[0], 2), 48000);
    // The partial half second goes out first, with its own timestamps.
    assert_eq!(frames_of(&out[1], 2), 24000);
    assert_eq!(out[1].pts().unwrap().nseconds(), SECOND);
    assert_eq!(out[1].duration().unwrap().nseconds(), SECOND / 2);
    assert!(!out[1].flags().contains(gst::BufferFlags::DISCONT));
    // Then the new timeline, flagged.
    assert_eq!(out[2].pts().unwrap().nseconds(), restart);
    assert_eq!(frames_of(&out[2], 2), 48000);
    assert!(out[2].flags().contains(gst::BufferFlags::DISCONT));
    assert_eq!(out[2].offset(), restart * 48000 / SECOND);
    assert_eq!(stat(&h, "discontinuities"), 1);
    assert_eq!(stat(&h, "partial-fragments"), 1);

    // A backwards jump is a discontinuity too.
    h.push(audio(960, 2, Some(2 * SECOND), 0)).unwrap();
    assert_eq!(stat(&h, "discontinuities"), 2);
}

#[test]
fn discont_flag_restarts_even_when_contiguous() {
    let mut h = harness(16000, 1, &[]);
    h.push(audio(8000, 1, Some(0), 0)).unwrap();
    let mut b = audio(16000, 1, Some(SECOND / 2), 0);
    b.get_mut().unwrap().set_flags(gst::BufferFlags::DISCONT);
    h.push(b).unwrap();
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 2);
    assert_eq!(frames_of(&out[0], 1), 8000);
    assert_eq!(out[1].pts().unwrap().nseconds(), SECOND / 2);
    assert!(out[1].flags().contains(gst::BufferFlags::DISCONT));
}

#[test]
fn eos_pushes_the_partial_fragment_then_eos() {
    let mut h = harness(48000, 2, &[]);
    h.push(audio(48000 + 14400, 2, Some(0), 7)).unwrap();
    assert!(h.push_event(gst::event::Eos::new()));
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 2);
    assert_eq!(frames_of(&out[1], 2), 14400);
    assert_eq!(out[1].pts().unwrap().nseconds(), SECOND);
    assert_eq!(out[1].duration().unwrap().nseconds(), 300_000_000);
    // EOS follows the partial fragment.
    let mut saw_eos = false;
    while let Some(ev) = h.try_pull_event() {
        saw_eos |= ev.type_() == gst::EventType::Eos;
    }
    assert!(saw_eos);
    assert_eq!(stat(&h, "partial-fragments"), 1);
    assert_eq!(stat(&h, "samples-out"), 48000 + 14400);
}

#[test]
fn flush_drops_the_partial_fragment() {
    let mut h = harness(48000, 1, &[]);
    h.push(audio(24000, 1, Some(0), 0)).unwrap();
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    h.push(audio(48000, 1, Some(5 * SECOND), 0)).unwrap();
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 1, "the half second before the flush is gone");
    assert_eq!(out[0].pts().unwrap().nseconds(), 5 * SECOND);
    assert_eq!(frames_of(&out[0], 1), 48000);
    assert!(out[0].flags().contains(gst::BufferFlags::DISCONT));
}

#[test]
fn caps_change_pushes_partial_then_uses_new_format() {
    let mut h = harness(48000, 2, &[]);
    h.push(audio(24000, 2, Some(0), 0)).unwrap();
    h.set_src_caps(caps(16000, 1));
    h.push(audio(16000, 1, Some(SECOND / 2), 0)).unwrap();
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].size(), 24000 * 4, "partial in the old format");
    assert_eq!(out[0].duration().unwrap().nseconds(), SECOND / 2);
    assert_eq!(out[1].size(), 16000 * 2, "full fragment in the new format");
    assert_eq!(out[1].pts().unwrap().nseconds(), SECOND / 2);
    assert_eq!(out[1].duration().unwrap().nseconds(), SECOND);
    // The new caps went downstream between the two fragments.
    let sink_caps = h.sinkpad().unwrap().current_caps().unwrap();
    assert_eq!(sink_caps, caps(16000, 1));
}

#[test]
fn gap_event_is_filled_with_silence_and_flagged() {
    let mut h = harness(8000, 1, &[]);
    h.push(audio(4000, 1, Some(0), 1000)).unwrap();
    // 2 s gap from 0.5 s to 2.5 s.
    assert!(
        h.push_event(
            gst::event::Gap::builder(gst::ClockTime::from_mseconds(500))
                .duration(gst::ClockTime::from_seconds(2))
                .build()
        )
    );
    h.push(audio(4000, 1, Some(2_500_000_000), 1000)).unwrap();
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 3);
    for (n, b) in out.iter().enumerate() {
        assert_eq!(b.pts().unwrap().nseconds(), n as u64 * SECOND);
        assert_eq!(frames_of(b, 1), 8000);
    }
    assert!(
        !out[0].flags().contains(gst::BufferFlags::GAP),
        "half audio"
    );
    assert!(
        out[1].flags().contains(gst::BufferFlags::GAP),
        "all silence"
    );
    assert!(!out[2].flags().contains(gst::BufferFlags::GAP));
    let map = out[1].map_readable().unwrap();
    assert!(map.iter().all(|&b| b == 0));
    assert_eq!(stat(&h, "gap-samples"), 16000);
    assert_eq!(stat(&h, "discontinuities"), 0);
}

#[test]
fn first_buffer_without_pts_is_an_error() {
    let mut h = harness(48000, 2, &[]);
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    assert_eq!(h.push(audio(960, 2, None, 0)), Err(gst::FlowError::Error));
    let msg = bus
        .pop_filtered(&[gst::MessageType::Error])
        .expect("error message");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    assert!(
        err.error().to_string().contains("no timestamp"),
        "{}",
        err.error()
    );
}

#[test]
fn later_buffers_without_pts_continue_the_timeline() {
    let mut h = harness(8000, 1, &[]);
    h.push(audio(4000, 1, Some(SECOND), 0)).unwrap();
    h.push(audio(4000, 1, None, 0)).unwrap();
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].pts().unwrap().nseconds(), SECOND);
}

#[test]
fn partial_frames_are_an_error() {
    let mut h = harness(48000, 2, &[]);
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    let mut b = gst::Buffer::from_mut_slice(vec![0u8; 6]);
    b.get_mut().unwrap().set_pts(gst::ClockTime::ZERO);
    assert_eq!(h.push(b), Err(gst::FlowError::Error));
    let msg = bus.pop_filtered(&[gst::MessageType::Error]).unwrap();
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    assert!(
        err.error().to_string().contains("6 bytes"),
        "{}",
        err.error()
    );
}

#[test]
fn latency_adds_the_longest_fragment() {
    let mut h = harness(48000, 2, &[]);
    h.set_upstream_latency(gst::ClockTime::from_mseconds(100));
    assert_eq!(h.query_latency(), Some(gst::ClockTime::from_mseconds(1100)));

    let mut h = harness(
        48000,
        2,
        &[
            ("boundary", &gstdubbing::dubchunker::Boundary::Silence),
            ("max-duration", &2_000_000_000u64),
        ],
    );
    h.set_upstream_latency(gst::ClockTime::from_mseconds(20));
    assert_eq!(h.query_latency(), Some(gst::ClockTime::from_mseconds(2020)));
}

#[test]
fn properties_round_trip() {
    init();
    let e = gst::ElementFactory::make("dubchunker").build().unwrap();
    assert_eq!(e.property::<u64>("chunk-duration"), SECOND);
    assert_eq!(e.property::<u64>("min-duration"), SECOND / 2);
    assert_eq!(e.property::<u64>("max-duration"), 3 * SECOND / 2);
    assert_eq!(e.property::<f64>("silence-threshold"), -40.0);
    assert_eq!(
        e.property::<gstdubbing::dubchunker::Boundary>("boundary"),
        gstdubbing::dubchunker::Boundary::Fixed
    );
    e.set_property("chunk-duration", 250_000_000u64);
    e.set_property("min-duration", 300_000_000u64);
    e.set_property("max-duration", 4 * SECOND);
    e.set_property("silence-threshold", -55.5f64);
    e.set_property_from_str("boundary", "silence");
    assert_eq!(e.property::<u64>("chunk-duration"), 250_000_000);
    assert_eq!(e.property::<u64>("min-duration"), 300_000_000);
    assert_eq!(e.property::<u64>("max-duration"), 4 * SECOND);
    assert_eq!(e.property::<f64>("silence-threshold"), -55.5);
    assert_eq!(
        e.property::<gstdubbing::dubchunker::Boundary>("boundary"),
        gstdubbing::dubchunker::Boundary::Silence
    );
    let s = e.property::<gst::Structure>("stats");
    for f in [
        "fragments",
        "samples-in",
        "samples-out",
        "partial-fragments",
        "discontinuities",
    ] {
        assert_eq!(s.get::<u64>(f).unwrap(), 0, "{f}");
    }
}

#[test]
fn chunk_duration_sets_fragment_size() {
    let mut h = harness(44100, 1, &[("chunk-duration", &250_000_000u64)]);
    h.push(audio(44100, 1, Some(0), 0)).unwrap();
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 4);
    for (n, b) in out.iter().enumerate() {
        assert_eq!(frames_of(b, 1), 11025);
        assert_eq!(b.pts().unwrap().nseconds(), n as u64 * 250_000_000);
    }
}

/// Loud tone with silent pauses at known times.
fn speech_like(rate: u32, seconds: f64, pauses: &[(f64, f64)]) -> Vec<i16> {
    (0..(rate as f64 * seconds) as usize)
        .map(|i| {
            let t = i as f64 / rate as f64;
            if pauses.iter().any(|&(a, b)| t >= a && t < b) {
                0
            } else {
                ((t * 2.0 * std::f64::consts::PI * 180.0).sin() * 9000.0) as i16
            }
        })
        .collect()
}

#[test]
fn silence_mode_cuts_land_inside_pauses() {
    let rate = 48000u32;
    let pauses = [(0.7, 0.8), (1.9, 2.05), (2.6, 2.7), (3.9, 4.1), (5.2, 5.3)];
    let samples = speech_like(rate, 6.0, &pauses);
    let mut h = harness(
        rate,
        1,
        &[("boundary", &gstdubbing::dubchunker::Boundary::Silence)],
    );
    let mut pushed = 0u64;
    for chunk in samples.chunks(1024) {
        let data: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut b = gst::Buffer::from_mut_slice(data);
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_nseconds(ts(pushed, rate)));
        h.push(b).unwrap();
        pushed += chunk.len() as u64;
    }
    h.push_event(gst::event::Eos::new());
    let out = pull_all(&mut h);
    let mut end = 0u64;
    for (n, b) in out.iter().enumerate() {
        assert_eq!(b.pts().unwrap().nseconds(), end, "contiguous");
        end += b.duration().unwrap().nseconds();
        let frames = frames_of(b, 1);
        if n + 1 < out.len() {
            let t = end as f64 / SECOND as f64;
            assert!(
                pauses.iter().any(|&(a, b)| t > a && t < b),
                "cut at {t:.3} s is outside every pause"
            );
            assert!((24000..=72000).contains(&frames));
        }
    }
    assert_eq!(end, 6 * SECOND);
    assert_eq!(stat(&h, "samples-out"), pushed);
    assert_eq!(stat(&h, "forced-cuts"), 0);
    assert_eq!(stat(&h, "pause-cuts"), out.len() as u64 - 1);
}

#[test]
fn huge_and_empty_buffers() {
    let mut h = harness(48000, 2, &[]);
    // 10 s in one buffer: ten exact fragments.
    h.push(audio(480_000, 2, Some(0), 7)).unwrap();
    // Empty buffers change nothing.
    h.push(audio(0, 2, Some(10 * SECOND), 0)).unwrap();
    h.push(audio(0, 2, None, 0)).unwrap();
    let out = pull_all(&mut h);
    assert_eq!(out.len(), 10);
    for (i, b) in out.iter().enumerate() {
        assert_eq!(frames_of(b, 2), 48000);
        assert_eq!(b.pts().unwrap().nseconds(), i as u64 * SECOND);
    }
    assert_eq!(stat(&h, "samples-in"), 480_000);
    assert_eq!(stat(&h, "discontinuities"), 0);
    h.push_event(gst::event::Eos::new());
    assert!(pull_all(&mut h).is_empty(), "nothing partial left");
}

#[test]
fn other_sample_formats_are_refused_by_negotiation() {
    init();
    // The link itself is refused, with a message naming the element and the caps.
    let err = gst::parse::launch(
        "audiotestsrc num-buffers=10 ! audio/x-raw,format=F32LE,rate=48000,channels=2 \
         ! dubchunker ! fakesink",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("can't handle caps") && text.contains("F32LE"),
        "{text}"
    );
    // And through a harness: the caps event is refused.
    let mut h = gst_check::Harness::new("dubchunker");
    h.set_src_caps_str("audio/x-raw,format=F32LE,layout=interleaved,rate=48000,channels=2");
    h.play();
    assert!(h.push(audio(480, 2, Some(0), 0)).is_err());
}
