//! `stsbridge` against the reference STS server on 127.0.0.1: dubbing, every fault's fallback,
//! ordering, retries, the breaker, live deadlines, bypass, shutdown, properties.

mod common;

use std::time::{Duration, Instant};

use common::clocked::{Clocked, WAIT, deadline, messages};
use common::*;
use dubbing_sts_server::{Faults, Mode, ServerConfig, StsServer};
use gst::glib;
use gst::prelude::*;
use gstdubbing::stsbridge::{LATE_MESSAGE, LateReport, Outcome};

fn server(mode: Mode) -> StsServer {
    StsServer::start(ServerConfig {
        mode,
        ..Default::default()
    })
    .expect("start the reference server")
}

/// Non-live bridge to `url`, then `configure`.
fn file_bridge(
    url: &str,
    rate: u32,
    channels: u32,
    configure: impl FnOnce(&gst::Element),
) -> Bridge {
    let url = url.to_owned();
    Bridge::new(false, rate, channels, 0, move |b| {
        b.set_property("url", &url);
        configure(b);
    })
}

/// Pushes `n` fragments of `frames` test audio and returns the input buffers and samples.
fn push_n(b: &mut Bridge, n: u64, frames: usize) -> (Vec<gst::Buffer>, Vec<i16>) {
    let mut bufs = Vec::new();
    let mut all = Vec::new();
    for seq in 0..n {
        let a = test_audio(seq, frames, b.channels);
        all.extend_from_slice(&a);
        bufs.push(b.push(&a));
    }
    (bufs, all)
}

/// EOS, then what every run keeps: no element error, exactly the input's timeline and the
/// input's samples (echo, or fallback to the original).
fn finish_exact(b: Bridge, bufs: &[gst::Buffer], all: &[i16], timeout_s: u64) -> Output {
    let out = b.finish(Duration::from_secs(timeout_s));
    no_errors(&out);
    assert_same_timeline(bufs, &out);
    assert!(
        out.all_samples() == all,
        "the output samples are not the input's"
    );
    out
}

fn no_errors(out: &Output) {
    assert!(out.errors.is_empty(), "errors: {:?}", out.errors);
}

#[test]
fn echo_gives_back_the_exact_input_samples() {
    let srv = server(Mode::Echo);
    let mut b = file_bridge(&srv.url(), 48000, 2, |b| {
        b.set_property("stream-id", "match-42");
    });
    let (mut bufs, mut all) = push_n(&mut b, 4, 48000);
    // A partial last fragment, as dubchunker sends before EOS.
    let tail = test_audio(9, 12345, 2);
    bufs.push(b.push(&tail));
    all.extend_from_slice(&tail);
    let out = b.finish(Duration::from_secs(20));
    no_errors(&out);
    assert_same_timeline(&bufs, &out);
    assert!(
        out.all_samples() == all,
        "echo output differs from the input"
    );
    assert_eq!(out.outcomes(), vec!["dubbed"; 5]);
    assert_eq!(out.stat("dubbed"), 5);
    assert_eq!(out.stat("fallbacks"), 0);

    let reqs = srv.requests();
    assert_eq!(reqs.len(), 5);
    let mut seqs: Vec<u64> = reqs.iter().map(|r| r.sequence_number.unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    for r in &reqs {
        assert_eq!(r.stream_id, "match-42");
        assert_eq!((r.sample_rate_hz, r.channels), (48000, 2));
        assert_eq!(r.request_id.as_deref(), Some(r.fragment_id.as_str()));
        let id = uuid::Uuid::parse_str(&r.fragment_id).expect("fragment_id is a UUID");
        assert_eq!(id.get_version_num(), 4);
        assert!(r.authorization.is_none());
    }
    // Message ids match what the server saw, sequence by sequence.
    for m in &out.fragment_msgs {
        let seq = m.get::<u64>("sequence-number").unwrap();
        let id = m.get::<String>("fragment-id").unwrap();
        let r = reqs
            .iter()
            .find(|r| r.sequence_number == Some(seq))
            .unwrap();
        assert_eq!(r.fragment_id, id);
        assert_eq!(r.frames, if seq == 4 { 12345 } else { 48000 });
        assert_eq!(m.get::<u32>("attempts").unwrap(), 1);
        assert!(m.get::<u64>("rtt").unwrap() > 0);
    }
}

#[test]
fn tone_replaces_the_audio() {
    let srv = server(Mode::Tone);
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| b.set_property("crossfade", 0u64));
    let (bufs, all) = push_n(&mut b, 3, 16000);
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_same_timeline(&bufs, &out);
    let got = out.all_samples();
    assert_ne!(got, all);
    // 440 Hz: 880 zero crossings per second.
    for f in &out.frags {
        let zc = f
            .samples
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        assert!((870..=890).contains(&zc), "{zc} zero crossings");
    }
}

struct FaultCase {
    name: &'static str,
    faults: Faults,
    reason: &'static str,
    configure: fn(&gst::Element),
}

fn no_config(_: &gst::Element) {}

/// Every fault gives the documented fallback, with the output still the exact input timeline
/// and (fallback=original) the exact input samples.
fn check_fault(case: FaultCase) {
    let srv = server(Mode::Tone);
    srv.set_faults(case.faults.clone());
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("max-retries", 0u32);
        b.set_property("breaker-threshold", 0u32);
        b.set_property("timeout", 400 * MS);
        (case.configure)(b);
    });
    let (bufs, all) = push_n(&mut b, 3, 1600);
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_same_timeline(&bufs, &out);
    assert_eq!(out.outcomes(), vec!["fallback"; 3], "{}", case.name);
    assert_eq!(out.reasons(), vec![case.reason; 3], "{}", case.name);
    assert!(
        out.all_samples() == all,
        "{}: fallback is not the original",
        case.name
    );
    assert_eq!(
        out.stat(&format!("fallbacks-{}", case.reason.replace('_', "-"))),
        3,
        "{}",
        case.name
    );
    for m in &out.fragment_msgs {
        assert!(
            !m.get::<String>("detail").unwrap().is_empty(),
            "{}",
            case.name
        );
    }
}

#[test]
fn http_errors_fall_back() {
    for (status, retry_after) in [
        (500, None),
        (502, None),
        (503, None),
        (429, Some(1)),
        (400, None),
        (404, None),
    ] {
        check_fault(FaultCase {
            name: "http status",
            faults: Faults {
                status: Some(status),
                retry_after_s: retry_after,
                ..Default::default()
            },
            reason: "http_status",
            configure: no_config,
        });
    }
}

#[test]
fn error_bodies_fall_back() {
    for code in ["GPU_OOM", "MODEL_ERROR", "INVALID_INPUT", "INVALID_CONFIG"] {
        check_fault(FaultCase {
            name: "error code",
            faults: Faults {
                error_code: Some(code.into()),
                ..Default::default()
            },
            reason: "sts_error",
            configure: no_config,
        });
    }
}

#[test]
fn unusable_answers_fall_back_as_invalid_output() {
    let cases = [
        Faults {
            malformed_json: true,
            ..Default::default()
        },
        Faults {
            bad_base64: true,
            ..Default::default()
        },
        // Outside what the element takes (8-192 kHz, 1-8 channels); other formats are
        // converted (answers_in_other_formats_are_converted_and_dubbed).
        Faults {
            wrong_rate: Some(4000),
            ..Default::default()
        },
        Faults {
            wrong_channels: Some(9),
            ..Default::default()
        },
    ];
    for faults in cases {
        check_fault(FaultCase {
            name: "invalid output",
            faults,
            reason: "invalid_output",
            configure: no_config,
        });
    }
    check_fault(FaultCase {
        name: "oversize",
        faults: Faults {
            oversize_bytes: Some(300_000),
            ..Default::default()
        },
        reason: "invalid_output",
        configure: |b| b.set_property("max-response-size", 64u64 * 1024),
    });
}

#[test]
fn broken_connections_fall_back() {
    check_fault(FaultCase {
        name: "reset",
        faults: Faults {
            reset: true,
            ..Default::default()
        },
        reason: "transport",
        configure: no_config,
    });
    check_fault(FaultCase {
        name: "reset mid body",
        faults: Faults {
            reset_mid_body: true,
            ..Default::default()
        },
        reason: "transport",
        configure: no_config,
    });
    check_fault(FaultCase {
        name: "slow body",
        faults: Faults {
            slow_body_ms: 2000,
            ..Default::default()
        },
        reason: "timeout",
        configure: no_config,
    });
    check_fault(FaultCase {
        name: "hang",
        faults: Faults {
            hang: true,
            ..Default::default()
        },
        reason: "timeout",
        configure: no_config,
    });
    // Nothing listens: connection refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut b = file_bridge(
        &format!("http://127.0.0.1:{port}/api/v1/sts/process"),
        16000,
        1,
        |b| b.set_property("max-retries", 0u32),
    );
    let (bufs, all) = push_n(&mut b, 2, 1600);
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_same_timeline(&bufs, &out);
    assert_eq!(out.reasons(), vec!["transport"; 2]);
    assert!(out.all_samples() == all);
}

#[test]
fn long_and_short_dubs_are_fitted_to_the_fragment() {
    for (factor, fitted) in [(1.3, -480i64), (0.7, 480)] {
        let srv = server(Mode::Echo);
        srv.set_faults(Faults {
            duration_factor: Some(factor),
            ..Default::default()
        });
        // Today's behaviour, kept as `overflow=trim`.
        let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
            b.set_property_from_str("overflow", "trim")
        });
        let (bufs, all) = push_n(&mut b, 3, 1600);
        let out = b.finish(Duration::from_secs(10));
        no_errors(&out);
        assert_same_timeline(&bufs, &out);
        assert_eq!(out.outcomes(), vec!["dubbed"; 3]);
        for (i, (f, m)) in out.frags.iter().zip(&out.fragment_msgs).enumerate() {
            assert_eq!(m.get::<i64>("fitted-frames").unwrap(), fitted);
            let input = &all[i * 1600..(i + 1) * 1600];
            if factor > 1.0 {
                assert!(f.samples == input, "trimmed echo is the input");
            } else {
                assert!(f.samples[..1120] == input[..1120]);
                assert!(f.samples[1120..].iter().all(|&s| s == 0), "zero padded");
            }
        }
        assert_eq!(out.stat("fitted"), 3);
    }
}

/// Normalized cross-correlation of two equally long signals.
fn correlation(a: &[i16], b: &[i16]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt().max(1.0)
}

/// Channel `c` of interleaved `x` with `channels` channels.
fn channel(x: &[i16], channels: usize, c: usize) -> Vec<i16> {
    x.iter().skip(c).step_by(channels).copied().collect()
}

#[test]
fn answers_in_other_formats_are_converted_and_dubbed() {
    // A 48 kHz stereo stream; engines answering at 22.05 kHz mono (espeak-ng) and 16 kHz
    // stereo. The echo server decimates the fragment to its answer's format, stsbridge
    // converts it back: the dub is the input again, minus what the lower rate cannot hold.
    for (rate, channels) in [(22050u32, 1u32), (16000, 2)] {
        let srv = server(Mode::Echo);
        srv.set_faults(Faults {
            wrong_rate: Some(rate),
            wrong_channels: Some(channels),
            ..Default::default()
        });
        let mut b = file_bridge(&srv.url(), 48000, 2, |_| {});
        let (bufs, all) = push_n(&mut b, 4, 48000);
        let out = b.finish(Duration::from_secs(20));
        no_errors(&out);
        assert_same_timeline(&bufs, &out);
        assert_eq!(out.outcomes(), vec!["dubbed"; 4], "{rate} Hz {channels} ch");
        let got = out.all_samples();
        // Away from the fragment edges (each answer is converted alone).
        for c in 0..2 {
            let (x, y) = (channel(&all, 2, c), channel(&got, 2, c));
            for f in 0..4 {
                let r = f * 48000 + 2400..(f + 1) * 48000 - 2400;
                let k = correlation(&x[r.clone()], &y[r]);
                assert!(
                    k > 0.95,
                    "{rate} Hz {channels} ch: fragment {f} channel {c}: {k}"
                );
            }
        }
        // Both channels carry the dub (mono answers are spread, stereo kept).
        assert_ne!(channel(&got, 2, 0), vec![0; 4 * 48000]);
        assert_ne!(channel(&got, 2, 1), vec![0; 4 * 48000]);
    }
}

#[test]
fn wire_rate_and_channels_are_what_is_sent() {
    let srv = server(Mode::Echo);
    let mut b = file_bridge(&srv.url(), 48000, 2, |b| {
        b.set_property("wire-rate", 16000u32);
        b.set_property("wire-channels", 1u32);
    });
    let (bufs, all) = push_n(&mut b, 3, 48000);
    let out = b.finish(Duration::from_secs(20));
    no_errors(&out);
    assert_same_timeline(&bufs, &out);
    assert_eq!(out.outcomes(), vec!["dubbed"; 3]);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!((r.sample_rate_hz, r.channels, r.frames), (16000, 1, 16000));
    }
    // The 16 kHz mono echo comes back as 48 kHz stereo: the mono mix of the input.
    let got = out.all_samples();
    let mono: Vec<i16> = all
        .chunks(2)
        .map(|f| ((i32::from(f[0]) + i32::from(f[1])) / 2) as i16)
        .collect();
    let r = 2400..48000 - 2400;
    let k = correlation(&mono[r.clone()], &channel(&got, 2, 0)[r]);
    assert!(k > 0.95, "{k}");
}

#[test]
fn wire_format_defaults_to_the_streams_and_refuses_rates_below_8_khz() {
    init();
    let e = gst::ElementFactory::make("stsbridge").build().unwrap();
    assert_eq!(e.property::<u32>("wire-rate"), 0);
    assert_eq!(e.property::<u32>("wire-channels"), 0);
    // Below 8 kHz (and not 0) is refused: the old value stays.
    e.set_property("wire-rate", 16000u32);
    e.set_property("wire-rate", 4000u32);
    assert_eq!(e.property::<u32>("wire-rate"), 16000);
}

#[test]
fn output_stays_in_order_with_shuffled_delays() {
    let srv = server(Mode::Echo);
    srv.set_faults(Faults {
        delay_ms: 120,
        jitter_ms: 110,
        ..Default::default()
    });
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("max-in-flight", 3u32);
    });
    let (bufs, all) = push_n(&mut b, 15, 1600);
    let out = finish_exact(b, &bufs, &all, 20);
    assert_eq!(out.outcomes(), vec!["dubbed"; 15]);
    let seqs: Vec<u64> = out
        .fragment_msgs
        .iter()
        .map(|m| m.get::<u64>("sequence-number").unwrap())
        .collect();
    assert_eq!(seqs, (0..15).collect::<Vec<_>>());
    // Pipelined, within the window; completion order differed from arrival order.
    let s = srv.stats();
    assert!(
        s.max_in_flight >= 2 && s.max_in_flight <= 3,
        "{}",
        s.max_in_flight
    );
    assert!(out.stat("max-in-flight") <= 3);
    let mut seen: Vec<u64> = srv
        .requests()
        .iter()
        .map(|r| r.sequence_number.unwrap())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..15).collect::<Vec<_>>(),
        "one request per fragment"
    );
}

#[test]
fn serialized_events_keep_their_place() {
    let srv = server(Mode::Echo);
    srv.set_faults(Faults {
        delay_ms: 100,
        ..Default::default()
    });
    let mut b = file_bridge(&srv.url(), 16000, 1, |_| {});
    b.push(&test_audio(0, 1600, 1));
    let tags = gst::TagList::new();
    assert!(b.appsrc.send_event(gst::event::Tag::new(tags)));
    b.push(&test_audio(1, 1600, 1));
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    let flow: Vec<&str> = out
        .flow
        .iter()
        .map(|s| s.as_str())
        .filter(|s| *s == "buffer" || *s == "tag" || *s == "eos")
        .collect();
    assert_eq!(flow, vec!["buffer", "tag", "buffer", "eos"]);
}

#[test]
fn retries_recover_a_failed_attempt() {
    let srv = server(Mode::Echo);
    srv.fault_for_sequence(
        1,
        Faults {
            status: Some(500),
            ..Default::default()
        },
    );
    let mut b = file_bridge(&srv.url(), 16000, 1, |_| {});
    let (bufs, all) = push_n(&mut b, 3, 1600);
    let out = finish_exact(b, &bufs, &all, 10);
    assert_eq!(out.outcomes(), vec!["dubbed"; 3]);
    let attempts: Vec<u32> = out
        .fragment_msgs
        .iter()
        .map(|m| m.get::<u32>("attempts").unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 2, 1]);
    assert_eq!(out.stat("retries"), 1);
    assert_eq!(out.stat("requests"), 4);
    assert_eq!(srv.request_count(), 4);
}

#[test]
fn retries_honour_retry_after_and_max_retries() {
    let srv = server(Mode::Echo);
    srv.fault_for_sequence(
        0,
        Faults {
            status: Some(429),
            retry_after_s: Some(1),
            ..Default::default()
        },
    );
    let mut b = file_bridge(&srv.url(), 16000, 1, |_| {});
    push_n(&mut b, 1, 1600);
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_eq!(out.outcomes(), vec!["dubbed"]);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].arrived - reqs[0].arrived;
    assert!(gap >= Duration::from_millis(990), "retry after {gap:?}");

    // A fragment that always fails is tried 1 + max-retries times, then falls back.
    let srv = server(Mode::Echo);
    srv.set_faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("max-retries", 3u32)
    });
    let (_, all) = push_n(&mut b, 1, 1600);
    let out = b.finish(Duration::from_secs(10));
    assert_eq!(out.reasons(), vec!["http_status"]);
    assert_eq!(out.fragment_msgs[0].get::<u32>("attempts").unwrap(), 4);
    assert_eq!(srv.request_count(), 4);
    assert!(out.all_samples() == all);
    // Non-retryable failures are not retried.
    let srv = server(Mode::Echo);
    srv.set_faults(Faults {
        status: Some(400),
        ..Default::default()
    });
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("max-retries", 3u32)
    });
    push_n(&mut b, 1, 1600);
    let out = b.finish(Duration::from_secs(10));
    assert_eq!(out.fragment_msgs[0].get::<u32>("attempts").unwrap(), 1);
    assert_eq!(srv.request_count(), 1);
}

/// Pushes one fragment and waits until it went out.
fn push_one(b: &mut Bridge, seq: u64) {
    let n = b.output_count();
    b.push(&test_audio(seq, 1600, 1));
    assert!(
        b.wait_output(n + 1, Duration::from_secs(5)),
        "fragment {seq} did not come out"
    );
}

/// Live: pushes one fragment and waits until it went out (the clock stands still: it went out
/// on its answer or the breaker's refusal, never on its deadline).
fn push_decided(b: &mut Clocked, seq: u64) {
    let n = b.output_count();
    b.push(&test_audio(seq, 1600, 1));
    assert!(b.wait_output(n + 1), "fragment {seq} did not come out");
}

/// The breaker on the pipeline clock: the cooldown ends when the test clock says, to the
/// nanosecond.
#[test]
fn breaker_opens_half_opens_and_closes() {
    let srv = server(Mode::Echo);
    srv.set_faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    // Longer than the stream pushed meanwhile (14 fragments of 100 ms move the clock too).
    let cooldown = 10 * SECOND;
    let mut b = Clocked::new(16000, 1, 100 * MS, |b| {
        b.set_property("url", srv.url());
        b.set_property("max-retries", 0u32);
        b.set_property("breaker-threshold", 5u32);
        b.set_property("breaker-cooldown", cooldown);
        // Deadlines far away: only answers and the breaker decide here.
        b.set_property("latency", 60 * SECOND);
    });
    for seq in 0..5 {
        push_decided(&mut b, seq);
    }
    assert_eq!(b.stats().get::<String>("breaker-state").unwrap(), "open");
    // It opened when the 5th failure came back, the clock standing at the 5th fragment's end.
    let opened = b.now();
    // Open: no requests.
    for seq in 5..8 {
        push_decided(&mut b, seq);
    }
    assert_eq!(srv.request_count(), 5);
    // A nanosecond before the cooldown ends: still open, no request.
    b.advance_to(opened + cooldown - 1);
    push_decided(&mut b, 8);
    assert_eq!(srv.request_count(), 5);
    // At the end of the cooldown the probe goes out and fails: open again, one more request.
    b.advance_to(opened + cooldown);
    push_decided(&mut b, 9);
    assert_eq!(srv.request_count(), 6);
    assert_eq!(b.stats().get::<String>("breaker-state").unwrap(), "open");
    push_decided(&mut b, 10);
    assert_eq!(srv.request_count(), 6);
    // The service recovers; the next probe, a cooldown later, closes the breaker.
    srv.set_faults(Faults::default());
    b.advance_to(opened + 2 * cooldown - 1);
    push_decided(&mut b, 11);
    assert_eq!(srv.request_count(), 6);
    b.advance_to(opened + 2 * cooldown);
    push_decided(&mut b, 12);
    push_decided(&mut b, 13);
    assert_eq!(srv.request_count(), 8);
    let out = b.finish();
    no_errors(&out);
    let reasons = out.reasons();
    assert_eq!(&reasons[..5], &["http_status"; 5]);
    assert_eq!(&reasons[5..9], &["breaker_open"; 4]);
    assert_eq!(reasons[9], "http_status");
    assert_eq!(&reasons[10..12], &["breaker_open"; 2]);
    assert_eq!(&out.outcomes()[12..], &["dubbed", "dubbed"]);
    let transitions: Vec<(String, String)> = out
        .breaker_msgs
        .iter()
        .map(|m| (m.get("previous").unwrap(), m.get("state").unwrap()))
        .collect();
    let t = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        transitions,
        vec![
            t("closed", "open"),
            t("open", "half-open"),
            t("half-open", "open"),
            t("open", "half-open"),
            t("half-open", "closed"),
        ]
    );
    assert_eq!(
        out.breaker_msgs[0]
            .get::<u32>("consecutive-failures")
            .unwrap(),
        5
    );
    assert_eq!(out.stat("breaker-opened"), 2);
    assert_eq!(out.stat("fallbacks-breaker-open"), 6);
    // Every fragment left on its answer or the breaker, none on its deadline.
    assert_eq!(out.stat("fallbacks-deadline"), 0);
}

#[test]
fn non_retryable_failures_leave_the_breaker_closed() {
    let srv = server(Mode::Echo);
    srv.set_faults(Faults {
        error_code: Some("INVALID_INPUT".into()),
        ..Default::default()
    });
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("breaker-threshold", 2u32)
    });
    push_n(&mut b, 6, 800);
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_eq!(out.reasons(), vec!["sts_error"; 6]);
    assert_eq!(srv.request_count(), 6);
    assert!(out.breaker_msgs.is_empty());
    assert_eq!(out.stats.get::<String>("breaker-state").unwrap(), "closed");
}

#[test]
fn api_key_is_sent_and_required() {
    let key = "sk-test-0123456789";
    let srv = StsServer::start(ServerConfig {
        api_key: Some(key.into()),
        ..Default::default()
    })
    .unwrap();
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| b.set_property("api-key", key));
    let (_, all) = push_n(&mut b, 2, 800);
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_eq!(out.outcomes(), vec!["dubbed"; 2]);
    assert!(out.all_samples() == all);
    for r in srv.requests() {
        assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {key}")));
    }
    // Without the key: 401, not retried, not counted by the breaker.
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("breaker-threshold", 1u32)
    });
    let (_, all) = push_n(&mut b, 2, 800);
    let out = b.finish(Duration::from_secs(10));
    assert_eq!(out.reasons(), vec!["http_status"; 2]);
    assert!(out.all_samples() == all);
    assert_eq!(out.stats.get::<String>("breaker-state").unwrap(), "closed");
    assert_eq!(srv.request_count(), 4);
}

#[test]
fn the_key_from_a_file_or_the_property_wins_over_url_credentials() {
    let key = "sk-file-0123456789";
    let srv = StsServer::start(ServerConfig {
        api_key: Some(key.into()),
        ..Default::default()
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("stsbridge-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, format!("{key}\n")).unwrap();
    // Credentials in the URL too: only the bearer goes out (two Authorization headers got a
    // 401 for every fragment).
    let url = srv.url().replacen("http://", "http://user:password@", 1);
    let f = file.to_str().unwrap().to_owned();
    let mut b = file_bridge(&url, 16000, 1, move |b| b.set_property("api-key-file", &f));
    push_n(&mut b, 2, 800);
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_eq!(out.outcomes(), vec!["dubbed"; 2]);
    for r in srv.requests() {
        assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {key}")));
    }
    let mut b = file_bridge(&url, 16000, 1, |b| b.set_property("api-key", key));
    push_n(&mut b, 1, 800);
    assert_eq!(b.finish(Duration::from_secs(10)).outcomes(), vec!["dubbed"]);

    // Both at once, or an unreadable file: a clear error at start.
    init();
    for (prop_key, path) in [(Some(key), file.clone()), (None, dir.join("missing"))] {
        let e = gst::ElementFactory::make("stsbridge")
            .property("url", srv.url())
            .property("api-key-file", path.to_str().unwrap())
            .build()
            .unwrap();
        if let Some(k) = prop_key {
            e.set_property("api-key", k);
        }
        let bus = gst::Bus::new();
        e.set_bus(Some(&bus));
        assert!(e.set_state(gst::State::Paused).is_err());
        let msg = bus.pop_filtered(&[gst::MessageType::Error]).unwrap();
        let gst::MessageView::Error(err) = msg.view() else {
            unreachable!()
        };
        let text = format!("{:?}", err.debug());
        assert!(
            text.contains("not both") || text.contains("cannot read api-key-file"),
            "{text}"
        );
        assert!(!text.contains(key), "the key is never in an error");
        e.set_state(gst::State::Null).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bypass_switches_to_the_original_while_playing() {
    let srv = server(Mode::Tone);
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| b.set_property("crossfade", 0u64));
    let mut inputs = Vec::new();
    for seq in 0..6u64 {
        if seq == 2 {
            b.bridge.set_property("bypass", true);
        }
        if seq == 4 {
            b.bridge.set_property("bypass", false);
        }
        let a = test_audio(seq, 1600, 1);
        inputs.push(a.clone());
        push_one(&mut b, seq);
        let _ = a;
    }
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_eq!(
        out.outcomes(),
        vec!["dubbed", "dubbed", "bypass", "bypass", "dubbed", "dubbed"]
    );
    assert_eq!(srv.request_count(), 4);
    assert!(out.frags[2].samples == inputs[2] && out.frags[3].samples == inputs[3]);
    assert!(out.frags[0].samples != inputs[0] && out.frags[5].samples != inputs[5]);
    assert_eq!(out.stat("bypassed"), 2);
}

#[test]
fn empty_url_is_passthrough_and_gaps_are_not_sent() {
    let srv = server(Mode::Tone);
    let mut b = Bridge::new(false, 16000, 1, 0, |_| {});
    let (bufs, all) = push_n(&mut b, 3, 1600);
    let out = finish_exact(b, &bufs, &all, 5);
    assert_eq!(out.outcomes(), vec!["passthrough"; 3]);

    let mut b = file_bridge(&srv.url(), 16000, 1, |_| {});
    b.push(&test_audio(0, 1600, 1));
    b.push_gap(1600);
    b.push(&test_audio(2, 1600, 1));
    let out = b.finish(Duration::from_secs(5));
    no_errors(&out);
    assert_eq!(out.outcomes(), vec!["dubbed", "gap", "dubbed"]);
    assert!(out.frags[1].flags.contains(gst::BufferFlags::GAP));
    assert!(!out.frags[0].flags.contains(gst::BufferFlags::GAP));
    assert_eq!(srv.request_count(), 2);
}

#[test]
fn fallback_modes_and_original_mix() {
    let srv = server(Mode::Silence);
    srv.set_faults(Faults {
        status: Some(500),
        ..Default::default()
    });
    let input = test_audio(0, 1600, 1);
    // silence
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("max-retries", 0u32);
        b.set_property("crossfade", 0u64);
        b.set_property_from_str("fallback", "silence");
    });
    b.push(&input);
    let out = b.finish(Duration::from_secs(5));
    assert!(out.frags[0].samples.iter().all(|&s| s == 0));
    // ducked at -6.02 dB: half amplitude
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("max-retries", 0u32);
        b.set_property("crossfade", 0u64);
        b.set_property_from_str("fallback", "ducked");
        b.set_property("fallback-gain", -6.0206f64);
    });
    b.push(&input);
    let out = b.finish(Duration::from_secs(5));
    for (o, i) in out.frags[0].samples.iter().zip(&input) {
        assert!((i32::from(*o) - i32::from(*i) / 2).abs() <= 1);
    }
    // original-mix under a silent dub: the original at that level.
    srv.set_faults(Faults::default());
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("crossfade", 0u64);
        b.set_property("original-mix", -6.0206f64);
    });
    b.push(&input);
    let out = b.finish(Duration::from_secs(5));
    assert_eq!(out.outcomes(), vec!["dubbed"]);
    for (o, i) in out.frags[0].samples.iter().zip(&input) {
        assert!((i32::from(*o) - i32::from(*i) / 2).abs() <= 1);
    }
}

#[test]
fn seams_between_dub_and_fallback_do_not_click() {
    // Tone dub, every other fragment failing: the output alternates tone / original.
    let srv = server(Mode::Tone);
    for seq in (1..8).step_by(2) {
        srv.fault_for_sequence(
            seq,
            Faults {
                status: Some(400),
                ..Default::default()
            },
        );
    }
    let mut b = file_bridge(&srv.url(), 16000, 1, |_| {});
    push_n(&mut b, 8, 1600);
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_eq!(out.outcomes()[..2], ["dubbed", "fallback"]);
    let all = out.all_samples();
    let (_, max_step) = all
        .windows(2)
        .map(|w| (i32::from(w[0]) - i32::from(w[1])).abs())
        .enumerate()
        .max_by_key(|(_, s)| *s)
        .unwrap();

    // Within-signal steps: the test audio changes by < 4000 per sample, the 440 Hz tone at
    // 0.3 FS by < 1700. A hard switch would jump by up to ~20000.
    assert!(max_step < 5000, "click of {max_step}");
}

#[test]
fn live_deadline_sends_fallback_on_time_and_discards_late_answers() {
    let srv = server(Mode::Tone);
    // The answers come when the test says: after every deadline.
    srv.hold_answers(true);
    let latency = 400 * MS;
    let frag = 200 * MS;
    let mut b = Clocked::new(16000, 1, frag, |b| {
        b.set_property("url", srv.url());
        b.set_property("latency", latency);
        b.set_property("max-retries", 0u32);
        b.set_property("max-in-flight", 8u32);
        // The request side's own timer never decides here.
        b.set_property("timeout", 120 * SECOND);
    });
    // The latency downstream sees includes ours.
    let mut q = gst::query::Latency::new();
    assert!(b.bridge.static_pad("src").unwrap().query(&mut q));
    let (live, min, _) = q.result();
    assert!(live);
    assert_eq!(min.nseconds(), frag + latency);
    let mut all = Vec::new();
    for seq in 0..5 {
        // The deadlines that pass while this fragment is captured.
        b.expire_through(latency, Some((seq + 1) * frag));
        let a = test_audio(seq, 3200, 1);
        all.extend_from_slice(&a);
        b.push(&a);
    }
    assert!(srv.wait_for_requests(5, WAIT));
    b.expire_through(latency, None);
    // The answers come, late: each is discarded, counted and reported.
    srv.hold_answers(false);
    assert!(b.log.wait(|r| messages(r, LATE_MESSAGE).count() == 5));
    let frags = b.stats();
    let inputs = b.inputs.clone();
    let out = b.finish();
    no_errors(&out);
    assert_same_timeline(&inputs, &out);
    assert_eq!(out.reasons(), vec!["deadline"; 5]);
    assert!(out.all_samples() == all);
    for (i, f) in out.frags.iter().enumerate() {
        let pts = f.pts.unwrap();
        let rt = f.running_time.unwrap();
        // On time: before the sink renders it (pts + upstream + our latency)...
        assert!(
            rt <= pts + frag + latency,
            "fragment {i} left at {rt}, pts {pts}"
        );
        // ...and not before its deadline (the answer was still possible): exactly at it.
        assert_eq!(rt, deadline(pts, frag, latency), "fragment {i}");
    }
    assert_eq!(frags.get::<u64>("late-responses").unwrap(), 5);
    let late: Vec<LateReport> = out
        .late_msgs
        .iter()
        .map(|m| LateReport::from_structure(m).unwrap())
        .collect();
    let mut seqs: Vec<u64> = late.iter().map(|l| l.sequence_number).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    assert!(
        late.iter()
            .all(|l| l.outcome == Outcome::Dubbed && l.attempts == 1)
    );
}

#[test]
fn live_answers_in_time_are_dubbed() {
    let srv = server(Mode::Echo);
    srv.set_faults(Faults {
        delay_ms: 50,
        ..Default::default()
    });
    let frag = 200 * MS;
    let latency = 500 * MS;
    let mut b = Clocked::new(16000, 1, frag, |b| {
        b.set_property("url", srv.url());
        b.set_property("latency", latency);
    });
    let mut all = Vec::new();
    for seq in 0..4 {
        let a = test_audio(seq, 3200, 1);
        all.extend_from_slice(&a);
        b.push(&a);
        // In time: each answer comes while the clock stands before its deadline.
        assert!(b.wait_output(seq as usize + 1), "fragment {seq} out");
        assert!(b.now() < b.deadline_of(seq as usize, latency));
    }
    let inputs = b.inputs.clone();
    let out = b.finish();
    no_errors(&out);
    assert_same_timeline(&inputs, &out);
    assert_eq!(out.outcomes(), vec!["dubbed"; 4]);
    assert!(out.all_samples() == all);
    assert_eq!(out.stat("late-responses"), 0);
    assert!(out.late_msgs.is_empty());
}

/// Pauses and plays again while a fragment waits for its deadline: no deadline passes while
/// PAUSED (the clock wait ends with the state change), and once PLAYING again the same
/// running-time deadline is waited for on the new base time, as a pipeline resumes.
#[test]
fn live_deadlines_wait_while_paused() {
    let srv = server(Mode::Echo);
    srv.hold_answers(true);
    let (frag, latency) = (200 * MS, 400 * MS);
    let mut b = Clocked::new(16000, 1, frag, |b| {
        b.set_property("url", srv.url());
        b.set_property("latency", latency);
        b.set_property("timeout", 120 * SECOND);
    });
    b.push(&test_audio(0, 3200, 1));
    let d = b.deadline_of(0, latency);
    assert_eq!(b.next_clock_wait(), d);
    let paused_at = b.now();
    b.bridge.set_state(gst::State::Paused).unwrap();
    assert!(!b.has_clock_wait(), "the clock wait ended with PAUSED");
    // Ten seconds pass on the clock while paused, far past the deadline's clock time; the
    // pipeline then resumes the running time where it stopped.
    b.advance_to(paused_at + 10 * SECOND);
    b.bridge
        .set_base_time(gst::ClockTime::from_nseconds(10 * SECOND));
    b.bridge.set_state(gst::State::Playing).unwrap();
    assert_eq!(
        b.next_clock_wait(),
        10 * SECOND + d,
        "the same deadline, in running time"
    );
    assert_eq!(b.output_count(), 0, "no deadline passed while paused");
    b.advance_to(10 * SECOND + d);
    assert!(b.wait_output(1));
    let out = b.stop();
    assert_eq!(out.reasons(), vec!["deadline"]);
}

/// A server that never answers, and a bridge with `n` requests hung on it.
fn hung_requests(n: usize) -> (StsServer, Bridge) {
    let srv = server(Mode::Echo);
    srv.set_faults(Faults {
        hang: true,
        ..Default::default()
    });
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("timeout", 60 * SECOND)
    });
    push_n(&mut b, n as u64, 1600);
    assert!(srv.wait_for_requests(n, WAIT));
    assert_eq!(srv.request_count(), n);
    (srv, b)
}

#[test]
fn ready_within_500_ms_with_a_hung_server() {
    let (_srv, b) = hung_requests(3);
    let t = Instant::now();
    b.pipeline.set_state(gst::State::Ready).unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(500), "READY took {took:?}");
    assert_eq!(b.stats().get::<u64>("in-flight").unwrap(), 0);
    b.pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn flush_aborts_requests_and_restarts_cleanly() {
    let (srv, mut b) = hung_requests(2);
    let sink = b.bridge.static_pad("sink").unwrap();
    let t = Instant::now();
    assert!(sink.send_event(gst::event::FlushStart::new()));
    assert!(sink.send_event(gst::event::FlushStop::new(true)));
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(
        b.output_count(),
        0,
        "held fragments are dropped by the flush"
    );
    // Works again after the flush.
    srv.set_faults(Faults::default());
    let seg = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(sink.send_event(gst::event::Segment::new(&seg)));
    let a = test_audio(5, 1600, 1);
    b.push(&a);
    let out = b.finish(Duration::from_secs(5));
    no_errors(&out);
    assert_eq!(out.outcomes().last().map(String::as_str), Some("dubbed"));
    assert!(out.frags.last().unwrap().samples == a);
}

#[test]
fn properties_round_trip() {
    init();
    let e = gst::ElementFactory::make("stsbridge").build().unwrap();
    e.set_property("url", "http://example.invalid:8000/api/v1/sts/process");
    e.set_property("stream-id", "s-1");
    e.set_property("source-language", "fr");
    e.set_property("target-language", "de");
    e.set_property("voice-profile", "warm");
    e.set_property("timeout", 2 * SECOND);
    e.set_property("max-retries", 5u32);
    e.set_property("max-in-flight", 7u32);
    e.set_property("latency", 3 * SECOND);
    e.set_property_from_str("fallback", "ducked");
    e.set_property("fallback-gain", -20.0f64);
    e.set_property("original-mix", -18.0f64);
    e.set_property("crossfade", 25 * MS);
    e.set_property("bypass", true);
    e.set_property("breaker-threshold", 9u32);
    e.set_property("breaker-cooldown", 12 * SECOND);
    e.set_property("max-response-size", 1u64 << 20);
    e.set_property("post-messages", false);
    assert_eq!(
        e.property::<String>("url"),
        "http://example.invalid:8000/api/v1/sts/process"
    );
    // Credentials and query values go in, never come back out (pipeline dumps and
    // gst-inspect read every property).
    e.set_property(
        "url",
        "http://user:pw-77@example.invalid:8000/api/v1/sts/process?api_key=sk-q-991",
    );
    assert_eq!(
        e.property::<String>("url"),
        "http://***@example.invalid:8000/api/v1/sts/process?api_key=***"
    );
    assert_eq!(e.property::<String>("stream-id"), "s-1");
    assert_eq!(e.property::<String>("source-language"), "fr");
    assert_eq!(e.property::<String>("target-language"), "de");
    assert_eq!(e.property::<String>("voice-profile"), "warm");
    assert_eq!(e.property::<u64>("timeout"), 2 * SECOND);
    assert_eq!(e.property::<u32>("max-retries"), 5);
    assert_eq!(e.property::<u32>("max-in-flight"), 7);
    assert_eq!(e.property::<u64>("latency"), 3 * SECOND);
    assert_eq!(
        e.property::<gstdubbing::stsbridge::Fallback>("fallback"),
        gstdubbing::stsbridge::Fallback::Ducked
    );
    assert_eq!(e.property::<f64>("fallback-gain"), -20.0);
    assert_eq!(e.property::<f64>("original-mix"), -18.0);
    assert_eq!(e.property::<u64>("crossfade"), 25 * MS);
    assert!(e.property::<bool>("bypass"));
    assert_eq!(e.property::<u32>("breaker-threshold"), 9);
    assert_eq!(e.property::<u64>("breaker-cooldown"), 12 * SECOND);
    assert_eq!(e.property::<u64>("max-response-size"), 1 << 20);
    assert!(!e.property::<bool>("post-messages"));
    // Defaults of a fresh element.
    let d = gst::ElementFactory::make("stsbridge").build().unwrap();
    assert_eq!(d.property::<u64>("timeout"), 8 * SECOND);
    assert_eq!(d.property::<u32>("max-retries"), 2);
    assert_eq!(d.property::<u32>("max-in-flight"), 3);
    assert_eq!(d.property::<u64>("latency"), 5 * SECOND);
    assert_eq!(d.property::<u32>("breaker-threshold"), 5);
    assert_eq!(d.property::<u64>("breaker-cooldown"), 30 * SECOND);
    assert_eq!(d.property::<u64>("crossfade"), 10 * MS);
    assert_eq!(d.property::<f64>("original-mix"), f64::NEG_INFINITY);
    assert_eq!(d.property::<u64>("max-response-size"), 16 << 20);
    // The key is write-only.
    let pspec = d.find_property("api-key").unwrap();
    assert!(pspec.flags().contains(glib::ParamFlags::WRITABLE));
    assert!(!pspec.flags().contains(glib::ParamFlags::READABLE));
    let stats = d.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<String>("breaker-state").unwrap(), "closed");
}

#[test]
fn bad_url_is_a_clear_error() {
    init();
    let p = gst::parse::launch(
        "audiotestsrc num-buffers=1 ! audio/x-raw,format=S16LE ! stsbridge url=ftp://x/y ! fakesink",
    )
    .unwrap();
    assert!(p.set_state(gst::State::Paused).is_err());
    let bus = p.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(2), &[gst::MessageType::Error])
        .expect("an error message");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    let text = format!("{} {:?}", e.error(), e.debug());
    assert!(text.contains("not an http:// or https:// URL"), "{text}");
    p.set_state(gst::State::Null).unwrap();
}

#[test]
fn sts_dies_and_comes_back_in_a_file_pipeline() {
    let srv = server(Mode::Echo);
    let addr = srv.addr();
    let mut b = file_bridge(&srv.url(), 16000, 1, |b| {
        b.set_property("breaker-threshold", 0u32);
        b.set_property("max-retries", 1u32);
    });
    for seq in 0..3 {
        push_one(&mut b, seq);
    }
    srv.stop();
    for seq in 3..5 {
        push_one(&mut b, seq);
    }
    let again = StsServer::start(ServerConfig {
        bind: addr,
        ..Default::default()
    })
    .unwrap();
    for seq in 5..8 {
        push_one(&mut b, seq);
    }
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_eq!(
        out.outcomes(),
        vec![
            "dubbed", "dubbed", "dubbed", "fallback", "fallback", "dubbed", "dubbed", "dubbed"
        ]
    );
    assert_eq!(&out.reasons()[3..5], &["transport", "transport"]);
    assert_eq!(out.all_samples().len(), 8 * 1600);
    assert_eq!(again.request_count(), 3);
}

#[test]
fn caps_change_mid_stream_is_followed() {
    let srv = server(Mode::Echo);
    let mut b = file_bridge(&srv.url(), 16000, 1, |_| {});
    let a = test_audio(0, 1600, 1);
    b.push(&a);
    // 48 kHz stereo from here on.
    b.appsrc.set_caps(Some(&caps(48000, 2)));
    b.rate = 48000;
    b.channels = 2;
    let c = test_audio(1, 4800, 2);
    b.push(&c);
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_eq!(out.outcomes(), vec!["dubbed", "dubbed"]);
    assert!(out.frags[0].samples == a && out.frags[1].samples == c);
    let shapes: Vec<(u32, u32, u64)> = srv
        .requests()
        .iter()
        .map(|r| (r.sample_rate_hz, r.channels, r.frames))
        .collect();
    assert!(shapes.contains(&(16000, 1, 1600)) && shapes.contains(&(48000, 2, 4800)));
}

#[test]
fn the_text_pad_carries_each_translation_where_its_speech_plays() {
    let srv = server(Mode::Echo);
    let mut b = file_bridge(&srv.url(), 16000, 1, |_| {});
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .max_buffers(0)
        .build();
    let events: std::sync::Arc<std::sync::Mutex<Vec<(String, u64, u64)>>> = Default::default();
    let ev = events.clone();
    sink.static_pad("sink").unwrap().add_probe(
        gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            if let Some(gst::PadProbeData::Event(e)) = &info.data {
                let (ts, dur) = match e.view() {
                    gst::EventView::Gap(g) => {
                        let (t, d) = g.get();
                        (t.nseconds(), d.map_or(0, |d| d.nseconds()))
                    }
                    _ => (0, 0),
                };
                ev.lock()
                    .unwrap()
                    .push((e.type_().name().to_string(), ts, dur));
            }
            gst::PadProbeReturn::Ok
        },
    );
    b.pipeline.add(&sink).unwrap();
    b.bridge
        .link_pads(Some("text_src"), &sink, Some("sink"))
        .unwrap();
    sink.sync_state_with_parent().unwrap();
    let (bufs, _) = push_n(&mut b, 3, 16000);
    let mut texts = Vec::new();
    while let Some(s) = sink.try_pull_sample(gst::ClockTime::from_seconds(5)) {
        let buf = s.buffer().unwrap();
        let text = String::from_utf8(buf.map_readable().unwrap().to_vec()).unwrap();
        texts.push((
            buf.pts().unwrap().nseconds(),
            buf.duration().unwrap().nseconds(),
            text,
        ));
        if texts.len() == 3 {
            break;
        }
    }
    assert_eq!(texts.len(), 3, "one text per dubbed fragment");
    let out = b.finish(Duration::from_secs(10));
    no_errors(&out);
    assert_same_timeline(&bufs, &out);
    for (m, (pts, dur, text)) in out.fragment_msgs.iter().zip(&texts) {
        let report = gstdubbing::stsbridge::FragmentReport::from_structure(m).unwrap();
        assert_eq!(*text, report.translated_text);
        assert_eq!(*pts, report.speech_start);
        assert_eq!(*pts + *dur, report.speech_end);
        // The speech is the fragment's (echo: its own place and length).
        assert!(report.speech_start >= report.pts && report.speech_end <= report.pts + SECOND);
    }
    // The stream, its caps and a segment came first; gaps keep a muxer going; then EOS.
    let ev = events.lock().unwrap().clone();
    let names: Vec<&str> = ev.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        &names[..3],
        &["stream-start", "caps", "segment"],
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"eos"));
    // Text and gaps together cover the stream without overlap, in order.
    let mut spans: Vec<(u64, u64)> = texts.iter().map(|t| (t.0, t.0 + t.1)).collect();
    spans.extend(ev.iter().filter(|e| e.0 == "gap").map(|e| (e.1, e.1 + e.2)));
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap {w:?}");
    }
    assert_eq!(spans.last().unwrap().1, 3 * SECOND);
}

/// Issue 20 defect 11: a subtitle consumer that never reads (`text_src ! queue ! appsink
/// max-buffers=1`, never pulled) does not hold up the audio: every fragment goes out, the text
/// that did not fit is dropped and counted.
#[test]
fn an_unread_text_pad_never_stalls_the_audio() {
    let srv = server(Mode::Echo);
    let mut b = file_bridge(&srv.url(), 16000, 1, |_| {});
    let queue = gst::ElementFactory::make("queue").build().unwrap();
    let stuck = gst_app::AppSink::builder()
        .sync(false)
        .max_buffers(1)
        .drop(false)
        .build();
    b.pipeline.add_many([&queue, stuck.upcast_ref()]).unwrap();
    b.bridge
        .link_pads(Some("text_src"), &queue, Some("sink"))
        .unwrap();
    queue.link(&stuck).unwrap();
    for e in [&queue, stuck.upcast_ref()] {
        e.sync_state_with_parent().unwrap();
    }
    // The audio's EOS is what the test waits for (the stuck sink never posts its own).
    let (eos_tx, eos_rx) = std::sync::mpsc::channel();
    b.bridge.static_pad("src").unwrap().add_probe(
        gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            if let Some(gst::PadProbeData::Event(e)) = &info.data
                && e.type_() == gst::EventType::Eos
            {
                let _ = eos_tx.send(());
            }
            gst::PadProbeReturn::Ok
        },
    );
    // 100 fragments of 0.1 s: far more text than the queue, the sink and the element hold.
    let (bufs, all) = push_n(&mut b, 100, 1600);
    b.appsrc.end_of_stream().unwrap();
    assert!(
        eos_rx.recv_timeout(Duration::from_secs(30)).is_ok(),
        "the audio stalled after {} of 100 fragments",
        b.output_count()
    );
    let out = b.stop();
    no_errors(&out);
    assert_same_timeline(&bufs, &out);
    assert!(out.all_samples() == all, "echo: the input's samples");
    assert_eq!(out.stat("dubbed"), 100);
    assert!(out.stat("text-dropped") > 0, "{:?}", out.stats);
}
