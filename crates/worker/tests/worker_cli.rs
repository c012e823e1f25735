//! The stream worker's command line: `--help` lists the settings, bad settings exit 2 with a
//! clear message, an unreachable
//! input is retried 3 times then exits 1, an input without audio is a clear error, and the API
//! key never shows in its logs (even at the most verbose levels).

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{init, worker_binary};
use gst_rtsp_server::prelude::*;

fn worker() -> Command {
    let mut c = Command::new(worker_binary());
    for v in [
        "WORKER_STS_SERVICE_URL",
        "WORKER_STS_API_KEY",
        "WORKER_METRICS_PORT",
        "MEDIAMTX_HOST",
    ] {
        c.env_remove(v);
    }
    c.env("WORKER_METRICS_PORT", "0");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn help_lists_every_setting_and_its_variable() {
    // The URL may carry a password: --help names the variable, never its value.
    let o = worker()
        .arg("--help")
        .env("WORKER_STS_SERVICE_URL", "http://u:pw-in-url-77@sts/p")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.starts_with("Dubs one live stream"), "{help}");
    for needle in [
        "Usage: dubbing-worker",
        "--stream-id",
        "--input",
        "--output",
        "--sts-mode",
        "--log-json",
        "[env: WORKER_STS_SERVICE_URL]",
        "[env: WORKER_FRAGMENT_TARGET_DUR=",
        "[env: WORKER_AV_OFFSET_NS=",
        "[env: WORKER_METRICS_PORT=",
        "[env: MEDIAMTX_RTSP_PORT=",
        "WORKER_STS_API_KEY",
        "WORKER_STS_API_KEY_FILE",
        "[env: WORKER_TARGET_LANGUAGES=]",
        "[env: WORKER_BOUNDARY=",
        "[env: WORKER_BOUNDARY_MIN_MS=",
    ] {
        assert!(help.contains(needle), "{needle} missing from\n{help}");
    }
    assert!(!help.contains("pw-in-url-77"), "{help}");
    let o = worker().arg("--version").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        concat!("dubbing-worker ", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_settings_exit_2_with_a_clear_message() {
    for (args, env, needle) in [
        (vec!["--stream-id", "a/b"], vec![], "only letters, digits"),
        (
            vec!["--stream-id", "test"],
            vec![],
            "WORKER_STS_SERVICE_URL",
        ),
        (
            vec!["--stream-id", "test", "--sts-mode", "magic"],
            vec![],
            "--sts-mode",
        ),
        (
            vec![
                "--stream-id",
                "test",
                "--input",
                "http://x/y",
                "--sts-mode",
                "passthrough",
            ],
            vec![],
            "not an rtsp:// or rtmp:// URL",
        ),
        (
            vec!["--stream-id", "test"],
            vec![("WORKER_STS_SERVICE_URL", "ftp://sts")],
            "not an http(s):// URL",
        ),
        (
            vec!["--stream-id", "test", "--sts-mode", "passthrough"],
            vec![("WORKER_FRAGMENT_TARGET_DUR", "5")],
            "WORKER_FRAGMENT_TARGET_DUR",
        ),
    ] {
        let mut c = worker();
        c.args(&args);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
    }
}

#[test]
fn unreachable_input_is_retried_then_exits_1_without_leaking_secrets() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key_file = std::env::temp_dir().join(format!("worker-cli-key-{}", std::process::id()));
    std::fs::write(&key_file, "sk-worker-secret-991\n").unwrap();
    let t = Instant::now();
    let o = worker()
        .args([
            "--stream-id",
            "test",
            "--input",
            &format!("rtsp://cam:cam-pass-4411@127.0.0.1:{port}/live/test/in"),
            "--output",
            "rtmp://127.0.0.1:1/live/stream-key-8812",
        ])
        .env(
            "WORKER_STS_SERVICE_URL",
            "http://sts:sts-pass-5521@127.0.0.1:1/api/v1/sts/process",
        )
        .env("WORKER_STS_API_KEY_FILE", &key_file)
        .env("RUST_LOG", "trace")
        .env("GST_DEBUG", "*:6")
        .output()
        .unwrap();
    let took = t.elapsed();
    std::fs::remove_file(&key_file).unwrap();
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        &out[out.len().saturating_sub(3000)..]
    );
    assert_eq!(out.matches("retry ").count(), 3, "three retries");
    assert!(
        took >= Duration::from_secs(7),
        "1 s + 2 s + 4 s of backoff: {took:?}"
    );
    // GStreamer's own log ran at level 6 (it parses the pipeline, sets up rtspsrc): the
    // redaction holds for its lines too.
    assert!(
        out.contains("GST_PIPELINE") && out.contains("rtspsrc"),
        "GStreamer's debug log is missing: {}",
        &out[..out.len().min(2000)]
    );
    for secret in [
        "sk-worker-secret",
        "cam-pass-4411",
        "sts-pass-5521",
        "stream-key-8812",
    ] {
        if let Some(at) = out.find(secret) {
            panic!(
                "{secret} is in the worker's output: {}",
                &out[at.saturating_sub(300)..(at + 100).min(out.len())]
            );
        }
    }
}

#[test]
fn input_without_audio_is_a_clear_error() {
    // An RTMP input with video only, served by a local nginx-rtmp would be the real thing; an
    // RTSP server is simpler: GStreamer's, with a video-only stream.
    init();
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service("0");
    let factory = gst_rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(
        "( videotestsrc is-live=true ! video/x-raw,width=160,height=90,framerate=25/1 \
           ! x264enc tune=zerolatency key-int-max=25 ! rtph264pay name=pay0 pt=96 )",
    );
    factory.set_shared(true);
    factory.set_protocols(gst_rtsp_server::gst_rtsp::RTSPLowerTrans::TCP);
    server
        .mount_points()
        .unwrap()
        .add_factory("/live/novideo/in", factory);
    let ctx = gst::glib::MainContext::new();
    let id = server.attach(Some(&ctx)).unwrap();
    let port = server.bound_port();
    let main_loop = gst::glib::MainLoop::new(Some(&ctx), false);
    let ml = main_loop.clone();
    let thread = std::thread::spawn(move || ml.run());

    let o = worker()
        .args([
            "--stream-id",
            "novideo",
            "--input",
            &format!("rtsp://127.0.0.1:{port}/live/novideo/in"),
            "--output",
            "rtmp://127.0.0.1:1/live/novideo/out",
            "--sts-mode",
            "passthrough",
        ])
        .output()
        .unwrap();
    main_loop.quit();
    thread.join().unwrap();
    if let Some(src) = ctx.find_source_by_id(&id) {
        src.destroy();
    }
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        &out[out.len().saturating_sub(3000)..]
    );
    assert!(
        out.contains("has no audio track"),
        "{}",
        &out[out.len().saturating_sub(3000)..]
    );
}

/// Audio-only input (radio, an audio feed): a clear error at once, exit 1, instead of
/// running without publishing anything.
#[test]
fn input_without_video_is_a_clear_error() {
    init();
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service("0");
    let factory = gst_rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(
        "( audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! audioconvert \
           ! voaacenc ! aacparse ! rtpmp4gpay name=pay0 pt=97 )",
    );
    factory.set_shared(true);
    factory.set_protocols(gst_rtsp_server::gst_rtsp::RTSPLowerTrans::TCP);
    server
        .mount_points()
        .unwrap()
        .add_factory("/live/noaudio/in", factory);
    let ctx = gst::glib::MainContext::new();
    let id = server.attach(Some(&ctx)).unwrap();
    let port = server.bound_port();
    let main_loop = gst::glib::MainLoop::new(Some(&ctx), false);
    let ml = main_loop.clone();
    let thread = std::thread::spawn(move || ml.run());

    let mut child = worker()
        .args([
            "--stream-id",
            "audioonly",
            "--input",
            &format!("rtsp://127.0.0.1:{port}/live/noaudio/in"),
            "--output",
            "rtmp://127.0.0.1:1/live/audioonly/out",
            "--sts-mode",
            "passthrough",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t.elapsed();
    let o = child.wait_with_output().unwrap();
    main_loop.quit();
    thread.join().unwrap();
    if let Some(src) = ctx.find_source_by_id(&id) {
        src.destroy();
    }
    let out = text(&o);
    let tail = &out[out.len().saturating_sub(3000)..];
    let status = status.unwrap_or_else(|| panic!("still running after 20 s\n{tail}"));
    eprintln!(
        "audio-only input: exit {status} after {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "{tail}");
    assert!(out.contains("has no video track"), "{tail}");
    assert!(!out.contains("has no audio track"), "{tail}");
}
