//! The stream worker's command line: `--help` lists the settings, bad settings exit 2 with a
//! clear message, an unreachable input is retried for the source grace then exits 4, an
//! input without audio or video is a clear error (exit 7), SIGTERM while connecting exits 0,
//! idle connections to the metrics port cannot take the worker down, and the API key never
//! shows in its logs (even at the most verbose levels).

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
        // Issue 20, 10: values the elements would refuse (keeping their defaults after a
        // GLib warning) or that wrap around in nanoseconds.
        (
            vec!["--stream-id", "test", "--sts-mode", "passthrough"],
            vec![("WORKER_AV_OFFSET_NS", "6000000000000")],
            "WORKER_AV_OFFSET_NS 6000000000000 (6000 s) is above",
        ),
        (
            vec!["--stream-id", "test", "--sts-mode", "passthrough"],
            vec![("WORKER_STS_TIMEOUT_MS", "18446744073710")],
            "WORKER_STS_TIMEOUT_MS 18446744073710 ms is outside",
        ),
        // Issue 20, 9: a key that cannot be sent is a startup error, not a silent fallback
        // of every fragment (a trailing newline is trimmed, as from the file).
        (
            vec!["--stream-id", "test"],
            vec![
                ("WORKER_STS_SERVICE_URL", "http://127.0.0.1:1/p"),
                ("WORKER_STS_API_KEY", "sk-first\nsk-second"),
            ],
            "WORKER_STS_API_KEY: the key has a line break at character 9",
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
fn unreachable_input_is_retried_then_exits_4_without_leaking_secrets() {
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
        // Retried with the backoff (1, 2, 4 s …) for the source grace, then exit 4.
        .env("WORKER_SOURCE_TIMEOUT_MS", "1000")
        .env("WORKER_SOURCE_GRACE_MS", "5000")
        .env("RUST_LOG", "trace")
        .env("GST_DEBUG", "*:6")
        .output()
        .unwrap();
    let took = t.elapsed();
    std::fs::remove_file(&key_file).unwrap();
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        &out[out.len().saturating_sub(3000)..]
    );
    assert!(
        out.matches("cannot connect to the input").count() >= 3,
        "attempts at 0, 1 and 3 s: {}",
        &out[out.len().saturating_sub(3000)..]
    );
    assert!(
        out.contains("unreachable"),
        "{}",
        &out[out.len().saturating_sub(3000)..]
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(12),
        "the 5 s grace: {took:?}"
    );
    // GStreamer's own log ran at level 6 (it changes states, sets up rtspsrc): the
    // redaction holds for its lines too.
    assert!(
        out.contains("GST_STATES") && out.contains("rtspsrc"),
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
        Some(7),
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
    assert_eq!(status.code(), Some(7), "{tail}");
    assert!(out.contains("has no video track"), "{tail}");
    assert!(!out.contains("has no audio track"), "{tail}");
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The worker on an input nothing serves (it keeps retrying for `grace_ms`), its stderr
/// piped; returns it and its metrics port.
fn worker_retrying(grace_ms: u64, fd_limit: Option<u64>) -> (std::process::Child, u16) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut c = worker();
    c.args([
        "--stream-id",
        "test",
        "--input",
        &format!("rtsp://127.0.0.1:{}/live/test/in", closed_port()),
        "--output",
        "rtmp://127.0.0.1:1/live/test/out",
        "--sts-mode",
        "passthrough",
    ])
    .env("WORKER_SOURCE_GRACE_MS", grace_ms.to_string())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    if let Some(n) = fd_limit {
        // SAFETY: setrlimit(2) between fork and exec, on the child only.
        unsafe {
            c.pre_exec(move || {
                let l = libc_rlimit { cur: n, max: n };
                setrlimit(7 /* RLIMIT_NOFILE */, &l);
                Ok(())
            });
        }
    }
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(rest) = line.strip_prefix("metrics listening on ") {
                let _ = tx.send(
                    rest.rsplit(':')
                        .next()
                        .unwrap()
                        .trim()
                        .parse::<u16>()
                        .unwrap(),
                );
                sent = true;
            }
            eprintln!("[worker] {line}");
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the worker printed no metrics port");
    (child, port)
}

#[repr(C)]
struct libc_rlimit {
    cur: u64,
    max: u64,
}

unsafe extern "C" {
    fn setrlimit(resource: i32, rlim: *const libc_rlimit) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live defect (issue 22, 4): SIGTERM (or SIGINT, SIGHUP) while the first connection is
/// being retried: nothing was published, the worker exits 0 at once (`--help`: 0 after a
/// signal), not 1.
#[test]
fn a_signal_while_connecting_exits_0() {
    for (name, sig) in [("SIGTERM", 15), ("SIGHUP", 1)] {
        let (mut child, _) = worker_retrying(30_000, None);
        // Past the first failure and into the backoff.
        std::thread::sleep(Duration::from_millis(1500));
        let t = Instant::now();
        // SAFETY: kill(2) on our own child.
        unsafe {
            kill(child.id() as i32, sig);
        }
        let status = wait_exit(&mut child, Duration::from_secs(10));
        eprintln!("{name} while connecting: {status:?} in {:?}", t.elapsed());
        let status = status.unwrap_or_else(|| panic!("{name}: still running 10 s later"));
        assert_eq!(status.code(), Some(0), "{name}: {status}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{name}: {:?}",
            t.elapsed()
        );
    }
}

/// Issue 20, 7: idle connections to the metrics port (more than the worker's descriptors
/// allow) neither crash the worker (GLib aborts when it cannot create a new element's
/// wakeup pipes: every reconnection attempt makes one) nor keep `/health` unreachable for
/// long: past a cap the connections are closed as they come, idle ones after 5 s.
#[test]
fn idle_connections_to_the_metrics_port_cannot_take_the_worker_down() {
    let (mut child, port) = worker_retrying(30_000, Some(256));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            idle.push(s);
        }
    }
    let flooded = Instant::now();
    // /health answers (503: no source) within the idle timeout, while the idle sockets stay
    // open on this side.
    let mut answered = None;
    while flooded.elapsed() < Duration::from_secs(12) {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.starts_with("HTTP/1.1 503") || body.starts_with("HTTP/1.1 200") {
                answered = Some(flooded.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The worker keeps retrying its input (a new rtspsrc each time) meanwhile.
    std::thread::sleep(Duration::from_secs(4));
    let alive = child.try_wait().unwrap().is_none();
    eprintln!(
        "{} idle connections: /health answered after {answered:?}; worker alive: {alive}",
        idle.len()
    );
    drop(idle);
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(alive, "the worker died: {status}");
    let at = answered.expect("/health unreachable for 12 s");
    assert!(at < Duration::from_secs(7), "/health answered after {at:?}");
}

/// Issue 20, 8: `docker/run-worker.sh` gave `match1` and `match188` the same metrics port
/// (cksum % 900), and the second worker exited 2 forever. Each worker now takes a free port
/// and writes a Prometheus discovery file with it, removed when it exits.
#[test]
fn docker_workers_get_ports_that_cannot_clash_and_are_discoverable() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docker/run-worker.sh");
    let bin = worker_binary();
    let sd = std::env::temp_dir().join(format!("worker-sd-{}", std::process::id()));
    std::fs::create_dir_all(&sd).unwrap();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let start = |id: &str| {
        let mut c = Command::new("sh");
        c.arg(script)
            .arg(id)
            .env("PATH", &path)
            .env_remove("WORKER_METRICS_PORT")
            .env("WORKER_METRICS_BIND", "127.0.0.1")
            .env("WORKER_METRICS_SD_DIR", &sd)
            .env("WORKER_METRICS_SD_HOST", "127.0.0.1")
            .env("MEDIAMTX_HOST", "127.0.0.1")
            .env("MEDIAMTX_RTSP_PORT", closed_port().to_string())
            .env("WORKER_STS_SERVICE_URL", "http://127.0.0.1:1/p")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let mut workers = [start("match1"), start("match188")];
    // Both run and are listed, each at its own port.
    let t = Instant::now();
    let targets = loop {
        let read = |id: &str| -> Option<String> {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(sd.join(format!("{id}.json"))).ok()?)
                    .ok()?;
            assert_eq!(v[0]["labels"]["stream_id"], id);
            v[0]["targets"][0].as_str().map(String::from)
        };
        if let (Some(a), Some(b)) = (read("match1"), read("match188")) {
            break (a, b);
        }
        for w in workers.iter_mut() {
            if let Some(s) = w.try_wait().unwrap() {
                panic!("a worker exited: {s}");
            }
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no discovery files");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("discovered: {targets:?}");
    assert_ne!(targets.0, targets.1);
    for target in [&targets.0, &targets.1] {
        let addr: std::net::SocketAddr = target.parse().unwrap();
        assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    }
    std::thread::sleep(Duration::from_secs(1));
    for w in workers.iter_mut() {
        assert!(w.try_wait().unwrap().is_none(), "a worker exited");
        // SAFETY: kill(2) on our own child (sh exec'd the worker: the same process).
        unsafe {
            kill(w.id() as i32, 15);
        }
        let s = wait_exit(w, Duration::from_secs(10)).expect("the worker ends on SIGTERM");
        assert_eq!(s.code(), Some(0));
    }
    assert!(!sd.join("match1.json").exists(), "the discovery file stays");
    let _ = std::fs::remove_dir_all(&sd);
}
