//! End to end on files: the bundled fixture through demux → decode → dubchunker → stsbridge →
//! avoffset → voaacenc → mux against the reference STS server, checked with ffmpeg/ffprobe
//! and the sync meter.

mod common;
#[path = "common/media.rs"]
mod media;

use std::path::Path;
use std::process::Command;

use dubbing_sts_server::{Mode, ServerConfig, StsServer};
use dubbing_worker::pipeline::Chain;
use gstdubbing::stsbridge::Outcome;
use media::{AAC_FRAME_MS, FIXTURE, decode_audio, fixture_json, out_dir};

/// Runs the file pipeline to EOS; returns the outcome of every fragment (per `stsbridge`).
fn dub(chain: &Chain, output: &Path) -> Vec<Vec<Outcome>> {
    media::dub(chain, output, gst::ClockTime::from_seconds(120))
        .reports
        .into_iter()
        .map(|r| r.into_iter().map(|r| r.outcome).collect())
        .collect()
}

fn server(mode: Mode) -> StsServer {
    StsServer::start(ServerConfig {
        mode,
        ..Default::default()
    })
    .unwrap()
}

/// (size, md5) of every video packet, in order.
fn video_packets(path: &Path) -> Vec<(String, String)> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-c", "copy", "-f", "framemd5", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f[4].to_string(), f[5].to_string())
        })
        .collect()
}

fn ffprobe_streams(path: &Path) -> Vec<(String, String)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            // ffprobe prints codec_name before codec_type.
            let (name, kind) = l.split_once(',').unwrap();
            (kind.to_string(), name.to_string())
        })
        .collect()
}

/// Share of a window's energy at `freq` (Goertzel), 0..1.
fn tone_share(x: &[i16], rate: f64, freq: f64) -> f64 {
    let w = std::f64::consts::TAU * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0;
    for &v in x {
        let v = f64::from(v);
        energy += v * v;
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // A pure tone of N samples has Goertzel power N²A²/4 and energy N·A²/2.
    (2.0 * power / (x.len() as f64 * energy.max(1.0))).min(1.0)
}

#[test]
fn echo_keeps_video_bit_exact_and_av_in_sync() {
    let srv = server(Mode::Echo);
    let out = out_dir().join("echo.mp4");
    let chain = Chain {
        url: srv.url(),
        ..Default::default()
    };
    let outcomes = dub(&chain, &out);
    assert_eq!(outcomes[0].len(), 60);
    assert!(
        outcomes[0].iter().all(|o| *o == Outcome::Dubbed),
        "{:?}",
        outcomes[0]
    );

    // H.264 copied bit for bit.
    let a = video_packets(Path::new(FIXTURE));
    let b = video_packets(&out);
    assert_eq!(a.len(), 1500);
    assert!(a == b, "video packets differ");
    let streams = ffprobe_streams(&out);
    assert!(streams.contains(&("video".into(), "h264".into())));
    assert!(streams.contains(&("audio".into(), "aac".into())));

    let input = dubbing_syncmeter::measure(Path::new(FIXTURE)).unwrap();
    let r = dubbing_syncmeter::measure(&out).unwrap();
    assert!((r.video_duration_s - input.video_duration_s).abs() < 0.1);
    assert!((r.audio_duration_s - input.audio_duration_s).abs() < 0.1);
    let expected = media::markers();
    assert_eq!(r.markers.len(), expected.len(), "{r:?}");
    for m in &r.markers {
        eprintln!(
            "marker at {:.3} s: A/V delta {:+.2} ms",
            m.video_s, m.delta_ms
        );
        assert!(m.delta_ms.abs() <= AAC_FRAME_MS, "delta {} ms", m.delta_ms);
    }
}

#[test]
fn tone_replaces_the_speech() {
    let srv = server(Mode::Tone);
    let out = out_dir().join("tone.mp4");
    let chain = Chain {
        url: srv.url(),
        ..Default::default()
    };
    let outcomes = dub(&chain, &out);
    assert!(outcomes[0].iter().all(|o| *o == Outcome::Dubbed));
    let audio = decode_audio(&out, 0);
    let original = decode_audio(Path::new(FIXTURE), 0);
    let windows = fixture_json()["speech_windows_s"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!windows.is_empty());
    for w in windows {
        let (a, b) = (w[0].as_f64().unwrap(), w[1].as_f64().unwrap());
        // Skip the edges (AAC frames, crossfades).
        let (i, j) = (
            ((a + 0.1) * 48000.0) as usize,
            ((b - 0.1) * 48000.0) as usize,
        );
        let dubbed = tone_share(&audio[i..j], 48000.0, 440.0);
        let speech = tone_share(&original[i..j], 48000.0, 440.0);
        assert!(dubbed > 0.9, "window {a}-{b}: 440 Hz share {dubbed}");
        assert!(
            speech < 0.2,
            "window {a}-{b}: the original is speech ({speech})"
        );
    }
}

#[test]
fn unreachable_sts_keeps_the_original_audio_complete() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = out_dir().join("down.mp4");
    let chain = Chain {
        url: format!("http://127.0.0.1:{port}/api/v1/sts/process"),
        ..Default::default()
    };
    let outcomes = dub(&chain, &out);
    assert_eq!(outcomes[0].len(), 60);
    assert!(
        outcomes[0]
            .iter()
            .all(|o| matches!(o, Outcome::Fallback(_)))
    );
    let input = dubbing_syncmeter::measure(Path::new(FIXTURE)).unwrap();
    let r = dubbing_syncmeter::measure(&out).unwrap();
    assert!((r.video_duration_s - input.video_duration_s).abs() < 0.1);
    assert!((r.audio_duration_s - input.audio_duration_s).abs() < 0.1);
    // The original audio, beeps included, in sync.
    assert_eq!(r.markers.len(), input.markers.len());
    for m in &r.markers {
        assert!(m.delta_ms.abs() <= AAC_FRAME_MS, "delta {} ms", m.delta_ms);
    }
}

#[test]
fn two_languages_into_one_matroska_file() {
    let srv = server(Mode::Echo);
    let out = out_dir().join("two.mkv");
    let chain = Chain {
        url: srv.url(),
        target_languages: vec!["es".into(), "de".into()],
        ..Default::default()
    };
    let outcomes = dub(&chain, &out);
    for o in &outcomes {
        assert_eq!(o.len(), 60);
        assert!(o.iter().all(|o| *o == Outcome::Dubbed));
    }
    // One request per fragment and language, from two streams.
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 120);
    let mut streams_seen: Vec<String> = reqs.iter().map(|r| r.stream_id.clone()).collect();
    streams_seen.sort();
    streams_seen.dedup();
    assert_eq!(streams_seen.len(), 2);
    let streams = ffprobe_streams(&out);
    assert_eq!(
        streams
            .iter()
            .filter(|(t, c)| t == "audio" && c == "aac")
            .count(),
        2,
        "{streams:?}"
    );
    assert_eq!(streams.iter().filter(|(t, _)| t == "video").count(), 1);
    for track in 0..2 {
        let a = decode_audio(&out, track);
        let secs = a.len() as f64 / 48000.0;
        assert!((secs - 60.0).abs() < 0.1, "track {track}: {secs} s");
    }
}
