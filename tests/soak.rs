//! Soak and lifecycle: long runs with random faults keep every sample and flat memory; state
//! cycles with hung requests leak neither threads nor sockets.
//!
//! `SOAK_STS_URL` points the soak at an external server (see below).
//! `SOAK_AUDIO_SECONDS` sets the audio length of the soak (default and CI: 300 s; the full hour:
//! `SOAK_AUDIO_SECONDS=3600 cargo test --release --test soak -- --nocapture`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use dubbing_sts_server::{Faults, Mode, ServerConfig, StsServer};
use gst::prelude::*;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Each test measures the whole process (its fds, threads and RSS): they run one at a time,
/// or one's sockets, threads and panics (a backtrace loads the debug info: +175 MB RSS, seen
/// in CI) count in another's figures.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until the process is quiet (its thread and fd counts unchanged for 250 ms: what the
/// warm-up opened and closes asynchronously has closed), at most 5 s: the baseline.
fn quiet() -> (usize, usize, u64) {
    let until = Instant::now() + Duration::from_secs(5);
    let mut last = (open_fds(), threads());
    let mut same = 0;
    while same < 5 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        let now = (open_fds(), threads());
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    (last.0, last.1, rss_kib())
}

/// Waits until `ok` holds (what closes asynchronously has closed), at most `limit`; a leak
/// shows as `ok` still false, which the caller's assertion then reports with the figures.
fn settle(limit: Duration, ok: impl Fn() -> bool) {
    let until = Instant::now() + limit;
    while !ok() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn soak_with_random_faults_keeps_every_sample() {
    init();
    let _alone = alone();
    let audio_s: u64 = std::env::var("SOAK_AUDIO_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let frag_frames = 1600u64; // 100 ms at 16 kHz
    let fragments = audio_s * 10;
    let srv = StsServer::start(ServerConfig {
        mode: Mode::Echo,
        faults: Faults {
            status: Some(500),
            error_rate: 0.1,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    // The in-process server records every request (its memory grows with the run); to
    // measure the element alone, point SOAK_STS_URL at a separate
    // `sts-server --mode echo --status 500 --error-rate 0.1`.
    let url = std::env::var("SOAK_STS_URL").unwrap_or_else(|_| srv.url());

    let pipeline = gst::Pipeline::new();
    let src = gst_app::AppSrc::builder()
        .caps(&caps(16000, 1))
        .format(gst::Format::Time)
        .max_buffers(8)
        .block(true)
        .build();
    let bridge = gst::ElementFactory::make("stsbridge")
        .property("url", &url)
        .property("max-in-flight", 8u32)
        .property("post-messages", false)
        .property("breaker-threshold", 0u32)
        .build()
        .unwrap();
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .build()
        .unwrap();
    pipeline
        .add_many([src.upcast_ref(), &bridge, &sink])
        .unwrap();
    gst::Element::link_many([src.upcast_ref(), &bridge, &sink]).unwrap();

    // Count samples and check the timeline at the output, without keeping the audio.
    let samples = Arc::new(AtomicU64::new(0));
    let broken = Arc::new(AtomicU64::new(0));
    {
        let (samples, broken) = (samples.clone(), broken.clone());
        let expected_pts = Arc::new(AtomicU64::new(0));
        bridge
            .static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                    let n = b.size() as u64 / 2;
                    let before = samples.fetch_add(n, Ordering::SeqCst);
                    let pts = b.pts().unwrap().nseconds();
                    if pts != frames_to_ns(before, 16000)
                        || pts + b.duration().unwrap().nseconds() != frames_to_ns(before + n, 16000)
                    {
                        broken.fetch_add(1, Ordering::SeqCst);
                    }
                    expected_pts.store(pts, Ordering::SeqCst);
                }
                gst::PadProbeReturn::Ok
            });
    }
    let fds_start = open_fds();
    pipeline.set_state(gst::State::Playing).unwrap();

    let t0 = Instant::now();
    let mut rss = Vec::new();
    let data = to_bytes(&test_audio(0, frag_frames as usize, 1));
    for i in 0..fragments {
        let mut b = gst::Buffer::from_slice(data.clone());
        {
            let b = b.get_mut().unwrap();
            let start = i * frag_frames;
            b.set_pts(gst::ClockTime::from_nseconds(frames_to_ns(start, 16000)));
            b.set_duration(gst::ClockTime::from_nseconds(
                frames_to_ns(start + frag_frames, 16000) - frames_to_ns(start, 16000),
            ));
        }
        src.push_buffer(b).unwrap();
        if i % (fragments / 10).max(1) == 0 {
            rss.push(rss_kib());
        }
    }
    src.end_of_stream().unwrap();
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(600),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    let stats = bridge.property::<gst::Structure>("stats");
    let took = t0.elapsed();
    rss.push(rss_kib());
    pipeline.set_state(gst::State::Null).unwrap();
    // The in-process server's side of the connections counts in this process too.
    srv.stop();
    let t = Instant::now();
    let mut fds_end = open_fds();
    while fds_end > fds_start && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
        fds_end = open_fds();
    }

    let dubbed = stats.get::<u64>("dubbed").unwrap();
    let fallbacks = stats.get::<u64>("fallbacks").unwrap();
    eprintln!(
        "soak: {audio_s} s of audio, {fragments} fragments in {:.1} s: dubbed {dubbed}, fallbacks {fallbacks}, \
         retries {}, RSS KiB {:?}, fds {fds_start} -> {fds_end}",
        took.as_secs_f64(),
        stats.get::<u64>("retries").unwrap(),
        rss
    );
    assert_eq!(
        samples.load(Ordering::SeqCst),
        fragments * frag_frames,
        "every sample out"
    );
    assert_eq!(broken.load(Ordering::SeqCst), 0, "contiguous timestamps");
    assert_eq!(dubbed + fallbacks, fragments);
    assert!(
        stats.get::<u64>("retries").unwrap() > 0,
        "the faults were hit"
    );
    // Flat memory: the second half grows by less than 16 MiB.
    let mid = rss[rss.len() / 2];
    let end = *rss.last().unwrap();
    assert!(
        end <= mid + 16 * 1024,
        "RSS grew from {mid} KiB to {end} KiB"
    );
    assert!(
        fds_end <= fds_start + 4,
        "sockets leaked: {fds_start} -> {fds_end}"
    );
}

#[test]
fn state_cycles_with_hung_requests_leak_nothing() {
    init();
    let _alone = alone();
    let srv = StsServer::start(ServerConfig {
        faults: Faults {
            hang: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let cycle = |i: u64| {
        let mut b = Bridge::new(false, 16000, 1, 0, |b| {
            b.set_property("url", srv.url());
            b.set_property("timeout", 60 * SECOND);
        });
        b.push(&test_audio(i, 800, 1));
        b.push(&test_audio(i + 1, 800, 1));
        let t = Instant::now();
        while srv.request_count() < (2 * i + 2) as usize && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let t = Instant::now();
        b.pipeline.set_state(gst::State::Null).unwrap();
        t.elapsed()
    };
    // Warm up (runtime threads, connection pools), then measure.
    cycle(0);
    cycle(1);
    let (fds0, threads0, rss0) = quiet();
    let mut worst = Duration::ZERO;
    for i in 2..102 {
        worst = worst.max(cycle(i));
    }
    settle(Duration::from_secs(10), || {
        open_fds() <= fds0 + 4 && threads() <= threads0 + 2
    });
    let (fds1, threads1, rss1) = (open_fds(), threads(), rss_kib());
    eprintln!(
        "100 cycles: worst PLAYING->NULL {worst:?}, fds {fds0}->{fds1}, threads {threads0}->{threads1}, RSS {rss0}->{rss1} KiB"
    );
    assert!(worst < Duration::from_millis(500), "NULL took {worst:?}");
    assert!(fds1 <= fds0 + 4, "fds {fds0} -> {fds1}");
    assert!(threads1 <= threads0 + 2, "threads {threads0} -> {threads1}");
    assert!(rss1 <= rss0 + 32 * 1024, "RSS {rss0} -> {rss1} KiB");
}

/// Socket.IO sessions opened and closed 30 times (half of them against a server that drops the
/// connection mid-stream, so that each reconnects once): no socket, thread or memory left.
#[test]
fn socketio_sessions_leak_nothing() {
    init();
    let _alone = alone();
    let srv = StsServer::start(ServerConfig::default()).unwrap();
    let sio_frags = |srv: &StsServer| srv.sio_stats().fragments;
    let cycle = |i: u64| {
        if i % 2 == 1 {
            // The server drops the connection at this cycle's first fragment.
            srv.fault_for_sequence(
                sio_frags(&srv),
                Faults {
                    reset: true,
                    ..Default::default()
                },
            );
        }
        let before = sio_frags(&srv);
        let mut b = Bridge::new(false, 16000, 1, 0, |b| {
            b.set_property_from_str("protocol", "socketio");
            b.set_property("url", srv.sio_url());
        });
        b.push(&test_audio(i, 800, 1));
        b.push(&test_audio(i + 1, 800, 1));
        let out = b.finish(Duration::from_secs(30));
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.outcomes(), vec!["dubbed"; 2], "cycle {i}");
        assert!(sio_frags(&srv) >= before + 2);
    };
    for i in 0..4 {
        cycle(i);
    }
    // Sessions close asynchronously (stream:end, then the disconnect): let them.
    let (fds0, threads0, rss0) = quiet();
    for i in 4..34 {
        cycle(i);
    }
    settle(Duration::from_secs(10), || {
        open_fds() <= fds0 + 4 && threads() <= threads0 + 2
    });
    let (fds1, threads1, rss1) = (open_fds(), threads(), rss_kib());
    eprintln!(
        "30 Socket.IO sessions: fds {fds0}->{fds1}, threads {threads0}->{threads1}, RSS {rss0}->{rss1} KiB, server {:?}",
        srv.sio_stats().connections
    );
    assert!(fds1 <= fds0 + 4, "fds {fds0} -> {fds1}");
    assert!(threads1 <= threads0 + 2, "threads {threads0} -> {threads1}");
    assert!(rss1 <= rss0 + 32 * 1024, "RSS {rss0} -> {rss1} KiB");
}
