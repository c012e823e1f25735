//! Subtitles of a dubbed file: each dub's translation on `stsbridge`'s text pad, shifted by
//! `avoffset`, muxed as a Matroska subtitle track: timing (cue = where the fragment's speech
//! plays + the offset) and content (= the bus message's translation).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::init;
use dubbing_sts_server::{Mode, ServerConfig, StsServer};
use dubbing_worker::pipeline::Chain;
use gst::prelude::*;
use gstdubbing::stsbridge::{FRAGMENT_MESSAGE, FragmentReport, Outcome};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/speech-60s.mp4");

#[derive(Debug, Clone)]
struct Text {
    pts: u64,
    duration: u64,
    running_time: u64,
    text: String,
}

#[test]
fn the_translation_is_a_subtitle_track_where_its_speech_plays() {
    init();
    let srv = StsServer::start(ServerConfig {
        mode: Mode::Echo,
        ..Default::default()
    })
    .unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("subtitles");
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("echo.mkv");
    let chain = Chain {
        url: srv.url(),
        subtitles: true,
        ..Default::default()
    };
    let file = chain
        .build_file(FIXTURE, output.to_str().unwrap(), None)
        .unwrap();
    let pipeline = file.pipeline.clone();
    let texts: Arc<Mutex<Vec<Text>>> = Arc::default();
    let t = texts.clone();
    let av = file.branches[0].dubbing.as_ref().unwrap().avoffset.clone();
    av.static_pad("text_src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                let seg = pad.sticky_event::<gst::event::Segment>(0).unwrap();
                let seg = seg
                    .segment()
                    .downcast_ref::<gst::ClockTime>()
                    .unwrap()
                    .clone();
                t.lock().unwrap().push(Text {
                    pts: b.pts().unwrap().nseconds(),
                    duration: b.duration().unwrap().nseconds(),
                    running_time: seg.to_running_time(b.pts().unwrap()).unwrap().nseconds(),
                    text: String::from_utf8(b.map_readable().unwrap().to_vec()).unwrap(),
                });
            }
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut reports = Vec::new();
    for msg in pipeline
        .bus()
        .unwrap()
        .iter_timed(gst::ClockTime::from_seconds(120))
    {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            gst::MessageView::Element(e) => {
                if let Some(r) = e
                    .structure()
                    .filter(|s| s.name() == FRAGMENT_MESSAGE)
                    .and_then(FragmentReport::from_structure)
                {
                    reports.push(r);
                }
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();

    let texts = texts.lock().unwrap().clone();
    let spoken: Vec<&FragmentReport> = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Dubbed && r.speech_start != u64::MAX)
        .collect();
    // Every fragment of the fixture has sound but two, which only hold the first sample of
    // a marker beep that begins at their very end.
    assert_eq!(spoken.len(), 58);
    assert_eq!(texts.len(), spoken.len(), "one cue per dub with speech");
    for (r, t) in spoken.iter().zip(&texts) {
        assert_eq!(t.text, r.translated_text);
        assert_eq!(
            t.pts,
            r.speech_start + chain.offset_ns,
            "fragment {}",
            r.sequence_number
        );
        assert_eq!(t.duration, r.speech_end - r.speech_start);
    }

    // The file holds the same cues, at their running time.
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "s", "-show_entries"])
        .args(["packet=pts_time,duration_time", "-of", "csv=p=0"])
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packets: Vec<(f64, f64)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (p, d) = l.split_once(',').unwrap();
            (p.parse().unwrap(), d.parse().unwrap())
        })
        .collect();
    assert_eq!(packets.len(), texts.len());
    for (p, t) in packets.iter().zip(&texts) {
        assert!(
            (p.0 - t.running_time as f64 / 1e9).abs() < 0.0015,
            "{p:?} vs {t:?}"
        );
        assert!(
            (p.1 - t.duration as f64 / 1e9).abs() < 0.0015,
            "{p:?} vs {t:?}"
        );
    }
}
