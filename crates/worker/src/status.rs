//! What `/health` and `/status` report: the worker's state, whether its source is delivering,
//! and per language what went out. Updated by the bus loop and pad probes, read by the HTTP
//! handlers; one short lock, never held across a GStreamer call.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Without input data for this long the source counts as down (`/health` 503).
pub const SOURCE_SILENT_AFTER: Duration = Duration::from_secs(5);

/// Where the worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connecting to the source, prerolling.
    Starting,
    /// The pipeline is PLAYING.
    Playing,
    /// Retrying a source that could not be reached.
    Reconnecting,
    /// SIGINT/SIGTERM or end of stream: publishing what is held, then exiting.
    Stopping,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Playing => "playing",
            State::Reconnecting => "reconnecting",
            State::Stopping => "stopping",
        }
    }
}

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
}

#[derive(Debug)]
struct Inner {
    state: State,
    source_data_at: Option<Instant>,
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
    ) -> Board {
        Board {
            stream_id: stream_id.into(),
            offset_ns,
            requested_offset_ns,
            sts_protocol: "http".into(),
            inner: Mutex::new(Inner {
                state: State::Starting,
                source_data_at: None,
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

    pub fn set_state(&self, state: State) {
        self.with(|i| {
            // Stopping is final.
            if i.state != State::Stopping {
                i.state = state;
            }
        });
    }

    pub fn state(&self) -> State {
        self.with(|i| i.state)
    }

    /// Input data arrived now.
    pub fn source_data(&self, at: Instant) {
        self.with(|i| i.source_data_at = Some(at));
    }

    /// When input data last arrived.
    pub fn source_data_at(&self) -> Option<Instant> {
        self.with(|i| i.source_data_at)
    }

    pub fn source_up(&self, now: Instant) -> bool {
        self.with(|i| {
            i.source_data_at
                .is_some_and(|t| now.saturating_duration_since(t) < SOURCE_SILENT_AFTER)
        })
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
        self.with(|i| {
            json!({
                "stream_id": self.stream_id,
                "state": i.state.as_str(),
                "healthy": i.state == State::Playing && source_up,
                "source_up": source_up,
                "source_silent_ms": i.source_data_at
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                "av_offset_ns": self.offset_ns,
                "av_offset_requested_ns": self.requested_offset_ns,
                "sts_protocol": self.sts_protocol,
                "av_sync_delta_ms": i.av_delta_ms,
                "languages": i.languages.iter().map(|l| json!({
                    "language": l.language,
                    "fragments": l.fragments,
                    "dubbed": l.dubbed,
                    "fallbacks": l.fallbacks,
                    "breaker_state": l.breaker,
                    "sts_session_up": l.session_up,
                    "published_delay_ms": l.published_delay_ms,
                })).collect::<Vec<_>>(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_while_playing_with_a_live_source() {
        let b = Board::new(
            "s",
            6_000_000_000,
            6_000_000_000,
            &["es".into(), "de".into()],
        );
        let t0 = Instant::now();
        assert!(!b.healthy(t0), "starting");
        b.set_state(State::Playing);
        assert!(!b.healthy(t0), "no data yet");
        b.source_data(t0);
        assert!(b.healthy(t0 + Duration::from_secs(1)));
        assert!(!b.healthy(t0 + SOURCE_SILENT_AFTER), "source silent");
        b.set_state(State::Stopping);
        b.set_state(State::Playing);
        assert_eq!(b.state(), State::Stopping, "stopping is final");
        assert!(!b.healthy(t0));
    }

    #[test]
    fn status_has_every_language() {
        let b = Board::new(
            "s",
            6_000_000_000,
            6_000_000_000,
            &["es".into(), "de".into()],
        );
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
    }
}
