//! `stsbridge protocol=socketio` against an independent implementation of the contract: a small
//! STS written with python-socketio (tests/support/sio_sts.py, the library the seeds' services
//! use), started on 127.0.0.1 by each test and stopped after it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use gst::prelude::*;

/// The python of the venv scripts/install-deps.sh makes.
fn python() -> String {
    if let Ok(p) = std::env::var("DUBBING_SIO_PYTHON") {
        return p;
    }
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/target/sio-venv/bin/python");
    assert!(
        std::path::Path::new(p).exists(),
        "{p} is missing: run scripts/install-deps.sh (it installs python-socketio there)"
    );
    p.to_owned()
}

/// The python-socketio STS, running until dropped.
struct PySts {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    port: u16,
}

impl PySts {
    fn start(args: &[&str]) -> PySts {
        let mut child = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/sio_sts.py"
            ))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the python-socketio STS");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the python STS says where it listens");
        let port = first
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        PySts {
            child,
            stdin,
            lines,
            port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server and returns what it saw.
    fn stop(mut self) -> serde_json::Value {
        drop(self.stdin.take());
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .expect("the python STS prints its summary");
            if let Some(s) = l.strip_prefix("SUMMARY ") {
                return serde_json::from_str(s).unwrap();
            }
        }
    }
}

impl Drop for PySts {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sio_bridge(url: &str, configure: impl FnOnce(&gst::Element)) -> Bridge {
    let url = url.to_owned();
    Bridge::new(false, 48000, 2, 0, move |b| {
        b.set_property_from_str("protocol", "socketio");
        b.set_property("url", &url);
        b.set_property("loudness-match", false);
        configure(b);
    })
}

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

fn seqs(summary: &serde_json::Value) -> Vec<Vec<u64>> {
    summary["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect()
        })
        .collect()
}

fn echo_case(in_flight: u32, delay_ms: &str) {
    let sts = PySts::start(&["--delay-ms", delay_ms]);
    let mut b = sio_bridge(&sts.url(), |b| {
        b.set_property("max-in-flight", in_flight);
        b.set_property("stream-id", "sio-echo");
        b.set_property("api-key", "sk-test-token");
    });
    let n = 8;
    let (mut bufs, mut all) = push_n(&mut b, n, 24000);
    // A partial last fragment, as dubchunker sends before EOS.
    let tail = test_audio(99, 7777, 2);
    bufs.push(b.push(&tail));
    all.extend_from_slice(&tail);
    let out = b.finish(Duration::from_secs(60));
    assert!(out.errors.is_empty(), "errors: {:?}", out.errors);
    assert_same_timeline(&bufs, &out);
    assert_eq!(out.outcomes(), vec!["dubbed"; n as usize + 1]);
    assert!(
        out.all_samples() == all,
        "echo over Socket.IO is not bit-exact"
    );
    // Subtitles come from translated_text, in order.
    let seq_of = |m: &gst::Structure| m.get::<u64>("sequence-number").unwrap();
    let order: Vec<u64> = out.fragment_msgs.iter().map(seq_of).collect();
    assert_eq!(order, (0..=n).collect::<Vec<_>>());
    for m in &out.fragment_msgs {
        assert!(
            m.get::<String>("translated-text")
                .unwrap()
                .starts_with("[ECO]")
        );
    }
    assert_eq!(out.stats.get::<&str>("protocol").unwrap(), "socketio");
    assert_eq!(out.stat("sessions"), 1);
    assert_eq!(out.stat("reconnects"), 0);

    let summary = sts.stop();
    assert_eq!(seqs(&summary), vec![(0..=n).collect::<Vec<_>>()]);
    assert_eq!(summary["client_acks"], n + 1);
    assert_eq!(summary["ends"], 1, "stream:end at EOS");
    assert_eq!(summary["auth"][0], "sk-test-token");
    let init = &summary["inits"][0];
    assert_eq!(init["stream_id"], "sio-echo");
    assert_eq!(init["config"]["format"], "wav");
    assert_eq!(init["config"]["sample_rate_hz"], 48000);
    assert_eq!(init["config"]["channels"], 2);
    assert_eq!(init["config"]["chunk_duration_ms"], 500);
    assert_eq!(init["max_inflight"], in_flight);
    let seen = summary["max_inflight_seen"].as_u64().unwrap();
    if in_flight == 1 {
        assert_eq!(seen, 1);
    } else {
        assert!(seen >= 2, "only {seen} fragments were in flight at once");
        assert!(seen <= u64::from(in_flight));
    }
}

#[test]
fn echo_is_bit_exact_and_in_order_one_in_flight() {
    echo_case(1, "0");
}

#[test]
fn echo_is_bit_exact_and_in_order_many_in_flight() {
    echo_case(4, "150");
}

/// The answers of a real STS are not PCM at the stream's format: both are dubbed.
fn dubbed_answer_case(answer: &str, wire_format: &str) {
    let sts = PySts::start(&["--answer", answer]);
    let mut b = sio_bridge(&sts.url(), |b| {
        b.set_property_from_str("wire-format", wire_format);
        b.set_property("max-in-flight", 2u32);
    });
    let (bufs, all) = push_n(&mut b, 4, 24000);
    let out = b.finish(Duration::from_secs(60));
    assert!(out.errors.is_empty(), "errors: {:?}", out.errors);
    assert_same_timeline(&bufs, &out);
    assert_eq!(out.outcomes(), vec!["dubbed"; 4], "{:?}", out.reasons());
    assert_eq!(out.stat("fallbacks"), 0);
    // The dub is the input, through a lossy codec or a resampler: loud, and alike.
    let got = out.all_samples();
    let rms =
        |s: &[i16]| (s.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / s.len() as f64).sqrt();
    let ratio = rms(&got) / rms(&all);
    assert!((0.5..1.5).contains(&ratio), "rms ratio {ratio}");
    let summary = sts.stop();
    assert_eq!(summary["inits"][0]["config"]["format"], wire_format);
    assert_eq!(seqs(&summary), vec![vec![0, 1, 2, 3]]);
}

#[test]
fn m4a_answers_are_dubbed() {
    dubbed_answer_case("m4a", "wav");
}

#[test]
fn pcm_f32le_answers_at_22_khz_mono_are_dubbed() {
    dubbed_answer_case("f32-22k", "pcm_f32le");
}

#[test]
fn raw_s16le_goes_out_as_asked() {
    let sts = PySts::start(&[]);
    let mut b = sio_bridge(&sts.url(), |b| {
        b.set_property_from_str("wire-format", "pcm_s16le");
        b.set_property("wire-rate", 16000u32);
        b.set_property("wire-channels", 1u32);
    });
    let (bufs, _) = push_n(&mut b, 2, 24000);
    let out = b.finish(Duration::from_secs(60));
    assert!(out.errors.is_empty(), "errors: {:?}", out.errors);
    assert_same_timeline(&bufs, &out);
    assert_eq!(out.outcomes(), vec!["dubbed"; 2]);
    let summary = sts.stop();
    let c = &summary["inits"][0]["config"];
    assert_eq!(
        (
            c["format"].as_str(),
            c["sample_rate_hz"].as_u64(),
            c["channels"].as_u64()
        ),
        (Some("pcm_s16le"), Some(16000), Some(1))
    );
}
