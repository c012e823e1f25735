//! The reference server over real HTTP on 127.0.0.1: modes, auth, input validation, every
//! fault, the admin endpoints, counters, stop/restart and the `sts-server` binary.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dubbing_sts_proto::{AudioPayload, ProcessRequest, ProcessResponse, Status, StsConfig};
use dubbing_sts_server::{FaultKind, Faults, Mode, ServerConfig, StsServer};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

const KEY: &str = "s3cret-test-key";

fn start(mode: Mode) -> StsServer {
    start_with(ServerConfig {
        mode,
        ..Default::default()
    })
}

fn start_with(config: ServerConfig) -> StsServer {
    StsServer::start(config).expect("start the reference server")
}

fn start_faulty(faults: Faults) -> StsServer {
    start_with(ServerConfig {
        faults,
        ..Default::default()
    })
}

/// A client that opens a new connection per request, so no test depends on connection reuse.
fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Interleaved S16LE test audio that is neither silent nor a 440 Hz tone.
fn test_pcm(frames: usize, channels: u32, salt: u64) -> Vec<u8> {
    (0..frames * channels as usize)
        .flat_map(|i| {
            let v = ((i as u64 * 7919 + salt * 104_729) % 20_011) as i32 - 10_005;
            (v as i16).to_le_bytes()
        })
        .collect()
}

fn samples(pcm: &[u8]) -> Vec<i16> {
    pcm.chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn request(seq: u64, rate: u32, channels: u32, frames: usize) -> (ProcessRequest, Vec<u8>) {
    let pcm = test_pcm(frames, channels, seq);
    let req = ProcessRequest {
        fragment_id: format!("00000000-0000-4000-8000-{seq:012x}"),
        stream_id: "test-stream".into(),
        sequence_number: seq,
        audio: AudioPayload::from_pcm(rate, channels, &pcm),
        config: StsConfig {
            source_language: "en".into(),
            target_language: "es".into(),
            voice_profile: "default".into(),
        },
        timeout_ms: 8000,
    };
    (req, pcm)
}

fn post(srv: &StsServer, req: &ProcessRequest) -> Response {
    post_with(&client(), srv, req, None)
}

fn post_with(
    client: &Client,
    srv: &StsServer,
    req: &ProcessRequest,
    key: Option<&str>,
) -> Response {
    let mut b = client
        .post(srv.url())
        .header("X-Request-ID", &req.fragment_id)
        .json(req);
    if let Some(k) = key {
        b = b.bearer_auth(k);
    }
    b.send().expect("an HTTP answer")
}

/// Status, headers and the parsed body.
fn parse(resp: Response) -> (StatusCode, reqwest::header::HeaderMap, ProcessResponse) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().unwrap();
    let parsed = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    (status, headers, parsed)
}

/// Posts and expects a 200 success; returns the dubbed audio decoded.
fn dub(srv: &StsServer, req: &ProcessRequest) -> (AudioPayload, Vec<u8>) {
    let (status, _, resp) = parse(post(srv, req));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp.status, Status::Success, "{resp:?}");
    assert_eq!(resp.fragment_id, req.fragment_id);
    let audio = resp.dubbed_audio.expect("dubbed_audio");
    let pcm = audio.decode_pcm().expect("valid dubbed audio");
    (audio, pcm)
}

/// Posts and expects an error body with `status`.
fn expect_error(
    resp: Response,
    status: StatusCode,
) -> (reqwest::header::HeaderMap, String, Option<bool>) {
    let (got, headers, body) = parse(resp);
    assert_eq!(got, status, "{body:?}");
    assert_eq!(body.status, Status::Error);
    assert!(body.dubbed_audio.is_none());
    let error = body.error.expect("error object");
    assert!(!error.message.is_empty());
    (headers, error.code, error.retryable)
}

fn get_json(url: &str, key: Option<&str>) -> (StatusCode, Value) {
    let mut b = client().get(url);
    if let Some(k) = key {
        b = b.bearer_auth(k);
    }
    let resp = b.send().unwrap();
    let status = resp.status();
    (status, resp.json().unwrap())
}

fn put_faults(srv: &StsServer, body: &str, key: Option<&str>) -> (StatusCode, Value) {
    let mut b = client()
        .put(format!("{}/admin/faults", srv.base_url()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = key {
        b = b.bearer_auth(k);
    }
    let resp = b.send().unwrap();
    let status = resp.status();
    (status, resp.json().unwrap())
}

// ---------------------------------------------------------------------------------------------
// Modes

#[test]
fn echo_returns_the_exact_input() {
    let srv = start(Mode::Echo);
    assert!(srv.url().starts_with("http://127.0.0.1:"));
    assert!(srv.url().ends_with("/api/v1/sts/process"));
    assert_eq!(
        srv.url(),
        format!("http://{}/api/v1/sts/process", srv.addr())
    );
    for (seq, rate, channels, frames) in
        [(0, 48000, 2, 48000), (1, 16000, 1, 12345), (2, 44100, 6, 7)]
    {
        let (req, pcm) = request(seq, rate, channels, frames);
        let resp = post(&srv, &req);
        assert_eq!(
            resp.headers().get("x-request-id").unwrap(),
            req.fragment_id.as_str(),
            "X-Request-ID is echoed"
        );
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "application/json"
        );
        let (_, _, body) = parse(resp);
        assert!(body.transcript.is_some() && body.translated_text.is_some());
        assert!(body.processing_time_ms.unwrap() >= 0.0);
        let audio = body.dubbed_audio.unwrap();
        assert_eq!(audio, req.audio, "echo answers the request's own payload");
        assert_eq!(audio.decode_pcm().unwrap(), pcm);
    }
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[1].sequence_number, Some(1));
    assert_eq!(
        (reqs[1].sample_rate_hz, reqs[1].channels, reqs[1].frames),
        (16000, 1, 12345)
    );
    assert_eq!(
        reqs[1].request_id.as_deref(),
        Some(reqs[1].fragment_id.as_str())
    );
    assert_eq!(reqs[1].stream_id, "test-stream");
    assert!(
        reqs.iter()
            .all(|r| r.status == Some(200) && r.fault.is_none())
    );
}

#[test]
fn tone_is_440_hz_of_the_same_length() {
    let srv = start(Mode::Tone);
    let (req, pcm) = request(0, 16000, 2, 8000); // 0.5 s
    let (audio, out) = dub(&srv, &req);
    assert_eq!(
        (audio.sample_rate_hz, audio.channels, audio.duration_ms),
        (16000, 2, 500)
    );
    assert_eq!(out.len(), pcm.len());
    assert_ne!(out, pcm);
    let s = samples(&out);
    assert!(
        s.chunks_exact(2).all(|f| f[0] == f[1]),
        "same tone on every channel"
    );
    let left: Vec<i16> = s.chunks_exact(2).map(|f| f[0]).collect();
    let rising = left.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
    assert!((219..=221).contains(&rising), "{rising} periods in 0.5 s");
    let peak = left.iter().map(|v| v.unsigned_abs()).max().unwrap();
    assert!((9000..=10000).contains(&peak), "peak {peak}");
}

#[test]
fn silence_is_zeros_of_the_same_length() {
    let srv = start(Mode::Silence);
    let (req, pcm) = request(0, 48000, 2, 4800);
    let (audio, out) = dub(&srv, &req);
    assert_eq!(
        (audio.sample_rate_hz, audio.channels, audio.duration_ms),
        (48000, 2, 100)
    );
    assert_eq!(out.len(), pcm.len());
    assert!(out.iter().all(|&b| b == 0));
}

#[test]
fn set_mode_and_health() {
    let srv = start(Mode::Echo);
    let health = format!("{}/health", srv.base_url());
    assert_eq!(
        get_json(&health, None),
        (
            StatusCode::OK,
            json!({"status": "ok", "mode": "echo", "modes": ["echo", "tone", "silence"],
                   "language_pairs": [], "engines": null})
        )
    );
    srv.set_mode(Mode::Silence);
    assert_eq!(srv.mode(), Mode::Silence);
    assert_eq!(get_json(&health, None).1["mode"], "silence");
    let (req, _) = request(0, 8000, 1, 800);
    assert!(dub(&srv, &req).1.iter().all(|&b| b == 0));
}

// ---------------------------------------------------------------------------------------------
// Auth and input validation

#[test]
fn api_key_is_required_when_set() {
    let config = ServerConfig {
        api_key: Some(KEY.into()),
        admin: true,
        ..Default::default()
    };
    assert!(!format!("{config:?}").contains(KEY), "Debug hides the key");
    let srv = start_with(config);
    let c = client();
    let (req, pcm) = request(0, 16000, 1, 1600);
    for key in [None, Some("wrong"), Some("")] {
        let resp = post_with(&c, &srv, &req, key);
        let (headers, code, retryable) = expect_error(resp, StatusCode::UNAUTHORIZED);
        assert_eq!(
            (code.as_str(), retryable),
            ("UNAUTHORIZED", Some(false)),
            "{key:?}"
        );
        assert_eq!(headers.get("www-authenticate").unwrap(), "Bearer");
    }
    // Another scheme with the right key is refused too.
    let resp = c
        .post(srv.url())
        .header("Authorization", format!("Basic {KEY}"))
        .json(&req)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let (status, _, body) = parse(post_with(&c, &srv, &req, Some(KEY)));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.dubbed_audio.unwrap().decode_pcm().unwrap(), pcm);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 5);
    assert_eq!(
        reqs[4].authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(reqs[0].authorization, None);

    // Admin endpoints need the key; /health does not.
    let stats = format!("{}/admin/stats", srv.base_url());
    assert_eq!(get_json(&stats, None).0, StatusCode::UNAUTHORIZED);
    assert_eq!(get_json(&stats, Some("wrong")).0, StatusCode::UNAUTHORIZED);
    assert_eq!(get_json(&stats, Some(KEY)).0, StatusCode::OK);
    assert_eq!(put_faults(&srv, "{}", None).0, StatusCode::UNAUTHORIZED);
    assert_eq!(put_faults(&srv, "{}", Some(KEY)).0, StatusCode::OK);
    assert_eq!(
        get_json(&format!("{}/health", srv.base_url()), None).0,
        StatusCode::OK
    );
}

#[test]
fn invalid_input_is_400_not_retryable() {
    // Validation comes before the faults.
    let srv = start_faulty(Faults {
        status: Some(503),
        ..Default::default()
    });
    let (good, _) = request(0, 16000, 1, 160);
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut v = serde_json::to_value(&good).unwrap();
    v["audio"]["data_base64"] = json!("not base64!");
    cases.push(("bad base64", v));
    let mut v = serde_json::to_value(&good).unwrap();
    v["audio"]["format"] = json!("opus");
    cases.push(("unknown format", v));
    let mut v = serde_json::to_value(&good).unwrap();
    v["audio"]["sample_rate_hz"] = json!(0);
    cases.push(("zero rate", v));
    let mut v = serde_json::to_value(&good).unwrap();
    v["audio"]["channels"] = json!(0);
    cases.push(("zero channels", v));
    let mut v = serde_json::to_value(&good).unwrap();
    v["audio"]["data_base64"] = json!("AQID"); // 3 bytes: not whole frames
    cases.push(("partial frame", v));
    let mut v = serde_json::to_value(&good).unwrap();
    v.as_object_mut().unwrap().remove("config");
    cases.push(("missing field", v));
    let mut v = serde_json::to_value(&good).unwrap();
    v["sequence_number"] = json!(-1);
    cases.push(("negative sequence", v));
    let c = client();
    for (name, body) in &cases {
        let resp = c.post(srv.url()).json(body).send().unwrap();
        let (_, code, retryable) = expect_error(resp, StatusCode::BAD_REQUEST);
        assert_eq!(
            (code.as_str(), retryable),
            ("INVALID_INPUT", Some(false)),
            "{name}"
        );
    }
    let resp = c.post(srv.url()).body("{not json").send().unwrap();
    let (_, code, _) = expect_error(resp, StatusCode::BAD_REQUEST);
    assert_eq!(code, "INVALID_INPUT");
    assert_eq!(
        srv.stats().by_status.get(&400),
        Some(&(cases.len() as u64 + 1))
    );
}

// ---------------------------------------------------------------------------------------------
// Faults

#[test]
fn http_status_faults() {
    let srv = start(Mode::Echo);
    let (req, _) = request(0, 16000, 1, 160);
    for (status, retry_after, code) in [
        (500, None, "MODEL_ERROR"),
        (502, None, "MODEL_ERROR"),
        (503, Some(3), "QUEUE_FULL"),
        (504, None, "TIMEOUT"),
        (408, None, "TIMEOUT"),
        (429, Some(2), "RATE_LIMIT"),
        (400, None, "INVALID_INPUT"),
    ] {
        srv.set_faults(Faults {
            status: Some(status),
            retry_after_s: retry_after,
            ..Default::default()
        });
        let (headers, got_code, retryable) =
            expect_error(post(&srv, &req), StatusCode::from_u16(status).unwrap());
        assert_eq!(got_code, code, "{status}");
        assert_eq!(retryable, Some(status != 400), "{status}");
        assert_eq!(
            headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            retry_after.map(|s| s.to_string()),
            "{status}"
        );
    }
    // Retry-After is for error answers only.
    srv.set_faults(Faults {
        retry_after_s: Some(5),
        ..Default::default()
    });
    let (status, headers, _) = parse(post(&srv, &req));
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("retry-after").is_none());
    assert_eq!(srv.requests()[0].fault, Some(FaultKind::Error));
}

#[test]
fn error_code_faults_answer_200_with_an_error_body() {
    let srv = start_faulty(Faults {
        error_code: Some("GPU_OOM".into()),
        error_retryable: Some(true),
        retry_after_s: Some(1),
        ..Default::default()
    });
    let (req, _) = request(0, 16000, 1, 160);
    let (headers, code, retryable) = expect_error(post(&srv, &req), StatusCode::OK);
    assert_eq!((code.as_str(), retryable), ("GPU_OOM", Some(true)));
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    // Without error_retryable the flag is omitted; with a status the code keeps it.
    srv.set_faults(Faults {
        error_code: Some("INVALID_CONFIG".into()),
        status: Some(422),
        ..Default::default()
    });
    let (_, code, retryable) = expect_error(post(&srv, &req), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!((code.as_str(), retryable), ("INVALID_CONFIG", None));
    assert_eq!(
        srv.requests()[1].error_code.as_deref(),
        Some("INVALID_CONFIG")
    );
}

#[test]
fn error_rate_fails_a_fraction() {
    let srv = start_faulty(Faults {
        error_rate: 0.5,
        status: Some(503),
        ..Default::default()
    });
    let c = client();
    let (req, _) = request(0, 8000, 1, 80);
    let codes: Vec<u16> = (0..40)
        .map(|_| post_with(&c, &srv, &req, None).status().as_u16())
        .collect();
    let failed = codes.iter().filter(|&&s| s == 503).count();
    assert_eq!(failed + codes.iter().filter(|&&s| s == 200).count(), 40);
    assert!((6..=34).contains(&failed), "{failed} of 40 failed");

    // error_rate alone: HTTP 500 MODEL_ERROR, retryable.
    srv.set_faults(Faults {
        error_rate: 1.0,
        ..Default::default()
    });
    let (_, code, retryable) = expect_error(post(&srv, &req), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!((code.as_str(), retryable), ("MODEL_ERROR", Some(true)));
}

#[test]
fn malformed_json_fault() {
    let srv = start_faulty(Faults {
        malformed_json: true,
        ..Default::default()
    });
    let (req, _) = request(0, 16000, 1, 1600);
    let resp = post(&srv, &req);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().unwrap();
    assert!(!body.is_empty());
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    assert_eq!(srv.requests()[0].fault, Some(FaultKind::MalformedJson));
}

#[test]
fn bad_base64_fault() {
    let srv = start_faulty(Faults {
        bad_base64: true,
        ..Default::default()
    });
    let (req, _) = request(0, 16000, 1, 1600);
    let (status, _, body) = parse(post(&srv, &req));
    assert_eq!((status, body.status), (StatusCode::OK, Status::Success));
    let audio = body.dubbed_audio.unwrap();
    assert_eq!((audio.sample_rate_hz, audio.channels), (16000, 1));
    assert!(audio.decode_pcm().is_err());
}

#[test]
fn audio_shape_faults() {
    let srv = start(Mode::Echo);
    let (req, pcm) = request(0, 16000, 1, 1600); // 100 ms mono
    let input = samples(&pcm);

    srv.set_faults(Faults {
        wrong_rate: Some(8000),
        ..Default::default()
    });
    let (audio, out) = dub(&srv, &req);
    assert_eq!(
        (audio.sample_rate_hz, audio.channels, audio.duration_ms),
        (8000, 1, 100)
    );
    assert_eq!(out.len(), 800 * 2);

    srv.set_faults(Faults {
        wrong_channels: Some(2),
        ..Default::default()
    });
    let (audio, out) = dub(&srv, &req);
    assert_eq!(
        (audio.sample_rate_hz, audio.channels, audio.duration_ms),
        (16000, 2, 100)
    );
    let out = samples(&out);
    assert_eq!(out.len(), 1600 * 2);
    assert!(
        out.chunks_exact(2)
            .zip(&input)
            .all(|(f, &s)| f[0] == s && f[1] == s)
    );

    for (factor, frames) in [(1.3, 2080usize), (0.7, 1120)] {
        srv.set_faults(Faults {
            duration_factor: Some(factor),
            ..Default::default()
        });
        let (audio, out) = dub(&srv, &req);
        let out = samples(&out);
        assert_eq!(out.len(), frames, "{factor}");
        assert_eq!((audio.sample_rate_hz, audio.channels), (16000, 1));
        assert_eq!(audio.duration_ms, frames as u64 * 1000 / 16000);
        let common = frames.min(1600);
        assert_eq!(out[..common], input[..common], "{factor}: echo prefix");
        assert!(
            out[common..].iter().all(|&s| s == 0),
            "{factor}: zero padded"
        );
    }
    assert!(
        srv.requests()
            .iter()
            .all(|r| r.fault == Some(FaultKind::AudioShape))
    );
}

#[test]
fn reset_closes_without_an_answer() {
    let srv = start_faulty(Faults {
        reset: true,
        ..Default::default()
    });
    let (req, _) = request(0, 16000, 1, 160);
    let t = Instant::now();
    let err = client()
        .post(srv.url())
        .json(&req)
        .send()
        .expect_err("no HTTP answer");
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.status().is_none());
    assert!(t.elapsed() < Duration::from_secs(2));
    let r = &srv.requests()[0];
    assert_eq!((r.status, r.fault), (None, Some(FaultKind::Reset)));
    assert_eq!(srv.stats().no_response, 1);
    // The server itself is fine.
    srv.set_faults(Faults::default());
    dub(&srv, &req);
}

#[test]
fn reset_mid_body_breaks_the_body() {
    let srv = start_faulty(Faults {
        reset_mid_body: true,
        ..Default::default()
    });
    let (req, _) = request(0, 16000, 1, 1600);
    let resp = post(&srv, &req);
    assert_eq!(resp.status(), StatusCode::OK, "headers arrive");
    let declared: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(declared > 4000);
    let mut got = Vec::new();
    let mut resp = resp;
    let err = resp.read_to_end(&mut got).expect_err("the body is cut");
    assert!(
        !got.is_empty() && got.len() < declared,
        "{} of {declared}: {err}",
        got.len()
    );
    assert_eq!(srv.requests()[0].fault, Some(FaultKind::ResetMidBody));
}

#[test]
fn slow_body_trickles() {
    let srv = start_faulty(Faults {
        slow_body_ms: 600,
        ..Default::default()
    });
    let (req, pcm) = request(0, 16000, 1, 1600);
    let t = Instant::now();
    let resp = post(&srv, &req);
    let headers_after = t.elapsed();
    let (status, _, body) = parse(resp);
    let body_after = t.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers_after < Duration::from_millis(300),
        "headers after {headers_after:?}"
    );
    assert!(
        body_after >= Duration::from_millis(600),
        "body after {body_after:?}"
    );
    assert!(
        body_after < Duration::from_millis(2000),
        "body after {body_after:?}"
    );
    assert_eq!(body.dubbed_audio.unwrap().decode_pcm().unwrap(), pcm);
    assert_eq!(srv.requests()[0].fault, Some(FaultKind::SlowBody));
}

#[test]
fn oversize_pads_a_valid_body() {
    let srv = start_faulty(Faults {
        oversize_bytes: Some(300_000),
        ..Default::default()
    });
    let (req, pcm) = request(0, 16000, 1, 1600);
    let resp = post(&srv, &req);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().unwrap();
    assert!(body.len() >= 300_000, "{}", body.len());
    let parsed: ProcessResponse = serde_json::from_slice(&body).expect("still valid JSON");
    assert_eq!(
        parsed.dubbed_audio.unwrap().decode_pcm().unwrap(),
        pcm,
        "same audio"
    );
    assert_eq!(srv.requests()[0].fault, Some(FaultKind::Oversize));
    // Error bodies are padded too.
    srv.set_faults(Faults {
        oversize_bytes: Some(50_000),
        status: Some(500),
        ..Default::default()
    });
    let resp = post(&srv, &req);
    let body = resp.bytes().unwrap();
    assert!(body.len() >= 50_000);
    let parsed: ProcessResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed.error.unwrap().code, "MODEL_ERROR");
}

#[test]
fn hang_until_stop_which_is_quick() {
    let srv = start_faulty(Faults {
        hang: true,
        ..Default::default()
    });
    let url = srv.url();
    let clients: Vec<_> = (0..2)
        .map(|seq| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (req, _) = request(seq, 16000, 1, 160);
                let t = Instant::now();
                let r = client().post(url).json(&req).send().and_then(|r| r.bytes());
                (r, t.elapsed())
            })
        })
        .collect();
    let t = Instant::now();
    while srv.stats().in_flight < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "requests never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(srv.stats().in_flight, 2, "still hanging");
    let t = Instant::now();
    srv.stop();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(800), "stop took {took:?}");
    for c in clients {
        let (result, waited) = c.join().unwrap();
        let err = result.expect_err("a hung request gets no answer");
        assert!(!err.is_timeout(), "{err:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }
    let s = srv.stats();
    assert_eq!((s.in_flight, s.no_response, s.max_in_flight), (0, 2, 2));
    // The port is free again and stop() is idempotent.
    std::net::TcpListener::bind(srv.addr()).expect("port freed");
    srv.stop();
}

#[test]
fn a_hung_request_ends_when_its_client_leaves() {
    let srv = start_faulty(Faults {
        hang: true,
        ..Default::default()
    });
    let (req, _) = request(0, 16000, 1, 160);
    let c = Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = c.post(srv.url()).json(&req).send().unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    drop(c);
    let t = Instant::now();
    while srv.stats().in_flight > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the handler outlived its client"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(srv.stats().no_response, 1);
}

#[test]
fn sequence_faults_hit_only_that_sequence() {
    let srv = start(Mode::Echo);
    srv.fault_for_sequence(
        2,
        Faults {
            status: Some(503),
            ..Default::default()
        },
    );
    let c = client();
    let statuses: Vec<u16> = (0..5)
        .map(|seq| {
            post_with(&c, &srv, &request(seq, 8000, 1, 80).0, None)
                .status()
                .as_u16()
        })
        .collect();
    assert_eq!(statuses, [200, 200, 503, 200, 200]);
    // One-shot: the retry of sequence 2 succeeds.
    assert_eq!(
        post_with(&c, &srv, &request(2, 8000, 1, 80).0, None).status(),
        200
    );

    // Persistent until cleared, and it overrides the global faults.
    srv.set_faults(Faults {
        status: Some(500),
        ..Default::default()
    });
    srv.fault_for_sequence_persistent(7, Faults::default());
    for _ in 0..2 {
        assert_eq!(
            post_with(&c, &srv, &request(7, 8000, 1, 80).0, None).status(),
            200
        );
    }
    assert_eq!(
        post_with(&c, &srv, &request(8, 8000, 1, 80).0, None).status(),
        500
    );
    srv.clear_sequence_faults();
    assert_eq!(
        post_with(&c, &srv, &request(7, 8000, 1, 80).0, None).status(),
        500
    );
}

#[test]
fn delay_and_jitter() {
    let srv = start_faulty(Faults {
        delay_ms: 100,
        jitter_ms: 300,
        ..Default::default()
    });
    let url = srv.url();
    let threads: Vec<_> = (0..8)
        .map(|seq| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (req, _) = request(seq, 8000, 1, 80);
                let t = Instant::now();
                let resp = client().post(url).json(&req).send().unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                t.elapsed()
            })
        })
        .collect();
    let took: Vec<Duration> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let min = *took.iter().min().unwrap();
    let max = *took.iter().max().unwrap();
    assert!(min >= Duration::from_millis(100), "{took:?}");
    assert!(max < Duration::from_millis(1500), "{took:?}");
    assert!(
        max - min >= Duration::from_millis(50),
        "no jitter: {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Admin endpoints, counters, lifecycle

#[test]
fn put_admin_faults() {
    let srv = start_with(ServerConfig {
        admin: true,
        ..Default::default()
    });
    let (req, _) = request(0, 16000, 1, 160);
    let (status, body) = put_faults(&srv, r#"{"status":503,"retry_after_s":4}"#, None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["status"].clone(), body["retry_after_s"].clone()),
        (json!(503), json!(4))
    );
    assert_eq!(body["hang"], false, "the whole fault set is answered");
    let expected = Faults {
        status: Some(503),
        retry_after_s: Some(4),
        ..Default::default()
    };
    assert_eq!(srv.faults(), expected);
    let (status, got) = get_json(&format!("{}/admin/faults", srv.base_url()), None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_value::<Faults>(got).unwrap(), expected);
    let (headers, code, _) = expect_error(post(&srv, &req), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (code.as_str(), headers["retry-after"].to_str().unwrap()),
        ("QUEUE_FULL", "4")
    );

    for bad in [
        r#"{"stauts":503}"#,
        r#"{"error_rate":2}"#,
        r#"{"status":99}"#,
        "nope",
    ] {
        let (status, body) = put_faults(&srv, bad, None);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"]["code"], "INVALID_INPUT", "{bad}");
    }
    assert_eq!(srv.faults(), expected, "a refused PUT changes nothing");
    // `{}` clears every fault.
    assert_eq!(put_faults(&srv, "{}", None).0, StatusCode::OK);
    assert_eq!(srv.faults(), Faults::default());
    dub(&srv, &req);
}

#[test]
fn request_counters() {
    let srv = start_with(ServerConfig {
        admin: true,
        faults: Faults {
            delay_ms: 800,
            ..Default::default()
        },
        ..Default::default()
    });
    let url = srv.url();
    let threads: Vec<_> = (0..3)
        .map(|seq| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (req, _) = request(seq, 8000, 1, 80);
                client().post(url).json(&req).send().unwrap().status()
            })
        })
        .collect();
    let t = Instant::now();
    while srv.stats().in_flight < 3 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(srv.stats().in_flight, 3);
    for t in threads {
        assert_eq!(t.join().unwrap(), StatusCode::OK);
    }
    srv.set_faults(Faults::default());
    srv.fault_for_sequence(
        9,
        Faults {
            status: Some(429),
            ..Default::default()
        },
    );
    let c = client();
    post_with(&c, &srv, &request(9, 8000, 1, 80).0, None);
    c.post(srv.url()).body("junk").send().unwrap();

    let s = srv.stats();
    assert_eq!(s.total_requests, 5);
    assert_eq!(srv.request_count(), 5);
    assert_eq!((s.in_flight, s.max_in_flight, s.no_response), (0, 3, 0));
    assert_eq!(
        s.by_status.into_iter().collect::<Vec<_>>(),
        [(200, 3), (400, 1), (429, 1)]
    );
    assert_eq!(s.mode, Mode::Echo);

    let (status, body) = get_json(&format!("{}/admin/stats", srv.base_url()), None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["open_connections"], 1, "this one");
    let max_open = body["max_open_connections"].as_u64().unwrap();
    assert!((1..=4).contains(&max_open), "{body}");
    let mut body = body;
    let object = body.as_object_mut().unwrap();
    object.remove("open_connections");
    object.remove("max_open_connections");
    assert_eq!(
        body,
        json!({"mode": "echo", "total_requests": 5, "in_flight": 0, "max_in_flight": 3,
               "by_status": {"200": 3, "400": 1, "429": 1}, "no_response": 0})
    );
}

#[test]
fn restart_on_the_same_port() {
    let srv = start(Mode::Echo);
    let addr = srv.addr();
    // A pooled keep-alive connection is open when the server stops.
    let pooled = Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (req, pcm) = request(0, 16000, 1, 160);
    assert_eq!(
        post_with(&pooled, &srv, &req, None).status(),
        StatusCode::OK
    );
    let t = Instant::now();
    srv.stop();
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    assert!(
        client()
            .get(format!("http://{addr}/health"))
            .send()
            .is_err(),
        "stopped"
    );

    let srv = start_with(ServerConfig {
        bind: addr,
        mode: Mode::Silence,
        ..Default::default()
    });
    assert_eq!(srv.addr(), addr);
    let (_, out) = dub(&srv, &req);
    assert_eq!(out.len(), pcm.len());
    assert!(out.iter().all(|&b| b == 0), "the new server answers");
    assert_eq!(srv.request_count(), 1, "counters start afresh");

    // Dropping stops too.
    drop(srv);
    assert!(
        client()
            .get(format!("http://{addr}/health"))
            .send()
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// The binary

fn fault_flags() -> Vec<String> {
    let v = serde_json::to_value(Faults::default()).unwrap();
    v.as_object()
        .unwrap()
        .keys()
        .map(|k| format!("--{}", k.replace('_', "-")))
        .collect()
}

#[test]
fn binary_help_lists_every_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_sts-server"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--mode",
        "--port",
        "--bind",
        "--api-key",
        "STS_API_KEY",
        "translate",
        "--workers",
        "--queue-size",
        "--max-streams",
        "--stream-idle-s",
        "--order-wait-ms",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(fault_flags())
    {
        assert!(help.contains(&flag), "--help lacks {flag}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sts-server"))
        .args(["--port", "0", "--error-rate", "2"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "out-of-range fault flags are refused"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sts-server"))
        .args(["--port", "0", "--queue-size", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a zero queue is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue_size"));
}

#[test]
fn binary_serves_and_never_logs_the_key() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sts-server"))
        .args([
            "--mode",
            "silence",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--delay-ms",
            "1",
            "--admin",
        ])
        .env("STS_API_KEY", KEY)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let c = client();
    let health: Value = c
        .get(format!("{base}/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        health,
        json!({"status": "ok", "mode": "silence", "modes": ["echo", "tone", "silence"],
               "language_pairs": [], "engines": null})
    );
    let (req, _) = request(3, 16000, 1, 160);
    let url = format!("{base}/api/v1/sts/process");
    let status = |key: Option<&str>| {
        let mut b = c.post(&url).json(&req);
        if let Some(k) = key {
            b = b.bearer_auth(k);
        }
        b.send().unwrap().status()
    };
    assert_eq!(status(None), StatusCode::UNAUTHORIZED);
    assert_eq!(status(Some(KEY)), StatusCode::OK);
    let stats: Value = c
        .get(format!("{base}/admin/stats"))
        .bearer_auth(KEY)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stats["total_requests"], 2);
    assert_eq!(stats["by_status"], json!({"200": 1, "401": 1}));

    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("process"), "requests are logged: {log}");
    assert!(!log.contains(KEY), "the API key leaked into the log: {log}");
}
