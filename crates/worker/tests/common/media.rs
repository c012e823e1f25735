//! File-pipeline helpers shared by the end-to-end tests: run the bundled fixture through
//! `Chain::build_file`, decode what came out, read the fixture's description.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use dubbing_worker::pipeline::Chain;
use gst::prelude::*;
use gstdubbing::stsbridge::{FRAGMENT_MESSAGE, FragmentReport};

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/speech-60s.mp4");
pub const FIXTURE_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/speech-60s.json"
);
/// One AAC frame at 48 kHz.
pub const AAC_FRAME_MS: f64 = 1024.0 / 48.0;

pub fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What one file run gave: every fragment's report and the final `stats` of each language's
/// `stsbridge`.
pub struct Run {
    pub reports: Vec<Vec<FragmentReport>>,
    pub stats: Vec<gst::Structure>,
}

/// Runs the file pipeline to EOS (bounded by `timeout`).
pub fn dub(chain: &Chain, output: &Path, timeout: gst::ClockTime) -> Run {
    crate::common::init();
    let file = chain
        .build_file(FIXTURE, output.to_str().unwrap(), None)
        .unwrap();
    let pipeline = file.pipeline.clone();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut reports = vec![Vec::new(); chain.target_languages.len()];
    let bus = pipeline.bus().unwrap();
    let mut eos = false;
    for msg in bus.iter_timed(timeout) {
        match msg.view() {
            gst::MessageView::Eos(_) => {
                eos = true;
                break;
            }
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            gst::MessageView::Element(e) => {
                let Some(r) = e
                    .structure()
                    .filter(|s| s.name() == FRAGMENT_MESSAGE)
                    .and_then(FragmentReport::from_structure)
                else {
                    continue;
                };
                let i = file.language_of(msg.src().unwrap()).unwrap();
                reports[i].push(r);
            }
            _ => {}
        }
    }
    assert!(eos, "no EOS within {timeout}");
    let stats = file
        .branches
        .iter()
        .map(|b| {
            b.dubbing
                .as_ref()
                .unwrap()
                .bridge
                .property::<gst::Structure>("stats")
        })
        .collect();
    pipeline.set_state(gst::State::Null).unwrap();
    Run { reports, stats }
}

/// Mono 48 kHz samples of audio track `track`.
pub fn decode_audio(path: &Path, track: usize) -> Vec<i16> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-map",
            &format!("0:a:{track}"),
            "-ac",
            "1",
            "-ar",
            "48000",
            "-f",
            "s16le",
            "-",
        ])
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success());
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

pub fn fixture_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(FIXTURE_JSON).unwrap()).unwrap()
}

/// The fixture's sentences: (start s, end s, text).
pub fn sentences() -> Vec<(f64, f64, String)> {
    fixture_json()["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["start_s"].as_f64().unwrap(),
                s["end_s"].as_f64().unwrap(),
                s["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The fixture's marker times, s.
pub fn markers() -> Vec<f64> {
    fixture_json()["markers_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}
