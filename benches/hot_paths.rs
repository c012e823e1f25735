//! Micro-benchmarks of the hot paths that run without GStreamer: where `dubchunker` cuts
//! (the accumulator), the wire path of one fragment (JSON + base64 both ways), the circuit
//! breaker and the output renderer of `stsbridge`.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench hot_paths
//! cargo bench --bench hot_paths -- wire      # one group
//! ```
//!
//! Runs are short on purpose (0.5 s warm-up, 2 s measurement, 10 samples: the whole bench
//! takes well under two minutes); on a shared machine expect a few percent of noise.
//! `scripts/bench.sh` copies the results (target/criterion/*/new/estimates.json) into
//! docs/benchmarks.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dubbing_sts_proto::{AudioPayload, ProcessRequest, ProcessResponse, StsConfig};
use gstdubbing::dubchunker::accumulator::{Accumulator, Boundary};
use gstdubbing::stsbridge::breaker::{Admission, Breaker};
use gstdubbing::stsbridge::client::{Job, build_body, encode_fragment};
use gstdubbing::stsbridge::convert::Format;
use gstdubbing::stsbridge::mix::{self, Seam, Signal, db_to_gain};
use gstdubbing::stsbridge::response::{Expect, judge};

const RATE: u32 = 48_000;
const CHANNELS: u32 = 2;
/// One second of audio: the default fragment.
const FRAMES: usize = RATE as usize;
/// Frames per push into the accumulator (a typical decoder/audiotestsrc buffer).
const PUSH_FRAMES: usize = 1024;
const FRAGMENT_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

/// `frames` frames of interleaved S16LE speech-like audio: a 220 Hz tone under a syllable
/// envelope (4 Hz), with a 150 ms pause every 1.3 s, a noise floor in the pauses.
fn speech_pcm(frames: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(frames * CHANNELS as usize * 2);
    for i in 0..frames {
        let t = i as f64 / f64::from(RATE);
        let in_pause = (t % 1.3) > 1.15;
        let s = if in_pause {
            ((i * 7919) % 13) as i16 - 6
        } else {
            let env = 0.5 + 0.5 * (t * std::f64::consts::TAU * 4.0).sin().abs();
            ((t * std::f64::consts::TAU * 220.0).sin() * 12_000.0 * env) as i16
        };
        for _ in 0..CHANNELS {
            v.extend_from_slice(&s.to_le_bytes());
        }
    }
    v
}

fn samples_of(pcm: &[u8]) -> Vec<i16> {
    pcm.chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn configure() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .without_plots()
}

/// Pushes 10 s of audio in 1024-frame buffers and takes every cut, as the element does.
fn accumulator(c: &mut Criterion) {
    let seconds = 10;
    let pcm = speech_pcm(FRAMES * seconds);
    let push_bytes = PUSH_FRAMES * CHANNELS as usize * 2;
    let mut g = c.benchmark_group("accumulator");
    // Elements = frames (one frame = one sample per channel; ×2 for samples of stereo).
    g.throughput(Throughput::Elements((FRAMES * seconds) as u64));
    let boundaries = [
        ("fixed_1s", Boundary::Fixed { frames: 48_000 }),
        (
            "silence_0.5-1.5s",
            Boundary::Silence {
                min_frames: 24_000,
                max_frames: 72_000,
                threshold_db: -40.0,
            },
        ),
    ];
    for (name, boundary) in boundaries {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut acc = Accumulator::new(RATE, CHANNELS, boundary);
                let mut cut_frames = 0u64;
                for chunk in pcm.chunks(push_bytes) {
                    acc.push(black_box(chunk));
                    while let Some(cut) = acc.next_cut() {
                        cut_frames += cut.frames;
                    }
                }
                black_box(cut_frames)
            })
        });
    }
    g.finish();
}

/// One 1 s 48 kHz stereo fragment through the wire path: the request body (JSON + base64) and
/// the judging of an answer (JSON parse + base64 decode + conversion to the stream format).
fn wire(c: &mut Criterion) {
    let pcm = speech_pcm(FRAMES);
    let stream = Format::new(RATE, CHANNELS);
    let job = Job {
        sequence_number: 42,
        fragment_id: FRAGMENT_ID.into(),
        stream,
        frames: FRAMES,
        wire: stream,
        deadline: None,
        probe: false,
    };
    let wire_job = Job {
        wire: Format::new(16000, 1),
        ..job.clone()
    };
    let config = StsConfig {
        source_language: "en".into(),
        target_language: "es".into(),
        voice_profile: "default".into(),
    };
    let timeout = Duration::from_secs(8);
    let answer_of = |rate: u32, channels: u32, frames: usize| {
        let pcm = speech_pcm(frames);
        let pcm: Vec<u8> = if channels == CHANNELS {
            pcm
        } else {
            pcm.chunks_exact(4).flat_map(|f| [f[0], f[1]]).collect()
        };
        let mut answer =
            ProcessResponse::success(FRAGMENT_ID, AudioPayload::from_pcm(rate, channels, &pcm));
        answer.transcript = Some("hello world".into());
        answer.translated_text = Some("hola mundo".into());
        answer.processing_time_ms = Some(12.5);
        serde_json::to_vec(&answer).expect("answer serializes")
    };
    let echo = answer_of(RATE, CHANNELS, FRAMES);
    // espeak-ng's format: 22 050 Hz mono, 1.3 s of speech for the 1 s fragment.
    let espeak = answer_of(22050, 1, 28665);
    let expect = Expect {
        fragment_id: FRAGMENT_ID,
        stream,
        frames: FRAMES,
    };
    // Sanity: the body is the serde-built one, the answers are accepted.
    let body = build_body("bench", &config, timeout, &job, &pcm);
    let serde_body = |pcm: &[u8]| {
        serde_json::to_vec(&ProcessRequest {
            fragment_id: job.fragment_id.clone(),
            stream_id: "bench".into(),
            sequence_number: job.sequence_number,
            audio: AudioPayload::from_pcm(RATE, CHANNELS, pcm),
            config: config.clone(),
            timeout_ms: 8000,
        })
        .expect("request serializes")
    };
    assert_eq!(&body[..], &serde_body(&pcm)[..]);
    let d = judge(200, &echo, None, expect).expect("echo answer is usable");
    assert_eq!(d.samples.len(), FRAMES * CHANNELS as usize);
    let d = judge(200, &espeak, None, expect).expect("espeak answer is usable");
    assert_eq!(d.samples.len(), 62400 * CHANNELS as usize);
    let samples = samples_of(&pcm);

    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(pcm.len() as u64));
    g.bench_function("build_body_1s_48k_stereo", |b| {
        b.iter(|| build_body("bench", &config, timeout, &job, black_box(&pcm)))
    });
    g.bench_function("serde_body_1s_48k_stereo", |b| {
        b.iter(|| serde_body(black_box(&pcm)))
    });
    g.bench_function("encode_fragment_1s_48k_stereo_as_16k_mono", |b| {
        b.iter(|| encode_fragment("bench", &config, timeout, &wire_job, black_box(&samples)))
    });
    g.bench_function("judge_echo_1s_48k_stereo", |b| {
        b.iter(|| judge(200, black_box(&echo), None, expect).expect("usable"))
    });
    g.bench_function("judge_espeak_1.3s_22k_mono_to_48k_stereo", |b| {
        b.iter(|| judge(200, black_box(&espeak), None, expect).expect("usable"))
    });
    g.finish();
}

/// The breaker calls of one request: admit + on_success (the common case), and a failing
/// service (admit + on_failure, opening and probing again and again).
fn breaker(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    g.throughput(Throughput::Elements(1));
    g.bench_function("admit_on_success", |b| {
        let mut br = Breaker::new(5, Duration::from_secs(30));
        // The pipeline clock's time (any value: it stands still here).
        let now = Duration::from_secs(1000);
        b.iter(|| {
            let (a, t) = br.admit(black_box(now));
            black_box(t);
            black_box(br.on_success(a == Admission::Probe))
        })
    });
    g.bench_function("admit_on_failure_cycling", |b| {
        // Zero cooldown: every fifth failure opens, the next admit probes, the probe fails.
        let mut br = Breaker::new(5, Duration::ZERO);
        // The pipeline clock's time (any value: it stands still here).
        let now = Duration::from_secs(1000);
        b.iter(|| {
            let (a, t) = br.admit(black_box(now));
            black_box(t);
            let probe = a == Admission::Probe;
            let t = br.on_failure(now, probe);
            black_box(br.allows_retry(probe));
            black_box(t)
        })
    });
    g.finish();
}

/// Rendering one 1 s 48 kHz stereo output fragment for the signals the element uses.
fn render(c: &mut Criterion) {
    let input = samples_of(&speech_pcm(FRAMES));
    let dub: Vec<i16> = input.iter().map(|s| s / 2).collect();
    let crossfade = 480; // 10 ms at 48 kHz, the default
    let ch = CHANNELS as usize;
    let mut g = c.benchmark_group("mix_render");
    g.throughput(Throughput::Elements(FRAMES as u64));
    let cases: [(&str, Signal, bool); 4] = [
        ("dub", Signal::Dub { original_gain: 0.0 }, true),
        (
            "dub_with_original_-12dB",
            Signal::Dub {
                original_gain: db_to_gain(-12.0),
            },
            true,
        ),
        (
            "original_passthrough",
            Signal::Original { gain: 1.0 },
            false,
        ),
        (
            "ducked_-12dB",
            Signal::Original {
                gain: db_to_gain(-12.0),
            },
            false,
        ),
    ];
    for (name, signal, with_dub) in cases {
        let dub = with_dub.then_some(dub.as_slice());
        g.bench_function(name, |b| {
            let mut seam = Seam::default();
            let mut out = vec![0i16; input.len()];
            b.iter(|| {
                mix::render(
                    black_box(&input),
                    ch,
                    signal,
                    dub,
                    crossfade,
                    &mut seam,
                    &mut out,
                );
                black_box(out[0])
            })
        });
    }
    // A seam on every fragment: dub, then fallback, alternating (crossfade each time).
    g.bench_function("alternating_dub_fallback_crossfade", |b| {
        let mut seam = Seam::default();
        let mut out = vec![0i16; input.len()];
        let mut flip = false;
        b.iter_batched_ref(
            || {
                flip = !flip;
                flip
            },
            |dubbed| {
                let (signal, d) = if *dubbed {
                    (Signal::Dub { original_gain: 0.0 }, Some(dub.as_slice()))
                } else {
                    (Signal::Original { gain: 1.0 }, None)
                };
                mix::render(&input, ch, signal, d, crossfade, &mut seam, &mut out);
                black_box(out[0])
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = configure();
    targets = accumulator, wire, breaker, render
}
criterion_main!(benches);
