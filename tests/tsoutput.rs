//! `gstdubbing::tsoutput`: H.264 and two AAC tracks tagged with ISO 639 codes, muxed into
//! MPEG-TS, written to a file and published with `srtsink` to an ffmpeg SRT listener on
//! 127.0.0.1; ffprobe shows one video and one audio stream per language, tagged, in order,
//! with monotonic timestamps. The SRT test plays 3 s in real time (run it under
//! `flock /tmp/live.lock`).

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::init;
use gst::prelude::*;
use gstdubbing::tsoutput::{SrtPublish, TsDestination, TsOutput};

const SECONDS: u32 = 3;

fn make(name: &str) -> gst::Element {
    gst::ElementFactory::make(name)
        .build()
        .unwrap_or_else(|_| panic!("element {name} (scripts/install-deps.sh installs it)"))
}

/// Test sources: 30 fps H.264 with B-frames, and one AAC tone per language (different
/// frequencies), `SECONDS` long; returns the parsed H.264 and AAC src pads.
fn sources(pipeline: &gst::Pipeline, live: bool, tracks: usize) -> (gst::Pad, Vec<gst::Pad>) {
    let vsrc = make("videotestsrc");
    vsrc.set_property("is-live", live);
    vsrc.set_property("num-buffers", (30 * SECONDS) as i32);
    let vcaps = make("capsfilter");
    vcaps.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", 320i32)
            .field("height", 180i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .build(),
    );
    let enc = make("x264enc");
    enc.set_property("bframes", 2u32);
    enc.set_property_from_str("speed-preset", "veryfast");
    enc.set_property("key-int-max", 30u32);
    let parse = make("h264parse");
    pipeline.add_many([&vsrc, &vcaps, &enc, &parse]).unwrap();
    gst::Element::link_many([&vsrc, &vcaps, &enc, &parse]).unwrap();
    let mut audio = Vec::new();
    for i in 0..tracks {
        let asrc = make("audiotestsrc");
        asrc.set_property("is-live", live);
        asrc.set_property("freq", 440.0 * (i + 1) as f64);
        asrc.set_property("samplesperbuffer", 1024i32);
        asrc.set_property("num-buffers", (48 * SECONDS * 1000 / 1024) as i32);
        let acaps = make("capsfilter");
        acaps.set_property(
            "caps",
            gst::Caps::builder("audio/x-raw")
                .field("rate", 48000i32)
                .field("channels", 2i32)
                .build(),
        );
        let conv = make("audioconvert");
        let aenc = make("voaacenc");
        let aparse = make("aacparse");
        pipeline
            .add_many([&asrc, &acaps, &conv, &aenc, &aparse])
            .unwrap();
        gst::Element::link_many([&asrc, &acaps, &conv, &aenc, &aparse]).unwrap();
        audio.push(aparse.static_pad("src").unwrap());
    }
    (parse.static_pad("src").unwrap(), audio)
}

fn run_to_eos(pipeline: &gst::Pipeline) {
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("pipeline finished within 60 s");
    if let gst::MessageView::Error(e) = msg.view() {
        pipeline.set_state(gst::State::Null).unwrap();
        panic!("pipeline error: {} ({:?})", e.error(), e.debug());
    }
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Publishes test sources through a `TsOutput` to `destination`.
fn publish(destination: &TsDestination, languages: &[&str], live: bool) {
    let pipeline = gst::Pipeline::new();
    let (video, audio) = sources(&pipeline, live, languages.len());
    let out = TsOutput::new(destination, languages, live).unwrap();
    pipeline.add(&out.bin).unwrap();
    video.link(out.video_sink()).unwrap();
    for (pad, sink) in audio.iter().zip(out.audio_sinks()) {
        pad.link(sink).unwrap();
    }
    assert_eq!(out.audio_sink(languages[1]), Some(&out.audio_sinks()[1]));
    run_to_eos(&pipeline);
}

/// ffprobe's view of a transport stream: (codec_type, codec_name, language) per stream, and
/// per stream its packets' (pts, dts) in seconds.
#[allow(clippy::type_complexity)]
fn probe(path: &Path) -> (Vec<(String, String, String)>, Vec<Vec<(f64, f64)>>) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json", "-show_entries"])
        .arg("stream=index,codec_type,codec_name:stream_tags=language")
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams: Vec<(String, String, String)> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap_or("").to_string(),
                s["codec_name"].as_str().unwrap_or("").to_string(),
                s["tags"]["language"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "csv=p=0", "-show_entries"])
        .arg("packet=stream_index,pts_time,dts_time")
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let mut packets = vec![Vec::new(); streams.len()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let i: usize = f[0].parse().unwrap();
        let pts: f64 = f[1].parse().unwrap_or(f64::NAN);
        let dts: f64 = f[2].parse().unwrap_or(pts);
        packets[i].push((pts, dts));
    }
    (streams, packets)
}

/// One H.264 stream then one AAC stream per language, tagged `expected`, each with strictly
/// increasing DTS, PTS ≥ DTS, and every packet sent (`SECONDS` of 30 fps video, of 1024-sample
/// AAC frames at 48 kHz).
fn check_ts(path: &Path, expected: &[&str]) {
    let (streams, packets) = probe(path);
    let mut want = vec![("video".to_string(), "h264".to_string(), String::new())];
    for l in expected {
        want.push(("audio".into(), "aac".into(), l.to_string()));
    }
    assert_eq!(streams, want, "streams of {}", path.display());
    for (i, p) in packets.iter().enumerate() {
        assert!(p.len() > 10, "stream {i}: {} packets", p.len());
        for w in p.windows(2) {
            assert!(w[1].1 > w[0].1, "stream {i}: DTS not increasing: {w:?}");
        }
        for (pts, dts) in p {
            assert!(pts >= dts, "stream {i}: PTS {pts} before DTS {dts}");
        }
        let span = p.last().unwrap().1 - p[0].1;
        eprintln!(
            "{}: stream {i}: {} packets over {span:.3} s",
            path.display(),
            p.len()
        );
        let sent = if i == 0 {
            30 * SECONDS as usize
        } else {
            (48 * SECONDS * 1000 / 1024) as usize
        };
        assert_eq!(p.len(), sent, "stream {i}: every packet arrives");
    }
    // The tracks start together (within 100 ms).
    let starts: Vec<f64> = packets.iter().map(|p| p[0].0).collect();
    let (lo, hi) = starts
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    assert!(hi - lo < 0.1, "starts {starts:?}");
}

#[test]
fn file_output_tags_each_language_in_order() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.ts");
    publish(&TsDestination::File(path.clone()), &["es", "en"], false);
    // mpegtsmux writes ISO 639-2/B codes.
    check_ts(&path, &["spa", "eng"]);
}

#[test]
fn bad_language_is_a_clear_error() {
    init();
    let err = TsOutput::new(
        &TsDestination::File("/dev/null".into()),
        &["es", "Français"],
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("Français"), "{err}");
    assert!(TsOutput::new(&TsDestination::File("/dev/null".into()), &[], false).is_err());
}

/// An ffmpeg SRT listener on 127.0.0.1 writing what it receives (every stream: `-map 0`) to a
/// file; killed if the test ends before it does.
struct Listener {
    child: Option<Child>,
    port: u16,
}

impl Listener {
    fn start(out: &Path) -> Listener {
        // A free UDP port (bound and released; ffmpeg binds it next).
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(format!("srt://127.0.0.1:{port}?mode=listener"))
            .args(["-map", "0", "-c", "copy", "-f", "mpegts"])
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ffmpeg runs");
        let l = Listener {
            child: Some(child),
            port,
        };
        l.wait_bound();
        l
    }

    /// Readiness: the listener's UDP socket shows in /proc/net/udp.
    fn wait_bound(&self) {
        let needle = format!("0100007F:{:04X}", self.port);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let udp = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
            if udp
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&needle))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ffmpeg did not bind {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most 30 s) for ffmpeg to end once the publisher closed the connection.
    fn finish(mut self) {
        let child = self.child.take().unwrap();
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(out) => {
                let out = out.unwrap();
                assert!(
                    out.status.success(),
                    "ffmpeg listener: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Err(_) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                panic!("ffmpeg listener did not end after the publication");
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn srt_publication_to_an_ffmpeg_listener() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("received.ts");
    let listener = Listener::start(&path);
    let mut srt = SrtPublish::mediamtx("127.0.0.1", listener.port, "live/test/out");
    srt.latency_ms = 200;
    publish(&TsDestination::Srt(srt), &["spa", "fr"], true);
    listener.finish();
    check_ts(&path, &["spa", "fre"]);
}

/// Captions and languages in one publication: live H.264 through `cc608insert` (cues from an
/// appsrc) into the SRT output; ffmpeg decodes the captions of what the listener received.
#[test]
fn srt_publication_carries_cea608_captions() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("received.ts");
    let listener = Listener::start(&path);
    let pipeline = gst::Pipeline::new();
    let (video, audio) = sources(&pipeline, true, 1);
    let cc = make("cc608insert");
    cc.set_property("latency", 500_000_000u64);
    let text = gst_app::AppSrc::builder()
        .caps(
            &gst::Caps::builder("text/x-raw")
                .field("format", "utf8")
                .build(),
        )
        .format(gst::Format::Time)
        .build();
    let tq = make("queue");
    pipeline.add_many([&cc, text.upcast_ref(), &tq]).unwrap();
    text.link(&tq).unwrap();
    tq.static_pad("src")
        .unwrap()
        .link(&cc.request_pad_simple("text_sink").unwrap())
        .unwrap();
    let out = TsOutput::new(
        &TsDestination::Srt(SrtPublish::mediamtx(
            "127.0.0.1",
            listener.port,
            "live/cc/out",
        )),
        &["es"],
        true,
    )
    .unwrap();
    pipeline.add(&out.bin).unwrap();
    video.link(&cc.static_pad("sink").unwrap()).unwrap();
    cc.static_pad("src")
        .unwrap()
        .link(out.video_sink())
        .unwrap();
    audio[0].link(&out.audio_sinks()[0]).unwrap();
    let mut cue = gst::Buffer::from_slice("¿Qué tal? ¡Buenos días, España!".as_bytes().to_vec());
    {
        let b = cue.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(1200));
        b.set_duration(gst::ClockTime::from_mseconds(1300));
    }
    text.push_buffer(cue).unwrap();
    text.end_of_stream().unwrap();
    run_to_eos(&pipeline);
    listener.finish();
    check_ts(&path, &["spa"]);

    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("movie={}[out0+subcc]", path.display()))
        .args(["-map", "0:s", "-f", "srt", "-"])
        .output()
        .expect("ffmpeg runs");
    let srt = String::from_utf8_lossy(&out.stdout);
    let text: String = srt
        .lines()
        .filter(|l| !l.contains("-->") && l.parse::<u32>().is_err())
        .map(|l| {
            l.replace("<font face=\"Monospace\">", "")
                .replace("</font>", "")
                .replace("{\\an7}", "")
                .replace("\\h", " ")
        })
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>().join(" "),
        "¿Qué tal? ¡Buenos días, España!",
        "{srt}"
    );
    // Shown at the frame nearest 1.2 s (ffmpeg counts from the first video frame).
    let start = srt
        .lines()
        .find_map(|l| l.split_once(" --> ").map(|(a, _)| a.to_string()))
        .unwrap();
    let (hms, ms) = start.split_once(',').unwrap();
    let secs: f64 = hms
        .split(':')
        .fold(0.0, |acc, x| acc * 60.0 + x.parse::<f64>().unwrap())
        + ms.parse::<f64>().unwrap() / 1000.0;
    assert!((secs - 1.2).abs() < 0.1, "shown at {secs} s: {srt}");
}
