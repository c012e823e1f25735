//! The speech engines of the translate mode on their own: espeak-ng speaks, pocketsphinx
//! listens, apertium translates.

use std::time::{Duration, Instant};

use dubbing_sts_server::speech::{
    Recognizer, Synthesizer, Translator, bytes_of, normalize_words, word_error_rate,
};

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

#[test]
fn espeak_speaks_and_pocketsphinx_listens() {
    let tts = Synthesizer::shared().unwrap();
    assert_eq!(tts.sample_rate(), 22050);
    let sentence = "The city council voted tonight to widen the bridge.";
    let t0 = Instant::now();
    let samples = tts.synthesize(sentence, "en", deadline()).unwrap();
    let tts_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let secs = samples.len() as f64 / 22050.0;
    assert!((1.5..6.0).contains(&secs), "{secs} s of speech");
    assert!(tts.synthesize("", "en", deadline()).unwrap().is_empty());
    assert!(tts.has_voice("es") && tts.has_voice("ca"));
    assert!(!tts.has_voice("no-such-voice"));

    let t0 = Instant::now();
    let asr = Recognizer::load("en").unwrap();
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let t0 = Instant::now();
    let text = asr.transcribe(&bytes_of(&samples), 22050, 1).unwrap();
    let asr_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let wer = word_error_rate(sentence, &text);
    eprintln!(
        "tts {tts_ms:.1} ms, asr load {load_ms:.0} ms, asr {asr_ms:.0} ms for {secs:.2} s: {text:?} (WER {wer:.2})"
    );
    assert!(!normalize_words(&text).is_empty(), "nothing recognised");
    assert!(wer < 0.8, "WER {wer}: {text:?}");
    // Silence gives an empty hypothesis.
    let mut decoder = asr.new_decoder().unwrap();
    assert_eq!(decoder.decode(&vec![0i16; 16000]).unwrap(), "");
}

#[test]
fn apertium_translates_to_spanish_and_catalan() {
    let es = Translator::start("en", "es").unwrap();
    let t0 = Instant::now();
    let out = es
        .translate(
            "The city council voted tonight to widen the harbour bridge.",
            deadline(),
        )
        .unwrap();
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    eprintln!("es ({ms:.1} ms): {out}");
    assert!(
        out.contains("ayuntamiento") || out.contains("consejo"),
        "{out}"
    );
    let out = es
        .translate("What a xyzzy goal [that] is!", deadline())
        .unwrap();
    eprintln!("es: {out}");
    assert!(
        out.contains("xyzzy") && !out.contains('*') && !out.contains('#'),
        "{out}"
    );
    assert_eq!(es.translate("  ", deadline()).unwrap(), "");
    let ca = Translator::start("en", "ca").unwrap();
    let out = ca
        .translate("Good evening, and welcome to the news.", deadline())
        .unwrap();
    eprintln!("ca: {out}");
    assert!(out.contains("benvinguda"), "{out}");
    assert!(Translator::start("en", "fr").is_err());
}
