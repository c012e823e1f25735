//! `stsbridge`'s overflow and loudness against the reference server playing a service whose
//! speech outlasts the speech it replaces (`tone`, `duration_factor: 1.3`,
//! `silent_for_silence`): every dub heard in full, compression only when the backlog would
//! grow past `max-backlog`, `overflow=trim` as before, seams without clicks, loudness matched.

mod common;

use std::time::Duration;

use common::*;
use dubbing_sts_server::audio::{TONE_AMPLITUDE, TONE_HZ};
use dubbing_sts_server::{Faults, Mode, ServerConfig, StsServer};
use gst::prelude::*;

const RATE: u32 = 16000;
const F: usize = RATE as usize;

fn long_dub_server() -> StsServer {
    StsServer::start(ServerConfig {
        mode: Mode::Tone,
        faults: Faults {
            duration_factor: Some(1.3),
            silent_for_silence: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

/// Pushes 1 s fragments: speech (test audio) where `pattern` has `S`, silence where `-`.
fn push_pattern(b: &mut Bridge, pattern: &str) -> Vec<gst::Buffer> {
    pattern
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let a = if c == 'S' {
                test_audio(i as u64, F, 1)
            } else {
                vec![0; F]
            };
            b.push(&a)
        })
        .collect()
}

/// Spans `[start, end)` in seconds where the output is not silent, in 10 ms windows.
fn sound_spans(x: &[i16]) -> Vec<(f64, f64)> {
    let w = F / 100;
    let mut spans = Vec::new();
    let mut on: Option<usize> = None;
    for (i, win) in x.chunks(w).enumerate() {
        let loud = win.iter().any(|s| s.unsigned_abs() > 300);
        match (loud, on) {
            (true, None) => on = Some(i),
            (false, Some(s)) => {
                spans.push((s as f64 / 100.0, i as f64 / 100.0));
                on = None;
            }
            _ => {}
        }
    }
    if let Some(s) = on {
        spans.push((s as f64 / 100.0, x.len() as f64 / F as f64));
    }
    spans
}

fn max_step(x: &[i16]) -> i32 {
    x.windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0)
}

/// Frequency with the most energy between 300 and 600 Hz (5 Hz steps).
fn pitch(x: &[i16]) -> f64 {
    let mut best = (0.0, 0.0);
    for k in (300..600).step_by(5) {
        let hz = f64::from(k);
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in x.iter().enumerate() {
            let p = std::f64::consts::TAU * hz * i as f64 / f64::from(RATE);
            re += f64::from(s) * p.cos();
            im += f64::from(s) * p.sin();
        }
        if re * re + im * im > best.1 {
            best = (hz, re * re + im * im);
        }
    }
    best.0
}

fn run(pattern: &str, configure: impl FnOnce(&gst::Element)) -> (Vec<gst::Buffer>, Output) {
    let srv = long_dub_server();
    let url = srv.url();
    let mut b = Bridge::new(false, RATE, 1, 0, move |e| {
        e.set_property("url", &url);
        configure(e);
    });
    let bufs = push_pattern(&mut b, pattern);
    let out = b.finish(Duration::from_secs(30));
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_same_timeline(&bufs, &out);
    (bufs, out)
}

fn stat_ms(out: &Output, name: &str) -> f64 {
    out.stat(name) as f64 / 1e6
}

#[test]
fn runs_of_three_are_heard_in_full_without_compression() {
    // Speech in runs of up to 3 fragments, each followed by a pause of 2 s.
    let pattern = "SSS--S--SS--SSS--";
    let (_, out) = run(pattern, |_| {});
    let spans = sound_spans(&out.all_samples());
    // Each run of k speech fragments starting at r: one unbroken dub of 1.3 k s from r.
    let mut expected = Vec::new();
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        if p[i] == 'S' {
            let r = i;
            while i < p.len() && p[i] == 'S' {
                i += 1;
            }
            expected.push((r as f64, r as f64 + 1.3 * (i - r) as f64));
        } else {
            i += 1;
        }
    }
    assert_eq!(spans.len(), expected.len(), "{spans:?} vs {expected:?}");
    for (got, want) in spans.iter().zip(&expected) {
        assert!((got.0 - want.0).abs() <= 0.011, "{got:?} vs {want:?}");
        assert!((got.1 - want.1).abs() <= 0.021, "{got:?} vs {want:?}");
    }
    assert_eq!(out.stat("compressed"), 0);
    assert_eq!(out.stat("trimmed"), 0);
    assert_eq!(out.stats.get::<f64>("max-tempo-used").unwrap(), 1.0);
    // The third dub of a run ends 0.9 s into the pause.
    assert!(
        (stat_ms(&out, "max-backlog") - 900.0).abs() < 15.0,
        "{}",
        stat_ms(&out, "max-backlog")
    );
    // The k-th dub of a run ends 0.3 k s past its own fragment.
    let ran_on: f64 = pattern
        .split('-')
        .map(|run| (1..=run.len()).map(|k| 300.0 * k as f64).sum::<f64>())
        .sum();
    let got = stat_ms(&out, "overflow");
    assert!((got - ran_on).abs() < 50.0, "{got} vs {ran_on}");
    // Where each speech played is in its message: the second of a run after the first.
    let r = gstdubbing::stsbridge::FragmentReport::from_structure(&out.fragment_msgs[1]).unwrap();
    assert_eq!(r.speech_start, 1_300_000_000);
    // Seams: the queued tone restarts and its ends are smoothed; no step larger than the
    // tone's own at 440 Hz (what the crossfade tests allow).
    let natural =
        (TONE_AMPLITUDE * 32767.0 * std::f64::consts::TAU * TONE_HZ / f64::from(RATE)) as i32;
    let steps = max_step(&out.all_samples());
    assert!(steps <= natural * 3 / 2, "{steps} vs {natural}");
}

#[test]
fn runs_of_eight_are_compressed_within_max_tempo_and_the_backlog_stays_bounded() {
    let pattern = "SSSSSSSS---";
    let (_, out) = run(pattern, |_| {});
    let tempo = out.stats.get::<f64>("max-tempo-used").unwrap();
    assert!(tempo > 1.0 && tempo <= 1.25, "{tempo}");
    assert!(out.stat("compressed") > 0);
    assert!(
        stat_ms(&out, "max-backlog") <= 1500.0 + 1.0,
        "{}",
        stat_ms(&out, "max-backlog")
    );
    // Speech continues without a break through the run and ends within the backlog after it.
    let spans = sound_spans(&out.all_samples());
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert!(spans[0].1 <= 8.0 + 1.5 + 0.02, "{spans:?}");
    // The compressed speech keeps its pitch: still 440 Hz in the last second of the run.
    let x = out.all_samples();
    let p = pitch(&x[7 * F..8 * F]);
    assert!((p - 440.0).abs() <= 10.0, "pitch {p}");
    // Compression within 1.25× can't hold 8 × 0.3 s: the rest is trimmed, and counted.
    let total = 8.0 * 1300.0;
    let played = 1000.0 * (spans[0].1 - spans[0].0);
    let accounted = played + stat_ms(&out, "compressed") + stat_ms(&out, "trimmed");
    assert!(
        (accounted - total).abs() < 40.0,
        "{played} + compressed + trimmed = {accounted}"
    );
}

#[test]
fn overflow_trim_is_the_old_output_bit_for_bit() {
    let pattern = "SS-S";
    let (_, out) = run(pattern, |e| {
        e.set_property_from_str("overflow", "trim");
        e.set_property("loudness-match", false);
    });
    // The old behaviour: each 1.3 s tone cut to its 1 s fragment, silence for silence.
    let amp = TONE_AMPLITUDE * f64::from(i16::MAX);
    let step = std::f64::consts::TAU * TONE_HZ / f64::from(RATE);
    let tone: Vec<i16> = (0..F)
        .map(|i| ((step * i as f64).sin() * amp).round() as i16)
        .collect();
    for (frag, c) in out.frags.iter().zip(pattern.chars()) {
        if c == 'S' {
            assert!(frag.samples == tone);
        } else {
            assert!(frag.samples.iter().all(|&s| s == 0));
        }
    }
    // Every answer was 1.3 s: all four cut (the silent one too).
    assert_eq!(out.stat("fitted"), 4);
}

#[test]
fn loud_and_quiet_dubs_end_at_the_originals_loudness() {
    use ebur128::{EbuR128, Mode as M};
    let loudness = |x: &[i16]| {
        let mut m = EbuR128::new(1, RATE, M::I | M::TRUE_PEAK).unwrap();
        m.add_frames_i16(x).unwrap();
        (
            m.loudness_global().unwrap(),
            20.0 * m.true_peak(0).unwrap().log10(),
        )
    };
    // The original 10 dB above the dub (a 440 Hz tone at 0.3 of full scale), then 10 dB
    // below it.
    let amp = TONE_AMPLITUDE * f64::from(i16::MAX);
    let step = std::f64::consts::TAU * TONE_HZ / f64::from(RATE);
    let tone: Vec<i16> = (0..F)
        .map(|i| ((step * i as f64).sin() * amp).round() as i16)
        .collect();
    let (tone_lufs, _) = loudness(&tone);
    let speech: Vec<i16> = (0..8).flat_map(|i| test_audio(i, F, 1)).collect();
    let (speech_lufs, _) = loudness(&speech);
    for db in [10.0f64, -10.0] {
        let srv = StsServer::start(ServerConfig {
            mode: Mode::Tone,
            ..Default::default()
        })
        .unwrap();
        let url = srv.url();
        let mut b = Bridge::new(false, RATE, 1, 0, move |e| e.set_property("url", &url));
        let k = 10f64.powf((tone_lufs + db - speech_lufs) / 20.0);
        let mut input = Vec::new();
        let mut bufs = Vec::new();
        for i in 0..8 {
            let a: Vec<i16> = test_audio(i, F, 1)
                .iter()
                .map(|&s| (f64::from(s) * k).round() as i16)
                .collect();
            input.extend_from_slice(&a);
            bufs.push(b.push(&a));
        }
        let out = b.finish(Duration::from_secs(30));
        assert_same_timeline(&bufs, &out);
        let (orig, _) = loudness(&input);
        // After the first fragments (the gain is smoothed): within 1 LU of the original.
        let tail = &out.all_samples()[3 * F..];
        let (dub, tp) = loudness(tail);
        assert!(
            (dub - orig).abs() < 1.0,
            "{db} dB: dub {dub:.2} LUFS, original {orig:.2}"
        );
        assert!(tp <= -1.0 + 0.1, "true peak {tp:.2} dBTP");
        let gain = out.stats.get::<f64>("loudness-gain").unwrap();
        assert!((gain - db).abs() < 1.0, "gain {gain}");
    }
}
