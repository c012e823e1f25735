//! The main job for real: the bundled fixture dubbed from English into Spanish through the file
//! chain against the reference server's `translate` mode with its default engines (Whisper
//! base → apertium → espeak-ng), with the demo's settings (fragments cut in pauses, 0.5–1.5 s;
//! the original under the dub at −12 dB, voice-over style), then listened back: Whisper
//! transcribes the dubbed Spanish and it must say much of the translation.

mod common;
#[path = "common/media.rs"]
mod media;

use std::path::Path;

use dubbing_sts_server::speech::word_errors;
use dubbing_sts_server::{Mode, ServerConfig, StsServer, listen_back};
use dubbing_worker::pipeline::{Boundary, Chain};
use gstdubbing::stsbridge::Outcome;
use media::{FIXTURE, decode_audio, out_dir, sentences};

/// Word error rate of the transcripts against the fixture's sentences. Whisper base with the
/// stream's previous 3 s of audio as context measured 35.8 % with these boundaries (30.8 %
/// when the same cuts are replayed offline; pocketsphinx measured 67.3 %, Whisper without the
/// audio context 49 %, with the previous text as its prompt 62 %). The bound leaves room for
/// where a loaded machine cuts, and fails for pocketsphinx or a recogniser that lost its
/// context.
const MAX_WER: f64 = 0.48;
/// Share of the translation's words that Whisper (base, listening in Spanish) hears back in the
/// dubbed output. Measured: 42 % here and 37 % in the demo (espeak-ng's Spanish under the
/// −12 dB English bed; SVOX Pico's voice: see the README), 10 % for the original English
/// heard against the same translations (Whisper turns some English into Spanish words), 0 for
/// a silent dub. The bound sits between the untranslated and the dubbed figures.
const MIN_HEARD: f64 = 0.25;
/// Speech trimmed at the end of `max-backlog` after compression: Whisper hears more words
/// than pocketsphinx did, so the Spanish runs longer (142 ms measured).
const MAX_TRIMMED_NS: u64 = 1_000_000_000;

/// Spanish words any news translation is full of, and English ones it must not keep.
const SPANISH: &[&str] = &[
    "el", "la", "los", "las", "de", "del", "en", "y", "a", "que", "por", "para", "un", "una", "es",
    "se", "al", "con",
];
const ENGLISH: &[&str] = &["the", "and", "of", "to", "is", "in", "from", "where"];

/// Normalized correlation of two equally long windows (1: the same signal).
fn correlation(a: &[i16], b: &[i16]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1.0)
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

#[test]
fn the_fixture_is_dubbed_into_spanish() {
    let srv = StsServer::start(ServerConfig {
        mode: Mode::Translate,
        ..Default::default()
    })
    .expect("the translate mode (scripts/install-deps.sh installs its packages)");
    let out = out_dir().join("translate.mp4");
    let chain = Chain {
        url: srv.url(),
        stream_id: "e2e-translate".into(),
        boundary: Boundary::Silence {
            min_ns: 500_000_000,
            max_ns: 1_500_000_000,
        },
        original_mix_db: Some(-12.0),
        ..Default::default()
    };
    let run = media::dub(&chain, &out, gst::ClockTime::from_seconds(600));
    let reports = &run.reports[0];
    for r in reports {
        eprintln!(
            "{:6.2} s {:<8} {:?} -> {:?}",
            r.pts as f64 / 1e9,
            r.outcome.as_str(),
            r.transcript,
            r.translated_text
        );
    }
    // Every fragment answered by the service, none fell back.
    assert!(reports.len() > 30, "{} fragments", reports.len());
    let fallbacks: Vec<_> = reports
        .iter()
        .filter(|r| r.outcome != Outcome::Dubbed)
        .map(|r| (r.pts, r.outcome, r.detail.clone()))
        .collect();
    assert!(fallbacks.is_empty(), "not dubbed: {fallbacks:?}");

    // A transcript for every sentence, and the transcripts close to what was said.
    let sentences = sentences();
    for (start, end, text) in &sentences {
        let heard: Vec<&str> = reports
            .iter()
            .filter(|r| {
                let (a, b) = (r.pts as f64 / 1e9, (r.pts + r.duration) as f64 / 1e9);
                a < *end && b > *start && !r.transcript.is_empty()
            })
            .map(|r| r.transcript.as_str())
            .collect();
        assert!(
            !heard.is_empty(),
            "nothing heard in {start}-{end} s: {text:?}"
        );
    }
    let reference: Vec<&str> = sentences.iter().map(|s| s.2.as_str()).collect();
    let transcripts: Vec<&str> = reports.iter().map(|r| r.transcript.as_str()).collect();
    let e = word_errors(&reference.join(" "), &transcripts.join(" "));
    eprintln!(
        "WER {:.1} % ({} / {})",
        100.0 * e.rate(),
        e.errors,
        e.reference_words
    );
    assert!(e.rate() <= MAX_WER, "WER {:.3}", e.rate());

    // The translations are Spanish.
    let translated: Vec<String> = reports
        .iter()
        .flat_map(|r| words(&r.translated_text))
        .collect();
    let spanish = translated
        .iter()
        .filter(|w| SPANISH.contains(&w.as_str()))
        .count();
    let english = translated
        .iter()
        .filter(|w| ENGLISH.contains(&w.as_str()))
        .count();
    eprintln!(
        "{} translated words: {spanish} Spanish function words, {english} English",
        translated.len()
    );
    assert!(translated.len() > 100);
    assert!(spanish * 5 >= translated.len(), "{translated:?}");
    assert!(english * 50 <= translated.len(), "{translated:?}");

    // Every dubbed sentence ends inside the output; nothing was trimmed.
    let st = &run.stats[0];
    let ms = |f: &str| st.get::<u64>(f).unwrap() as f64 / 1e6;
    eprintln!(
        "ran on {:.0} ms, compressed {:.0} ms, trimmed {:.0} ms, longest backlog {:.0} ms",
        ms("overflow"),
        ms("compressed"),
        ms("trimmed"),
        ms("max-backlog")
    );
    assert!(st.get::<u64>("trimmed").unwrap() <= MAX_TRIMMED_NS);
    let last_end = reports
        .iter()
        .filter(|r| r.speech_start != u64::MAX)
        .map(|r| r.speech_end)
        .max()
        .unwrap();
    // Whisper may add a closing line to the last fragment ("and good night" heard as "and
    // don't forget to like and subscribe!" in the file chain): its Spanish may run up to
    // half a second past the end, where the stream's end cuts it.
    assert!(last_end <= 60_500_000_000, "speech ends at {last_end} ns");

    // A/V still in sync: the beeps of the bed against the flashes.
    let r = dubbing_syncmeter::measure(&out).unwrap();
    let before = dubbing_syncmeter::measure(Path::new(FIXTURE)).unwrap();
    assert!((r.video_duration_s - before.video_duration_s).abs() < 0.05);
    assert!((r.audio_duration_s - before.audio_duration_s).abs() < 0.05);
    assert_eq!(r.markers.len(), media::markers().len(), "{r:?}");
    for m in &r.markers {
        eprintln!("marker at {:.3} s: A/V {:+.2} ms", m.video_s, m.delta_ms);
        assert!(m.delta_ms.abs() <= 5.0, "delta {} ms", m.delta_ms);
    }

    // The speech windows hold new speech: the output is not the original (which is only the
    // −12 dB bed under it: a correlation of about 0.25 where the dub is as loud as the voice
    // it replaces, 1 for an echo), and it is not silent either. Compared where the output's
    // beeps say the input's time lies in the output file.
    let input = decode_audio(Path::new(FIXTURE), 0);
    let output = decode_audio(&out, 0);
    assert!(
        (output.len() as i64 - input.len() as i64).abs() <= 1024,
        "output {} samples, input {}",
        output.len(),
        input.len()
    );
    let lag = ((r.markers[0].audio_s - before.markers[0].audio_s) * 48000.0).round() as usize;
    eprintln!("output audio {:.1} ms later in its file", lag as f64 / 48.0);
    for (start, end, text) in &sentences {
        let (i, j) = ((*start * 48000.0) as usize, (*end * 48000.0) as usize);
        let (orig, dubbed) = (&input[i..j], &output[i + lag..(j + lag).min(output.len())]);
        let c = correlation(orig, dubbed);
        let level = 20.0 * (rms(dubbed) / rms(orig)).log10();
        eprintln!("{start:6.2}-{end:6.2} s: correlation {c:.2}, level {level:+.1} dB");
        assert!(c < 0.5, "{text:?}: the original ({c:.2})");
        assert!(
            c > 0.05,
            "{text:?}: no bed, or not where the beeps say ({c:.2})"
        );
        assert!(level > -10.0, "{text:?}: {level:.1} dB");
    }

    // Listening back: what a Spanish listener hears of each dubbed sentence.
    let lag_s = lag as f64 / 48000.0;
    let spans: Vec<listen_back::Spoken> = reports
        .iter()
        .filter(|r| r.speech_start != u64::MAX)
        .map(|r| listen_back::Spoken {
            start_s: r.speech_start as f64 / 1e9 + lag_s,
            end_s: r.speech_end as f64 / 1e9 + lag_s,
            text: r.translated_text.clone(),
        })
        .collect();
    let windows: Vec<(f64, f64)> = sentences
        .iter()
        .map(|(a, b, _)| (a + lag_s, b + lag_s))
        .collect();
    let groups = listen_back::group(&spans, Some(&windows), 0.5);
    let whisper = listen_back::listener().expect("Whisper (scripts/install-deps.sh)");
    let audio = listen_back::decode_audio(&out).unwrap();
    let heard = listen_back::listen(&whisper, &audio, &groups, "es").unwrap();
    eprint!("{}", heard.report());
    assert!(groups.len() >= sentences.len() - 1, "{groups:?}");
    assert!(
        heard.recovered() >= MIN_HEARD,
        "only {:.0} % of the translation heard back",
        100.0 * heard.recovered()
    );
}
