//! The `translate` mode over real HTTP on 127.0.0.1: the bundled fixture recognised,
//! translated and spoken; the work queue, stream eviction, sequence order of pipelined
//! requests, unsupported language pairs, `/health`, and faults on top.
//!
//! Needs the speech packages (`scripts/install-deps.sh`) and the `ffmpeg` CLI.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dubbing_sts_proto::{
    AudioPayload, ProcessRequest, ProcessResponse, Retry, Status, StsConfig, classify_error_code,
    codes,
};
use dubbing_sts_server::speech::{WordErrors, samples_of, word_errors};
use dubbing_sts_server::{Faults, Mode, ServerConfig, StsServer, TranslateConfig};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/speech-60s");
/// The fixture's audio as the plugin sends it.
const RATE: u32 = 48_000;
const CHANNELS: u32 = 2;
const FRAME_BYTES: usize = 2 * CHANNELS as usize;

/// Word error rate bounds. Measured on this fixture (48 kHz stereo AAC decoded by ffmpeg, as
/// the plugin sends it): 0.686 (109 errors / 159 words) decoding each sentence window (±0.2 s)
/// as one utterance with the stream's decoder; 0.811 decoding the 60 one-second fragments
/// (words cut at fragment edges). The issue measured 0.64 and 0.81 for the same cases. The
/// decode is deterministic for a given input and library build (repeated runs give the same
/// figure); variations of the input path (ffmpeg's resampler instead of rubato's, 0–0.7 s of
/// padding) moved the sentence figure between 0.62 and 0.70, so the bounds leave about +0.09
/// for other builds of ffmpeg, pocketsphinx or its model. Input that reaches the recogniser
/// garbled (wrong rate, channels not downmixed, samples misaligned) scores near 1.0 and fails.
const MAX_WER_SENTENCES: f64 = 0.78;
const MAX_WER_FRAGMENTS: f64 = 0.90;

struct Sentence {
    start_s: f64,
    end_s: f64,
    text: String,
}

fn fixture() -> &'static (Vec<u8>, Vec<Sentence>, Vec<f64>) {
    static FIXTURE_DATA: OnceLock<(Vec<u8>, Vec<Sentence>, Vec<f64>)> = OnceLock::new();
    FIXTURE_DATA.get_or_init(|| {
        let out = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(format!("{FIXTURE}.mp4"))
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
            .expect("run ffmpeg (install it with scripts/install-deps.sh)");
        assert!(
            out.status.success(),
            "ffmpeg failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURE}.json")).unwrap())
                .unwrap();
        let sentences: Vec<Sentence> = json["sentences"]
            .as_array()
            .expect("sentences[] in the fixture JSON")
            .iter()
            .map(|s| Sentence {
                start_s: s["start_s"].as_f64().unwrap(),
                end_s: s["end_s"].as_f64().unwrap(),
                text: s["text"].as_str().unwrap().to_owned(),
            })
            .collect();
        let markers = json["markers_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        (out.stdout, sentences, markers)
    })
}

/// The fixture's audio from `start_s` to `end_s` (clipped to the file).
fn clip(start_s: f64, end_s: f64) -> Vec<u8> {
    let pcm = &fixture().0;
    let at =
        |t: f64| ((t.max(0.0) * f64::from(RATE)).round() as usize * FRAME_BYTES).min(pcm.len());
    pcm[at(start_s)..at(end_s)].to_vec()
}

/// A sentence window of the fixture with 0.2 s of its surroundings on each side.
fn sentence_clip(i: usize) -> Vec<u8> {
    let s = &fixture().1[i];
    clip(s.start_s - 0.2, s.end_s + 0.2)
}

/// The translate mode with pocketsphinx (these tests are about the mode's queue, order,
/// pairs and faults, and their WER bounds are pocketsphinx's; tests/whisper.rs and the worker's
/// e2e_translate test cover the default recogniser, Whisper).
fn start(translate: TranslateConfig) -> StsServer {
    StsServer::start(ServerConfig {
        mode: Mode::Translate,
        translate: TranslateConfig {
            asr: dubbing_sts_server::speech::AsrEngine::Pocketsphinx,
            ..translate
        },
        ..Default::default()
    })
    .expect("translate mode starts (install the packages with scripts/install-deps.sh)")
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn request(stream: &str, seq: u64, pcm: &[u8], target: &str) -> ProcessRequest {
    ProcessRequest {
        fragment_id: format!("00000000-0000-4000-8000-{seq:012x}"),
        stream_id: stream.into(),
        sequence_number: seq,
        audio: AudioPayload::from_pcm(RATE, CHANNELS, pcm),
        config: StsConfig {
            source_language: "en".into(),
            target_language: target.into(),
            voice_profile: "default".into(),
        },
        timeout_ms: 60_000,
    }
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: ProcessResponse,
}

fn post(url: &str, req: &ProcessRequest) -> Answer {
    let resp = client().post(url).json(req).send().unwrap();
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: ProcessResponse = resp.json().expect("a ProcessResponse body");
    Answer {
        status,
        retry_after,
        body,
    }
}

/// A success's transcript, translation and audio samples, checked for shape.
fn success(a: &Answer) -> (&str, &str, AudioPayload) {
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body.error);
    assert_eq!(a.body.status, Status::Success);
    let audio = a.body.dubbed_audio.clone().expect("dubbed_audio");
    (
        a.body.transcript.as_deref().expect("transcript"),
        a.body.translated_text.as_deref().expect("translated_text"),
        audio,
    )
}

fn rms_dbfs(samples: &[i16]) -> f64 {
    let energy: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    10.0 * (energy / samples.len().max(1) as f64 / f64::from(i16::MAX).powi(2)).log10()
}

/// Words that mark a text as Spanish (and are not English words).
const SPANISH_WORDS: &[&str] = &[
    "el", "la", "los", "las", "del", "y", "de", "que", "en", "es", "un", "una", "por", "para",
    "con", "esta", "está", "noche", "ciudad", "puente", "gol", "casa",
];

fn spanish_words(text: &str) -> usize {
    dubbing_sts_server::speech::normalize_words(text)
        .iter()
        .filter(|w| SPANISH_WORDS.contains(&w.as_str()))
        .count()
}

#[test]
fn fixture_sentence_windows_are_recognised_translated_and_spoken() {
    let srv = start(TranslateConfig::default());
    let sentences = &fixture().1;
    assert_eq!(sentences.len(), 14);
    let mut total = WordErrors::default();
    let (mut asr_ms, mut mt_ms, mut tts_ms, mut audio_s) = (0.0, 0.0, 0.0, 0.0);
    let (mut spanish, mut accented, mut words) = (0, 0, 0);
    let t0 = Instant::now();
    for (i, sentence) in sentences.iter().enumerate() {
        let pcm = sentence_clip(i);
        audio_s += pcm.len() as f64 / (FRAME_BYTES as f64 * f64::from(RATE));
        let answer = post(&srv.url(), &request("sentences", i as u64, &pcm, "es"));
        let (transcript, translation, audio) = success(&answer);
        let errors = word_errors(&sentence.text, transcript);
        total = total + errors;
        eprintln!(
            "{i:2} WER {:.2} | {} | {transcript} | {translation}",
            errors.rate(),
            sentence.text
        );
        assert!(
            !transcript.trim().is_empty(),
            "sentence {i}: empty transcript"
        );
        assert!(
            !translation.trim().is_empty(),
            "sentence {i}: empty translation"
        );
        assert_ne!(
            translation.to_lowercase(),
            transcript.to_lowercase(),
            "sentence {i}: not translated"
        );
        spanish += spanish_words(translation);
        words += dubbing_sts_server::speech::normalize_words(translation).len();
        accented += usize::from(translation.chars().any(|c| "áéíóúñ¿¡".contains(c)));
        // The synthesised Spanish: 22 050 Hz mono, at its own length, with speech in it.
        assert_eq!(
            (audio.sample_rate_hz, audio.channels),
            (22050, 1),
            "sentence {i}"
        );
        let samples = samples_of(&audio.decode_pcm().unwrap());
        let secs = samples.len() as f64 / 22050.0;
        assert!(secs > 0.5, "sentence {i}: {secs} s of dubbed audio");
        assert!(
            rms_dbfs(&samples) > -35.0,
            "sentence {i}: {} dBFS",
            rms_dbfs(&samples)
        );
        let t = answer.body.stage_timings_ms.expect("stage_timings_ms");
        assert!(t.asr > 0.0 && t.translation > 0.0 && t.tts > 0.0, "{t:?}");
        let processing = answer.body.processing_time_ms.unwrap();
        assert!(
            processing >= t.asr + t.translation + t.tts,
            "{processing} < {t:?}"
        );
        asr_ms += t.asr;
        mt_ms += t.translation;
        tts_ms += t.tts;
    }
    let wall = t0.elapsed().as_secs_f64();
    eprintln!(
        "sentence windows: WER {:.3} ({} errors / {} words); {audio_s:.1} s of audio in {wall:.1} s; \
         per second of audio: ASR {:.0} ms, MT {:.1} ms, TTS {:.1} ms",
        total.rate(),
        total.errors,
        total.reference_words,
        asr_ms / audio_s,
        mt_ms / audio_s,
        tts_ms / audio_s
    );
    assert!(
        total.rate() <= MAX_WER_SENTENCES,
        "WER {:.3} over the bound {MAX_WER_SENTENCES}",
        total.rate()
    );
    // Spanish: most words of the translations are Spanish function words or vocabulary, some
    // translations carry accents, and the recogniser's English is gone.
    assert!(
        spanish * 4 >= words,
        "only {spanish} of {words} translated words look Spanish"
    );
    assert!(
        accented >= 3,
        "only {accented} translations with Spanish accents"
    );
    let log = srv.translate_log();
    assert_eq!(
        log.iter().map(|h| h.sequence_number).collect::<Vec<_>>(),
        (0..14).collect::<Vec<_>>()
    );
    srv.stop();
}

#[test]
fn fixture_one_second_fragments_pipelined() {
    let srv = start(TranslateConfig::default());
    let (pcm, sentences, _) = fixture();
    let fragments = pcm.len() / (FRAME_BYTES * RATE as usize);
    assert_eq!(fragments, 60);
    // Two requests in flight at a time, as a pipelining client sends them.
    let url = srv.url();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let answers = std::sync::Mutex::new(vec![None; fragments]);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= fragments {
                        return;
                    }
                    let piece = clip(i as f64, i as f64 + 1.0);
                    let a = post(&url, &request("fragments", i as u64, &piece, "es"));
                    let (transcript, translation, audio) = success(&a);
                    let t = a.body.stage_timings_ms.unwrap();
                    answers.lock().unwrap()[i] =
                        Some((transcript.to_owned(), translation.to_owned(), audio, t));
                }
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let answers: Vec<_> = answers
        .into_inner()
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    let transcript: Vec<&str> = answers.iter().map(|a| a.0.as_str()).collect();
    let reference: Vec<&str> = sentences.iter().map(|s| s.text.as_str()).collect();
    let errors = word_errors(&reference.join(" "), &transcript.join(" "));
    let asr: f64 = answers.iter().map(|a| a.3.asr).sum();
    let mt: f64 = answers.iter().map(|a| a.3.translation).sum();
    let tts: f64 = answers.iter().map(|a| a.3.tts).sum();
    eprintln!(
        "1 s fragments: WER {:.3} ({} / {}); 60 s of audio in {wall:.1} s wall; \
         per second of audio: ASR {:.0} ms, MT {:.1} ms, TTS {:.1} ms",
        errors.rate(),
        errors.errors,
        errors.reference_words,
        asr / 60.0,
        mt / 60.0,
        tts / 60.0
    );
    for (i, a) in answers.iter().enumerate() {
        eprintln!("{i:2} {} | {}", a.0, a.1);
    }
    assert!(
        errors.rate() <= MAX_WER_FRAGMENTS,
        "WER {:.3} over the bound {MAX_WER_FRAGMENTS}",
        errors.rate()
    );
    // Every fragment that overlaps a sentence by at least half a second has a transcript.
    for (i, a) in answers.iter().enumerate() {
        let overlap: f64 = sentences
            .iter()
            .map(|s| (s.end_s.min(i as f64 + 1.0) - s.start_s.max(i as f64)).max(0.0))
            .sum();
        if overlap >= 0.5 {
            assert!(
                !a.0.is_empty(),
                "fragment {i} ({overlap:.2} s of speech): no transcript"
            );
        }
        // Silence answers keep the fragment's shape; speech answers are the synthesis.
        if a.0.is_empty() {
            assert_eq!(
                (a.2.sample_rate_hz, a.2.channels, a.2.duration_ms),
                (RATE, CHANNELS, 1000)
            );
        } else {
            assert_eq!((a.2.sample_rate_hz, a.2.channels), (22050, 1));
        }
    }
    // Recognised in sequence order although two were in flight at once.
    let order: Vec<u64> = srv
        .translate_log()
        .iter()
        .map(|h| h.sequence_number)
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    srv.stop();
}

#[test]
fn silence_is_answered_at_once_without_the_queue() {
    let srv = start(TranslateConfig {
        workers: 1,
        queue_size: 1,
        ..Default::default()
    });
    // With the workers held, only an answer that never queues can come back.
    srv.set_translate_paused(true);
    let (_, _, markers) = fixture();
    // A pause of the fixture between a sentence end (3.842 s) and a marker beep (5 s).
    assert!(markers[0] >= 5.0);
    for (i, pcm) in [vec![0u8; RATE as usize * FRAME_BYTES], clip(4.0, 4.9)]
        .iter()
        .enumerate()
    {
        let a = post(&srv.url(), &request("quiet", i as u64, pcm, "es"));
        let (transcript, translation, audio) = success(&a);
        assert_eq!((transcript, translation), ("", ""));
        assert_eq!((audio.sample_rate_hz, audio.channels), (RATE, CHANNELS));
        let out = audio.decode_pcm().unwrap();
        assert_eq!(out.len(), pcm.len());
        assert!(out.iter().all(|&b| b == 0));
        let t = a.body.stage_timings_ms.unwrap();
        assert_eq!((t.asr, t.translation, t.tts), (0.0, 0.0, 0.0));
    }
    let stats = srv.translate_stats().unwrap();
    assert_eq!((stats.recognized, stats.queued, stats.busy), (0, 0, 0));
    srv.set_translate_paused(false);
    srv.stop();
}

/// Polls `f` until it holds (or fails after 20 s).
fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_full_queue_answers_503_queue_full_with_retry_after() {
    let srv = start(TranslateConfig {
        workers: 1,
        queue_size: 1,
        ..Default::default()
    });
    srv.set_translate_paused(true);
    let url = srv.url();
    let speech = sentence_clip(12);
    std::thread::scope(|s| {
        // A: taken by the (held) worker.
        let a = s.spawn(|| post(&url, &request("a", 0, &speech, "es")));
        wait_for("the worker to hold A", || {
            srv.translate_stats().unwrap().busy == 1
        });
        // B: waits in the queue, which is then full.
        let b = s.spawn(|| post(&url, &request("b", 0, &speech, "es")));
        wait_for("B to be queued", || {
            srv.translate_stats().unwrap().queued == 1
        });
        // C: refused at once.
        let c = post(&url, &request("c", 0, &speech, "es"));
        assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(c.retry_after.as_deref(), Some("1"));
        let e = c.body.error.expect("error body");
        assert_eq!(e.code, codes::QUEUE_FULL);
        assert_eq!(e.retryable, Some(true));
        assert_eq!(srv.translate_stats().unwrap().rejected_queue_full, 1);
        srv.set_translate_paused(false);
        for answer in [a.join().unwrap(), b.join().unwrap()] {
            let (transcript, _, _) = success(&answer);
            assert!(!transcript.is_empty());
        }
    });
    let stats = srv.translate_stats().unwrap();
    assert_eq!((stats.recognized, stats.queued, stats.busy), (2, 0, 0));
    srv.stop();
}

#[test]
fn pipelined_requests_sent_out_of_order_are_recognised_in_sequence_order() {
    let srv = start(TranslateConfig {
        workers: 2,
        order_wait: Duration::from_secs(60),
        ..Default::default()
    });
    let url = srv.url();
    let clips: Vec<Vec<u8>> = (0..4).map(sentence_clip).collect();
    // A silent fragment that arrives first is answered at once and lets nothing pass early.
    let quiet = post(
        &url,
        &request("pipelined", 4, &vec![0; 9600 * FRAME_BYTES], "es"),
    );
    assert_eq!(success(&quiet).0, "");
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        // 3, 2, 1 arrive first and wait for 0.
        for seq in [3u64, 2, 1] {
            let (url, pcm) = (&url, &clips[seq as usize]);
            handles.push(s.spawn(move || post(url, &request("pipelined", seq, pcm, "es"))));
            let arrived = handles.len() + 1;
            wait_for("the request to arrive", || srv.request_count() == arrived);
        }
        // Nothing is recognised before its predecessors.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(srv.translate_stats().unwrap().recognized, 0);
        handles.push(s.spawn(|| post(&url, &request("pipelined", 0, &clips[0], "es"))));
        for h in handles {
            let answer = h.join().unwrap();
            assert!(!success(&answer).0.is_empty());
        }
    });
    let order: Vec<u64> = srv
        .translate_log()
        .iter()
        .map(|h| h.sequence_number)
        .collect();
    assert_eq!(order, [0, 1, 2, 3]);
    srv.stop();
}

#[test]
fn waiting_for_a_missing_predecessor_is_bounded() {
    let srv = start(TranslateConfig {
        order_wait: Duration::from_millis(300),
        ..Default::default()
    });
    // A new stream's first request, seq 2: 0 and 1 never come.
    let t0 = Instant::now();
    let a = post(&srv.url(), &request("gap", 2, &sentence_clip(12), "es"));
    assert!(!success(&a).0.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // A stream joined late (seq ≥ NEW_STREAM_WINDOW) does not wait for what came before.
    let b = post(
        &srv.url(),
        &request(
            "late",
            dubbing_sts_server::NEW_STREAM_WINDOW + 100,
            &sentence_clip(12),
            "es",
        ),
    );
    assert!(!success(&b).0.is_empty());
    srv.stop();
}

#[test]
fn streams_are_evicted_when_idle_or_past_the_limit() {
    let srv = start(TranslateConfig {
        max_streams: 2,
        stream_idle: Duration::from_secs(2),
        ..Default::default()
    });
    let silence = vec![0u8; RATE as usize / 10 * FRAME_BYTES];
    // s1 recognises speech (its decoder is made), s2 and s3 are quiet.
    assert!(
        !success(&post(
            &srv.url(),
            &request("s1", 0, &sentence_clip(12), "es")
        ))
        .0
        .is_empty()
    );
    success(&post(&srv.url(), &request("s2", 0, &silence, "es")));
    assert_eq!(srv.translate_streams(), ["s1", "s2"]);
    // Touch s1 so that s2 is the least recently used, then a third stream evicts s2.
    success(&post(&srv.url(), &request("s1", 1, &silence, "es")));
    success(&post(&srv.url(), &request("s3", 0, &silence, "es")));
    assert_eq!(srv.translate_streams(), ["s1", "s3"]);
    assert_eq!(srv.translate_stats().unwrap().evicted_streams, 1);
    // Idle streams go without any further request.
    wait_for("idle eviction", || srv.translate_streams().is_empty());
    assert_eq!(srv.translate_stats().unwrap().evicted_streams, 3);
    srv.stop();
}

#[test]
fn an_unsupported_language_pair_is_a_permanent_400() {
    let srv = start(TranslateConfig::default());
    for (source, target) in [("en", "fr"), ("es", "en"), ("", "es")] {
        let mut req = request("langs", 0, &sentence_clip(12), target);
        req.config.source_language = source.into();
        let a = post(&srv.url(), &req);
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{source}→{target}");
        let e = a.body.error.expect("error body");
        assert_eq!(e.code, codes::UNSUPPORTED_LANGUAGE);
        assert_eq!(e.retryable, Some(false));
        assert_eq!(classify_error_code(&e.code, e.retryable), Retry::Permanent);
        assert!(e.message.contains(&format!("{target:?}")), "{}", e.message);
        assert!(
            e.message.contains("en→es") && e.message.contains("en→ca"),
            "{}",
            e.message
        );
    }
    // Region subtags are fine.
    let mut req = request("langs", 1, &sentence_clip(12), "es-ES");
    req.config.source_language = "en-US".into();
    success(&post(&srv.url(), &req));
    srv.stop();
}

#[test]
fn catalan_too() {
    let srv = start(TranslateConfig::default());
    let a = post(&srv.url(), &request("ca", 0, &sentence_clip(0), "ca"));
    let (transcript, translation, audio) = success(&a);
    eprintln!("{transcript} → {translation}");
    assert_ne!(transcript, translation);
    assert!(
        translation
            .split_whitespace()
            .any(|w| ["i", "la", "el", "a", "de", "les"].contains(&w)),
        "{translation}"
    );
    assert_eq!((audio.sample_rate_hz, audio.channels), (22050, 1));
    srv.stop();
}

#[test]
fn health_lists_modes_and_language_pairs() {
    let srv = start(TranslateConfig::default());
    let health: Value = client()
        .get(format!("{}/health", srv.base_url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["mode"], "translate");
    let modes: BTreeSet<&str> = health["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(
        modes,
        BTreeSet::from(["echo", "tone", "silence", "translate"])
    );
    let pairs: BTreeSet<(&str, &str)> = health["language_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["source"].as_str().unwrap(), p["target"].as_str().unwrap()))
        .collect();
    assert_eq!(pairs, BTreeSet::from([("en", "ca"), ("en", "es")]));
    assert_eq!(srv.language_pairs().len(), 2);
    srv.stop();

    // Without the engines: no translate mode, no pairs, and a clear error if asked for it.
    let echo = StsServer::start(ServerConfig::default()).unwrap();
    let health: Value = client()
        .get(format!("{}/health", echo.base_url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        health["modes"],
        serde_json::json!(["echo", "tone", "silence"])
    );
    assert_eq!(health["language_pairs"], serde_json::json!([]));
    echo.set_mode(Mode::Translate);
    let a = post(&echo.url(), &request("x", 0, &sentence_clip(12), "es"));
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let e = a.body.error.unwrap();
    assert_eq!(e.code, codes::MODEL_ERROR);
    assert!(e.message.contains("--mode translate"), "{}", e.message);
    echo.stop();
}

#[test]
fn faults_apply_on_top_of_translate() {
    let srv = start(TranslateConfig::default());
    srv.set_faults(Faults {
        wrong_rate: Some(16000),
        ..Default::default()
    });
    let a = post(&srv.url(), &request("faults", 0, &sentence_clip(12), "es"));
    let (transcript, _, audio) = success(&a);
    assert!(!transcript.is_empty());
    assert_eq!((audio.sample_rate_hz, audio.channels), (16000, 1));
    srv.set_faults(Faults {
        status: Some(503),
        retry_after_s: Some(4),
        ..Default::default()
    });
    let a = post(&srv.url(), &request("faults", 1, &sentence_clip(12), "es"));
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.retry_after.as_deref(), Some("4"));
    // The fault answered before any recognition.
    assert_eq!(srv.translate_stats().unwrap().recognized, 1);
    srv.stop();
}

#[test]
fn binary_translate_mode_serves() {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_sts-server"))
        .args([
            "--mode",
            "translate",
            "--port",
            "0",
            "--workers",
            "1",
            "--queue-size",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    let a = post(
        &format!("{base}/api/v1/sts/process"),
        &request("bin", 0, &sentence_clip(1), "es"),
    );
    let (transcript, translation, _) = success(&a);
    assert!(
        !transcript.is_empty() && spanish_words(translation) > 0,
        "{translation}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
