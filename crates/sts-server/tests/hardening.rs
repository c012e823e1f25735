//! The reference server as a service facing untrusted clients (issue 20, defects 1–6), over
//! real HTTP and raw TCP on 127.0.0.1: the key checked before the body is read, bounded sizes,
//! fields and records, header/body timeouts and the connection cap, log lines that cannot be
//! forged, admin endpoints off unless enabled, and in translate mode deadlines that stop work,
//! fair scheduling across streams and a prompt stop.
//!
//! The translate tests need the speech packages (`scripts/install-deps.sh`) and `ffmpeg`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dubbing_sts_proto::{AudioPayload, ProcessRequest, ProcessResponse, Status, StsConfig, codes};
use dubbing_sts_server::{
    Faults, Limits, Mode, REQUEST_LOG_CAPACITY, ServerConfig, StsServer, TranslateConfig,
};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::Value;

const KEY: &str = "hardening-test-key";

fn start(config: ServerConfig) -> StsServer {
    StsServer::start(config).expect("start the reference server")
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn request(stream: &str, seq: u64, rate: u32, pcm: &[u8]) -> ProcessRequest {
    ProcessRequest {
        fragment_id: format!("00000000-0000-4000-8000-{seq:012x}"),
        stream_id: stream.into(),
        sequence_number: seq,
        audio: AudioPayload::from_pcm(rate, 1, pcm),
        config: StsConfig {
            source_language: "en".into(),
            target_language: "es".into(),
            voice_profile: "default".into(),
        },
        timeout_ms: 8000,
    }
}

/// Loud, non-silent mono test audio.
fn noise(frames: usize) -> Vec<u8> {
    (0..frames)
        .flat_map(|i| ((((i * 7919) % 20_011) as i32 - 10_005) as i16).to_le_bytes())
        .collect()
}

/// Status and parsed body of a process request.
fn post(url: &str, req: &ProcessRequest, key: Option<&str>) -> (StatusCode, ProcessResponse) {
    let mut b = client().post(url).json(req);
    if let Some(k) = key {
        b = b.bearer_auth(k);
    }
    let resp = b.send().expect("an HTTP answer");
    let status = resp.status();
    (status, resp.json().expect("a ProcessResponse body"))
}

fn error_code(body: &ProcessResponse) -> &str {
    assert_eq!(body.status, Status::Error, "{body:?}");
    &body.error.as_ref().expect("error object").code
}

/// A raw connection with a read timeout (a test fails instead of hanging).
fn connect(srv: &StsServer) -> TcpStream {
    let s = TcpStream::connect(srv.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes the connection (or 10 s pass: then panics). A reset is a
/// close too: a server that closes a connection whose request it has not read entirely makes
/// the kernel answer with RST (what it did send before may be lost then).
fn read_to_close(mut s: TcpStream, what: &str) -> String {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => String::from_utf8_lossy(&got).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            String::from_utf8_lossy(&got).into_owned()
        }
        Err(e) => panic!("{what}: the server did not close the connection: {e}"),
    }
}

fn process_head(srv: &StsServer, content_length: usize, key: Option<&str>) -> String {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST /api/v1/sts/process HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {content_length}\r\n\r\n",
        srv.addr()
    )
}

// ---------------------------------------------------------------------------------------------
// Defect 2: the key first, bounded sizes, fields and records

#[test]
fn without_the_key_the_body_is_neither_parsed_nor_kept() {
    let srv = start(ServerConfig {
        api_key: Some(KEY.into()),
        ..Default::default()
    });
    // 60 MB announced, 1 KB sent: the 401 comes at once, without waiting for the rest.
    let mut s = connect(&srv);
    s.write_all(process_head(&srv, 60 << 20, None).as_bytes())
        .unwrap();
    s.write_all(&[b'{'; 1024]).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head)
        .expect("a 401 before the body is sent");
    assert_eq!(&head, b"HTTP/1.1 401");
    // 8 MB of stream_id within the body limit: read and thrown away (the client gets its
    // 401), never parsed nor kept.
    let req = request(&"x".repeat(8 << 20), 0, 8_000, &noise(80));
    for _ in 0..3 {
        let (status, body) = post(&srv.url(), &req, None);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            (error_code(&body), body.fragment_id.as_str()),
            ("UNAUTHORIZED", "")
        );
    }
    let seen = srv.requests();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter().all(|r| r.status == Some(401)
            && r.stream_id.is_empty()
            && r.sequence_number.is_none())
    );
    srv.stop();
}

#[test]
fn bodies_fields_and_fragments_beyond_the_limits_are_refused() {
    let srv = start(ServerConfig {
        limits: Limits {
            max_body_bytes: 64 << 10,
            max_fragment: Duration::from_secs(1),
            ..Default::default()
        },
        ..Default::default()
    });
    // An announced body above the limit: 413 at once, before it is sent.
    let mut s = connect(&srv);
    s.write_all(process_head(&srv, 1 << 20, None).as_bytes())
        .unwrap();
    let answer = read_to_close(s, "413");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("65536 bytes"), "{answer}");
    // Fields and the fragment's duration.
    let mut cases: Vec<(&str, ProcessRequest)> = Vec::new();
    let mut r = request(&"x".repeat(8 << 10), 0, 16_000, &noise(160));
    cases.push(("stream_id", r.clone()));
    r.stream_id = "s".into();
    r.fragment_id = "f".repeat(129);
    cases.push(("fragment_id", r.clone()));
    r.fragment_id = "f".into();
    r.config.voice_profile = "v".repeat(129);
    cases.push(("voice_profile", r.clone()));
    cases.push((
        "at most 1.000 s",
        request("s", 0, 8_000, &noise(8_001)), // 1.000125 s
    ));
    for (what, req) in &cases {
        let (status, body) = post(&srv.url(), req, None);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(error_code(&body), codes::INVALID_INPUT, "{what}");
        let message = &body.error.as_ref().unwrap().message;
        assert!(message.contains(what), "{what}: {message}");
        assert!(body.fragment_id.len() <= 128);
    }
    // Exactly at the limit is fine.
    let (status, _) = post(&srv.url(), &request("s", 0, 8_000, &noise(8_000)), None);
    assert_eq!(status, StatusCode::OK);
    // What is kept of a refused request is cut to the field's limit.
    assert!(srv.requests().iter().all(|r| r.stream_id.len() <= 256));
    srv.stop();
}

#[test]
fn what_is_kept_per_request_is_bounded() {
    let srv = start(ServerConfig::default());
    let c = Client::builder().build().unwrap();
    let req = request("s", 0, 8_000, &noise(8));
    let n = REQUEST_LOG_CAPACITY + 100;
    for seq in 0..n as u64 {
        let mut r = req.clone();
        r.sequence_number = seq;
        assert_eq!(c.post(srv.url()).json(&r).send().unwrap().status(), 200);
    }
    assert_eq!(srv.request_count(), n);
    assert_eq!(srv.stats().total_requests, n as u64);
    let kept = srv.requests();
    assert_eq!(kept.len(), REQUEST_LOG_CAPACITY, "the most recent only");
    assert_eq!(kept[0].sequence_number, Some(100));
    assert_eq!(kept.last().unwrap().status, Some(200));
    srv.stop();
}

// ---------------------------------------------------------------------------------------------
// Defect 3: timeouts and the connection cap

#[test]
fn slow_clients_are_cut_off_and_connections_capped() {
    let srv = start(ServerConfig {
        admin: true,
        limits: Limits {
            header_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            max_connections: 4,
            ..Default::default()
        },
        ..Default::default()
    });
    let slow = |i: usize| {
        let mut s = connect(&srv);
        if i.is_multiple_of(2) {
            s.write_all(b"POST /api/v1/sts/process HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
        } else {
            s.write_all(process_head(&srv, 1000, None).as_bytes())
                .unwrap();
            s.write_all(b"{\"fragment_id\":").unwrap();
        }
        s
    };
    // Below the cap: the timeouts close them, a slow body with a 408.
    for (i, s) in [(0, slow(0)), (1, slow(1))] {
        let answer = read_to_close(s, &format!("slow connection {i}"));
        if i == 1 {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        } else {
            assert_eq!(answer, "", "closed without an answer");
        }
    }
    // Twelve at once, three times the cap, then /health: it is answered at once (the oldest
    // unfinished connection is closed to let it in), and every slow one is closed.
    let flood: Vec<TcpStream> = (0..12).map(slow).collect();
    let t = Instant::now();
    let health = client()
        .get(format!("{}/health", srv.base_url()))
        .send()
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let waited = t.elapsed();
    for (i, s) in flood.into_iter().enumerate() {
        let answer = read_to_close(s, &format!("flood connection {i}"));
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    let stats: Value = client()
        .get(format!("{}/admin/stats", srv.base_url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stats["max_open_connections"], 4, "{stats}");
    eprintln!("/health answered {waited:?} after 12 slow connections (cap 4)");
    // Idle kept-alive connections go too.
    let mut idle = connect(&srv);
    idle.write_all(format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr()).as_bytes())
        .unwrap();
    let answer = read_to_close(idle, "idle keep-alive");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    srv.stop();
}

// ---------------------------------------------------------------------------------------------
// Defects 4 and 5: log lines, admin endpoints

/// Starts the binary with `args`; returns it and its base URL.
fn spawn_binary(args: &[&str], key: Option<&str>) -> (std::process::Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sts-server"));
    cmd.args(["--port", "0", "--bind", "127.0.0.1"])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("STS_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(k) = key {
        cmd.env("STS_API_KEY", k);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, base)
}

#[test]
fn client_text_cannot_forge_log_lines() {
    let (mut child, base) = spawn_binary(&[], Some(KEY));
    let url = format!("{base}/api/v1/sts/process");
    let forged = "x\n2026-01-01T00:00:00Z  INFO FORGED admin login\r\u{1b}[2K";
    let mut req = request(forged, 0, 8_000, &noise(80));
    req.fragment_id = forged.into();
    let c = client();
    // Without the key (the body is not even read), with it, and with a bad field.
    assert_eq!(post(&url, &req, None).0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        c.post(&url)
            .bearer_auth(KEY)
            .header("X-Request-ID", "id\" FORGED=\"1")
            .json(&req)
            .send()
            .unwrap()
            .status(),
        StatusCode::OK
    );
    req.config.target_language = "es\nFORGED".repeat(10);
    let too_long = post(&url, &req, Some(KEY)).0;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(log.matches("app: process ").count(), 3, "{log}");
    for line in log.lines() {
        assert!(
            !line.contains("FORGED") || line.contains("app: process "),
            "a forged line: {line:?}\n{log}"
        );
        assert!(!line.contains('\u{1b}') && !line.contains('\r'), "{line:?}");
    }
    assert!(log.contains(r#"stream_id="x\n2026"#), "{log}");
    assert!(log.contains(r#"request_id="id\" FORGED=\"1""#), "{log}");
    assert_eq!(
        too_long,
        StatusCode::BAD_REQUEST,
        "a 70-byte language is refused"
    );
}

#[test]
fn admin_endpoints_are_off_unless_enabled() {
    // Off by default: fault injection cannot be reached, the answers stay good.
    let srv = start(ServerConfig::default());
    let faults = format!("{}/admin/faults", srv.base_url());
    let resp = client()
        .put(&faults)
        .body(r#"{"status":503}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(srv.faults(), Faults::default());
    let stats = client()
        .get(format!("{}/admin/stats", srv.base_url()))
        .send()
        .unwrap();
    assert_eq!(stats.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        post(&srv.url(), &request("s", 0, 8_000, &noise(80)), None).0,
        StatusCode::OK
    );
    srv.stop();
    // Never without a key off loopback: refused before anything is bound.
    let open = ServerConfig {
        admin: true,
        bind: "0.0.0.0:0".parse().unwrap(),
        ..Default::default()
    };
    let e = StsServer::start(open.clone()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("API key"), "{e}");
    assert!(
        ServerConfig {
            api_key: Some(KEY.into()),
            ..open
        }
        .validate()
        .is_ok()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sts-server"))
        .args(["--admin", "--bind", "0.0.0.0", "--port", "0"])
        .env_remove("STS_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--admin") && stderr.contains("STS_API_KEY"),
        "{stderr}"
    );
    // Enabled on loopback: it works.
    let (mut child, base) = spawn_binary(&["--admin"], None);
    let resp = client()
        .put(format!("{base}/admin/faults"))
        .body(r#"{"status":503}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    child.kill().unwrap();
    child.wait().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Defects 1 and 6: translate mode

/// The fixture's audio at 16 kHz mono (what the recogniser takes, so no resampling).
fn speech_16k() -> &'static [u8] {
    static PCM: OnceLock<Vec<u8>> = OnceLock::new();
    PCM.get_or_init(|| {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/speech-60s.mp4");
        let out = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i", fixture])
            .args([
                "-f",
                "s16le",
                "-acodec",
                "pcm_s16le",
                "-ar",
                "16000",
                "-ac",
                "1",
                "-",
            ])
            .output()
            .expect("run ffmpeg (install it with scripts/install-deps.sh)");
        assert!(out.status.success());
        out.stdout
    })
}

/// `start_s..end_s` of the fixture's speech at 16 kHz mono.
fn speech(start_s: f64, end_s: f64) -> &'static [u8] {
    let at = |t: f64| (t * 16_000.0) as usize * 2;
    &speech_16k()[at(start_s)..at(end_s)]
}

fn start_translate(translate: TranslateConfig) -> StsServer {
    start(ServerConfig {
        mode: Mode::Translate,
        translate,
        ..Default::default()
    })
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_job_past_its_deadline_stops_and_frees_its_worker() {
    let srv = start(ServerConfig {
        mode: Mode::Translate,
        limits: Limits {
            max_fragment: Duration::from_secs(60),
            ..Default::default()
        },
        translate: TranslateConfig {
            workers: 1,
            ..Default::default()
        },
        ..Default::default()
    });
    let url = srv.url();
    std::thread::scope(|s| {
        // A: 59 s of speech (recognising it takes 25 s of CPU or more) with 400 ms to answer.
        let long = s.spawn(|| {
            let mut a = request("long", 0, 16_000, speech(0.0, 59.0));
            a.timeout_ms = 400;
            post(&url, &a, None)
        });
        wait_for("the worker to take A", || {
            srv.translate_stats().unwrap().busy == 1
        });
        // B, another stream, right behind it on the only worker: answered well within its
        // 20 s, because A stops at its deadline instead of being recognised to the end.
        let mut b = request("short", 0, 16_000, speech(8.0, 11.0));
        b.timeout_ms = 20_000;
        let (status, body) = post(&url, &b, None);
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let (status, body) = long.join().unwrap();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(error_code(&body), codes::TIMEOUT);
    });
    let stats = srv.translate_stats().unwrap();
    // A was stopped mid-recognition (or, on a very loaded machine, found expired before its
    // first step): either way never recognised to the end.
    assert_eq!(
        (stats.cancelled + stats.expired, stats.recognized),
        (1, 1),
        "{stats:?}"
    );
    srv.stop();
}

#[test]
fn one_stream_cannot_fill_the_queue_or_starve_the_others() {
    let srv = start_translate(TranslateConfig {
        workers: 1,
        queue_size: 4,
        stream_queue_size: 2,
        ..Default::default()
    });
    srv.set_translate_paused(true);
    let url = srv.url();
    let clip = speech(8.0, 10.0);
    // Time enough for four fragments one after the other on a loaded machine.
    let request = |stream: &str, seq, rate, pcm| ProcessRequest {
        timeout_ms: 60_000,
        ..request(stream, seq, rate, pcm)
    };
    std::thread::scope(|s| {
        let mut answers = Vec::new();
        // A floods (the same sequence number again and again never waits for its turn).
        answers.push(s.spawn(|| post(&url, &request("a", 0, 16_000, clip), None)));
        wait_for("the worker to hold A's first", || {
            srv.translate_stats().unwrap().busy == 1
        });
        for queued in 1..=2 {
            answers.push(s.spawn(|| post(&url, &request("a", 0, 16_000, clip), None)));
            wait_for("A's fragment to be queued", || {
                srv.translate_stats().unwrap().queued == queued
            });
        }
        // A's share of the queue is full: refused, while B still gets in.
        let (status, body) = post(&url, &request("a", 0, 16_000, clip), None);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&body), codes::QUEUE_FULL);
        answers.push(s.spawn(|| post(&url, &request("b", 0, 16_000, clip), None)));
        wait_for("B to be queued", || {
            srv.translate_stats().unwrap().queued == 3
        });
        srv.set_translate_paused(false);
        for a in answers {
            assert_eq!(a.join().unwrap().0, StatusCode::OK);
        }
    });
    // B went before A's queued ones, not after them.
    let order: Vec<String> = srv
        .translate_log()
        .iter()
        .map(|h| h.stream_id.clone())
        .collect();
    assert_eq!(order, ["a", "a", "b", "a"]);
    let stats = srv.translate_stats().unwrap();
    assert_eq!(
        (stats.rejected_queue_full, stats.rejected_stream_full),
        (1, 1)
    );
    srv.stop();
}

#[test]
fn stop_is_prompt_while_a_long_fragment_is_recognised() {
    let srv = start_translate(TranslateConfig {
        workers: 1,
        ..Default::default()
    });
    let url = srv.url();
    let long = std::thread::spawn(move || {
        let mut a = request("long", 0, 16_000, speech(0.0, 25.0));
        a.timeout_ms = 60_000;
        // The answer is cut short by the stop (no answer or an error).
        let _ = client().post(&url).json(&a).send();
    });
    wait_for("the worker to take the fragment", || {
        srv.translate_stats().unwrap().busy == 1
    });
    let t = Instant::now();
    srv.stop();
    let took = t.elapsed();
    long.join().unwrap();
    let stats = srv.translate_stats().unwrap();
    assert_eq!(
        (stats.cancelled + stats.expired, stats.recognized),
        (1, 0),
        "{stats:?}"
    );
    // Recognising 25 s of speech takes several seconds; the stop does not wait for it.
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
}
