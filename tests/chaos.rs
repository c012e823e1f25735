//! The STS chaos matrix, in a live pipeline (appsrc is-live, real time, a syncing sink): for
//! every fault the output has exactly the input's samples and timestamps, EOS is reached, no
//! element error, the fallback reason is the documented one, and no fragment leaves later
//! than its deadline. (The same faults in file pipelines: tests/stsbridge.rs.)

mod common;

use std::time::Duration;

use common::*;
use dubbing_sts_server::{Faults, Mode, ServerConfig, StsServer};
use gst::prelude::*;

const FRAG: u64 = 100 * MS;
const FRAG_FRAMES: usize = 1600; // 100 ms at 16 kHz
const N: u64 = 8;

struct Case {
    faults: Faults,
    /// Whether these failures count for the breaker (which opens after the 5th).
    opens_breaker: bool,
    /// Expected outcome of every fragment: "dubbed" or a fallback reason.
    expect: &'static str,
    latency: u64,
    configure: fn(&gst::Element),
}

fn no_config(_: &gst::Element) {}

/// Runs `N` fragments live against `url`; checks the invariants; returns the output.
fn run_live(n: u64, url: &str, latency: u64, configure: fn(&gst::Element)) -> (Output, Vec<i16>) {
    let url = url.to_owned();
    let mut b = Bridge::new(true, 16000, 1, FRAG, move |b| {
        b.set_property("url", &url);
        b.set_property("latency", latency);
        b.set_property("max-in-flight", 16u32);
        b.set_property("crossfade", 0u64);
        configure(b);
    });
    let mut inputs = Vec::new();
    let mut all = Vec::new();
    for seq in 0..n {
        let a = test_audio(seq, FRAG_FRAMES, 1);
        all.extend_from_slice(&a);
        inputs.push(b.push(&a));
        std::thread::sleep(Duration::from_nanos(FRAG));
    }
    let out = b.finish(Duration::from_secs(20));
    assert!(out.errors.is_empty(), "errors: {:?}", out.errors);
    assert_same_timeline(&inputs, &out);
    assert_eq!(out.all_samples().len(), all.len(), "every sample out");
    assert!(out.flow.last().is_some_and(|e| e == "eos"), "EOS reached");
    for (i, f) in out.frags.iter().enumerate() {
        let deadline = f.pts.unwrap() + FRAG + latency;
        let left = f.running_time.unwrap();
        assert!(
            left <= deadline + 20 * MS,
            "fragment {i} left at {left}, deadline {deadline}"
        );
    }
    (out, all)
}

fn check(case: Case) {
    let srv = StsServer::start(ServerConfig {
        mode: Mode::Echo,
        faults: case.faults.clone(),
        ..Default::default()
    })
    .unwrap();
    let (out, all) = run_live(N, &srv.url(), case.latency, case.configure);
    let got: Vec<String> = out
        .fragment_msgs
        .iter()
        .map(|m| {
            let o = m.get::<String>("outcome").unwrap();
            if o == "fallback" {
                m.get::<String>("reason").unwrap()
            } else {
                o
            }
        })
        .collect();
    if case.opens_breaker {
        // Five failures open the breaker; requests already out when it opened still fail on
        // their own; after that, no request.
        assert!(got[..5].iter().all(|g| g == case.expect), "{got:?}");
        assert!(
            got.iter().all(|g| g == case.expect || g == "breaker_open"),
            "{got:?}"
        );
        assert_eq!(got.last().unwrap(), "breaker_open", "{got:?}");
    } else {
        assert_eq!(got, vec![case.expect; N as usize], "{:?}", case.faults);
    }
    let breaker = out.stats.get::<String>("breaker-state").unwrap();
    assert_eq!(breaker, if case.opens_breaker { "open" } else { "closed" });
    if case.expect != "dubbed" {
        // Fallback = the original, sample for sample.
        assert!(out.all_samples() == all, "{:?}", case.faults);
        let key = format!("fallbacks-{}", case.expect.replace('_', "-"));
        let n = got.iter().filter(|g| *g == case.expect).count() as u64;
        assert_eq!(out.stat(&key), n, "{key}");
    }
}

fn f(faults: Faults, expect: &'static str) -> Case {
    Case {
        faults,
        opens_breaker: true,
        expect,
        latency: 400 * MS,
        configure: |b| b.set_property("max-retries", 0u32),
    }
}

#[test]
fn http_and_error_answers() {
    for (faults, expect) in [
        (
            Faults {
                status: Some(500),
                ..Default::default()
            },
            "http_status",
        ),
        (
            Faults {
                status: Some(503),
                ..Default::default()
            },
            "http_status",
        ),
        (
            Faults {
                status: Some(429),
                retry_after_s: Some(1),
                ..Default::default()
            },
            "http_status",
        ),
        (
            Faults {
                error_code: Some("MODEL_ERROR".into()),
                ..Default::default()
            },
            "sts_error",
        ),
    ] {
        check(f(faults, expect));
    }
    // Not retryable: the service is up, the breaker stays closed.
    check(Case {
        opens_breaker: false,
        ..f(
            Faults {
                error_code: Some("INVALID_CONFIG".into()),
                ..Default::default()
            },
            "sts_error",
        )
    });
}

#[test]
fn unusable_answers() {
    for faults in [
        Faults {
            malformed_json: true,
            ..Default::default()
        },
        Faults {
            bad_base64: true,
            ..Default::default()
        },
        // Outside 8-192 kHz, 1-8 channels (other formats are converted and dubbed).
        Faults {
            wrong_rate: Some(4000),
            ..Default::default()
        },
        Faults {
            wrong_channels: Some(9),
            ..Default::default()
        },
    ] {
        check(f(faults, "invalid_output"));
    }
    check(Case {
        opens_breaker: true,
        faults: Faults {
            oversize_bytes: Some(200_000),
            ..Default::default()
        },
        expect: "invalid_output",
        latency: 400 * MS,
        configure: |b| {
            b.set_property("max-retries", 0u32);
            b.set_property("max-response-size", 65536u64);
        },
    });
}

#[test]
fn slow_and_broken_connections() {
    check(f(
        Faults {
            reset_mid_body: true,
            ..Default::default()
        },
        "transport",
    ));
    // A trickling body outlives the live deadline (the attempt goes on until its timeout, so
    // the breaker has nothing to count yet).
    check(Case {
        opens_breaker: false,
        ..f(
            Faults {
                slow_body_ms: 2000,
                ..Default::default()
            },
            "deadline",
        )
    });
    // Slower than the per-attempt timeout, inside the deadline.
    check(Case {
        opens_breaker: true,
        faults: Faults {
            delay_ms: 600,
            ..Default::default()
        },
        expect: "timeout",
        latency: 1500 * MS,
        configure: |b| {
            b.set_property("max-retries", 0u32);
            b.set_property("timeout", 200 * MS);
        },
    });
}

#[test]
fn jitter_and_length_faults_still_dub() {
    check(Case {
        opens_breaker: false,
        faults: Faults {
            delay_ms: 60,
            jitter_ms: 150,
            ..Default::default()
        },
        expect: "dubbed",
        latency: 600 * MS,
        configure: no_config,
    });
    for factor in [1.3, 0.7] {
        check(Case {
            opens_breaker: false,
            faults: Faults {
                duration_factor: Some(factor),
                ..Default::default()
            },
            expect: "dubbed",
            latency: 400 * MS,
            configure: no_config,
        });
    }
}

#[test]
fn sts_down_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/api/v1/sts/process");
    let (out, all) = run_live(N, &url, 400 * MS, |b| {
        b.set_property("breaker-threshold", 3u32)
    });
    let reasons = out.reasons();
    assert!(
        reasons
            .iter()
            .all(|r| r == "transport" || r == "breaker_open"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "breaker_open"),
        "the breaker opened: {reasons:?}"
    );
    assert_eq!(out.stats.get::<String>("breaker-state").unwrap(), "open");
    assert!(out.all_samples() == all);
}

#[test]
fn sts_dies_mid_stream_and_comes_back() {
    let srv = StsServer::start(ServerConfig::default()).unwrap();
    let addr = srv.addr();
    let url = srv.url();
    let restarted = std::sync::Mutex::new(None);
    let out = std::thread::scope(|s| {
        // The outage, beside the live stream: after the 3rd request, for ~700 ms.
        s.spawn(|| {
            while srv.request_count() < 3 {
                std::thread::sleep(Duration::from_millis(5));
            }
            srv.stop();
            std::thread::sleep(Duration::from_millis(700));
            *restarted.lock().unwrap() = Some(
                StsServer::start(ServerConfig {
                    bind: addr,
                    ..Default::default()
                })
                .unwrap(),
            );
        });
        run_live(20, &url, 400 * MS, |b| {
            b.set_property("breaker-threshold", 0u32);
            b.set_property("max-retries", 0u32);
        })
        .0
    });
    let outcomes = out.outcomes();
    assert_eq!(outcomes[0], "dubbed", "{outcomes:?}");
    assert!(
        outcomes.iter().any(|o| o == "fallback"),
        "the outage shows: {outcomes:?}"
    );
    assert_eq!(
        outcomes.last().unwrap(),
        "dubbed",
        "back after the restart: {outcomes:?}"
    );
}
