//! `cc608insert` read back by a decoder no one here wrote: ffmpeg (libavcodec's `cc_dec` via
//! lavfi's `movie=…[out0+subcc]`) decodes the 608 captions of the output, and ffmpeg's
//! `filter_units` bitstream filter shows that every video packet without its SEI NAL units
//! is byte-identical to the input's.
//!
//! * the bundled fixture (avc in MP4, 25 fps): Spanish cues at the speech windows;
//! * a B-frame clip made here with x264enc (byte-stream in MPEG-TS, 29.97 fps).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::init;
use gst::prelude::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/speech-60s.mp4");

/// Spanish cues at the fixture's speech windows (start s, end s, text).
const FIXTURE_CUES: &[(f64, f64, &str)] = &[
    (
        0.400,
        3.842,
        "Buenas noches y bienvenidos a las noticias de las seis desde la ciudad.",
    ),
    (
        5.600,
        8.694,
        "El ayuntamiento votó esta noche ampliar el puente del puerto.",
    ),
    (
        9.394,
        12.963,
        "Se espera que las obras empiecen en primavera y duren hasta el otoño.",
    ),
    (
        14.600,
        18.430,
        "Las fuertes lluvias causaron largos retrasos en la línea ferroviaria del norte esta tarde.",
    ),
    (
        19.130,
        22.182,
        "Los ingenieros dicen que las vías deberían reabrir mañana temprano.",
    ),
    (
        23.600,
        27.361,
        "Y ahora, los deportes: la final de la copa ya está en juego en la capital.",
    ),
    (
        28.061,
        31.236,
        "¿Quién saca? El equipo local, hacia el lado del río.",
    ),
    (
        32.600,
        36.215,
        "¡Un balón largo por arriba, y el delantero se queda solo ante la portería!",
    ),
    (
        36.915,
        40.319,
        "¡Dispara, marca, y qué gol tan maravilloso!",
    ),
    (
        41.600,
        45.095,
        "Los visitantes presionan con fuerza para empatar al final del partido.",
    ),
    (45.795, 49.070, "Llega un córner y lo despeja el portero."),
    (
        50.600,
        54.277,
        "¡Último minuto! El árbitro pita el final y la afición está en pie.",
    ),
    (54.977, 56.377, "Eso es todo por esta noche."),
    (
        57.077,
        59.223,
        "Gracias por su atención, y buenas noches. ÉXITO, ÑANDÚ, PINGÜINO.",
    ),
];

fn tool_available(tool: &str) -> bool {
    Command::new(tool).arg("-version").output().is_ok()
}

fn make(name: &str) -> gst::Element {
    gst::ElementFactory::make(name)
        .build()
        .unwrap_or_else(|_| panic!("element {name} (scripts/install-deps.sh installs it)"))
}

/// Runs `pipeline` to EOS; panics on an error message.
fn run_to_eos(pipeline: &gst::Pipeline) {
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(120),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("pipeline finished within 120 s");
    if let gst::MessageView::Error(e) = msg.view() {
        pipeline.set_state(gst::State::Null).unwrap();
        panic!("pipeline error: {} ({:?})", e.error(), e.debug());
    }
    pipeline.set_state(gst::State::Null).unwrap();
}

/// An appsrc pushing `cues` as `text/x-raw, format=utf8` buffers, then EOS.
fn text_source(cues: &[(f64, f64, &str)]) -> gst_app::AppSrc {
    let src = gst_app::AppSrc::builder()
        .caps(
            &gst::Caps::builder("text/x-raw")
                .field("format", "utf8")
                .build(),
        )
        .format(gst::Format::Time)
        .build();
    for &(start, end, text) in cues {
        let mut b = gst::Buffer::from_slice(text.as_bytes().to_vec());
        {
            let b = b.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_nseconds((start * 1e9).round() as u64));
            b.set_duration(gst::ClockTime::from_nseconds(
                ((end - start) * 1e9).round() as u64
            ));
        }
        src.push_buffer(b).unwrap();
    }
    src.end_of_stream().unwrap();
    src
}

/// The H.264 caption inserter of a pipeline: `demux` (its video pad) → h264parse →
/// cc608insert → `mux` → filesink `out`, the cues from an appsrc.
struct InsertPipeline {
    pipeline: gst::Pipeline,
    cc: gst::Element,
}

impl InsertPipeline {
    fn new(input: &Path, demux: &str, mux: &str, out: &Path, cues: &[(f64, f64, &str)]) -> Self {
        let pipeline = gst::Pipeline::new();
        let filesrc = make("filesrc");
        filesrc.set_property("location", input.to_str().unwrap());
        let demux = make(demux);
        let parse = make("h264parse");
        let cc = make("cc608insert");
        let mux = make(mux);
        let sink = make("filesink");
        sink.set_property("location", out.to_str().unwrap());
        let text = text_source(cues);
        let queue = make("queue");
        pipeline
            .add_many([
                &filesrc,
                &demux,
                &parse,
                &cc,
                &mux,
                &sink,
                text.upcast_ref(),
                &queue,
            ])
            .unwrap();
        filesrc.link(&demux).unwrap();
        gst::Element::link_many([&parse, &cc, &mux, &sink]).unwrap();
        text.link(&queue).unwrap();
        let text_pad = cc.request_pad_simple("text_sink").unwrap();
        queue.static_pad("src").unwrap().link(&text_pad).unwrap();
        let parse_sink = parse.static_pad("sink").unwrap();
        demux.connect_pad_added(move |_, pad| {
            let is_video = pad
                .current_caps()
                .or_else(|| Some(pad.query_caps(None)))
                .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
                .unwrap_or(false);
            if is_video && !parse_sink.is_linked() {
                pad.link(&parse_sink).unwrap();
            }
        });
        InsertPipeline { pipeline, cc }
    }
}

/// A decoded caption: start and end (s), text with its rows joined by spaces.
#[derive(Debug, Clone)]
struct Decoded {
    start: f64,
    end: f64,
    text: String,
}

fn srt_time(t: &str) -> f64 {
    let (hms, ms) = t.trim().split_once(',').unwrap();
    let p: Vec<f64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    p[0] * 3600.0 + p[1] * 60.0 + p[2] + ms.parse::<f64>().unwrap() / 1000.0
}

/// Text of ffmpeg's SRT rendering of a 608 screen: ASS overrides (`{\an7}`), font tags and
/// hard spaces (`\h`) removed, rows joined by one space.
fn clean(text: &str) -> String {
    let mut out = String::new();
    let mut depth_brace = 0;
    let mut in_tag = false;
    for c in text.replace("\\h", " ").replace("\\N", " ").chars() {
        match c {
            '{' => depth_brace += 1,
            '}' if depth_brace > 0 => depth_brace -= 1,
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if depth_brace == 0 && !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The captions of `path` as ffmpeg decodes them.
fn decode_captions(path: &Path) -> Vec<Decoded> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("movie={}[out0+subcc]", path.display()))
        .args(["-map", "0:s", "-f", "srt", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let srt = String::from_utf8(out.stdout).expect("utf-8 SRT");
    srt.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|block| {
            let mut lines = block.lines().skip_while(|l| l.trim().is_empty());
            lines.next()?;
            let times = lines.next()?;
            let (a, b) = times.split_once("-->")?;
            let text = lines.collect::<Vec<_>>().join("\n");
            Some(Decoded {
                start: srt_time(a),
                end: srt_time(b),
                text: clean(&text),
            })
        })
        .collect()
}

/// (size, md5) of every video packet of `path` with its SEI NAL units removed (ffmpeg's
/// `filter_units`), in order.
fn packets_without_sei(path: &Path) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args([
            "-map",
            "0:v",
            "-c",
            "copy",
            "-bsf:v",
            "filter_units=remove_types=6",
            "-f",
            "framemd5",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            format!("{} {}", f[4], f[5])
        })
        .collect()
}

fn ffprobe_video(path: &Path, entries: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(entries.split(' '))
        .arg(path)
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks every cue against the decoded captions: the captions starting within the cue's
/// span, joined, are its text; the first appears at its start and the last goes at its end,
/// within `tolerance` seconds (the first `late_ok` cues may appear later: loading a caption
/// takes time and the stream starts with them).
fn check_cues(cues: &[(f64, f64, &str)], decoded: &[Decoded], tolerance: f64, late_ok: usize) {
    for (i, &(start, end, text)) in cues.iter().enumerate() {
        let mine: Vec<&Decoded> = decoded
            .iter()
            .filter(|d| d.start >= start - tolerance && d.start < end)
            .collect();
        assert!(
            !mine.is_empty(),
            "cue {i} {text:?} not decoded: {decoded:#?}"
        );
        let joined = mine
            .iter()
            .map(|d| d.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(joined, text, "cue {i}");
        let first = mine[0].start;
        if i < late_ok {
            assert!(
                first >= start - tolerance && first < start + 2.0,
                "cue {i} at {first}"
            );
        } else {
            assert!(
                (first - start).abs() <= tolerance,
                "cue {i} starts at {first}, sent {start}"
            );
        }
        let last = mine.last().unwrap().end;
        assert!(
            (last - end).abs() <= tolerance,
            "cue {i} ends at {last}, sent {end}"
        );
    }
    assert_eq!(
        decoded.len(),
        decoded
            .iter()
            .filter(|d| cues
                .iter()
                .any(|c| d.start >= c.0 - tolerance && d.start < c.1))
            .count(),
        "no caption outside the cues"
    );
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cc608insert-")
        .tempdir()
        .unwrap()
}

#[test]
fn fixture_captions_decode_back_with_ffmpeg() {
    if !tool_available("ffmpeg") {
        panic!("ffmpeg missing: scripts/install-deps.sh installs it");
    }
    init();
    let dir = tmp();
    let out: PathBuf = dir.path().join("captioned.mp4");
    let p = InsertPipeline::new(Path::new(FIXTURE), "qtdemux", "mp4mux", &out, FIXTURE_CUES);
    run_to_eos(&p.pipeline);
    let stats = p.cc.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames").unwrap(), 1500);
    assert_eq!(stats.get::<u64>("sei-inserted").unwrap(), 1500);
    assert_eq!(stats.get::<u64>("dropped").unwrap(), 0);
    assert_eq!(stats.get::<f64>("pairs-per-frame").unwrap(), 1.2);

    let decoded = decode_captions(&out);
    // Two frames at 25 fps.
    check_cues(FIXTURE_CUES, &decoded, 0.080, 1);
    assert_eq!(
        packets_without_sei(Path::new(FIXTURE)),
        packets_without_sei(&out),
        "video packets other than the SEI are byte-identical"
    );
}

#[test]
fn b_frame_clip_captions_follow_presentation_order() {
    if !tool_available("ffmpeg") {
        panic!("ffmpeg missing: scripts/install-deps.sh installs it");
    }
    init();
    let dir = tmp();
    let input = dir.path().join("bframes.ts");
    // 8 s of 29.97 fps video with two B-frames between references.
    {
        let pipeline = gst::Pipeline::new();
        let src = make("videotestsrc");
        src.set_property("num-buffers", 240i32);
        let caps = make("capsfilter");
        caps.set_property(
            "caps",
            gst_video_caps(320, 180, gst::Fraction::new(30000, 1001)),
        );
        let enc = make("x264enc");
        enc.set_property("bframes", 2u32);
        enc.set_property("b-adapt", false);
        enc.set_property_from_str("speed-preset", "veryfast");
        enc.set_property("key-int-max", 60u32);
        let parse = make("h264parse");
        let bs = make("capsfilter");
        bs.set_property(
            "caps",
            gst::Caps::builder("video/x-h264")
                .field("stream-format", "byte-stream")
                .field("alignment", "au")
                .build(),
        );
        let mux = make("mpegtsmux");
        let sink = make("filesink");
        sink.set_property("location", input.to_str().unwrap());
        pipeline
            .add_many([&src, &caps, &enc, &parse, &bs, &mux, &sink])
            .unwrap();
        gst::Element::link_many([&src, &caps, &enc, &parse, &bs, &mux, &sink]).unwrap();
        run_to_eos(&pipeline);
    }
    let probe = ffprobe_video(&input, "-show_entries stream=has_b_frames -of csv=p=0");
    let b = probe.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(b.trim().parse::<u32>().unwrap() >= 1, "B-frames: {probe}");

    let cues: &[(f64, f64, &str)] = &[
        (1.6, 3.5, "¿Sí o no? ¡Ánimo, señoras y señores!"),
        (4.0, 5.2, "Pingüino"),
        (5.6, 7.4, "Acción, corazón y canción: ÉXITO."),
    ];
    let out = dir.path().join("captioned.ts");
    let p = InsertPipeline::new(&input, "tsdemux", "mpegtsmux", &out, cues);
    run_to_eos(&p.pipeline);
    let stats = p.cc.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("sei-inserted").unwrap(), 240);
    assert_eq!(stats.get::<u64>("late").unwrap(), 0);

    let decoded = decode_captions(&out);
    // Two frames at 29.97 fps.
    check_cues(cues, &decoded, 0.067, 0);
    assert_eq!(packets_without_sei(&input), packets_without_sei(&out));
}

fn gst_video_caps(width: i32, height: i32, fps: gst::Fraction) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", width)
        .field("height", height)
        .field("framerate", fps)
        .build()
}
