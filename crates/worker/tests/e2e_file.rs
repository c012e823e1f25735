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

/// The `dub-file` example cargo built next to this test binary (`cargo test` builds the
/// examples; `cargo build -p dubbing-worker --example dub-file` does it alone).
fn dub_file_binary() -> std::path::PathBuf {
    // <target>/<profile>/deps/e2e_file-<hash> → <target>/<profile>/examples/dub-file
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join("dub-file");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified());
    let source = std::fs::metadata(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/dub-file.rs"
    ))
    .and_then(|m| m.modified())
    .unwrap();
    assert!(
        built.is_ok_and(|b| b >= source),
        "{} is missing or older than examples/dub-file.rs: \
         cargo build -p dubbing-worker --example dub-file",
        bin.display()
    );
    bin
}

/// (codec_type, duration s) of every stream and the container's duration, per ffprobe.
fn probe_durations(path: &Path) -> (Vec<(String, f64)>, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries"])
        .args(["stream=codec_type,duration:format=duration", "-of", "json"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secs = |v: &serde_json::Value| {
        v["duration"]
            .as_str()
            .and_then(|d| d.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let streams = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["codec_type"].as_str().unwrap_or("").to_string(), secs(s)))
        .collect();
    (streams, secs(&v["format"]))
}

/// SIGTERM mid-file: `dub-file` ends the input where its audio is, dubs what is in flight,
/// finishes the MP4 (its index written) and exits 0; the file plays, audio and video as long
/// as each other, the markers before the cut in sync.
#[test]
fn dub_file_interrupted_finishes_a_playable_file() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    // Answers in 400 ms: the 60 s file takes ~10 s instead of ~3 s, time to interrupt it.
    let srv = StsServer::start(ServerConfig {
        mode: Mode::Echo,
        faults: dubbing_sts_server::Faults {
            delay_ms: 400,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let out = out_dir().join("interrupted.mp4");
    let _ = std::fs::remove_file(&out);
    let mut child = Command::new(dub_file_binary())
        .args(["--input", FIXTURE, "--output"])
        .arg(&out)
        .args(["--url", &srv.url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dub-file");
    // A few seconds of output: five fragments dubbed (one line each).
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines
        .iter()
        .filter(|l: &&String| l.contains(" dubbed "))
        .count()
        < 5
    {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("dub-file printed no five fragments: {lines:?}");
            }
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    unsafe {
        kill(child.id() as i32, 15);
    }
    let signalled = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if signalled.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            panic!("dub-file still running 40 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = signalled.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let stdout = lines.join("\n");
    eprintln!(
        "dub-file: SIGTERM after {} fragments, exit {status} {:.1} s later\n{stderr}",
        lines.iter().filter(|l| l.contains(" dubbed ")).count(),
        took.as_secs_f64()
    );
    assert!(status.success(), "exit {status}\n{stdout}\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let cut: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("interrupted: the input dubbed up to "))
        .and_then(|r| r.trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("no cut reported:\n{stdout}"));

    // Playable: ffprobe reads both streams and a duration; ffmpeg decodes it without error.
    let (streams, duration) = probe_durations(&out);
    eprintln!("output: {duration:.3} s, streams {streams:?}; cut at {cut:.2} s of the input");
    let dur = |kind: &str| {
        streams
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, d)| *d)
            .unwrap_or_else(|| panic!("no {kind} stream in {streams:?}"))
    };
    let (v, a) = (dur("video"), dur("audio"));
    assert!(duration > 0.0 && v > 0.0 && a > 0.0, "{streams:?}");
    // Interrupted: shorter than the input, at the reported cut, audio and video together.
    assert!(duration < 55.0, "{duration} s: the whole file was dubbed");
    assert!((a - cut).abs() <= 0.1, "audio {a} s, cut at {cut} s");
    assert!((v - a).abs() <= 0.1, "video {v} s, audio {a} s");
    let decode = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&out)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decode.status.success() && decode.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&decode.stderr)
    );
    let r = dubbing_syncmeter::measure(&out).unwrap();
    let before: Vec<f64> = media::markers()
        .into_iter()
        .filter(|m| *m < cut - 1.0)
        .collect();
    assert_eq!(r.markers.len(), before.len(), "{r:?}");
    for m in &r.markers {
        assert!(m.delta_ms.abs() <= AAC_FRAME_MS, "delta {} ms", m.delta_ms);
    }
    eprintln!(
        "{} markers before the cut, all within one AAC frame",
        r.markers.len()
    );
}

/// Runs `dub-file` with `args`, killed after `limit`: (exit code, `None` when it had to be
/// killed; stdout; stderr).
fn run_dub_file(args: &[&str], limit: std::time::Duration) -> (Option<i32>, String, String) {
    use std::io::Read;
    use std::time::Instant;
    let mut child = Command::new(dub_file_binary())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dub-file");
    // Drain both pipes while it runs (a full pipe would block it).
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (code, out.join().unwrap(), err.join().unwrap())
}

/// The first `seconds` of the fixture as `name` (streams copied; `extra` ffmpeg options such
/// as `-an`).
fn fixture_clip(name: &str, seconds: u32, extra: &[&str]) -> std::path::PathBuf {
    let path = out_dir().join(name);
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-i", FIXTURE, "-t"])
        .arg(seconds.to_string())
        .args(["-c", "copy"])
        .args(extra)
        .arg(&path)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg made no {name}");
    path
}

/// Issue 20 defect 12: the documented formats work. Matroska out with the default silence
/// boundary (it hung at 16.42 s: the muxer waited for subtitles while the audio queue before
/// it was full), MPEG-TS in and out (not-negotiated: avoffset hid the muxer's byte-stream
/// caps from h264parse; tsdemux's pads are not `audio_0`/`video_0`).
#[test]
fn dub_file_writes_matroska_and_mpeg_ts() {
    use std::time::Duration;
    let clip = fixture_clip("clip-22s.mp4", 22, &[]);
    let mkv = out_dir().join("dubbed.mkv");
    let (code, stdout, stderr) = run_dub_file(
        &[
            "--input",
            clip.to_str().unwrap(),
            "--output",
            mkv.to_str().unwrap(),
        ],
        Duration::from_secs(90),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let (streams, duration) = probe_durations(&mkv);
    let mut kinds: Vec<&str> = streams.iter().map(|(k, _)| k.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["audio", "subtitle", "video"], "{streams:?}");
    assert!((duration - 22.0).abs() < 0.5, "{duration} s");

    let ts_in = fixture_clip("clip-6s.ts", 6, &[]);
    let ts_out = out_dir().join("dubbed.ts");
    let (code, stdout, stderr) = run_dub_file(
        &[
            "--input",
            ts_in.to_str().unwrap(),
            "--output",
            ts_out.to_str().unwrap(),
            "--boundary",
            "fixed",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let (streams, duration) = probe_durations(&ts_out);
    let mut kinds: Vec<&str> = streams.iter().map(|(k, _)| k.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["audio", "video"], "{streams:?}");
    assert!((duration - 6.0).abs() < 0.5, "{duration} s");
}

/// Issue 21: `dub-file --output x.ts` writes what the worker publishes over SRT: every
/// language as an AAC track of its own, tagged with its ISO 639 code (ISO 639-2/B), in order,
/// the original last; the captions of the first language on CC1 and the second's on CC3
/// (ffmpeg decodes both); the markers in sync in every track.
#[test]
fn dub_file_writes_every_language_tagged_into_mpeg_ts_with_captions() {
    use std::time::Duration;
    let clip = fixture_clip("clip-16s.mp4", 16, &[]);
    let ts = out_dir().join("dubbed-languages.ts");
    let (code, stdout, stderr) = run_dub_file(
        &[
            "--input",
            clip.to_str().unwrap(),
            "--output",
            ts.to_str().unwrap(),
            "--languages",
            "es,de",
            "--captions",
            "cea608",
            "--original-track",
            "--boundary",
            "fixed",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries"])
        .args(["stream=codec_type:stream_tags=language", "-of", "csv=p=0"])
        .arg(&ts)
        .output()
        .expect("run ffprobe");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // The program's streams, then the file's.
    let streams: Vec<&str> = text.trim().rsplit("\n\n").next().unwrap().lines().collect();
    assert_eq!(
        streams,
        ["video", "audio,spa", "audio,ger", "audio,eng"],
        "{text}"
    );
    for track in 0..3 {
        let r = dubbing_syncmeter::measure_with(
            &ts,
            &dubbing_syncmeter::Options {
                audio_track: track,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(r.markers.len() >= 2, "track {track}: {:?}", r.markers);
        for m in &r.markers {
            assert!(m.delta_ms.abs() <= 10.0, "track {track}: {m:?}");
        }
    }
    for (field, language) in [("first", "es"), ("second", "de")] {
        let out = Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-v",
                "error",
                "-data_field",
                field,
                "-f",
                "lavfi",
            ])
            .arg("-i")
            .arg(format!("movie={}[out0+subcc]", ts.display()))
            .args(["-map", "0:s", "-f", "srt", "-"])
            .output()
            .expect("run ffmpeg");
        let srt = String::from_utf8_lossy(&out.stdout);
        let captions: Vec<&str> = srt
            .lines()
            .filter(|l| l.contains("echo of fragment"))
            .collect();
        assert!(captions.len() >= 10, "{field}: {srt}");
        let prefix = format!("[{language}] echo of fragment");
        assert!(
            captions.iter().all(|c| c.contains(&prefix)),
            "{field}: {srt}"
        );
    }
}

/// Issue 20 defect 13: an input without its audio or its video track, or no input at all, is a
/// clear error at once, and no output is left behind.
#[test]
fn dub_file_refuses_one_track_and_missing_inputs_at_once() {
    use std::time::Duration;
    let video_only = fixture_clip("video-only.mp4", 3, &["-an"]);
    let audio_only = fixture_clip("audio-only.mkv", 3, &["-vn"]);
    let missing = out_dir().join("no-such-input.mp4");
    for (input, says) in [
        (&video_only, "has no audio track"),
        (&audio_only, "has no video track"),
        (&missing, "cannot read the input"),
    ] {
        let out = out_dir().join("refused.mp4");
        let _ = std::fs::remove_file(&out);
        let (code, stdout, stderr) = run_dub_file(
            &[
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(1), "{}: {stdout}\n{stderr}", input.display());
        assert!(stderr.contains(says), "{}: {stderr}", input.display());
        assert!(
            !out.exists(),
            "{}: {} left behind",
            input.display(),
            out.display()
        );
    }
}
