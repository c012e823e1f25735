//! `cc608insert` with `gst_check::Harness` and a `TestClock`: captions in every access unit,
//! the video's own NAL units untouched, presentation order with B-frames, the text pad
//! optional, GAP events, and the live wait bounded by the latency.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{MS, SECOND, init};
use gst::prelude::*;
use gst_check::Harness;
use gstdubbing::cc608insert::sei::{NalFraming, nal_units};

/// 29.97 fps frame `n`: PTS.
fn pts(n: u64) -> u64 {
    n * 1001 * SECOND / 30000
}

const FRAME: u64 = 33_366_667;

fn avc_caps() -> gst::Caps {
    gst::Caps::builder("video/x-h264")
        .field("stream-format", "avc")
        .field("alignment", "au")
        .field("framerate", gst::Fraction::new(30000, 1001))
        .field(
            "codec_data",
            gst::Buffer::from_slice([1u8, 0x4d, 0, 0x1e, 0xff, 0xe0, 0]),
        )
        .build()
}

fn byte_stream_caps(fps: i32) -> gst::Caps {
    gst::Caps::builder("video/x-h264")
        .field("stream-format", "byte-stream")
        .field("alignment", "au")
        .field("framerate", gst::Fraction::new(fps, 1))
        .build()
}

/// A fake access unit: an AUD, then a slice whose bytes name the frame.
fn access_unit(n: u64, framing: NalFraming) -> Vec<u8> {
    let slice = [
        if n == 0 { 0x65 } else { 0x41 },
        0x9a,
        (n >> 8) as u8,
        n as u8,
        0x11,
    ];
    let mut au = framing.frame(&[0x09, 0xf0]);
    au.extend(framing.frame(&slice));
    au
}

fn frame_buffer(n: u64, pts_ns: u64, dts_ns: u64, framing: NalFraming) -> gst::Buffer {
    let mut b = gst::Buffer::from_mut_slice(access_unit(n, framing));
    {
        let b = b.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_nseconds(pts_ns));
        b.set_dts(gst::ClockTime::from_nseconds(dts_ns));
        b.set_duration(gst::ClockTime::from_nseconds(FRAME));
        if n != 0 {
            b.set_flags(gst::BufferFlags::DELTA_UNIT);
        }
    }
    b
}

/// The 608 pairs (parity stripped) of the caption SEI of an access unit, and the access unit
/// without it.
fn split_au(au: &[u8], framing: NalFraming) -> (Vec<[u8; 2]>, Vec<u8>) {
    let nals = nal_units(au, framing).unwrap();
    let mut rest = Vec::new();
    let mut pairs = Vec::new();
    let mut found = 0;
    for (i, &(off, t)) in nals.iter().enumerate() {
        let end = nals.get(i + 1).map_or(au.len(), |n| n.0);
        let unit = &au[off..end];
        let body_at = match framing {
            NalFraming::Length(n) => n,
            NalFraming::StartCode => unit.iter().position(|b| *b == 1).unwrap() + 1,
        };
        let nal = &unit[body_at..];
        if t == 6 && nal.len() > 11 && &nal[3..10] == b"\xb5\x00\x31GA94" {
            found += 1;
            assert_eq!(nal[1], 4, "payload type");
            assert_eq!(nal[10], 3, "user_data_type_code");
            let count = (nal[11] & 0x1f) as usize;
            assert_eq!(nal[11] & 0x40, 0x40, "process_cc_data_flag");
            for k in 0..count {
                let t = &nal[13 + 3 * k..16 + 3 * k];
                assert_eq!(t[0], 0xfc, "valid field-1 triple");
                for b in &t[1..] {
                    assert_eq!(b.count_ones() % 2, 1, "odd parity");
                }
                pairs.push([t[1] & 0x7f, t[2] & 0x7f]);
            }
            assert_eq!(nal[13 + 3 * count], 0xff, "marker");
            assert_eq!(*nal.last().unwrap(), 0x80, "rbsp trailing bits");
        } else {
            rest.extend_from_slice(unit);
        }
    }
    assert_eq!(found, 1, "one caption SEI per access unit");
    (pairs, rest)
}

fn element() -> gst::Element {
    init();
    gst::ElementFactory::make("cc608insert").build().unwrap()
}

/// Harnesses for the text pad and the video (made last: its TestClock is the element's).
fn harnesses(el: &gst::Element) -> (Harness, Harness) {
    let mut text = Harness::with_element(el, Some("text_sink"), None);
    text.set_src_caps(
        gst::Caps::builder("text/x-raw")
            .field("format", "utf8")
            .build(),
    );
    let video = Harness::with_element(el, Some("sink"), Some("src"));
    (text, video)
}

fn cue(text: &str, start: u64, dur: u64) -> gst::Buffer {
    let mut b = gst::Buffer::from_slice(text.as_bytes().to_vec());
    {
        let b = b.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_nseconds(start));
        b.set_duration(gst::ClockTime::from_nseconds(dur));
    }
    b
}

fn stats(el: &gst::Element) -> gst::Structure {
    el.property::<gst::Structure>("stats")
}

#[test]
fn properties_and_defaults() {
    let el = element();
    assert_eq!(el.property::<u32>("max-lines"), 2);
    assert_eq!(el.property::<u64>("latency"), 1500 * MS);
    assert_eq!(
        el.property::<gstdubbing::cc608insert::Channel>("channel"),
        gstdubbing::cc608insert::Channel::Cc1
    );
    el.set_property_from_str("channel", "cc3");
    assert_eq!(
        el.property::<gstdubbing::cc608insert::Channel>("channel"),
        gstdubbing::cc608insert::Channel::Cc3
    );
    let s = stats(&el);
    assert_eq!(s.name(), gstdubbing::cc608insert::STATS_STRUCTURE);
    for f in ["frames", "sei-inserted", "cues", "shown", "late", "dropped"] {
        assert_eq!(s.get::<u64>(f).unwrap(), 0, "{f}");
    }
}

#[test]
fn without_text_pad_video_passes_untouched() {
    let el = element();
    let mut h = Harness::with_element(&el, Some("sink"), Some("src"));
    h.set_src_caps(avc_caps());
    for n in 0..10 {
        let b = frame_buffer(n, pts(n), pts(n), NalFraming::Length(4));
        let bytes = b.map_readable().unwrap().to_vec();
        h.push(b).unwrap();
        let out = h.pull().unwrap();
        assert_eq!(out.map_readable().unwrap().as_slice(), bytes.as_slice());
        assert_eq!(out.pts().unwrap().nseconds(), pts(n));
    }
    let s = stats(&el);
    assert_eq!(s.get::<u64>("passthrough").unwrap(), 10);
    assert_eq!(s.get::<u64>("sei-inserted").unwrap(), 0);
}

/// An output access unit: PTS, its 608 pairs, the access unit without the caption SEI, and
/// the input access unit of that PTS.
type OutAu = (u64, Vec<[u8; 2]>, Vec<u8>, Vec<u8>);

/// Runs `frames` frames through with `cues` known beforehand (text EOS); returns each output
/// access unit's pairs (by PTS) and the access unit without the SEI.
fn run(
    framing: NalFraming,
    frames: &[(u64, u64, u64)],
    cues: &[(&str, u64, u64)],
) -> (gst::Element, Vec<OutAu>) {
    let el = element();
    let (mut text, mut video) = harnesses(&el);
    for (t, start, dur) in cues {
        text.push(cue(t, *start, *dur)).unwrap();
    }
    assert!(text.push_event(gst::event::Eos::new()));
    video.set_src_caps(match framing {
        NalFraming::Length(_) => avc_caps(),
        NalFraming::StartCode => byte_stream_caps(30),
    });
    let mut inputs = std::collections::HashMap::new();
    for &(n, p, d) in frames {
        let b = frame_buffer(n, p, d, framing);
        inputs.insert(p, b.map_readable().unwrap().to_vec());
        video.push(b).unwrap();
    }
    assert!(video.push_event(gst::event::Eos::new()));
    let mut out = Vec::new();
    while let Some(b) = video.try_pull() {
        let p = b.pts().unwrap().nseconds();
        let bytes = b.map_readable().unwrap().to_vec();
        let (pairs, rest) = split_au(&bytes, framing);
        out.push((p, pairs, rest, inputs[&p].clone()));
    }
    (el, out)
}

fn first_at(out: &[OutAu], pair: [u8; 2]) -> Option<u64> {
    let mut by_pts: Vec<_> = out.iter().collect();
    by_pts.sort_by_key(|o| o.0);
    by_pts.iter().find(|o| o.1.contains(&pair)).map(|o| o.0)
}

#[test]
fn cue_is_captioned_in_every_access_unit() {
    let frames: Vec<_> = (0..150).map(|n| (n, pts(n), pts(n))).collect();
    let (el, out) = run(
        NalFraming::Length(4),
        &frames,
        &[("¿Qué tal, señor Núñez?", 2 * SECOND, 2 * SECOND)],
    );
    assert_eq!(out.len(), 150);
    for (_, pairs, rest, input) in &out {
        assert_eq!(pairs.len(), 1, "one pair per frame at 29.97 fps");
        assert_eq!(rest, input, "the video's own NAL units are untouched");
    }
    let eoc = first_at(&out, [0x14, 0x2f]).unwrap();
    let edm = first_at(&out, [0x14, 0x2c]).unwrap();
    assert!(eoc.abs_diff(2 * SECOND) <= FRAME / 2, "EOC at {eoc}");
    assert!(edm.abs_diff(4 * SECOND) <= FRAME / 2, "EDM at {edm}");
    // The characters, in order: "Qu" + é..., ñ (0x7e) and Ñ... through the basic set, ¿ special.
    let chars: Vec<u8> = out
        .iter()
        .flat_map(|o| o.1.iter())
        .filter(|p| p[0] >= 0x20)
        .flat_map(|p| p.iter().copied())
        .filter(|b| *b != 0)
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&chars),
        "Qu\\ tal, se~or N`~ez?",
        "608 bytes: é=0x5c, ú=0x60, ñ=0x7e"
    );
    let s = stats(&el);
    assert_eq!(s.get::<u64>("sei-inserted").unwrap(), 150);
    assert_eq!(s.get::<u64>("cues").unwrap(), 1);
    assert_eq!(s.get::<u64>("shown").unwrap(), 1);
    assert_eq!(s.get::<u64>("late").unwrap(), 0);
    assert_eq!(s.get::<f64>("pairs-per-frame").unwrap(), 1.0);
}

#[test]
fn byte_stream_access_units() {
    let frames: Vec<_> = (0..60).map(|n| (n, n * 33 * MS, n * 33 * MS)).collect();
    let (_el, out) = run(NalFraming::StartCode, &frames, &[("Hola", SECOND, SECOND)]);
    assert_eq!(out.len(), 60);
    for (_, _, rest, input) in &out {
        assert_eq!(rest, input);
    }
    assert!(first_at(&out, [0x14, 0x2f]).is_some());
}

#[test]
fn b_frames_carry_captions_in_presentation_order() {
    // Decode order I P B B P B B …: the same PTS grid as the plain run.
    let mut reordered = Vec::new();
    let mut n = 0;
    reordered.push((0, pts(1), pts(0)));
    let mut anchor = 1;
    while anchor + 3 <= 150 {
        n += 1;
        reordered.push((n, pts(anchor + 3), pts(n)));
        n += 1;
        reordered.push((n, pts(anchor + 1), pts(n)));
        n += 1;
        reordered.push((n, pts(anchor + 2), pts(n)));
        anchor += 3;
    }
    let in_order: Vec<_> = reordered
        .iter()
        .map(|&(_, p, _)| p)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, p)| (i as u64, p, p))
        .collect();
    let cues = [("Uno, dos, tres", 2 * SECOND, 1500 * MS)];
    let (_, plain) = run(NalFraming::Length(4), &in_order, &cues);
    let (_, bframes) = run(NalFraming::Length(4), &reordered, &cues);
    // Output keeps decode order.
    let out_pts: Vec<u64> = bframes.iter().map(|o| o.0).collect();
    let in_pts: Vec<u64> = reordered.iter().map(|r| r.1).collect();
    assert_eq!(out_pts, in_pts);
    // The caption bytes by PTS are those of the stream without reordering.
    let by_pts = |v: &[OutAu]| {
        let mut m: Vec<(u64, Vec<[u8; 2]>)> = v.iter().map(|o| (o.0, o.1.clone())).collect();
        m.sort_by_key(|o| o.0);
        m
    };
    assert_eq!(by_pts(&bframes), by_pts(&plain));
    assert!(
        first_at(&bframes, [0x14, 0x2f])
            .unwrap()
            .abs_diff(2 * SECOND)
            <= FRAME / 2
    );
    for (_, _, rest, input) in &bframes {
        assert_eq!(rest, input);
    }
}

/// Pushes `buffer` into the video harness from another thread (the element may wait on the
/// clock in its chain function); returns the receiver of the push result.
fn push_async(
    video: &Harness,
    buffer: gst::Buffer,
) -> mpsc::Receiver<Result<gst::FlowSuccess, gst::FlowError>> {
    let pad = video.srcpad().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(pad.push(buffer));
    });
    rx
}

#[test]
fn live_video_waits_for_missing_text_only_up_to_the_latency() {
    let el = element();
    el.set_property("latency", 500 * MS);
    let (mut text, mut video) = harnesses(&el);
    // The text stream started (segment) but says nothing.
    assert!(
        text.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    video.set_src_caps(avc_caps());
    let rx = push_async(&video, frame_buffer(0, 0, 0, NalFraming::Length(4)));
    // The frame waits on the clock until its running time + latency, then goes out.
    video.crank_single_clock_wait().unwrap();
    assert_eq!(
        video.testclock().unwrap().time(),
        gst::ClockTime::from_nseconds(500 * MS)
    );
    rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    let out = video.pull().unwrap();
    assert_eq!(out.pts(), Some(gst::ClockTime::ZERO));
    assert_eq!(stats(&el).get::<u64>("text-timeouts").unwrap(), 1);
    // A GAP event covering the next frames' horizon: they go out without waiting.
    assert!(
        text.push_event(
            gst::event::Gap::builder(gst::ClockTime::ZERO)
                .duration(gst::ClockTime::from_seconds(10))
                .build()
        )
    );
    for n in 1..10 {
        let rx = push_async(
            &video,
            frame_buffer(n, pts(n), pts(n), NalFraming::Length(4)),
        );
        rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        video.pull().unwrap();
    }
    assert_eq!(stats(&el).get::<u64>("text-timeouts").unwrap(), 1);
}

#[test]
fn live_cue_arriving_while_video_waits_releases_it() {
    let el = element();
    el.set_property("latency", 2 * SECOND);
    let (mut text, mut video) = harnesses(&el);
    assert!(
        text.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    video.set_src_caps(avc_caps());
    let rx = push_async(&video, frame_buffer(0, 0, 0, NalFraming::Length(4)));
    video.wait_for_clock_id_waits(1, 30).unwrap();
    // A cue beyond the horizon arrives: the video goes on at once, before the deadline.
    text.push(cue("Hola", 3 * SECOND, SECOND)).unwrap();
    rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    video.pull().unwrap();
    assert_eq!(video.testclock().unwrap().time(), gst::ClockTime::ZERO);
    assert_eq!(stats(&el).get::<u64>("text-timeouts").unwrap(), 0);
}

#[test]
fn non_live_video_waits_for_the_text() {
    let el = element();
    let (mut text, mut video) = harnesses(&el);
    video.set_live(false);
    assert!(
        text.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    video.set_src_caps(avc_caps());
    let rx = push_async(&video, frame_buffer(0, 0, 0, NalFraming::Length(4)));
    // Not live: the frame waits (on the clock, which does not move here) for the text.
    video.wait_for_clock_id_waits(1, 30).unwrap();
    assert!(rx.try_recv().is_err());
    assert!(text.push_event(gst::event::Eos::new()));
    rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    video.pull().unwrap();
    assert_eq!(stats(&el).get::<u64>("text-timeouts").unwrap(), 0);
}

#[test]
fn non_live_text_that_cannot_run_ahead_does_not_stall() {
    let el = element();
    el.set_property("latency", SECOND);
    let (mut text, mut video) = harnesses(&el);
    video.set_live(false);
    assert!(
        text.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    // The text is known up to 0.5 s and stands still (its thread is held up elsewhere).
    assert!(
        text.push_event(
            gst::event::Gap::builder(gst::ClockTime::ZERO)
                .duration(gst::ClockTime::from_mseconds(500))
                .build()
        )
    );
    video.set_src_caps(avc_caps());
    let push = |video: &mut Harness, n: u64| {
        let rx = push_async(
            video,
            frame_buffer(n, pts(n), pts(n), NalFraming::Length(4)),
        );
        rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        video.pull().unwrap();
    };
    // Frame 0 waits for the text 1 s ahead; after 10 s on the clock without the text moving
    // it goes on, and from then on waits only for the text of each frame's own time.
    let rx = push_async(&video, frame_buffer(0, 0, 0, NalFraming::Length(4)));
    video.crank_single_clock_wait().unwrap();
    assert_eq!(
        video.testclock().unwrap().time(),
        gst::ClockTime::from_seconds(10)
    );
    rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    video.pull().unwrap();
    let s = stats(&el);
    assert_eq!(s.get::<u64>("lookahead-reduced").unwrap(), 1);
    assert_eq!(s.get::<u64>("text-timeouts").unwrap(), 1);
    // No more waits while the text stands still.
    for n in 1..30 {
        push(&mut video, n);
    }
    assert_eq!(stats(&el).get::<u64>("text-timeouts").unwrap(), 1);
    // The text moves on: frames wait for their own time's text (and need not: it is ahead).
    assert!(
        text.push_event(
            gst::event::Gap::builder(gst::ClockTime::from_mseconds(500))
                .duration(gst::ClockTime::from_seconds(10))
                .build()
        )
    );
    for n in 30..40 {
        push(&mut video, n);
    }
    let s = stats(&el);
    assert_eq!(s.get::<u64>("text-timeouts").unwrap(), 1);
    assert_eq!(s.get::<u64>("lookahead-reduced").unwrap(), 1);
    // It stands still again, behind the video: one more wait (for `latency`), then none.
    let rx = push_async(
        &video,
        frame_buffer(400, pts(400), pts(400), NalFraming::Length(4)),
    );
    video.crank_single_clock_wait().unwrap();
    rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    video.pull().unwrap();
    assert_eq!(stats(&el).get::<u64>("text-timeouts").unwrap(), 2);
    assert!(
        text.push_event(
            gst::event::Gap::builder(gst::ClockTime::from_seconds(10))
                .duration(gst::ClockTime::from_seconds(1))
                .build()
        )
    );
    for n in 401..420 {
        push(&mut video, n);
    }
    assert_eq!(stats(&el).get::<u64>("text-timeouts").unwrap(), 2);
}

#[test]
fn latency_query_adds_the_latency_with_a_text_pad() {
    let el = element();
    let mut video = Harness::with_element(&el, Some("sink"), Some("src"));
    video.set_upstream_latency(gst::ClockTime::from_mseconds(100));
    let mut q = gst::query::Latency::new();
    assert!(video.sinkpad().unwrap().peer_query(&mut q));
    assert_eq!(q.result().1, gst::ClockTime::from_mseconds(100));
    drop(video);
    let el = element();
    el.set_property("latency", 700 * MS);
    let (_text, mut video) = harnesses(&el);
    video.set_upstream_latency(gst::ClockTime::from_mseconds(100));
    let mut q = gst::query::Latency::new();
    assert!(video.sinkpad().unwrap().peer_query(&mut q));
    let (live, min, _) = q.result();
    assert!(live);
    assert_eq!(min, gst::ClockTime::from_mseconds(800));
}

#[test]
fn at_25_fps_frames_carry_six_pairs_per_five_frames() {
    let el = element();
    let (mut text, mut video) = harnesses(&el);
    text.push(cue(&"x".repeat(60), 3 * SECOND, SECOND)).unwrap();
    assert!(text.push_event(gst::event::Eos::new()));
    video.set_src_caps(byte_stream_caps(25));
    let mut counts = Vec::new();
    for n in 0..25u64 {
        video
            .push(frame_buffer(
                n,
                n * 40 * MS,
                n * 40 * MS,
                NalFraming::StartCode,
            ))
            .unwrap();
        let out = video.pull().unwrap();
        let (pairs, _) = split_au(&out.map_readable().unwrap(), NalFraming::StartCode);
        counts.push(pairs.len());
    }
    assert_eq!(&counts[..10], &[1, 1, 1, 1, 2, 1, 1, 1, 1, 2]);
    assert_eq!(counts.iter().sum::<usize>(), 30, "30 pairs a second");
    assert_eq!(stats(&el).get::<f64>("pairs-per-frame").unwrap(), 1.2);
}

#[test]
fn flush_erases_the_screen_and_starts_over() {
    let el = element();
    let (mut text, mut video) = harnesses(&el);
    text.push(cue("Antes", 200 * MS, 5 * SECOND)).unwrap();
    assert!(text.push_event(gst::event::Eos::new()));
    video.set_src_caps(avc_caps());
    for n in 0..40 {
        video
            .push(frame_buffer(n, pts(n), pts(n), NalFraming::Length(4)))
            .unwrap();
        video.pull().unwrap();
    }
    assert_eq!(stats(&el).get::<u64>("shown").unwrap(), 1);
    assert!(video.push_event(gst::event::FlushStart::new()));
    assert!(video.push_event(gst::event::FlushStop::new(true)));
    assert!(
        video.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    let mut pairs = Vec::new();
    for n in 0..4 {
        video
            .push(frame_buffer(n, pts(n), pts(n), NalFraming::Length(4)))
            .unwrap();
        let out = video.pull().unwrap();
        pairs.extend(split_au(&out.map_readable().unwrap(), NalFraming::Length(4)).0);
    }
    // Erase displayed and non-displayed memory, each sent twice.
    assert_eq!(
        pairs,
        vec![[0x14, 0x2c], [0x14, 0x2c], [0x14, 0x2e], [0x14, 0x2e]]
    );
}

#[test]
fn released_text_pad_leaves_the_video_untouched() {
    let el = element();
    let pad = el.request_pad_simple("text_sink").unwrap();
    assert_eq!(pad.name(), "text_sink");
    let mut video = Harness::with_element(&el, Some("sink"), Some("src"));
    video.set_src_caps(avc_caps());
    // With the (unlinked) text pad every access unit gets its SEI.
    video
        .push(frame_buffer(0, 0, 0, NalFraming::Length(4)))
        .unwrap();
    let out = video.pull().unwrap();
    split_au(&out.map_readable().unwrap(), NalFraming::Length(4));
    el.release_request_pad(&pad);
    assert!(el.static_pad("text_sink").is_none());
    let b = frame_buffer(1, pts(1), pts(1), NalFraming::Length(4));
    let bytes = b.map_readable().unwrap().to_vec();
    video.push(b).unwrap();
    assert_eq!(
        video.pull().unwrap().map_readable().unwrap().as_slice(),
        bytes.as_slice()
    );
    assert_eq!(stats(&el).get::<u64>("passthrough").unwrap(), 1);
}

#[test]
fn frames_whose_dts_never_catches_up_are_not_held_forever() {
    let el = element();
    let (mut text, mut video) = harnesses(&el);
    assert!(text.push_event(gst::event::Eos::new()));
    video.set_src_caps(avc_caps());
    // DTS stuck at 0: by DTS no frame is ever final.
    for n in 0..100 {
        video
            .push(frame_buffer(n, pts(n + 1), 0, NalFraming::Length(4)))
            .unwrap();
    }
    let mut out = 0;
    while video.try_pull().is_some() {
        out += 1;
    }
    assert!(out >= 30, "{out} frames out");
    assert!(stats(&el).get::<u64>("held").unwrap() <= 65);
}
