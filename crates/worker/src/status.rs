//! What `/health` and `/status` report: the worker's state (the supervisor's, see
//! [`crate::supervisor::State`]), whether its source is delivering (its
//! [`Liveness`], against `WORKER_SOURCE_TIMEOUT_MS`: the supervisor's outage decision reads
//! the same), and per language what went out. Updated by the worker loop and pad probes, read
//! by the HTTP handlers; one short lock, never held across a GStreamer call.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use crate::supervisor::Liveness;
pub use crate::supervisor::State;

/// One dubbed language's output.
#[derive(Debug, Clone, Default)]
pub struct LanguageStatus {
    pub language: String,
    pub fragments: u64,
    pub dubbed: u64,
    pub fallbacks: u64,
    pub breaker: String,
    /// With Socket.IO: whether the STS session is up (`None` over HTTP).
    pub session_up: Option<bool>,
    /// The last published buffer: when, and the capture time of what it carried (running time
    /// of the input, ns).
    pub last_output: Option<(Instant, i64)>,
    pub published_delay_ms: Option<f64>,
    /// CEA-608 captions of this language (`cc608insert` stats: shown, late, dropped), when
    /// captions are on.
    pub captions: Option<[u64; 3]>,
}

#[derive(Debug)]
struct Inner {
    /// How the dub goes out (`rtmp`, `srt`) and the captions (`off`, `cea608`).
    output: (String, String),
    state: State,
    av_delta_ms: Option<f64>,
    languages: Vec<LanguageStatus>,
}

/// The shared status board.
#[derive(Debug)]
pub struct Board {
    pub stream_id: String,
    /// The A/V offset used, ns.
    pub offset_ns: u64,
    /// The A/V offset requested (`WORKER_AV_OFFSET_NS`), ns; below `offset_ns` when the chain
    /// cannot deliver it.
    pub requested_offset_ns: u64,
    liveness: Arc<Liveness>,
    /// How fragments travel to the STS (`http`, `socketio`).
    pub sts_protocol: String,
    inner: Mutex<Inner>,
}

impl Board {
    pub fn new(
        stream_id: &str,
        offset_ns: u64,
        requested_offset_ns: u64,
        languages: &[String],
        liveness: Arc<Liveness>,
    ) -> Board {
        Board {
            stream_id: stream_id.into(),
            offset_ns,
            requested_offset_ns,
            liveness,
            sts_protocol: "http".into(),
            inner: Mutex::new(Inner {
                output: ("rtmp".into(), "off".into()),
                state: State::Starting,
                av_delta_ms: None,
                languages: languages
                    .iter()
                    .map(|l| LanguageStatus {
                        language: l.clone(),
                        breaker: "closed".into(),
                        ..Default::default()
                    })
                    .collect(),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How the dub goes out: `protocol` (`rtmp`, `srt`) and `captions` (`off`, `cea608`).
    pub fn set_output(&self, protocol: &str, captions: &str) {
        self.with(|i| i.output = (protocol.into(), captions.into()));
    }

    pub fn set_state(&self, state: State) {
        self.with(|i| i.state = state);
    }

    pub fn state(&self) -> State {
        self.with(|i| i.state)
    }

    /// The source's liveness.
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    pub fn source_up(&self, now: Instant) -> bool {
        self.liveness.up(now)
    }

    pub fn set_av_delta_ms(&self, ms: f64) {
        self.with(|i| i.av_delta_ms = Some(ms));
    }

    /// Updates language `index` (ignored if out of range).
    pub fn language(&self, index: usize, f: impl FnOnce(&mut LanguageStatus)) {
        self.with(|i| {
            if let Some(l) = i.languages.get_mut(index) {
                f(l)
            }
        });
    }

    pub fn languages(&self) -> Vec<LanguageStatus> {
        self.with(|i| i.languages.clone())
    }

    /// `/health`: PLAYING and the source delivering.
    pub fn healthy(&self, now: Instant) -> bool {
        self.state() == State::Playing && self.source_up(now)
    }

    /// `/status`.
    pub fn to_json(&self, now: Instant) -> Value {
        let source_up = self.source_up(now);
        let silent = self.liveness.silent_for(now);
        self.with(|i| {
            json!({
                "stream_id": self.stream_id,
                "state": i.state.as_str(),
                "healthy": i.state == State::Playing && source_up,
                "source_up": source_up,
                "source_silent_ms": silent.map(|d| d.as_millis() as u64),
                "av_offset_ns": self.offset_ns,
                "av_offset_requested_ns": self.requested_offset_ns,
                "sts_protocol": self.sts_protocol,
                "av_sync_delta_ms": i.av_delta_ms,
                "output": i.output.0,
                "captions": i.output.1,
                "languages": i.languages.iter().map(|l| json!({
                    "language": l.language,
                    "fragments": l.fragments,
                    "dubbed": l.dubbed,
                    "fallbacks": l.fallbacks,
                    "breaker_state": l.breaker,
                    "sts_session_up": l.session_up,
                    "published_delay_ms": l.published_delay_ms,
                    "captions": l.captions.map(|[shown, late, dropped]| json!({
                        "shown": shown,
                        "late": late,
                        "dropped": dropped,
                    })),
                })).collect::<Vec<_>>(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    fn board(timeout_ms: u64) -> Board {
        Board::new(
            "s",
            6_000_000_000,
            6_000_000_000,
            &["es".into(), "de".into()],
            Arc::new(Liveness::new(Duration::from_millis(timeout_ms))),
        )
    }

    #[test]
    fn healthy_only_while_playing_with_a_live_source() {
        // The source timeout is WORKER_SOURCE_TIMEOUT_MS: with 2 s, /health is 503 just past
        // 2 s of silence (one constant for /health, /status, metrics and the supervisor).
        let b = board(2000);
        let t0 = Instant::now();
        assert!(!b.healthy(t0), "starting");
        b.set_state(State::Playing);
        assert!(!b.healthy(t0), "no data yet");
        b.liveness().data(t0);
        assert!(b.healthy(t0 + Duration::from_secs(1)));
        assert!(b.healthy(t0 + Duration::from_millis(2000)));
        assert!(
            !b.healthy(t0 + Duration::from_millis(2001)),
            "source silent"
        );
        assert_eq!(
            b.to_json(t0 + Duration::from_millis(2200))["source_up"],
            false
        );
        b.set_state(State::Stopping);
        assert!(!b.healthy(t0));
    }

    #[test]
    fn status_has_every_language() {
        let b = board(5000);
        b.language(1, |l| {
            l.fragments = 3;
            l.fallbacks = 1;
            l.breaker = "open".into();
        });
        b.language(7, |l| l.fragments = 99);
        let v = b.to_json(Instant::now());
        assert_eq!(v["state"], "starting");
        assert_eq!(v["healthy"], false);
        assert_eq!(v["languages"][0]["language"], "es");
        assert_eq!(v["languages"][1]["fragments"], 3);
        assert_eq!(v["languages"][1]["breaker_state"], "open");
        assert_eq!(v["languages"].as_array().unwrap().len(), 2);
        assert_eq!(v["output"], "rtmp");
        assert_eq!(v["captions"], "off");
        assert!(v["languages"][0]["captions"].is_null());
        b.set_output("srt", "cea608");
        b.language(0, |l| l.captions = Some([12, 1, 0]));
        let v = b.to_json(Instant::now());
        assert_eq!(v["output"], "srt");
        assert_eq!(v["captions"], "cea608");
        assert_eq!(v["languages"][0]["captions"]["shown"], 12);
        assert_eq!(v["languages"][0]["captions"]["late"], 1);
    }
}
