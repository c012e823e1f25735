//! The translate mode's Whisper helper process as a part of the server: a missing model is a
//! clear start-up error; the helper dies with the server (even on SIGKILL); a helper that dies
//! or hangs in the middle of a stream fails its fragment in time, is restarted, and the next
//! fragments are recognised again; silence is answered at once meanwhile.
//!
//! Needs `scripts/install-deps.sh` (the Whisper venv and models) and the `ffmpeg` CLI. Uses
//! Whisper tiny.en (the cheapest model): what is tested is the supervision, not accuracy
//! (crates/worker/tests/e2e_translate.rs measures the default recogniser).

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dubbing_sts_proto::{AudioPayload, ProcessRequest, ProcessResponse, StsConfig};
use dubbing_sts_server::speech::AsrEngine;
use dubbing_sts_server::{Mode, ServerConfig, StsServer, TranslateConfig};
use reqwest::StatusCode;
use reqwest::blocking::Client;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/speech-60s.mp4");
const RATE: u32 = 48_000;

/// The fixture's audio, 48 kHz stereo S16LE.
fn fixture() -> &'static [u8] {
    static PCM: OnceLock<Vec<u8>> = OnceLock::new();
    PCM.get_or_init(|| {
        let out = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i", FIXTURE])
            .args([
                "-f",
                "s16le",
                "-acodec",
                "pcm_s16le",
                "-ar",
                "48000",
                "-ac",
                "2",
                "-",
            ])
            .output()
            .expect("run ffmpeg (scripts/install-deps.sh installs it)");
        assert!(out.status.success());
        out.stdout
    })
}

fn clip(start_s: f64, end_s: f64) -> Vec<u8> {
    let at = |t: f64| ((t * f64::from(RATE)) as usize * 4).min(fixture().len());
    fixture()[at(start_s)..at(end_s)].to_vec()
}

fn request(seq: u64, pcm: &[u8], timeout_ms: u64) -> ProcessRequest {
    ProcessRequest {
        fragment_id: format!("00000000-0000-4000-8000-{seq:012x}"),
        stream_id: "whisper-test".into(),
        sequence_number: seq,
        audio: AudioPayload::from_pcm(RATE, 2, pcm),
        config: StsConfig {
            source_language: "en".into(),
            target_language: "es".into(),
            voice_profile: "default".into(),
        },
        timeout_ms,
    }
}

fn post(url: &str, req: &ProcessRequest) -> (StatusCode, ProcessResponse, Duration) {
    let t0 = Instant::now();
    let resp = Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .post(url)
        .json(req)
        .send()
        .unwrap();
    let status = resp.status();
    let body: ProcessResponse = resp.json().unwrap();
    (status, body, t0.elapsed())
}

fn start_tiny() -> StsServer {
    StsServer::start(ServerConfig {
        mode: Mode::Translate,
        translate: TranslateConfig {
            asr: AsrEngine::WhisperTinyEn,
            ..Default::default()
        },
        ..Default::default()
    })
    .expect("translate mode with Whisper (scripts/install-deps.sh installs it)")
}

fn whisper_pid(srv: &StsServer) -> u32 {
    srv.translate_engines().unwrap().whisper.unwrap().pid
}

/// Waits until the process `pid` (not necessarily our child) has ended, at most `timeout`:
/// a pidfd becomes readable when its process terminates.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return true; // no such process: already gone and reaped
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) };
    n == 1
}

/// Waits (at most `timeout`) for the helper to be in `state`, checking the server's status.
fn wait_state(srv: &StsServer, state: &str, timeout: Duration) {
    let until = Instant::now() + timeout;
    loop {
        let s = srv.translate_engines().unwrap().whisper.unwrap();
        if s.state == state {
            return;
        }
        assert!(Instant::now() < until, "helper {s:?} never {state}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_missing_model_is_a_clear_startup_error() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sts-server"))
        .args(["--mode", "translate", "--port", "0"])
        .env("DUBBING_WHISPER_HOME", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(!out.status.success());
    assert!(stderr.contains("whisper-base"), "{stderr}");
    assert!(stderr.contains("not installed"), "{stderr}");
    assert!(
        stderr.contains("install it with scripts/install-deps.sh"),
        "{stderr}"
    );
}

#[test]
fn the_helper_dies_with_the_server_even_on_sigkill() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_sts-server"))
        .args([
            "--mode",
            "translate",
            "--asr",
            "whisper-tiny-en",
            "--port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let health: serde_json::Value = Client::new()
        .get(format!("{base}/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let engines = &health["engines"];
    assert_eq!(engines["asr"], "whisper-tiny-en", "{health}");
    assert_eq!(engines["tts"], "espeak-ng", "{health}");
    assert_eq!(engines["voices"]["es"], "espeak-ng", "{health}");
    assert_eq!(engines["whisper"]["state"], "ready", "{health}");
    let pid = engines["whisper"]["pid"].as_u64().unwrap() as u32;
    assert!(pid > 0);
    server.kill().unwrap(); // SIGKILL: no destructor runs
    server.wait().unwrap();
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "the Whisper helper {pid} outlived its server"
    );
}

#[test]
fn a_helper_dying_mid_fragment_fails_it_at_once_and_is_restarted() {
    let srv = start_tiny();
    let url = srv.url();
    // 20 s of speech: several seconds of recognition, long enough to be killed in.
    let long = clip(0.0, 20.0);
    let first_pid = whisper_pid(&srv);
    let (status, body, took) = std::thread::scope(|s| {
        let answer = s.spawn(|| post(&url, &request(0, &long, 30_000)));
        wait_state(&srv, "busy", Duration::from_secs(20));
        assert!(srv.kill_recognizer_helper());
        answer.join().unwrap()
    });
    eprintln!(
        "killed mid-fragment: {status} {:?} after {took:?}",
        body.error
    );
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let e = body.error.unwrap();
    assert!(e.message.contains("died"), "{}", e.message);
    assert!(took < Duration::from_secs(25), "answered after {took:?}");
    // The next fragments are recognised by a new helper.
    for (seq, (a, b)) in [(1, (5.4, 8.9)), (2, (9.2, 13.2))] {
        let (status, body, took) = post(&url, &request(seq, &clip(a, b), 30_000));
        eprintln!("{status} {:?} in {took:?}", body.transcript);
        assert_eq!(status, StatusCode::OK, "{:?}", body.error);
        assert!(!body.transcript.unwrap_or_default().trim().is_empty());
    }
    let w = srv.translate_engines().unwrap().whisper.unwrap();
    assert_eq!(w.restarts, 1, "{w:?}");
    assert_ne!(w.pid, first_pid);
    assert!(wait_gone(first_pid, Duration::from_secs(5)));
    srv.stop();
}

#[test]
fn a_hung_helper_is_answered_by_the_deadline_then_replaced() {
    let srv = start_tiny();
    let url = srv.url();
    let hung = whisper_pid(&srv);
    // SAFETY: kill(2) on our own helper process.
    unsafe { libc::kill(hung as libc::pid_t, libc::SIGSTOP) };
    // A fragment with a 2 s budget: answered by then, although the helper never answers.
    let (status, body, took) = post(&url, &request(0, &clip(5.4, 8.9), 2_000));
    eprintln!("hung: {status} {:?} after {took:?}", body.error);
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took < Duration::from_millis(2_800),
        "answered after {took:?}"
    );
    // Silence is answered at once meanwhile.
    let silent = vec![0u8; RATE as usize * 4];
    let (status, body, took) = post(&url, &request(1, &silent, 2_000));
    assert_eq!(status, StatusCode::OK, "{:?}", body.error);
    assert!(took < Duration::from_millis(500), "silence took {took:?}");
    // The hung helper is killed (its job's deadline + 5 s) and replaced; the next fragment
    // waits in the queue for the new one and is recognised.
    let (status, body, took) = post(&url, &request(2, &clip(9.2, 13.2), 60_000));
    eprintln!(
        "after the restart: {status} {:?} in {took:?}",
        body.transcript
    );
    assert_eq!(status, StatusCode::OK, "{:?}", body.error);
    assert!(!body.transcript.unwrap_or_default().trim().is_empty());
    let w = srv.translate_engines().unwrap().whisper.unwrap();
    assert_eq!(w.restarts, 1, "{w:?}");
    assert!(wait_gone(hung, Duration::from_secs(5)));
    srv.stop();
}
