//! Live integration tests: the stream worker (the `dubbing-worker` binary) between real
//! servers on 127.0.0.1 — an RTSP server playing the fixture in real time, the reference STS
//! server, nginx-rtmp — and an ffmpeg subscriber capturing what is published.
//!
//! Outside CI (`CI` unset) a missing tool or server skips the tests with a message; in CI it
//! fails them. Every server and process is stopped by a `Drop` guard, also when an assertion
//! fails. Files of the last run (worker/nginx/ffmpeg logs, the capture) stay in
//! `<target>/tmp/live/<test name>/`.

mod common;
#[path = "common/live.rs"]
mod live;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::worker_binary;
use dubbing_sts_server::{Mode, ServerConfig, StsServer};
use live::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/speech-60s.mp4");
const FIXTURE_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/speech-60s.json"
);
/// The worker's default A/V offset (WORKER_AV_OFFSET_NS).
const OFFSET_MS: f64 = 6000.0;
/// One AAC frame at 48 kHz.
const AAC_FRAME_MS: f64 = 1024.0 / 48.0;
const FIXTURE_FRAMES: u64 = 1500;
const APP: &str = "live/test";
const STREAM: &str = "out";

/// The fixture as the sync meter sees it (measured once per test binary).
fn input_report() -> &'static dubbing_syncmeter::SyncReport {
    static R: OnceLock<dubbing_syncmeter::SyncReport> = OnceLock::new();
    R.get_or_init(|| dubbing_syncmeter::measure(Path::new(FIXTURE)).expect("measure the fixture"))
}

fn fixture_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(FIXTURE_JSON).unwrap()).unwrap()
}

fn markers_s() -> Vec<f64> {
    dubbing_syncmeter::expected_markers(Path::new(FIXTURE_JSON)).unwrap()
}

/// Everything a run leaves to check, servers already stopped.
struct Run {
    dir: PathBuf,
    capture: PathBuf,
    worker_log: String,
    worker_exit: std::process::ExitStatus,
    ffmpeg_exit: Option<std::process::ExitStatus>,
    ffmpeg_log: String,
    /// Worker start to exit.
    worker_runtime: Duration,
    /// (seconds since the worker started, scrape), taken while the worker ran.
    scrapes: Vec<(f64, Metrics)>,
    /// File position (s) the RTSP server had reached when the STS server was stopped.
    sts_stopped_at_s: Option<f64>,
    /// Index of the scrape list from which the STS was down.
    first_scrape_after_stop: Option<usize>,
    /// When nginx first counted published bytes, seconds since the worker started (polled
    /// once a second).
    publishing_from_s: Option<f64>,
    /// (file time of the marker, wall delay in ms) for each beep heard by the subscriber.
    wall_delays: Vec<(f64, f64)>,
    rtsp_sessions: usize,
}

/// Runs the fixture through the worker: STS in `mode`, stopped when the RTSP server reaches
/// file position `stop_sts_at_s` (if set). Returns `None` when the test is skipped.
fn run_live(name: &str, mode: Mode, stop_sts_at_s: Option<f64>) -> Option<Run> {
    run_live_over(name, mode, stop_sts_at_s, "http")
}

/// [`run_live`] with `WORKER_STS_PROTOCOL=protocol` (`http` or `socketio`).
fn run_live_over(
    name: &str,
    mode: Mode,
    stop_sts_at_s: Option<f64>,
    protocol: &str,
) -> Option<Run> {
    let worker_bin = worker_binary();
    if !require(check_environment())
        || !require(if worker_bin.is_file() {
            Ok(())
        } else {
            Err(format!("{} not found", worker_bin.display()))
        })
    {
        return None;
    }
    let dir = test_dir(name);
    let t0 = Instant::now();

    let sts = StsServer::start(ServerConfig {
        mode,
        ..Default::default()
    })
    .expect("start the STS server");
    let rtsp = RtspServer::start(Path::new(FIXTURE), "/live/test/in").expect("start RTSP server");
    let (nginx, capture_path, mut capture) = nginx_and_capture(&dir);

    let mut worker = Worker::start(
        &worker_bin,
        &["--stream-id", "test", "--metrics-port", "0"],
        &[
            ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
            ("MEDIAMTX_RTSP_PORT", rtsp.port().to_string()),
            ("MEDIAMTX_RTMP_PORT", nginx.rtmp_port().to_string()),
            (
                "WORKER_STS_SERVICE_URL",
                if protocol == "socketio" {
                    sts.sio_url()
                } else {
                    sts.url()
                },
            ),
            ("WORKER_STS_PROTOCOL", protocol.to_string()),
            ("WORKER_METRICS_PORT", "0".to_string()),
            // The tone test tells dubbed from original windows by a 440 Hz share; the
            // reference tone restarts its phase with every answer, which only 1 s fragments
            // keep continuous (440 whole cycles).
            (
                "WORKER_BOUNDARY",
                if mode == Mode::Tone {
                    "fixed"
                } else {
                    "silence"
                }
                .to_string(),
            ),
        ],
        &dir.join("worker.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "[{name}] servers up in {:.1} s: rtsp {} rtmp {} sts {} metrics {}; files in {}",
        t0.elapsed().as_secs_f64(),
        rtsp.url(),
        nginx.url(APP),
        sts.url(),
        worker.metrics_port,
        dir.display()
    );

    // The stream lasts 60 s, the worker publishes its last 6 s after the input ended.
    let limit = Duration::from_secs(60 + 6 + 30);
    let mut scrapes = Vec::new();
    let mut scrape_errors = Vec::new();
    let mut published: Vec<(f64, u64)> = Vec::new();
    let mut last_scrape = Instant::now() - Duration::from_secs(1);
    let mut sts_stopped_at_s = None;
    let mut first_scrape_after_stop = None;
    let worker_exit = loop {
        if let Some(status) = worker.proc.try_wait() {
            break status;
        }
        if worker.started.elapsed() > limit {
            panic!(
                "the worker did not finish within {limit:?} of its start (RTSP at {:?} s)\n{}",
                rtsp.position_s(),
                worker.proc.tail(40)
            );
        }
        if let Some(at) = stop_sts_at_s
            && sts_stopped_at_s.is_none()
            && rtsp.position_s().is_some_and(|p| p >= at)
        {
            sts.stop();
            let pos = rtsp.position_s().unwrap();
            eprintln!("[{name}] STS server stopped at file position {pos:.2} s");
            sts_stopped_at_s = Some(pos);
            first_scrape_after_stop = Some(scrapes.len());
        }
        if last_scrape.elapsed() >= Duration::from_secs(1) {
            last_scrape = Instant::now();
            if let Some(st) = nginx.stream(APP, STREAM) {
                published.push((worker.started.elapsed().as_secs_f64(), st.bytes_in));
            }
            match scrape(worker.metrics_port) {
                Ok(m) => scrapes.push((worker.started.elapsed().as_secs_f64(), m)),
                // The worker may be exiting.
                Err(e) => scrape_errors.push(e),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let worker_runtime = worker.started.elapsed();
    let worker_log = worker.proc.tail(60);
    eprintln!(
        "[{name}] worker exited {worker_exit} after {:.1} s; {} scrapes ({} failed)",
        worker_runtime.as_secs_f64(),
        scrapes.len(),
        scrape_errors.len()
    );

    // Let nginx pass the last bytes on, then end the subscriber.
    wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        (!nginx.stream(APP, STREAM).is_some_and(|s| s.publishing)).then_some(())
    });
    let mut last = capture.audio_received_s();
    wait_for(Duration::from_secs(5), Duration::from_millis(500), || {
        let now = capture.audio_received_s();
        let stable = now == last;
        last = now;
        stable.then_some(())
    });
    let ffmpeg_exit = capture.finish(&nginx, APP, STREAM, Duration::from_secs(10));
    let ffmpeg_log = capture.proc().tail(20);

    // Wall delay per marker: when its beep left the RTSP server vs. when the subscriber
    // received it.
    let session = rtsp.session_count().saturating_sub(1);
    let input = input_report();
    let beeps = capture.beep_arrivals();
    let onsets: Vec<f64> = beeps.iter().map(|b| b.0).collect();
    let marker_onsets: Vec<f64> = input.markers.iter().map(|m| m.audio_s).collect();
    let wall_delays = match_beeps(&onsets, &marker_onsets)
        .into_iter()
        .filter_map(|(i, j)| {
            let left = rtsp.departure_of(session, marker_onsets[j])?;
            let arrived = beeps[i].1;
            Some((
                marker_onsets[j],
                arrived.saturating_duration_since(left).as_secs_f64() * 1000.0,
            ))
        })
        .collect();

    let run = Run {
        dir,
        capture: capture_path,
        worker_log,
        worker_exit,
        ffmpeg_exit,
        ffmpeg_log,
        worker_runtime,
        scrapes,
        sts_stopped_at_s,
        first_scrape_after_stop,
        wall_delays,
        publishing_from_s: published.iter().find(|(_, b)| *b > 0).map(|(t, _)| *t),
        rtsp_sessions: rtsp.session_count(),
    };
    drop(capture);
    drop(worker);
    drop(nginx);
    drop(rtsp);
    drop(sts);
    eprintln!(
        "[{name}] live part done in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Some(run)
}

/// Pairs beep onsets heard by the subscriber (seconds of received audio) with the fixture's
/// beep onsets (file time): the received audio is the file shifted by an unknown constant,
/// so the shift that pairs the most beeps (within 0.2 s) wins. Returns (heard, fixture)
/// index pairs.
fn match_beeps(heard: &[f64], fixture: &[f64]) -> Vec<(usize, usize)> {
    let pairs_for = |shift: f64| -> Vec<(usize, usize)> {
        heard
            .iter()
            .enumerate()
            .filter_map(|(i, &h)| {
                fixture
                    .iter()
                    .position(|&f| (h - shift - f).abs() < 0.2)
                    .map(|j| (i, j))
            })
            .collect()
    };
    // The markers are evenly spaced: shifts by a multiple of the spacing pair as many beeps
    // when some are missing, so the smallest such shift wins (the subscriber got the stream
    // from its start).
    let mut best: (Vec<(usize, usize)>, f64) = (Vec::new(), f64::MAX);
    for &h in heard {
        for &f in fixture {
            let shift = h - f;
            let p = pairs_for(shift);
            if p.len() > best.0.len() || (p.len() == best.0.len() && shift.abs() < best.1.abs()) {
                best = (p, shift);
            }
        }
    }
    best.0
}

/// Share of a window's energy at `freq` (Goertzel), 0..1.
fn tone_share(x: &[f32], rate: f64, freq: f64) -> f64 {
    let w = std::f64::consts::TAU * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2, mut energy) = (0.0f64, 0.0f64, 0.0f64);
    for &v in x {
        let v = f64::from(v);
        energy += v * v;
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    (2.0 * power / (x.len() as f64 * energy.max(1e-12))).min(1.0)
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Checks common to both runs on the captured stream; returns the sync report and the
/// decoded audio.
fn check_published(run: &Run) -> (dubbing_syncmeter::SyncReport, dubbing_syncmeter::AudioTrack) {
    assert!(
        run.worker_exit.success(),
        "worker exit {}\n{}",
        run.worker_exit,
        run.worker_log
    );
    assert!(
        run.ffmpeg_exit.is_some_and(|s| s.success()),
        "ffmpeg subscriber: {:?}\n{}",
        run.ffmpeg_exit,
        run.ffmpeg_log
    );
    assert_eq!(
        run.rtsp_sessions, 1,
        "the worker connected {} times to the RTSP server",
        run.rtsp_sessions
    );
    let streams = probe_streams(&run.capture).unwrap();
    eprintln!("published streams: {streams:?}");
    let video = streams
        .iter()
        .find(|s| s.codec_type == "video")
        .expect("a video stream");
    let audio = streams
        .iter()
        .find(|s| s.codec_type == "audio")
        .expect("an audio stream");
    assert_eq!(video.codec_name, "h264");
    assert_eq!(audio.codec_name, "aac");
    // H.264 passed through: every frame of the input, none added.
    assert!(
        video.packets.abs_diff(FIXTURE_FRAMES) <= 2,
        "{} video frames published, {FIXTURE_FRAMES} in the input",
        video.packets
    );

    // Every frame published with its own time: video every 40 ms, audio every AAC frame
    // (21.3 ms; FLV times are whole milliseconds), no gap, no clamped or repeated timestamp.
    let show = |bad: &[(usize, f64, f64)]| {
        bad.iter()
            .take(8)
            .map(|(i, t, d)| format!("#{i} at {t:.3} s (+{:.0} ms)", d * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let v = packet_times(&run.capture, "v:0").unwrap();
    let bad = irregular_spacing(&v, 0.039, 0.041);
    assert!(
        bad.is_empty(),
        "{} of {} video frames not 40 ms after the previous one: {}",
        bad.len(),
        v.len(),
        show(&bad)
    );
    let a = packet_times(&run.capture, "a:0").unwrap();
    let bad = irregular_spacing(&a, 0.020, 0.023);
    assert!(
        bad.is_empty(),
        "{} of {} audio frames not one AAC frame (21.3 ms) after the previous one: {} \
         (published audio from {:.3} s to {:.3} s)",
        bad.len(),
        a.len(),
        show(&bad),
        a.first().unwrap_or(&f64::NAN),
        a.last().unwrap_or(&f64::NAN)
    );

    let input = input_report();
    let opts = dubbing_syncmeter::Options {
        expected_markers_s: Some(markers_s()),
        ..Default::default()
    };
    let decoded = dubbing_syncmeter::decode(&run.capture, 0, Duration::from_secs(30))
        .expect("decode the capture");
    let r = dubbing_syncmeter::analyze(&run.capture, &decoded, &opts).unwrap();
    eprintln!(
        "published: video {:.3} s ({} frames, from {:.3} s), audio {:.3} s (from {:.3} s); \
         input: video {:.3} s, audio {:.3} s",
        r.video_duration_s,
        r.video_frames,
        r.video_start_s,
        r.audio_duration_s,
        r.audio_start_s,
        input.video_duration_s,
        input.audio_duration_s
    );
    for m in &r.markers {
        eprintln!(
            "marker at {:7.3} s (file {:6.3} s): A/V delta {:+6.2} ms",
            m.video_s,
            m.video_s - r.video_start_s,
            m.delta_ms
        );
    }
    assert!(
        (r.video_duration_s - input.video_duration_s).abs() <= 0.1,
        "video: {:.3} s published, {:.3} s in the input",
        r.video_duration_s,
        input.video_duration_s
    );
    assert!(
        (r.audio_duration_s - input.audio_duration_s).abs() <= 0.1,
        "audio: {:.3} s published, {:.3} s in the input",
        r.audio_duration_s,
        input.audio_duration_s
    );
    (r, decoded.audio.expect("decoded audio"))
}

/// Published delay (wall clock) per marker, as measured and as the worker reports it.
fn check_delay(run: &Run) {
    for (marker, ms) in &run.wall_delays {
        eprintln!(
            "marker {marker:6.3} s: left the RTSP server → reached the subscriber in {ms:.0} ms"
        );
    }
    let series: Vec<(f64, f64)> = run
        .scrapes
        .iter()
        .filter_map(|(t, m)| Some((*t, m.value("worker_published_delay_ms")?)))
        .collect();
    eprintln!(
        "first bytes published to nginx {:.1} s after the worker started; \
         worker_published_delay_ms over time (s since the worker started: ms): {}",
        run.publishing_from_s.unwrap_or(f64::NAN),
        series
            .iter()
            .map(|(t, v)| format!("{t:.0}:{v:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Only what the gauge says once something is published: before, there is no published
    // delay to report.
    let from = run
        .publishing_from_s
        .expect("nothing was published to nginx");
    let reported: Vec<f64> = series
        .iter()
        .filter(|(t, _)| *t >= from)
        .map(|(_, v)| *v)
        .collect();
    assert!(
        reported.len() >= 10,
        "worker_published_delay_ms: {} samples while publishing",
        reported.len()
    );
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lo, hi) = reported
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    eprintln!(
        "worker_published_delay_ms while publishing: {} samples in [{lo:.0}, {hi:.0}], median {:.0}",
        reported.len(),
        median(&reported)
    );
    // The worker's own figure (its capture at rtspsrc's output to rtmpsink): the offset plus
    // processing.
    for v in &reported {
        assert!(
            (OFFSET_MS..=OFFSET_MS + 1000.0).contains(v),
            "worker_published_delay_ms {v} while publishing is not ≈ {OFFSET_MS}"
        );
    }
    // End to end, measured outside the worker: the offset plus the RTSP jitter buffer
    // (rtspsrc latency=200), transport and the subscriber's decoding.
    assert!(
        !run.wall_delays.is_empty(),
        "no beep heard by the subscriber"
    );
    for (marker, ms) in &run.wall_delays {
        assert!(
            (OFFSET_MS..=OFFSET_MS + 1000.0).contains(ms),
            "marker {marker} s: published {ms:.0} ms after it left the RTSP server"
        );
    }
    // The two agree: the gauge misses only the RTSP transport and the subscriber's side.
    let wall: Vec<f64> = run.wall_delays.iter().map(|(_, ms)| *ms).collect();
    let (w, g) = (median(&wall), median(&reported));
    assert!(
        (w - g).abs() <= 300.0,
        "published delay: {w:.0} ms measured end to end, {g:.0} ms reported by the worker"
    );
}

#[test]
fn live_rtsp_to_rtmp_dubbed() {
    let t0 = Instant::now();
    let Some(run) = run_live("live_rtsp_to_rtmp_dubbed", Mode::Echo, None) else {
        return;
    };
    let (r, _audio) = check_published(&run);
    let expected = r.expected.as_ref().unwrap();
    assert_eq!(
        expected.found, expected.expected,
        "markers missing at {:?} s: {r:?}",
        expected.missing_s
    );
    for m in &r.markers {
        assert!(
            m.delta_ms.abs() <= AAC_FRAME_MS,
            "marker at {:.3} s: A/V delta {:+.2} ms",
            m.video_s,
            m.delta_ms
        );
    }
    check_delay(&run);

    // /metrics mid-run: parses and counts the dubbed fragments.
    let mid_run: Vec<&(f64, Metrics)> = run
        .scrapes
        .iter()
        .filter(|(t, _)| (10.0..run.worker_runtime.as_secs_f64() - 10.0).contains(t))
        .collect();
    assert!(
        !mid_run.is_empty(),
        "no /metrics scrape while the worker ran"
    );
    let dubbed_mid = mid_run
        .iter()
        .filter_map(|(_, m)| m.sum("worker_audio_fragments_total", &[("status", "dubbed")]))
        .fold(0.0, f64::max);
    assert!(dubbed_mid > 0.0, "no dubbed fragment counted mid-run");
    let last = &run.scrapes.last().unwrap().1;
    for name in [
        "worker_gst_bus_errors_total",
        "worker_gst_bus_warnings_total",
        "worker_inflight_fragments",
        "worker_av_sync_delta_ms",
        "worker_sts_breaker_state",
        "worker_published_delay_ms",
    ] {
        assert!(last.value(name).is_some(), "{name} missing from /metrics");
    }
    for name in ["worker_sts_rtt_ms", "worker_chunk_end_to_end_latency_ms"] {
        assert!(last.has_histogram(name), "histogram {name} missing");
    }
    let dubbed = last
        .sum("worker_audio_fragments_total", &[("status", "dubbed")])
        .unwrap_or(0.0);
    let fallback = last.sum("worker_fallback_total", &[]).unwrap_or(0.0);
    eprintln!(
        "fragments: {dubbed} dubbed (mid-run max {dubbed_mid}), {fallback} fallback; \
         bus errors {:?}, warnings {:?}; wall time {:.1} s",
        last.value("worker_gst_bus_errors_total"),
        last.value("worker_gst_bus_warnings_total"),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(last.value("worker_gst_bus_errors_total"), Some(0.0));
    assert_eq!(fallback, 0.0, "fallbacks with a healthy STS server");
    assert_eq!(last.value("worker_sts_breaker_state"), Some(0.0));
    eprintln!("files in {}", run.dir.display());
}

/// The same stream dubbed over Socket.IO (`WORKER_STS_PROTOCOL=socketio`, the reference
/// server's Socket.IO side): every marker published, in sync; no fallback; the session up.
#[test]
fn live_rtsp_to_rtmp_dubbed_over_socketio() {
    let name = "live_rtsp_to_rtmp_dubbed_over_socketio";
    let Some(run) = run_live_over(name, Mode::Echo, None, "socketio") else {
        return;
    };
    let (r, _audio) = check_published(&run);
    let expected = r.expected.as_ref().unwrap();
    assert_eq!(
        expected.found, expected.expected,
        "markers missing at {:?} s: {r:?}",
        expected.missing_s
    );
    for m in &r.markers {
        eprintln!(
            "[{name}] marker at {:7.3} s: A/V delta {:+6.2} ms",
            m.video_s, m.delta_ms
        );
        assert!(
            m.delta_ms.abs() <= AAC_FRAME_MS,
            "marker at {:.3} s: A/V delta {:+.2} ms",
            m.video_s,
            m.delta_ms
        );
    }
    check_delay(&run);
    let mid_run: Vec<&(f64, Metrics)> = run
        .scrapes
        .iter()
        .filter(|(t, _)| (10.0..run.worker_runtime.as_secs_f64() - 10.0).contains(t))
        .collect();
    assert!(
        !mid_run.is_empty(),
        "no /metrics scrape while the worker ran"
    );
    assert!(
        mid_run
            .iter()
            .any(|(_, m)| m.value("worker_sts_session_up") == Some(1.0)),
        "the Socket.IO session never showed up in /metrics"
    );
    let last = &run.scrapes.last().unwrap().1;
    assert_eq!(
        last.sum("worker_sts_protocol", &[("protocol", "socketio")]),
        Some(1.0)
    );
    let dubbed = last
        .sum("worker_audio_fragments_total", &[("status", "dubbed")])
        .unwrap_or(0.0);
    let fallback = last.sum("worker_fallback_total", &[]).unwrap_or(0.0);
    eprintln!("[{name}] fragments: {dubbed} dubbed, {fallback} fallback");
    assert!(dubbed > 0.0);
    assert_eq!(last.value("worker_gst_bus_errors_total"), Some(0.0));
    assert_eq!(fallback, 0.0, "fallbacks with a healthy STS server");
}

#[test]
fn live_sts_killed_mid_run_keeps_publishing() {
    let t0 = Instant::now();
    // Tone mode: the dubbed audio (a 440 Hz tone over the speech) is told apart from the
    // original speech, which must come back once the STS server is gone.
    let Some(run) = run_live(
        "live_sts_killed_mid_run_keeps_publishing",
        Mode::Tone,
        Some(20.0),
    ) else {
        return;
    };
    let stopped = run.sts_stopped_at_s.expect("the STS server was stopped");
    let (r, audio) = check_published(&run);

    // Markers after the stop (original audio, beeps included) are found and in sync.
    let after: Vec<f64> = markers_s()
        .into_iter()
        .filter(|t| *t > stopped + 1.0)
        .collect();
    assert!(!after.is_empty());
    for t in &after {
        let m = r
            .markers
            .iter()
            .find(|m| (m.video_s - r.video_start_s - t).abs() < 0.5)
            .unwrap_or_else(|| panic!("marker {t} s (after the STS stop) not found: {r:?}"));
        assert!(
            m.delta_ms.abs() <= AAC_FRAME_MS,
            "marker {t} s: A/V delta {:+.2} ms",
            m.delta_ms
        );
    }

    // Speech windows: dubbed (440 Hz) before the stop, original speech after; never silent.
    let rate = f64::from(audio.rate);
    let windows = fixture_json()["speech_windows_s"]
        .as_array()
        .unwrap()
        .clone();
    for w in &windows {
        let (a, b) = (w[0].as_f64().unwrap(), w[1].as_f64().unwrap());
        let idx = |t: f64| ((t + r.video_start_s - audio.start_s) * rate).max(0.0) as usize;
        let (i, j) = (idx(a + 0.1), idx(b - 0.1).min(audio.samples.len()));
        assert!(i < j, "window {a}-{b} s outside the published audio");
        let x = &audio.samples[i..j];
        let (share, level) = (tone_share(x, rate, 440.0), rms(x));
        eprintln!("window {a:6.3}-{b:6.3} s: 440 Hz share {share:.2}, rms {level:.3}");
        assert!(level > 0.005, "window {a}-{b} s is silent (rms {level})");
        if b < stopped - 1.0 {
            assert!(
                share > 0.9,
                "window {a}-{b} s (before the stop) not dubbed: {share}"
            );
        } else if a > stopped + 2.0 {
            assert!(
                share < 0.2,
                "window {a}-{b} s (after the stop) not original: {share}"
            );
        }
    }
    check_delay(&run);

    // Metrics: the breaker opened after the stop, fallbacks counted.
    let after_stop = &run.scrapes[run.first_scrape_after_stop.unwrap()..];
    let breaker: Vec<f64> = after_stop
        .iter()
        .filter_map(|(_, m)| m.value("worker_sts_breaker_state"))
        .collect();
    eprintln!("breaker state after the stop, one scrape a second: {breaker:?}");
    assert!(
        breaker.contains(&2.0),
        "worker_sts_breaker_state never 2 after the STS stop: {breaker:?}"
    );
    let last = &run.scrapes.last().unwrap().1;
    let fallback = last.sum("worker_fallback_total", &[]).unwrap_or(0.0);
    let fallback_fragments = last
        .sum("worker_audio_fragments_total", &[("status", "fallback")])
        .unwrap_or(0.0);
    let dubbed = last
        .sum("worker_audio_fragments_total", &[("status", "dubbed")])
        .unwrap_or(0.0);
    let reasons: Vec<String> = last
        .scrape
        .samples
        .iter()
        .filter(|s| s.metric == "worker_fallback_total")
        .map(|s| format!("{}={:?}", s.labels.get("reason").unwrap_or("?"), s.value))
        .collect();
    eprintln!(
        "fragments: {dubbed} dubbed, {fallback_fragments} fallback; fallback reasons {reasons:?}; \
         wall time {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(dubbed > 0.0, "nothing dubbed before the stop");
    assert!(fallback > 0.0, "no fallback counted after the STS stop");
    assert!(fallback_fragments > 0.0);
    eprintln!("files in {}", run.dir.display());
}

/// SIGTERM mid-stream: the worker sends EOS, publishes what it holds and exits 0, in bounded
/// time; with the RTSP server gone first it still exits (rtspsrc teardown is guarded).
#[test]
fn live_sigterm_finishes_cleanly() {
    let worker_bin = worker_binary();
    if !require(check_environment())
        || !require(if worker_bin.is_file() {
            Ok(())
        } else {
            Err(format!("{} not found", worker_bin.display()))
        })
    {
        return;
    }
    // SIGHUP (a closed terminal, `kill -HUP`) ends the programme as SIGTERM does: everything
    // held is published, exit 0 (it used to kill the worker at once, status 129).
    for (case, kill_rtsp_first) in [
        ("sigterm", false),
        ("sigterm_rtsp_gone", true),
        ("sighup", false),
    ] {
        let dir = test_dir(&format!("live_{case}"));
        let sts = StsServer::start(ServerConfig::default()).expect("start the STS server");
        let mut rtsp =
            Some(RtspServer::start(Path::new(FIXTURE), "/live/test/in").expect("start RTSP"));
        let nginx = NginxRtmp::start(&dir, &[APP]).expect("start nginx-rtmp");
        let mut worker = Worker::start(
            &worker_bin,
            &["--stream-id", "test", "--metrics-port", "0"],
            &[
                ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
                (
                    "MEDIAMTX_RTSP_PORT",
                    rtsp.as_ref().unwrap().port().to_string(),
                ),
                ("MEDIAMTX_RTMP_PORT", nginx.rtmp_port().to_string()),
                ("WORKER_STS_SERVICE_URL", sts.url()),
                ("WORKER_METRICS_PORT", "0".to_string()),
            ],
            &dir.join("worker.log"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Publishing has started (the first bytes come ~7 s in).
        let published = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
            nginx
                .stream(APP, STREAM)
                .filter(|s| s.bytes_in > 0)
                .map(|_| ())
        });
        assert!(
            published.is_some(),
            "{case}: nothing published\n{}",
            worker.proc.tail(30)
        );
        if kill_rtsp_first {
            rtsp.take();
        }
        let t = Instant::now();
        if case == "sighup" {
            worker.proc.signal(1);
        } else {
            worker.proc.signal_term();
        }
        let status = worker.proc.wait_timeout(Duration::from_secs(25));
        let took = t.elapsed();
        let status = status.unwrap_or_else(|| {
            panic!(
                "{case}: the worker hangs after SIGTERM\n{}",
                worker.proc.tail(30)
            )
        });
        eprintln!(
            "[{case}] signal -> exit {status} in {:.1} s",
            took.as_secs_f64()
        );
        assert!(
            status.success(),
            "{case}: exit {status}\n{}",
            worker.proc.tail(30)
        );
        let log = worker.proc.lines().join("\n");
        assert!(
            log.contains("sending EOS"),
            "{case}: {}",
            worker.proc.tail(30)
        );
        if !kill_rtsp_first {
            assert!(
                log.contains("end of stream"),
                "{case}: EOS went through\n{}",
                worker.proc.tail(30)
            );
        }
    }
}

/// The RTSP server goes away 20 s into the stream (every session closed) and a new one serves
/// on the same port 4 s later (from the start of its file): the worker keeps its RTMP
/// publication, fills the gap with silence, reconnects with backoff and goes on with the new
/// source on the same timeline. One capture from the start holds the first 20 s, the gap and
/// the whole second stream: timestamps never go back, markers in sync; exit 0 at the end.
#[test]
fn live_rtsp_server_restart_is_survived() {
    let name = "live_rtsp_server_restart_is_survived";
    let worker_bin = worker_binary();
    if !require(check_environment()) || !worker_bin.is_file() {
        return;
    }
    let dir = test_dir(name);
    let (sts, nginx, capture_path, mut capture) = sts_nginx_and_capture(&dir);
    let rtsp = RtspServer::start(Path::new(FIXTURE), "/live/test/in").expect("start RTSP");
    let port = rtsp.port();
    let mut worker = start_worker(&worker_bin, &dir, port, &nginx, &sts);
    if let Some(rest) = Duration::from_secs(20).checked_sub(worker.started.elapsed()) {
        std::thread::sleep(rest);
    }
    drop(rtsp);
    let gone = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let rtsp = RtspServer::start_on(Path::new(FIXTURE), "/live/test/in", port)
        .expect("start the second RTSP server");
    eprintln!(
        "[{name}] RTSP server gone for {:.1} s",
        gone.elapsed().as_secs_f64()
    );
    let log = finish_run(&mut worker, &nginx, &mut capture, Duration::from_secs(90));
    assert!(log.contains("source outage"), "{}", worker.proc.tail(40));
    assert!(log.contains("reconnecting to"), "{}", worker.proc.tail(40));
    assert!(!log.contains("-CRITICAL"), "{}", worker.proc.tail(40));

    let video = packet_timestamps(&capture_path, "v:0").unwrap();
    let audio = packet_timestamps(&capture_path, "a:0").unwrap();
    let dts: Vec<f64> = video.iter().filter_map(|(_, d)| *d).collect();
    let apts: Vec<f64> = audio.iter().filter_map(|(p, _)| *p).collect();
    let back = |v: &[f64]| (1..v.len()).filter(|&i| v[i] <= v[i - 1]).count();
    let (gap_at, gap) = (1..dts.len())
        .map(|i| (dts[i - 1], dts[i] - dts[i - 1]))
        .fold((0.0, 0.0), |m, g| if g.1 > m.1 { g } else { m });
    let agap = (1..apts.len())
        .map(|i| apts[i] - apts[i - 1])
        .fold(0.0f64, f64::max);
    eprintln!(
        "[{name}] published {} video frames, {} audio packets; the video stops at {gap_at:.3} s for {gap:.2} s (outage to the first frame after); largest audio step {:.0} ms",
        dts.len(),
        apts.len(),
        agap * 1000.0
    );
    assert_eq!(back(&dts), 0, "video DTS not strictly increasing");
    assert_eq!(back(&apts), 0, "audio PTS not strictly increasing");
    // The first 20 s, then the whole second stream.
    assert!(
        dts.len() as u64 >= FIXTURE_FRAMES + 400,
        "{} video frames",
        dts.len()
    );
    // Silence fills the gap: the audio never stops for more than a few packets.
    assert!(agap < 0.5, "audio stops for {:.2} s", agap);
    assert_markers_in_sync(name, &capture_path, 7);
    drop(rtsp);
}

/// The RTMP server crashes mid-stream (nginx killed 20 s in) and comes back 3 s later on the
/// same port: the worker never exits; it sees its connection reset (an output outage),
/// reconnects with backoff and republishes a new RTMP session from a keyframe with its
/// sequence headers. A subscriber that joins after the restart gets the dubbed stream to its
/// end, in sync; at the end of the programme the worker exits 0.
#[test]
fn live_rtmp_server_restart_is_survived() {
    let name = "live_rtmp_server_restart_is_survived";
    let worker_bin = worker_binary();
    if !require(check_environment()) || !worker_bin.is_file() {
        return;
    }
    let dir = test_dir(name);
    let sts = StsServer::start(ServerConfig::default()).expect("start the STS server");
    let rtsp = RtspServer::start(Path::new(FIXTURE), "/live/test/in").expect("start RTSP");
    let mut nginx = NginxRtmp::start(&dir, &[APP]).expect("start nginx-rtmp");
    let mut worker = Worker::start(
        &worker_bin,
        &["--stream-id", "test", "--metrics-port", "0"],
        &[
            ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
            ("MEDIAMTX_RTSP_PORT", rtsp.port().to_string()),
            ("MEDIAMTX_RTMP_PORT", nginx.rtmp_port().to_string()),
            ("WORKER_STS_SERVICE_URL", sts.url()),
        ],
        &dir.join("worker.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        nginx
            .stream(APP, STREAM)
            .filter(|s| s.bytes_in > 0)
            .map(|_| ())
    })
    .unwrap_or_else(|| panic!("nothing published\n{}", worker.proc.tail(30)));
    if let Some(rest) = Duration::from_secs(20).checked_sub(worker.started.elapsed()) {
        std::thread::sleep(rest);
    }
    let killed = Instant::now();
    nginx
        .kill_and_restart(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e}"));
    let restarted = Instant::now();
    wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        nginx
            .stream(APP, STREAM)
            .filter(|s| s.publishing && s.bytes_in > 0)
            .map(|_| ())
    })
    .unwrap_or_else(|| {
        panic!(
            "not republished 20 s after the restart\n{}",
            worker.proc.tail(30)
        )
    });
    let republished = restarted.elapsed();
    assert!(
        worker.proc.try_wait().is_none(),
        "the worker exited\n{}",
        worker.proc.tail(30)
    );
    eprintln!(
        "[{name}] nginx down {:.1} s; republished {:.2} s after it came back",
        restarted.duration_since(killed).as_secs_f64(),
        republished.as_secs_f64()
    );
    let (capture_path, mut capture) = start_capture(&nginx, &dir);
    let log = finish_run(&mut worker, &nginx, &mut capture, Duration::from_secs(60));
    assert!(log.contains("output outage"), "{}", worker.proc.tail(40));
    assert!(
        log.contains("republished after an outage"),
        "{}",
        worker.proc.tail(40)
    );
    let streams = probe_streams(&capture_path).unwrap();
    eprintln!("[{name}] the late subscriber got {streams:?}");
    let video = streams.iter().find(|s| s.codec_type == "video").unwrap();
    // From the subscriber's start (~30 s into the 60 s programme) to the end.
    assert!(video.packets > 500, "{} video frames", video.packets);
    assert!(streams.iter().any(|s| s.codec_type == "audio"));
    assert_markers_in_sync(name, &capture_path, 2);
    drop(rtsp);
}

/// An ffmpeg subscriber to the worker's output on `nginx`, writing `published.flv` in `dir`.
fn start_capture(nginx: &NginxRtmp, dir: &Path) -> (PathBuf, RtmpCapture) {
    let capture_path = dir.join("published.flv");
    let capture = RtmpCapture::start(
        &nginx.url(&format!("{APP}/{STREAM}")),
        &capture_path,
        &dir.join("ffmpeg.log"),
    )
    .expect("start the ffmpeg subscriber");
    (capture_path, capture)
}

/// The echo STS, nginx-rtmp and an ffmpeg subscriber ([`nginx_and_capture`]).
fn sts_nginx_and_capture(dir: &Path) -> (StsServer, NginxRtmp, PathBuf, RtmpCapture) {
    let sts = StsServer::start(ServerConfig::default()).expect("start the STS server");
    let (nginx, capture_path, capture) = nginx_and_capture(dir);
    (sts, nginx, capture_path, capture)
}

/// nginx-rtmp and an ffmpeg subscriber to the worker's output, subscribed before the worker
/// publishes (it gets the stream from its first byte): the server, the capture's path and
/// the capture.
fn nginx_and_capture(dir: &Path) -> (NginxRtmp, PathBuf, RtmpCapture) {
    let nginx = NginxRtmp::start(dir, &[APP]).expect("start nginx-rtmp");
    let (capture_path, mut capture) = start_capture(&nginx, dir);
    wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        nginx
            .stream(APP, STREAM)
            .filter(|s| s.nclients >= 1)
            .map(|_| ())
    })
    .unwrap_or_else(|| {
        panic!(
            "the ffmpeg subscriber did not show up in nginx\n{}",
            capture.proc().tail(20)
        )
    });
    (nginx, capture_path, capture)
}

/// The worker on the RTSP server at `rtsp_port`, publishing to `nginx`, dubbing with `sts`.
fn start_worker(
    bin: &Path,
    dir: &Path,
    rtsp_port: u16,
    nginx: &NginxRtmp,
    sts: &StsServer,
) -> Worker {
    Worker::start(
        bin,
        &["--stream-id", "test", "--metrics-port", "0"],
        &[
            ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
            ("MEDIAMTX_RTSP_PORT", rtsp_port.to_string()),
            ("MEDIAMTX_RTMP_PORT", nginx.rtmp_port().to_string()),
            ("WORKER_STS_SERVICE_URL", sts.url()),
        ],
        &dir.join("worker.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits up to `limit` for the worker to end by itself, exit 0; then for nginx to see the
/// publication gone and for the capture to finish, cleanly (one uninterrupted session).
/// Returns the worker's log.
fn finish_run(
    worker: &mut Worker,
    nginx: &NginxRtmp,
    capture: &mut RtmpCapture,
    limit: Duration,
) -> String {
    let status = worker
        .proc
        .wait_timeout(limit)
        .unwrap_or_else(|| panic!("the worker did not end\n{}", worker.proc.tail(40)));
    assert!(
        status.success(),
        "worker: {status}\n{}",
        worker.proc.tail(40)
    );
    wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        (!nginx.stream(APP, STREAM).is_some_and(|s| s.publishing)).then_some(())
    });
    let ffmpeg_exit = capture.finish(nginx, APP, STREAM, Duration::from_secs(10));
    assert!(
        ffmpeg_exit.is_some_and(|s| s.success()),
        "subscriber: {ffmpeg_exit:?}\n{}",
        capture.proc().tail(20)
    );
    worker.proc.lines().join("\n")
}

/// At least `min` markers in `path`, each with audio and video within 10 ms.
fn assert_markers_in_sync(name: &str, path: &Path, min: usize) {
    let r = dubbing_syncmeter::measure(path).unwrap();
    for m in &r.markers {
        eprintln!(
            "[{name}] marker at {:7.3} s: A/V delta {:+6.2} ms",
            m.video_s, m.delta_ms
        );
        assert!(
            m.delta_ms.abs() <= 10.0,
            "marker at {:.3} s: A/V delta {:+.2} ms",
            m.video_s,
            m.delta_ms
        );
    }
    assert!(r.markers.len() >= min, "markers: {:?}", r.markers);
}

/// Two languages from one stream (`WORKER_TARGET_LANGUAGES=es,de`): one STS stream and one
/// RTMP publication per language (`…/out/es`, `…/out/de`), the same video in both; `/health`
/// and `/status` while running and after SIGTERM; no URL password, stream key or API key in
/// the worker's log (RUST_LOG=trace, GStreamer's URL-handling categories at level 6).
#[test]
fn live_two_languages_health_status_and_no_secrets() {
    let worker_bin = worker_binary();
    if !require(check_environment())
        || !require(if worker_bin.is_file() {
            Ok(())
        } else {
            Err(format!("{} not found", worker_bin.display()))
        })
    {
        return;
    }
    const KEY: &str = "sk-live-secret-3141";
    const RTSP_PASSWORD: &str = "rtsp-pass-2718";
    const STREAM_KEY: &str = "stream-key-1618";
    let dir = test_dir("live_two_languages");
    let sts = StsServer::start(ServerConfig {
        api_key: Some(KEY.into()),
        ..Default::default()
    })
    .expect("start the STS server");
    let rtsp = RtspServer::start(Path::new(FIXTURE), "/live/test/in").expect("start RTSP");
    // rtmp://host/live/test/out/es: application live/test/out, stream es (librtmp's split).
    let app = "live/test/out";
    let nginx = NginxRtmp::start(&dir, &[app]).expect("start nginx-rtmp");
    let mut captures: Vec<RtmpCapture> = ["es", "de"]
        .iter()
        .map(|l| {
            RtmpCapture::start_app(
                &nginx,
                app,
                l,
                &dir.join(format!("published-{l}.flv")),
                &dir.join(format!("ffmpeg-{l}.log")),
            )
            .expect("start a subscriber")
        })
        .collect();
    for l in ["es", "de"] {
        wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            nginx.stream(app, l).filter(|s| s.nclients >= 1).map(|_| ())
        })
        .expect("subscriber in nginx");
    }
    let input = format!(
        "rtsp://viewer:{RTSP_PASSWORD}@127.0.0.1:{}/live/test/in",
        rtsp.port()
    );
    let output = format!("{}?key={STREAM_KEY}", nginx.url(app));
    let mut worker = Worker::start(
        &worker_bin,
        &[
            "--stream-id",
            "test",
            "--input",
            &input,
            "--output",
            &output,
        ],
        &[
            ("WORKER_TARGET_LANGUAGES", "es,de".to_string()),
            ("WORKER_STS_SERVICE_URL", sts.url()),
            ("WORKER_STS_API_KEY", KEY.to_string()),
            ("WORKER_METRICS_PORT", "0".to_string()),
            ("RUST_LOG", "trace".to_string()),
            (
                "GST_DEBUG",
                "*:3,GST_PIPELINE:6,GST_URI:6,rtspsrc:6,rtmpsink:6,rtspconnection:6".to_string(),
            ),
        ],
        &dir.join("worker.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let metrics = SocketAddr::from(([127, 0, 0, 1], worker.metrics_port));
    let get = |path: &str| -> (u16, serde_json::Value) {
        let (code, body) = http_get(metrics, path, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (code, v)
    };

    // Running: both outputs publish, /health is 200, /status has both languages.
    let playing = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        let both = ["es", "de"]
            .iter()
            .all(|l| nginx.stream(app, l).is_some_and(|s| s.bytes_in > 0));
        let (code, status) = get("/health");
        (both && code == 200).then_some(status)
    })
    .unwrap_or_else(|| panic!("not publishing both languages\n{}", worker.proc.tail(40)));
    eprintln!("health while publishing: {playing}");
    assert_eq!(playing["state"], "playing");
    assert_eq!(playing["source_up"], true);
    std::thread::sleep(Duration::from_secs(15));
    let (_, status) = get("/status");
    eprintln!("status: {status}");
    for (i, l) in ["es", "de"].iter().enumerate() {
        let s = &status["languages"][i];
        assert_eq!(s["language"], *l);
        assert!(s["dubbed"].as_u64().unwrap() >= 10, "{l}: {s}");
        assert_eq!(s["fallbacks"], 0, "{l}: {s}");
        assert_eq!(s["breaker_state"], "closed");
        let delay = s["published_delay_ms"].as_f64().unwrap();
        assert!((5_900.0..7_500.0).contains(&delay), "{l}: delay {delay}");
    }
    let m = scrape(worker.metrics_port).unwrap();
    for l in ["es", "de"] {
        let dubbed = m
            .sum(
                "worker_audio_fragments_total",
                &[("language", l), ("status", "dubbed")],
            )
            .unwrap_or(0.0);
        assert!(dubbed >= 10.0, "{l}: {dubbed} dubbed fragments in /metrics");
        assert!(
            m.sum("worker_published_delay_ms", &[("language", l)])
                .is_some(),
            "{l}: no published delay"
        );
    }
    assert_eq!(m.value("worker_source_up"), Some(1.0));

    // SIGTERM: /health turns 503 at once, the worker publishes what it holds and exits 0.
    worker.proc.signal_term();
    let stopping = wait_for(Duration::from_secs(3), Duration::from_millis(50), || {
        let (code, status) = get("/health");
        (code == 503).then_some(status)
    })
    .expect("/health still 200 after SIGTERM");
    assert_eq!(stopping["state"], "stopping");
    let exit = worker
        .proc
        .wait_timeout(Duration::from_secs(25))
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", worker.proc.tail(30)));
    assert!(exit.success(), "exit {exit}\n{}", worker.proc.tail(30));

    // Each language had its own STS stream, with the key.
    let requests = sts.requests();
    for l in ["es", "de"] {
        let mine: Vec<_> = requests
            .iter()
            .filter(|r| r.stream_id == format!("test-{l}"))
            .collect();
        assert!(mine.len() >= 20, "{l}: {} STS requests", mine.len());
        assert!(
            mine.iter()
                .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {KEY}")[..])),
            "{l}: a request without the key"
        );
    }
    assert_eq!(
        requests.len(),
        requests
            .iter()
            .filter(|r| r.stream_id.starts_with("test-"))
            .count()
    );

    // Both publications: the same video frames, audio as long as the video.
    let mut frames = Vec::new();
    for (l, c) in ["es", "de"].iter().zip(captures.iter_mut()) {
        let mut last = c.audio_received_s();
        wait_for(Duration::from_secs(5), Duration::from_millis(500), || {
            let now = c.audio_received_s();
            let stable = now == last;
            last = now;
            stable.then_some(())
        });
        c.finish(&nginx, app, l, Duration::from_secs(10));
        let streams = probe_streams(c.path()).unwrap();
        let v = packet_times(c.path(), "v:0").unwrap();
        let a = packet_times(c.path(), "a:0").unwrap();
        let (v0, v1) = (v[0], v[v.len() - 1]);
        let (a0, a1) = (a[0], a[a.len() - 1]);
        eprintln!(
            "{l}: {streams:?}; video {v0:.3}..{v1:.3} s ({} frames), audio {a0:.3}..{a1:.3} s",
            v.len()
        );
        assert!(
            streams.iter().any(|s| s.codec_name == "h264")
                && streams.iter().any(|s| s.codec_name == "aac"),
            "{l}: {streams:?}"
        );
        assert!(
            v.windows(2).all(|w| w[1] > w[0]),
            "{l}: video timestamps not increasing"
        );
        assert!(
            ((a1 - a0) - (v1 - v0)).abs() < 0.3,
            "{l}: audio {:.3} s against video {:.3} s",
            a1 - a0,
            v1 - v0
        );
        assert!(v.len() > 500, "{l}: {} video frames", v.len());
        frames.push(v.len());
    }
    assert!(
        frames[0].abs_diff(frames[1]) <= 2,
        "the two outputs carry different video: {frames:?} frames"
    );

    let log = std::fs::read_to_string(dir.join("worker.log")).unwrap();
    assert!(log.contains("gstrtspsrc.c"), "GStreamer's log is missing");
    for secret in [KEY, RTSP_PASSWORD, STREAM_KEY] {
        if let Some(at) = log.find(secret) {
            panic!(
                "{secret} is in the worker's log: {}",
                &log[at.saturating_sub(300)..(at + 50).min(log.len())]
            );
        }
    }
    eprintln!("files in {}", dir.display());
}

/// Outages are outages, not the end of the programme: a frozen source (the RTSP server holds
/// its packets, the connection open), a source gone for good (reconnections refused) and a
/// frozen RTMP server (nginx stopped with SIGSTOP: its
/// socket buffers still take tens of seconds of stream) each end the worker with exit 1 within
/// the grace (source: `WORKER_SOURCE_GRACE_MS`, 10 s here) or the timeout (output: 5 s) plus
/// the reconnection grace (`WORKER_OUTPUT_GRACE_MS`, 5 s here: new connections to the frozen
/// server get no answer) and a bounded time, saying which, so that an orchestrator restarts
/// it; memory stays bounded meanwhile. From 5 s of silence on
/// (`WORKER_SOURCE_TIMEOUT_MS`) the source outage is logged, `/health` is 503 and `/status`
/// says the source is down.
const OUTPUT_GRACE_S: u64 = 5;

#[test]
fn live_frozen_source_or_output_is_an_outage() {
    let worker_bin = worker_binary();
    if !require(check_environment())
        || !require(if worker_bin.is_file() {
            Ok(())
        } else {
            Err(format!("{} not found", worker_bin.display()))
        })
    {
        return;
    }
    for (case, timeout_s) in [("source", 10u64), ("source_gone", 10), ("output", 5)] {
        let what = if case == "output" { "output" } else { "source" };
        let dir = test_dir(&format!("live_frozen_{case}"));
        let sts = StsServer::start(ServerConfig::default()).expect("start the STS server");
        let mut rtsp =
            Some(RtspServer::start(Path::new(FIXTURE), "/live/test/in").expect("start RTSP"));
        let nginx = NginxRtmp::start(&dir, &[APP]).expect("start nginx-rtmp");
        let mut worker = Worker::start(
            &worker_bin,
            &["--stream-id", "test", "--metrics-port", "0"],
            &[
                ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
                (
                    "MEDIAMTX_RTSP_PORT",
                    rtsp.as_ref().unwrap().port().to_string(),
                ),
                ("MEDIAMTX_RTMP_PORT", nginx.rtmp_port().to_string()),
                ("WORKER_STS_SERVICE_URL", sts.url()),
                ("WORKER_METRICS_PORT", "0".to_string()),
                (
                    if what == "source" {
                        "WORKER_SOURCE_GRACE_MS"
                    } else {
                        "WORKER_OUTPUT_TIMEOUT_MS"
                    },
                    (timeout_s * 1000).to_string(),
                ),
                // The output: reconnection attempts (to the frozen server) for 5 s more.
                (
                    "WORKER_OUTPUT_GRACE_MS",
                    (OUTPUT_GRACE_S * 1000).to_string(),
                ),
            ],
            &dir.join("worker.log"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let health = |port: u16| {
            http_get(
                SocketAddr::from(([127, 0, 0, 1], port)),
                "/health",
                Duration::from_secs(1),
            )
            .ok()
        };
        wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
            nginx
                .stream(APP, STREAM)
                .filter(|s| s.bytes_in > 0)
                .map(|_| ())
        })
        .unwrap_or_else(|| panic!("{case}: nothing published\n{}", worker.proc.tail(30)));
        std::thread::sleep(Duration::from_secs(3));
        let rss = |pid: u32| -> f64 {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                })
                .unwrap_or(0.0)
                / 1024.0
        };
        let rss_before = rss(worker.proc.pid());
        let frozen_at = Instant::now();
        match case {
            "source" => rtsp.as_ref().unwrap().set_frozen(true),
            // Gone for good: reconnection attempts are refused until the grace runs out.
            "source_gone" => drop(rtsp.take()),
            _ => unsafe_signal(nginx.pid(), libc_sigstop()),
        }
        let mut rss_max = rss_before;
        let mut unhealthy_at = None;
        let status = loop {
            if let Some(s) = worker.proc.try_wait() {
                break Some(s);
            }
            if what == "source"
                && unhealthy_at.is_none()
                && let Some((503, body)) = health(worker.metrics_port)
            {
                unhealthy_at = Some((frozen_at.elapsed(), body));
            }
            if frozen_at.elapsed() > Duration::from_secs(30) {
                break None;
            }
            rss_max = rss_max.max(rss(worker.proc.pid()));
            std::thread::sleep(Duration::from_millis(100));
        };
        let took = frozen_at.elapsed();
        if case == "output" {
            unsafe_signal(nginx.pid(), libc_sigcont());
        }
        if let Some(r) = &rtsp {
            r.set_frozen(false);
        }
        let status = status.unwrap_or_else(|| {
            panic!(
                "{case} frozen: the worker still runs after 30 s\n{}",
                worker.proc.tail(30)
            )
        });
        eprintln!(
            "[frozen {case}] exit {status} {:.1} s after the freeze; RSS {rss_before:.1} MB before, at most {rss_max:.1} MB during",
            took.as_secs_f64()
        );
        // Exit codes: 5 a source outage, 6 an output outage.
        let code = if what == "source" { 5 } else { 6 };
        assert_eq!(
            status.code(),
            Some(code),
            "{case}\n{}",
            worker.proc.tail(30)
        );
        // The source: its grace; the output: its timeout, then the reconnection grace.
        let limit_s = timeout_s + if case == "output" { OUTPUT_GRACE_S } else { 0 };
        assert!(
            took >= Duration::from_secs(limit_s) && took < Duration::from_secs(limit_s + 10),
            "{case}: exit {:.1} s after the freeze (timeout {timeout_s} s, exit expected from {limit_s} s)",
            took.as_secs_f64()
        );
        if what == "source" {
            let (at, body) = unhealthy_at.expect("/health never 503 while the source was frozen");
            eprintln!(
                "[frozen {case}] /health 503 {:.1} s after the freeze: {body}",
                at.as_secs_f64()
            );
            if case == "source" {
                // Frozen: 5 s after the last data, which the jitter buffer may have delivered
                // up to its 200 ms latency before the freeze (4.989 s was seen in CI).
                assert!(body.contains("\"source_up\":false"), "{body}");
                assert!(
                    at >= Duration::from_millis(4500) && at < Duration::from_secs(8),
                    "{at:?}"
                );
            } else {
                // Gone: rtspsrc sees the connection closed, the worker reconnects at once.
                assert!(body.contains("\"state\":\"reconnecting\""), "{body}");
                assert!(at < Duration::from_secs(8), "{at:?}");
            }
        }
        let log = worker.proc.lines().join("\n");
        assert!(
            log.contains(&format!("{what} outage")),
            "{case}: no '{what} outage' in\n{}",
            worker.proc.tail(30)
        );
        if what == "source" {
            assert!(
                log.contains("reconnecting to"),
                "{case}: no reconnection\n{}",
                worker.proc.tail(30)
            );
        }
        assert!(
            !log.contains("supervisor: end of stream"),
            "{case}: taken for an end of stream"
        );
        assert!(
            rss_max - rss_before < 30.0,
            "{case}: RSS grew {rss_before} -> {rss_max} MB"
        );
    }
}

/// A source frozen for 7 s, within the grace: the worker keeps publishing, logs the outage
/// and its length, `/health` is 503 during it and 200 after, and SIGTERM still ends with 0.
#[test]
fn live_short_source_freeze_is_survived() {
    let worker_bin = worker_binary();
    if !require(check_environment())
        || !require(if worker_bin.is_file() {
            Ok(())
        } else {
            Err(format!("{} not found", worker_bin.display()))
        })
    {
        return;
    }
    let dir = test_dir("live_short_freeze");
    let sts = StsServer::start(ServerConfig::default()).expect("start the STS server");
    let rtsp = RtspServer::start(Path::new(FIXTURE), "/live/test/in").expect("start RTSP");
    let nginx = NginxRtmp::start(&dir, &[APP]).expect("start nginx-rtmp");
    let mut worker = Worker::start(
        &worker_bin,
        &["--stream-id", "test", "--metrics-port", "0"],
        &[
            ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
            ("MEDIAMTX_RTSP_PORT", rtsp.port().to_string()),
            ("MEDIAMTX_RTMP_PORT", nginx.rtmp_port().to_string()),
            ("WORKER_STS_SERVICE_URL", sts.url()),
            ("WORKER_METRICS_PORT", "0".to_string()),
        ],
        &dir.join("worker.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // /health's code and the status's `state`.
    let health = |port: u16| -> (u16, String) {
        http_get(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "/health",
            Duration::from_secs(1),
        )
        .map(|(code, body)| {
            let state = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_string))
                .unwrap_or_default();
            (code, state)
        })
        .unwrap_or((0, String::new()))
    };
    wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        (health(worker.metrics_port).0 == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("never healthy\n{}", worker.proc.tail(30)));
    rtsp.set_frozen(true);
    let frozen_at = Instant::now();
    let unhealthy = wait_for(Duration::from_secs(7), Duration::from_millis(100), || {
        (health(worker.metrics_port).0 == 503).then(|| frozen_at.elapsed())
    })
    .expect("/health stayed 200 while the source was frozen");
    // Past the source timeout (5 s) it is an outage: the worker reconnects, and says so.
    let reconnecting = wait_for(Duration::from_secs(7), Duration::from_millis(100), || {
        (health(worker.metrics_port) == (503, "reconnecting".to_string()))
            .then(|| frozen_at.elapsed())
    })
    .unwrap_or_else(|| panic!("/status never said reconnecting\n{}", worker.proc.tail(30)));
    std::thread::sleep(Duration::from_secs(7).saturating_sub(frozen_at.elapsed()));
    rtsp.set_frozen(false);
    let healthy_again = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        (health(worker.metrics_port) == (200, "playing".to_string())).then(|| frozen_at.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "not healthy and playing after the freeze\n{}",
            worker.proc.tail(30)
        )
    });
    eprintln!(
        "[short freeze] /health 503 at {:.1} s, state reconnecting at {:.1} s, 200 and playing again at {:.1} s (thawed at 7 s)",
        unhealthy.as_secs_f64(),
        reconnecting.as_secs_f64(),
        healthy_again.as_secs_f64()
    );
    assert!(worker.proc.try_wait().is_none(), "the worker exited");
    std::thread::sleep(Duration::from_secs(3));
    worker.proc.signal_term();
    let exit = worker
        .proc
        .wait_timeout(Duration::from_secs(25))
        .expect("no exit after SIGTERM");
    assert!(exit.success(), "exit {exit}\n{}", worker.proc.tail(30));
    let log = worker.proc.lines().join("\n");
    let back = log
        .lines()
        .find(|l| l.contains("source back after an outage of"))
        .unwrap_or_else(|| panic!("no 'source back' line\n{}", worker.proc.tail(30)));
    eprintln!("{back}");
    assert!(log.contains("source outage: no data"), "outage not logged");
}

fn libc_sigstop() -> i32 {
    19
}

fn libc_sigcont() -> i32 {
    18
}

fn unsafe_signal(pid: u32, sig: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: kill(2) on a child process this test started.
    unsafe {
        kill(pid as i32, sig);
    }
}

/// Length of the B-frame source: the fixture's first 30 s (three markers).
const BFRAMES_S: f64 = 30.0;

/// The fixture's first [`BFRAMES_S`] re-encoded with B-frames as OBS's default x264 settings
/// and most hardware encoders make them (2 B-frames, pyramid, a keyframe every 2 s), audio
/// copied. Made once per test binary.
fn bframe_fixture() -> PathBuf {
    static MADE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MADE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("live");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = dir.join("bframes-30s.mp4");
        let o = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i", FIXTURE])
            .args([
                "-t",
                &BFRAMES_S.to_string(),
                "-map",
                "0:v:0",
                "-map",
                "0:a:0",
            ])
            .args([
                "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "50",
            ])
            .args(["-c:a", "copy"])
            .arg(&out)
            .output()
            .map_err(|e| format!("cannot run ffmpeg: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "ffmpeg (libx264) failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(out)
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// How the source reaches the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Rtsp,
    /// An RTSP server that sends no RTCP BYE at the end of its file.
    RtspWithoutBye,
    /// ffmpeg publishing to nginx-rtmp.
    Rtmp,
}

/// What [`publish_through_worker`] leaves to check.
struct Relayed {
    dir: PathBuf,
    capture: PathBuf,
    /// From the RTMP publisher leaving to the worker's exit.
    exit_after_publisher: Option<Duration>,
}

/// `source` (H.264 + AAC, `length_s` long) through the worker, over RTSP (the worker's
/// default input) or RTMP (ffmpeg publishing to nginx in real time, `--input rtmp://…`),
/// captured by an ffmpeg subscriber from the first byte published. The worker must end by
/// itself, exit 0. `None`: skipped.
fn publish_through_worker(name: &str, source: &Path, length_s: f64, via: Via) -> Option<Relayed> {
    let over_rtmp = via == Via::Rtmp;
    let worker_bin = worker_binary();
    if !require(check_environment())
        || !require(if worker_bin.is_file() {
            Ok(())
        } else {
            Err(format!("{} not found", worker_bin.display()))
        })
    {
        return None;
    }
    let dir = test_dir(name);
    let (sts, nginx, capture_path, mut capture) = sts_nginx_and_capture(&dir);
    let rtsp = (!over_rtmp)
        .then(|| RtspServer::start(source, "/live/test/in").expect("start the RTSP server"));
    if let Some(r) = &rtsp {
        r.set_drop_bye(via == Via::RtspWithoutBye);
    }
    let mut args = vec![
        "--stream-id".to_string(),
        "test".into(),
        "--metrics-port".into(),
        "0".into(),
    ];
    if over_rtmp {
        args.push("--input".into());
        args.push(nginx.url(&format!("{APP}/in")));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut worker = Worker::start(
        &worker_bin,
        &args,
        &[
            ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
            (
                "MEDIAMTX_RTSP_PORT",
                rtsp.as_ref().map_or(0, |r| r.port()).to_string(),
            ),
            ("MEDIAMTX_RTMP_PORT", nginx.rtmp_port().to_string()),
            ("WORKER_STS_SERVICE_URL", sts.url()),
            // How the RTSP session ends (BYE, end of range, timeout), for a failure's report.
            (
                "GST_DEBUG",
                if over_rtmp { "" } else { "rtspsrc:5" }.to_string(),
            ),
            ("GST_DEBUG_NO_COLOR", "1".to_string()),
        ],
        &dir.join("worker.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // RTMP: the worker plays the stream before it is published, so it gets it from its
    // first frame.
    let mut publisher = None;
    if over_rtmp {
        wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            nginx
                .stream(APP, "in")
                .filter(|s| s.nclients >= 1)
                .map(|_| ())
        })
        .unwrap_or_else(|| panic!("the worker did not subscribe\n{}", worker.proc.tail(30)));
        publisher = Some(
            RtmpPublisher::start(
                source,
                &nginx.url(&format!("{APP}/in")),
                &dir.join("publisher.log"),
            )
            .expect("start the ffmpeg publisher"),
        );
    }
    let limit = Duration::from_secs_f64(length_s + OFFSET_MS / 1000.0 + 30.0);
    let mut publisher_done: Option<Instant> = None;
    let status = loop {
        if let Some(s) = worker.proc.try_wait() {
            break s;
        }
        assert!(
            worker.started.elapsed() < limit,
            "the worker did not finish within {limit:?}\n{}",
            worker.proc.tail(40)
        );
        if let Some(p) = publisher.as_mut()
            && publisher_done.is_none()
            && let Some(s) = p.proc().try_wait()
        {
            assert!(s.success(), "publisher: {s}\n{}", p.proc().tail(20));
            publisher_done = Some(Instant::now());
            // The publisher ended its programme: MediaMTX stops the worker (SIGINT) when
            // the path is no longer ready; rtmp2src alone cannot tell a publisher that
            // ended from one that crashed (an outage).
            worker.proc.signal(2);
        }
        // RTMP: the SIGINT ends the stream (the offset still to publish, then exit).
        if publisher_done.is_some_and(|t| t.elapsed() > Duration::from_secs(20)) {
            panic!(
                "the worker still runs 20 s after the publisher left\n{}",
                worker.proc.tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let exit_after_publisher = publisher_done.map(|t| t.elapsed());
    eprintln!(
        "[{name}] worker exited {status} after {:.1} s{}",
        worker.started.elapsed().as_secs_f64(),
        exit_after_publisher
            .map(|d| format!(", {:.1} s after the publisher left", d.as_secs_f64()))
            .unwrap_or_default()
    );
    let log = std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default();
    assert!(
        !log.contains("-CRITICAL"),
        "GStreamer criticals in the worker's log:\n{}",
        worker.proc.tail(40)
    );
    if !status.success() {
        // What ended (or did not end) the source's session.
        let log = std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default();
        let ending: Vec<&str> = log
            .lines()
            .filter(|l| {
                [
                    "BYE", "bye", "EOS", "eos", "timeout", "TEARDOWN", "npt", "range",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect();
        eprintln!(
            "[{name}] the source's ending, from the worker's log ({} lines):\n{}",
            ending.len(),
            ending[ending.len().saturating_sub(60)..].join("\n")
        );
    }
    assert!(
        status.success(),
        "worker: {status}\n{}",
        worker.proc.tail(40)
    );
    wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        (!nginx.stream(APP, STREAM).is_some_and(|s| s.publishing)).then_some(())
    });
    let ffmpeg_exit = capture.finish(&nginx, APP, STREAM, Duration::from_secs(10));
    assert!(
        ffmpeg_exit.is_some_and(|s| s.success()),
        "subscriber: {ffmpeg_exit:?}\n{}",
        capture.proc().tail(20)
    );
    drop(publisher);
    drop(worker);
    drop(rtsp);
    Some(Relayed {
        dir,
        capture: capture_path,
        exit_after_publisher,
    })
}

/// Publishes the B-frame source through the worker, over RTSP or RTMP, and checks the
/// capture: every frame, DTS strictly increasing, each frame's PTS its source PTS plus one
/// constant (±1 ms), markers in sync within 10 ms.
/// Returns the test's directory.
fn run_bframes(name: &str, via: Via) -> PathBuf {
    let dir = test_dir(name);
    if !require(check_environment()) {
        return dir;
    }
    let source = bframe_fixture();
    let src_video = packet_timestamps(&source, "v:0").unwrap();
    let reordered = src_video.windows(2).filter(|w| w[1].0 < w[0].0).count();
    assert!(reordered > 100, "the source has no B-frames ({reordered})");
    let Some(run) = publish_through_worker(name, &source, BFRAMES_S, via) else {
        return dir;
    };
    let (dir, capture_path) = (run.dir, run.capture);

    let published = packet_timestamps(&capture_path, "v:0").unwrap();
    let shown = |v: &[PacketTimes]| {
        v.iter()
            .take(9)
            .map(|(p, d)| format!("{:.3}/{:.3}", p.unwrap_or(f64::NAN), d.unwrap_or(f64::NAN)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!(
        "[{name}] source: {} frames ({reordered} reordered), PTS/DTS {} …",
        src_video.len(),
        shown(&src_video)
    );
    eprintln!(
        "[{name}] published: {} frames, PTS/DTS {} …",
        published.len(),
        shown(&published)
    );
    // Every frame, in decode order.
    assert_eq!(
        published.len(),
        src_video.len(),
        "{} frames published, {} in the source",
        published.len(),
        src_video.len()
    );
    // DTS strictly increasing, never after the PTS.
    let dts: Vec<f64> = published
        .iter()
        .map(|(_, d)| d.expect("every published frame has a DTS"))
        .collect();
    let not_increasing: Vec<usize> = (1..dts.len()).filter(|&i| dts[i] <= dts[i - 1]).collect();
    let shared = published.windows(2).filter(|w| w[0].1 == w[1].1).count();
    eprintln!(
        "[{name}] DTS not increasing at {} frames ({shared} share a DTS with the previous)",
        not_increasing.len()
    );
    assert!(
        not_increasing.is_empty(),
        "DTS not strictly increasing at {} of {} frames, first at #{:?}",
        not_increasing.len(),
        dts.len(),
        not_increasing.first()
    );
    // Each frame's PTS is its source PTS plus one constant (FLV times are whole ms).
    let pts = |v: &PacketTimes| v.0.expect("a PTS");
    let shift = pts(&published[0]) - pts(&src_video[0]);
    let errors: Vec<f64> = published
        .iter()
        .zip(&src_video)
        .map(|(p, s)| (pts(p) - pts(s) - shift) * 1000.0)
        .collect();
    let worst = errors.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    let after_pts = published
        .iter()
        .filter(|(p, d)| d.unwrap() > p.unwrap() + 1e-6)
        .count();
    eprintln!(
        "[{name}] PTS = source PTS + {shift:.3} s: worst error {worst:.2} ms; \
         {after_pts} frames with DTS after PTS"
    );
    assert!(worst <= 1.0 + 1e-6, "PTS error up to {worst:.2} ms");
    assert_eq!(after_pts, 0, "frames decoded after they are shown");

    // A/V sync: every marker of the source, within 10 ms.
    let expected: Vec<f64> = markers_s()
        .into_iter()
        .filter(|m| *m < BFRAMES_S - 1.0)
        .collect();
    let opts = dubbing_syncmeter::Options {
        expected_markers_s: Some(expected.clone()),
        ..Default::default()
    };
    let decoded = dubbing_syncmeter::decode(&capture_path, 0, Duration::from_secs(30))
        .expect("decode the capture");
    let r = dubbing_syncmeter::analyze(&capture_path, &decoded, &opts).unwrap();
    for m in &r.markers {
        eprintln!(
            "[{name}] marker at {:7.3} s: A/V delta {:+6.2} ms",
            m.video_s, m.delta_ms
        );
    }
    let found = r.expected.as_ref().unwrap();
    assert_eq!(
        found.found,
        expected.len(),
        "markers missing at {:?} s",
        found.missing_s
    );
    for m in &r.markers {
        assert!(
            m.delta_ms.abs() <= 10.0,
            "marker at {:.3} s: A/V delta {:+.2} ms",
            m.video_s,
            m.delta_ms
        );
    }
    // Audio: every AAC frame one after the other.
    let a = packet_times(&capture_path, "a:0").unwrap();
    let bad = irregular_spacing(&a, 0.020, 0.023);
    assert!(
        bad.is_empty(),
        "{} of {} audio frames irregular: {:?}",
        bad.len(),
        a.len(),
        &bad[..bad.len().min(5)]
    );
    eprintln!("[{name}] files in {}", dir.display());
    dir
}

#[test]
fn live_bframes_over_rtsp() {
    run_bframes("live_bframes_over_rtsp", Via::Rtsp);
}

#[test]
fn live_bframes_over_rtmp() {
    run_bframes("live_bframes_over_rtmp", Via::Rtmp);
}

/// An RTSP server that ends its file without an RTCP BYE (the streams go silent, its RTCP
/// reports go on; seen once in CI, where the worker then waited out the 30 s grace and
/// exited 1): the source announced `npt=0-30`, sent all of it and went silent, so the worker
/// takes it for the end of the programme, publishes everything it holds and exits 0.
#[test]
fn live_rtsp_end_without_bye_is_the_end() {
    let name = "live_rtsp_end_without_bye_is_the_end";
    if !require(check_environment()) || !worker_binary().is_file() {
        return;
    }
    let dir = run_bframes(name, Via::RtspWithoutBye);
    let log = std::fs::read_to_string(dir.join("worker.log")).unwrap();
    // The worker learnt where the file ends (what ends it if the jitterbuffer's own
    // end-of-range EOS does not come either, as seen once in CI), and ended without BYE,
    // without taking the silence after the end for an outage.
    assert!(
        log.contains("the source announces a range of 30.0 s"),
        "the worker did not learn the source's range:\n{log}"
    );
    assert!(
        !log.contains("on_bye_ssrc"),
        "the BYE was not dropped:\n{log}"
    );
    assert!(!log.contains("source outage"), "{log}");
}

/// RTMP input, the publisher leaves at the end of the file: the worker publishes what it
/// holds (the last `offset`, its last partial fragment included) and exits 0 in bounded
/// time; the capture holds the whole stream, in sync.
#[test]
fn live_rtmp_publisher_leaving_ends_the_stream() {
    let name = "live_rtmp_publisher_leaving_ends_the_stream";
    let Some(run) = publish_through_worker(name, Path::new(FIXTURE), 60.0, Via::Rtmp) else {
        return;
    };
    let after = run.exit_after_publisher.expect("the publisher left");
    // The offset still to publish in real time, then the shutdown.
    assert!(
        after.as_secs_f64() <= OFFSET_MS / 1000.0 + 5.0,
        "the worker exited {:.1} s after the publisher left",
        after.as_secs_f64()
    );
    let streams = probe_streams(&run.capture).unwrap();
    let video = streams.iter().find(|s| s.codec_type == "video").unwrap();
    eprintln!("[{name}] published {streams:?}");
    assert_eq!(
        video.packets, FIXTURE_FRAMES,
        "{} video frames published of {FIXTURE_FRAMES}",
        video.packets
    );
    let input = input_report();
    let opts = dubbing_syncmeter::Options {
        expected_markers_s: Some(markers_s()),
        ..Default::default()
    };
    let decoded = dubbing_syncmeter::decode(&run.capture, 0, Duration::from_secs(30))
        .expect("decode the capture");
    let r = dubbing_syncmeter::analyze(&run.capture, &decoded, &opts).unwrap();
    eprintln!(
        "[{name}] published: video {:.3} s, audio {:.3} s; input: video {:.3} s, audio {:.3} s",
        r.video_duration_s, r.audio_duration_s, input.video_duration_s, input.audio_duration_s
    );
    // To its end: within one fragment (1 s) of the input (the last partial one published).
    let fragment_s = 1.0;
    assert!(
        (r.video_duration_s - input.video_duration_s).abs() <= fragment_s,
        "video {:.3} s of {:.3} s",
        r.video_duration_s,
        input.video_duration_s
    );
    assert!(
        (r.audio_duration_s - input.audio_duration_s).abs() <= fragment_s,
        "audio {:.3} s of {:.3} s",
        r.audio_duration_s,
        input.audio_duration_s
    );
    let found = r.expected.as_ref().unwrap();
    assert_eq!(
        found.found, found.expected,
        "markers missing at {:?} s",
        found.missing_s
    );
    for m in &r.markers {
        eprintln!(
            "[{name}] marker at {:7.3} s: A/V delta {:+6.2} ms",
            m.video_s, m.delta_ms
        );
        assert!(
            m.delta_ms.abs() <= AAC_FRAME_MS,
            "marker at {:.3} s: A/V delta {:+.2} ms",
            m.video_s,
            m.delta_ms
        );
    }
    eprintln!("[{name}] files in {}", run.dir.display());
}

/// Checks the captions ffmpeg decodes from `path` (`field`: first = CC1, second = CC3)
/// against the cues the worker handed its inserter for `language` (its `caption cue` debug
/// lines): every caption is one of them, word for word; each is shown at its cue's start
/// and goes at its end, one constant apart (the capture's time origin) within two frames,
/// unless 608's bandwidth made it late (it loads behind the previous caption, which showed
/// less than a load time before); all but the last few are there. Returns the decoded cues.
fn check_captions(
    name: &str,
    path: &Path,
    field: &str,
    language: &str,
    log: &[String],
) -> Vec<DecodedCue> {
    const TWO_FRAMES_S: f64 = 0.081;
    let sent = worker_caption_cues(log, language);
    let decoded = decode_captions(path, field).unwrap();
    eprintln!(
        "[{name}] {language} ({field} field): {} cues sent, {} decoded; first: {:?}",
        sent.len(),
        decoded.len(),
        &decoded[..decoded.len().min(4)]
    );
    assert!(sent.len() >= 40, "{language}: {} cues sent", sent.len());
    let prefix = format!("[{language}] echo of fragment ");
    let mut offsets = Vec::new();
    for c in &decoded {
        assert!(c.text.starts_with(&prefix), "{language}: caption {c:?}");
        let (start, duration, _) = sent
            .iter()
            .find(|(_, _, t)| *t == c.text)
            .unwrap_or_else(|| panic!("{language}: {c:?} was never sent"));
        offsets.push((c.start_s - start, c.end_s - (start + duration), c));
    }
    // The capture's time origin: the most common start offset.
    let mut starts: Vec<f64> = offsets.iter().map(|o| o.0).collect();
    starts.sort_by(f64::total_cmp);
    let origin = starts[starts.len() / 2];
    let off: Vec<_> = offsets
        .iter()
        .filter(|o| (o.0 - origin).abs() > TWO_FRAMES_S)
        .collect();
    eprintln!(
        "[{name}] {language}: shown at start + {origin:.3} s (capture origin); {} of {} off by more than two frames: {:?}",
        off.len(),
        offsets.len(),
        off.iter()
            .map(|o| format!("{:+.3} s {}", o.0 - origin, o.2.text))
            .collect::<Vec<_>>()
    );
    // Late only where 608's bandwidth says: a pop-on caption loads while the previous one
    // shows, ~30 byte pairs a second (one of these, 20 pairs: 0.67 s), so a cue that follows
    // a shorter one shows once loaded; and the first (nothing before it to load behind).
    for (k, o) in offsets.iter().enumerate() {
        if (o.0 - origin).abs() <= TWO_FRAMES_S {
            continue;
        }
        let after_previous = k.checked_sub(1).map(|p| o.2.start_s - decoded[p].start_s);
        assert!(
            o.0 > origin && after_previous.is_none_or(|d| d <= 0.8 + TWO_FRAMES_S),
            "{language}: {:?} shown {:+.3} s off, {after_previous:?} s after the previous",
            o.2,
            o.0 - origin
        );
    }
    // Each goes at its end (or when the next replaces it, within two frames of its end).
    for (_, end, c) in &offsets[..offsets.len().saturating_sub(1)] {
        assert!(
            (end - origin).abs() <= TWO_FRAMES_S,
            "{language}: {c:?} ends {:+.3} s off",
            end - origin
        );
    }
    assert!(
        decoded.len() + 4 >= sent.len(),
        "{language}: {} of {} cues shown",
        decoded.len(),
        sent.len()
    );
    decoded
}

/// Captions over RTMP, two languages (`WORKER_CAPTIONS=cea608`,
/// `WORKER_TARGET_LANGUAGES=es,de`): each publication's video carries its own language's
/// translation as CEA-608 (CC1), read back from nginx-rtmp by two ffmpeg subscribers and
/// decoded by ffmpeg; the cues' text and times are what the worker sent; the markers stay in
/// sync and the published delay is the offset although the inserters add their latency;
/// `/status` and `/metrics` count the captions.
#[test]
fn live_captions_in_each_rtmp_publication() {
    let worker_bin = worker_binary();
    if !require(check_environment())
        || !require(if worker_bin.is_file() {
            Ok(())
        } else {
            Err(format!("{} not found", worker_bin.display()))
        })
    {
        return;
    }
    let name = "live_captions_rtmp";
    let dir = test_dir(name);
    let sts = StsServer::start(ServerConfig::default()).expect("start the STS server");
    let rtsp = RtspServer::start(Path::new(FIXTURE), "/live/test/in").expect("start RTSP");
    let app = "live/test/out";
    let nginx = NginxRtmp::start(&dir, &[app]).expect("start nginx-rtmp");
    let languages = ["es", "de"];
    let mut captures: Vec<RtmpCapture> = languages
        .iter()
        .map(|l| {
            RtmpCapture::start_app(
                &nginx,
                app,
                l,
                &dir.join(format!("published-{l}.flv")),
                &dir.join(format!("ffmpeg-{l}.log")),
            )
            .expect("start a subscriber")
        })
        .collect();
    for l in languages {
        wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            nginx.stream(app, l).filter(|s| s.nclients >= 1).map(|_| ())
        })
        .expect("subscriber in nginx");
    }
    let mut worker = Worker::start(
        &worker_bin,
        &["--stream-id", "test", "--metrics-port", "0"],
        &[
            ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
            ("MEDIAMTX_RTSP_PORT", rtsp.port().to_string()),
            ("MEDIAMTX_RTMP_PORT", nginx.rtmp_port().to_string()),
            ("WORKER_STS_SERVICE_URL", sts.url()),
            ("WORKER_TARGET_LANGUAGES", "es,de".to_string()),
            ("WORKER_CAPTIONS", "cea608".to_string()),
            ("WORKER_BOUNDARY", "fixed".to_string()),
            ("RUST_LOG", "info,dubbing_worker=debug".to_string()),
        ],
        &dir.join("worker.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let metrics = SocketAddr::from(([127, 0, 0, 1], worker.metrics_port));

    // 30 s in: both publish, the published delay is the offset, captions are counted.
    std::thread::sleep(Duration::from_secs(30));
    let (code, body) = http_get(metrics, "/status", Duration::from_secs(2)).unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    eprintln!("[{name}] status ({code}): {status}");
    assert_eq!(status["captions"], "cea608");
    assert_eq!(status["output"], "rtmp");
    for (i, l) in languages.iter().enumerate() {
        let s = &status["languages"][i];
        assert_eq!(s["language"], *l);
        let delay = s["published_delay_ms"].as_f64().unwrap();
        assert!((5_900.0..6_600.0).contains(&delay), "{l}: delay {delay} ms");
        assert!(
            s["captions"]["shown"].as_u64().unwrap() >= 10,
            "{l}: {}",
            s["captions"]
        );
    }
    let m = scrape(worker.metrics_port).unwrap();
    for l in languages {
        let shown = m
            .sum(
                "worker_captions_total",
                &[("language", l), ("status", "shown")],
            )
            .unwrap_or(0.0);
        assert!(shown >= 10.0, "{l}: {shown} captions shown in /metrics");
    }

    let status = worker
        .proc
        .wait_timeout(Duration::from_secs(75))
        .unwrap_or_else(|| panic!("the worker did not end\n{}", worker.proc.tail(40)));
    assert!(
        status.success(),
        "worker: {status}\n{}",
        worker.proc.tail(40)
    );
    let log = worker.proc.lines();
    for (l, c) in languages.iter().zip(captures.iter_mut()) {
        wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
            (!nginx.stream(app, l).is_some_and(|s| s.publishing)).then_some(())
        });
        let exit = c.finish(&nginx, app, l, Duration::from_secs(10));
        assert!(
            exit.is_some_and(|s| s.success()),
            "subscriber {l}: {exit:?}"
        );
    }
    drop(worker);
    drop(nginx);
    drop(rtsp);
    drop(sts);
    for (l, c) in languages.iter().zip(&captures) {
        check_captions(name, c.path(), "first", l, &log);
        assert!(
            decode_captions(c.path(), "second").unwrap().is_empty(),
            "{l}: CC3 is empty in a publication of its own"
        );
        assert_markers_in_sync(name, c.path(), 5);
    }
    eprintln!("files in {}", dir.display());
}

/// SRT output (`WORKER_OUTPUT=srt`): one MPEG-TS publication holding the video, each dubbed
/// language as an AAC track tagged with its ISO 639 code in `WORKER_TARGET_LANGUAGES` order
/// and the original after them (`WORKER_OUTPUT_ORIGINAL=true`), the first language's
/// captions on CC1 and the second's on CC3. The worker starts before its SRT listener (an
/// ffmpeg on 127.0.0.1): "Connection does not exist" is an output outage, reconnected with
/// backoff; the listener gets the stream from a random access point on. ffprobe shows every
/// track tagged; the markers are in sync in every audio track; the captions decode.
#[test]
fn live_srt_publication_carries_every_language() {
    let worker_bin = worker_binary();
    if !require(check_environment())
        || !require(if worker_bin.is_file() {
            Ok(())
        } else {
            Err(format!("{} not found", worker_bin.display()))
        })
    {
        return;
    }
    let name = "live_srt";
    let dir = test_dir(name);
    let sts = StsServer::start(ServerConfig::default()).expect("start the STS server");
    let rtsp = RtspServer::start(Path::new(FIXTURE), "/live/test/in").expect("start RTSP");
    let port = free_udp_port();
    let mut worker = Worker::start(
        &worker_bin,
        &["--stream-id", "test", "--metrics-port", "0"],
        &[
            ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
            ("MEDIAMTX_RTSP_PORT", rtsp.port().to_string()),
            ("MEDIAMTX_SRT_PORT", port.to_string()),
            ("WORKER_OUTPUT", "srt".to_string()),
            ("WORKER_OUTPUT_ORIGINAL", "true".to_string()),
            ("WORKER_STS_SERVICE_URL", sts.url()),
            ("WORKER_TARGET_LANGUAGES", "es,de".to_string()),
            ("WORKER_CAPTIONS", "cea608".to_string()),
            ("WORKER_BOUNDARY", "fixed".to_string()),
        ],
        &dir.join("worker.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let metrics = SocketAddr::from(([127, 0, 0, 1], worker.metrics_port));
    // No listener yet: the first connection fails (SRT's 3 s connection timeout).
    worker
        .proc
        .wait_for_line("Connection does not exist", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no output outage\n{}", worker.proc.tail(30)));
    let out = dir.join("received.ts");
    let mut listener = SrtListener::start(port, &out, &dir.join("ffmpeg-srt.log"))
        .unwrap_or_else(|e| panic!("{e}"));
    let up = wait_for(Duration::from_secs(30), Duration::from_millis(500), || {
        let m = scrape(worker.metrics_port).ok()?;
        (m.value("worker_output_up") == Some(1.0)).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "the SRT output never came up: {:?}\n{}",
            http_get(metrics, "/status", Duration::from_secs(2)),
            worker.proc.tail(30)
        )
    });
    assert!(
        up.value("worker_output_reconnects_total").unwrap_or(0.0) >= 1.0,
        "no reconnection counted"
    );
    let (_, body) = http_get(metrics, "/status", Duration::from_secs(2)).unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    eprintln!("[{name}] status: {status}");
    assert_eq!(status["output"], "srt");
    for i in 0..2 {
        let delay = status["languages"][i]["published_delay_ms"]
            .as_f64()
            .unwrap();
        assert!((5_900.0..6_600.0).contains(&delay), "delay {delay} ms");
    }

    let exit = worker
        .proc
        .wait_timeout(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("the worker did not end\n{}", worker.proc.tail(40)));
    assert!(exit.success(), "worker: {exit}\n{}", worker.proc.tail(40));
    let done = listener.proc.wait_timeout(Duration::from_secs(20));
    assert!(
        done.is_some_and(|s| s.success()),
        "ffmpeg listener: {done:?}\n{}",
        listener.proc.tail(20)
    );
    drop(worker);
    drop(rtsp);
    drop(sts);

    // The tracks, in order and tagged (ISO 639-2/B).
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries"])
        .arg("stream=index,codec_type,codec_name:stream_tags=language")
        .args(["-of", "csv=p=0"])
        .arg(&out)
        .output()
        .unwrap();
    let streams = String::from_utf8_lossy(&probe.stdout).to_string();
    eprintln!("[{name}] ffprobe:\n{streams}");
    // The program's streams, then the file's: the file's.
    let lines: Vec<&str> = streams
        .trim()
        .rsplit("\n\n")
        .next()
        .unwrap_or_default()
        .lines()
        .collect();
    assert_eq!(
        lines,
        [
            "0,h264,video",
            "1,aac,audio,spa",
            "2,aac,audio,ger",
            "3,aac,audio,eng"
        ],
        "{streams}"
    );
    // The markers in sync in every audio track (the stream joined ~5 s in).
    for track in 0..3 {
        let r = dubbing_syncmeter::measure_with(
            &out,
            &dubbing_syncmeter::Options {
                audio_track: track,
                ..Default::default()
            },
        )
        .unwrap();
        for m in &r.markers {
            eprintln!(
                "[{name}] track {track}: marker at {:7.3} s: A/V delta {:+6.2} ms",
                m.video_s, m.delta_ms
            );
            assert!(m.delta_ms.abs() <= 10.0, "track {track}: {m:?}");
        }
        assert!(r.markers.len() >= 4, "track {track}: {:?}", r.markers);
    }
    // CC1 is the first language, CC3 the second.
    for (field, l) in [("first", "es"), ("second", "de")] {
        let cues = decode_captions(&out, field).unwrap();
        eprintln!(
            "[{name}] {field} field: {} cues, first {:?}",
            cues.len(),
            cues.first()
        );
        assert!(cues.len() >= 30, "{l}: {} cues", cues.len());
        let prefix = format!("[{l}] echo of fragment ");
        assert!(cues.iter().all(|c| c.text.starts_with(&prefix)), "{cues:?}");
    }
    eprintln!("files in {}", dir.display());
}

/// Not a test: with `LIVE_RTSP_CHILD=<file>` set, serves that file as [`RtspServer`] does,
/// in this process, until killed; prints `rtsp port N` on stderr. Lets a test freeze the
/// server (SIGSTOP), which an in-process server cannot be. Without the variable: nothing.
#[test]
fn rtsp_server_child() {
    let Some(file) = std::env::var_os("LIVE_RTSP_CHILD") else {
        return;
    };
    let server = RtspServer::start(Path::new(&file), "/live/test/in").expect("RTSP server");
    eprintln!("rtsp port {}", server.port());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// This test binary as an RTSP server child process serving `file` (see
/// [`rtsp_server_child`]); returns it and its port.
fn rtsp_server_process(file: &Path, log: &Path) -> (Proc, u16) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "rtsp_server_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("LIVE_RTSP_CHILD", file)
    .stdout(std::process::Stdio::null());
    let mut proc = Proc::spawn("rtsp-server", cmd, log).expect("run the RTSP server child");
    proc.term_grace = Duration::from_secs(2);
    let line = proc
        .wait_for_line("rtsp port ", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the RTSP server child did not start\n{}", proc.tail(20)));
    let port = line
        .rsplit(' ')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("a port");
    (proc, port)
}

/// The RTSP server frozen (SIGSTOP) for 8 s, 20 s into the stream, then resumed (issue 12,
/// item 5: before the source was reconnected, ≈ 2.9 s of audio came out with timestamps not
/// after the previous ones, as the 8 s the server held arrived in a burst). Now the worker
/// reconnects after `WORKER_SOURCE_TIMEOUT_MS`, fills the audio with silence meanwhile and
/// maps the new session onto the same timeline: published audio and video timestamps stay
/// increasing, the audio has no hole, and the worker still ends at the end of the stream.
/// The fragment the freeze cut short is completed with silence 3.3 s into the freeze (not at
/// the 5 s timeout, when it was too late for the muxer: FLV audio timestamps collapsed onto
/// the video's, seen in CI). The server runs as a child process (this test binary,
/// [`rtsp_server_child`]) so that it can be frozen.
#[test]
fn live_rtsp_source_frozen_8s() {
    rtsp_source_frozen("live_rtsp_source_frozen_8s", Duration::from_secs(8), true);
}

/// The RTSP server frozen for 4 s: less than the source timeout, no reconnection. The audio
/// is filled with silence once it is 3.3 s behind, the server's late audio for that time is
/// dropped and its late video published: timestamps stay increasing, no audio hole.
#[test]
fn live_rtsp_source_stalled_4s() {
    rtsp_source_frozen("live_rtsp_source_stalled_4s", Duration::from_secs(4), false);
}

/// The RTSP server child frozen for `freeze_for` 20 s into the run; the worker reconnects
/// (`reconnect`) or rides the stall out.
fn rtsp_source_frozen(name: &str, freeze_for: Duration, reconnect: bool) {
    let worker_bin = worker_binary();
    if !require(check_environment()) || !worker_bin.is_file() {
        return;
    }
    let dir = test_dir(name);
    let (sts, nginx, capture_path, mut capture) = sts_nginx_and_capture(&dir);
    let (rtsp, port) = rtsp_server_process(Path::new(FIXTURE), &dir.join("rtsp.log"));
    let mut worker = start_worker(&worker_bin, &dir, port, &nginx, &sts);
    let freeze_at = Duration::from_secs(20);
    let mut frozen: Option<Instant> = None;
    let mut resumed = false;
    let limit = Duration::from_secs(60 + 6 + 40) + freeze_for;
    let status = loop {
        if let Some(s) = worker.proc.try_wait() {
            break Some(s);
        }
        if worker.started.elapsed() > limit {
            break None;
        }
        if frozen.is_none() && worker.started.elapsed() >= freeze_at {
            rtsp.signal(SIGSTOP);
            frozen = Some(Instant::now());
            eprintln!("[{name}] RTSP server frozen");
        }
        if !resumed && frozen.is_some_and(|t| t.elapsed() >= freeze_for) {
            rtsp.signal(SIGCONT);
            resumed = true;
            eprintln!("[{name}] RTSP server resumed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !resumed {
        rtsp.signal(SIGCONT);
    }
    let runtime = worker.started.elapsed();
    eprintln!(
        "[{name}] worker: {status:?} after {:.1} s\n{}",
        runtime.as_secs_f64(),
        worker.proc.tail(15)
    );
    if status.is_none() {
        worker.proc.stop(Duration::from_secs(25));
    }
    wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        (!nginx.stream(APP, STREAM).is_some_and(|s| s.publishing)).then_some(())
    });
    let _ = capture.finish(&nginx, APP, STREAM, Duration::from_secs(10));
    drop(worker);
    drop(rtsp);

    let report = |kind: &str, select: &str| -> usize {
        let t = packet_timestamps(&capture_path, select).unwrap();
        let dts: Vec<f64> = t.iter().filter_map(|(p, d)| d.or(*p)).collect();
        let back: Vec<usize> = (1..dts.len()).filter(|&i| dts[i] <= dts[i - 1]).collect();
        // Where they are: the packets around each of the first few.
        for &i in back.iter().take(4) {
            let around = &dts[i.saturating_sub(3)..(i + 3).min(dts.len())];
            eprintln!(
                "[{name}] {kind}: packet {i} at {:.3} s after {:.3} s: {around:.3?}",
                dts[i],
                dts[i - 1]
            );
        }
        let gaps: Vec<(f64, f64)> = dts
            .windows(2)
            .filter(|w| w[1] - w[0] > 0.5)
            .map(|w| (w[0], w[1] - w[0]))
            .collect();
        eprintln!(
            "[{name}] {kind}: {} packets from {:.3} to {:.3} s; {} not after the previous \
             (first at {:?}); gaps over 0.5 s: {gaps:?}",
            dts.len(),
            dts.first().unwrap_or(&f64::NAN),
            dts.last().unwrap_or(&f64::NAN),
            back.len(),
            back.first().map(|&i| dts[i])
        );
        back.len()
    };
    let video_back = report("video", "v:0");
    let audio_back = report("audio", "a:0");
    let status = status.unwrap_or_else(|| panic!("the worker did not end within {limit:?}"));
    assert!(status.success(), "worker: {status}");
    assert_eq!(video_back, 0, "video timestamps not monotonic");
    assert_eq!(audio_back, 0, "audio timestamps not monotonic");
    let log = std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default();
    assert!(log.contains("source stalled"), "no stall filled in");
    assert!(
        !log.contains("-CRITICAL"),
        "GStreamer criticals in the worker's log"
    );
    assert_eq!(
        log.contains("reconnecting to"),
        reconnect,
        "reconnection expected: {reconnect}"
    );
}

/// The fixture's first `seconds` (streams copied: it has a keyframe every second), made once
/// per test binary and length.
fn fixture_cut(seconds: u32) -> PathBuf {
    static MADE: std::sync::Mutex<Vec<(u32, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap();
    if let Some((_, p)) = made.iter().find(|(s, _)| *s == seconds) {
        return p.clone();
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("live");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("speech-{seconds}s.mp4"));
    let o = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-i", FIXTURE])
        .args(["-t", &seconds.to_string(), "-c", "copy"])
        .arg(&out)
        .output()
        .expect("run ffmpeg");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    made.push((seconds, out.clone()));
    out
}

/// Live defect (issue 22, 1): the end of the programme reaches a subscriber. A 45 s file over
/// RTSP (the server ends it with an RTCP BYE), an ffmpeg subscriber from the first byte, an
/// RTMP server that tells its subscribers when the publisher leaves (`play_restart`, as
/// MediaMTX closes its readers): the subscriber ends by itself, soon after the worker, with
/// every video frame and all the audio.
#[test]
fn live_end_of_programme_reaches_the_subscriber() {
    let name = "live_end_of_programme_reaches_the_subscriber";
    let worker_bin = worker_binary();
    if !require(check_environment()) || !worker_bin.is_file() {
        return;
    }
    let dir = test_dir(name);
    let source = fixture_cut(45);
    let sts = StsServer::start(ServerConfig::default()).expect("start the STS server");
    let nginx = NginxRtmp::start_with(&dir, &[APP], "play_restart on;").expect("start nginx");
    let (capture_path, mut capture) = start_capture(&nginx, &dir);
    wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        nginx
            .stream(APP, STREAM)
            .filter(|s| s.nclients >= 1)
            .map(|_| ())
    })
    .unwrap_or_else(|| panic!("no subscriber\n{}", capture.proc().tail(20)));
    let rtsp = RtspServer::start(&source, "/live/test/in").expect("start the RTSP server");
    let mut worker = start_worker(&worker_bin, &dir, rtsp.port(), &nginx, &sts);
    let status = worker
        .proc
        .wait_timeout(Duration::from_secs(45 + 6 + 30))
        .unwrap_or_else(|| panic!("the worker did not end\n{}", worker.proc.tail(40)));
    let exited = Instant::now();
    eprintln!(
        "[{name}] worker exited {status} after {:.1} s",
        worker.started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "worker: {status}\n{}",
        worker.proc.tail(40)
    );
    // The subscriber sees the publication end by itself.
    let sub = capture.proc().wait_timeout(Duration::from_secs(10));
    let sub_after = exited.elapsed();
    let ffmpeg_exit = sub.or_else(|| capture.finish(&nginx, APP, STREAM, Duration::from_secs(10)));
    eprintln!(
        "[{name}] subscriber {} ({ffmpeg_exit:?}) {:.1} s after the worker exited",
        if sub.is_some() {
            "ended by itself"
        } else {
            "still connected: dropped"
        },
        sub_after.as_secs_f64()
    );
    let streams = probe_streams(&capture_path).unwrap();
    let video = streams.iter().find(|s| s.codec_type == "video").unwrap();
    let audio = packet_times(&capture_path, "a:0").unwrap();
    let audio_s = audio.len() as f64 * AAC_FRAME_MS / 1000.0;
    eprintln!(
        "[{name}] subscriber got {} of 1125 video frames, {} AAC frames ({audio_s:.2} s of audio); files in {}",
        video.packets,
        audio.len(),
        dir.display()
    );
    // The worker's RTMP session ended as a publisher ends it (FCUnpublish, deleteStream,
    // then the socket closed), not by a dropped connection: nginx logs the publisher's
    // deleteStream before its disconnect.
    let nginx_log = std::fs::read_to_string(nginx.error_log()).unwrap_or_default();
    let conn = nginx_log
        .lines()
        .find(|l| l.contains("publish: name='out'"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with('*')))
        .expect("the worker's publish in nginx's log")
        .to_string();
    let first = |what: &str| {
        nginx_log
            .lines()
            .position(|l| l.contains(&format!("{conn} {what}")))
    };
    let (deleted, disconnected) = (first("deleteStream"), first("disconnect"));
    eprintln!(
        "[{name}] nginx: publisher {conn} deleteStream at line {deleted:?}, disconnect at line {disconnected:?}"
    );
    assert!(
        deleted.is_some() && deleted < disconnected,
        "the worker's RTMP session was dropped, not closed (no deleteStream before the disconnect)"
    );
    assert!(
        sub.is_some(),
        "the subscriber was still connected 10 s after the worker exited"
    );
    assert_eq!(video.packets, 1125, "video frames");
    assert!(
        audio_s >= 45.0 - AAC_FRAME_MS / 1000.0 * 2.0,
        "{audio_s:.3} s of audio of 45 s"
    );
    drop(rtsp);
}

/// Live defect (issue 22, 3): an RTMP publisher that crashes (SIGKILL 12 s in) and is back
/// 4 s later is an outage, not the end of the programme: the worker goes on with the new
/// publisher. A publisher that leaves and is not stopped by MediaMTX (no SIGINT) is an outage
/// past the grace: exit 5, so that a restart-on-failure policy restarts it.
#[test]
fn live_rtmp_publisher_crash_is_an_outage() {
    let name = "live_rtmp_publisher_crash_is_an_outage";
    let worker_bin = worker_binary();
    if !require(check_environment()) || !worker_bin.is_file() {
        return;
    }
    let dir = test_dir(name);
    let source = fixture_cut(20);
    let (sts, nginx, capture_path, mut capture) = sts_nginx_and_capture(&dir);
    let input = nginx.url(&format!("{APP}/in"));
    let mut worker = Worker::start(
        &worker_bin,
        &[
            "--stream-id",
            "test",
            "--metrics-port",
            "0",
            "--input",
            &input,
        ],
        &[
            ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
            ("MEDIAMTX_RTMP_PORT", nginx.rtmp_port().to_string()),
            ("WORKER_STS_SERVICE_URL", sts.url()),
            ("WORKER_SOURCE_GRACE_MS", "8000".to_string()),
        ],
        &dir.join("worker.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        nginx
            .stream(APP, "in")
            .filter(|s| s.nclients >= 1)
            .map(|_| ())
    })
    .unwrap_or_else(|| panic!("the worker did not subscribe\n{}", worker.proc.tail(30)));
    let mut first = RtmpPublisher::start(&source, &input, &dir.join("publisher-1.log"))
        .expect("start the publisher");
    std::thread::sleep(Duration::from_secs(12));
    first.proc().signal(9);
    let killed = Instant::now();
    let _ = first.proc().wait_timeout(Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        worker.proc.try_wait().is_none(),
        "the worker ended when the publisher crashed\n{}",
        worker.proc.tail(30)
    );
    let mut second = RtmpPublisher::start(&source, &input, &dir.join("publisher-2.log"))
        .expect("start the second publisher");
    let s = second
        .proc()
        .wait_timeout(Duration::from_secs(40))
        .expect("the second publisher ends");
    let left = Instant::now();
    assert!(s.success(), "publisher: {s}");
    // Nobody stops the worker: an outage past the 8 s grace, exit 5.
    let status = worker
        .proc
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the worker did not end\n{}", worker.proc.tail(30)));
    eprintln!(
        "[{name}] worker exit {status} {:.1} s after the second publisher left ({:.1} s after the crash)",
        left.elapsed().as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    let log = worker.proc.lines().join("\n");
    let back = log
        .lines()
        .find(|l| l.contains("source back after an outage of"))
        .unwrap_or_else(|| panic!("the worker did not take the publisher back\n{log}"));
    eprintln!("[{name}] {back}");
    assert!(log.contains("source outage"), "{log}");
    assert!(!log.contains("the end of the programme"), "{log}");
    assert_eq!(status.code(), Some(5), "{}", worker.proc.tail(30));
    let _ = capture.finish(&nginx, APP, STREAM, Duration::from_secs(10));
    let streams = probe_streams(&capture_path).unwrap();
    let video = streams.iter().find(|s| s.codec_type == "video").unwrap();
    eprintln!("[{name}] published {streams:?}; files in {}", dir.display());
    // The first 12 s and the second publisher's 20 s (a keyframe each second).
    assert!(
        video.packets >= (12 + 19) * 25,
        "{} video frames",
        video.packets
    );
    drop(second);
}

/// Live defect (issue 22, 2): RTMP input with the worker subscribed before the publisher
/// (MediaMTX's runOnReady can start it so): the published delay is the offset, measured from
/// the publisher sending a beep to the subscriber receiving it, and the worker reports what
/// it publishes (`worker_published_delay_ms`), not the shift alone.
#[test]
fn live_rtmp_input_subscribed_first_keeps_the_offset() {
    let name = "live_rtmp_input_subscribed_first_keeps_the_offset";
    let worker_bin = worker_binary();
    if !require(check_environment()) || !worker_bin.is_file() {
        return;
    }
    let dir = test_dir(name);
    let source = fixture_cut(20);
    let (sts, nginx, _capture_path, mut capture) = sts_nginx_and_capture(&dir);
    let input = nginx.url(&format!("{APP}/in"));
    let mut worker = Worker::start(
        &worker_bin,
        &[
            "--stream-id",
            "test",
            "--metrics-port",
            "0",
            "--input",
            &input,
        ],
        &[
            ("MEDIAMTX_HOST", "127.0.0.1".to_string()),
            ("MEDIAMTX_RTMP_PORT", nginx.rtmp_port().to_string()),
            ("WORKER_STS_SERVICE_URL", sts.url()),
        ],
        &dir.join("worker.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        nginx
            .stream(APP, "in")
            .filter(|s| s.nclients >= 1)
            .map(|_| ())
    })
    .unwrap_or_else(|| panic!("the worker did not subscribe\n{}", worker.proc.tail(30)));
    // The input as another subscriber sees it: the delay the worker adds is from a beep's
    // arrival there to its arrival from the output (the publisher's and the server's own
    // latency, which the worker cannot see, left out).
    let mut input_capture = RtmpCapture::start_app(
        &nginx,
        APP,
        "in",
        &dir.join("input.flv"),
        &dir.join("ffmpeg-input.log"),
    )
    .expect("start the input subscriber");
    // The worker waits for the publisher a while, as when it is started first.
    std::thread::sleep(Duration::from_secs(2));
    let published_at = Instant::now();
    let mut publisher = RtmpPublisher::start(&source, &input, &dir.join("publisher.log"))
        .expect("start the publisher");
    let mut reported = Vec::new();
    let s = loop {
        if let Some(s) = publisher.proc().try_wait() {
            break s;
        }
        assert!(
            published_at.elapsed() < Duration::from_secs(40),
            "the publisher did not end"
        );
        if let Ok(m) = scrape(worker.metrics_port)
            && let Some(v) = m.value("worker_published_delay_ms")
            && v > 0.0
        {
            reported.push(v);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(s.success(), "publisher: {s}");
    // The publisher ended its programme: MediaMTX would stop the worker.
    worker.proc.signal(2);
    let status = worker
        .proc
        .wait_timeout(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the worker did not end\n{}", worker.proc.tail(30)));
    assert!(
        status.success(),
        "worker: {status}\n{}",
        worker.proc.tail(30)
    );
    wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        (!nginx.stream(APP, STREAM).is_some_and(|s| s.publishing)).then_some(())
    });
    let beeps = capture.beep_arrivals();
    let input_beeps = input_capture.beep_arrivals();
    let _ = capture.finish(&nginx, APP, STREAM, Duration::from_secs(10));
    let _ = input_capture.finish(&nginx, APP, "in", Duration::from_secs(10));
    // The beeps from the publisher to the input subscriber (the publisher's start-up and the
    // server), and from the input subscriber to the output one (the worker).
    let markers: Vec<f64> = input_report()
        .markers
        .iter()
        .map(|m| m.audio_s)
        .filter(|s| *s < 19.0)
        .collect();
    let transport: Vec<f64> = input_beeps
        .iter()
        .zip(&markers)
        .map(|((_, at), m)| {
            at.saturating_duration_since(published_at).as_secs_f64() * 1000.0 - m * 1000.0
        })
        .collect();
    let delays: Vec<f64> = beeps
        .iter()
        .zip(&input_beeps)
        .map(|((_, out), (_, inp))| out.saturating_duration_since(*inp).as_secs_f64() * 1000.0)
        .collect();
    eprintln!("[{name}] publisher start → input subscriber: {transport:.0?} ms");
    let reported_median = {
        let mut r = reported.clone();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(f64::NAN)
    };
    eprintln!(
        "[{name}] beeps at {:?}; input → output delays {delays:.0?} ms; the worker reported {reported_median:.0} ms (median of {}); files in {}",
        beeps.iter().map(|b| b.0).collect::<Vec<_>>(),
        reported.len(),
        dir.display()
    );
    assert_eq!(
        delays.len(),
        markers.len(),
        "beeps heard: {beeps:?} {input_beeps:?}"
    );
    for d in &delays {
        assert!(
            (OFFSET_MS - 100.0..=OFFSET_MS + 300.0).contains(d),
            "published {d:.0} ms after the input had it (offset {OFFSET_MS} ms)"
        );
        assert!(
            (d - reported_median).abs() <= 400.0,
            "measured {d:.0} ms, reported {reported_median:.0} ms"
        );
    }
}
