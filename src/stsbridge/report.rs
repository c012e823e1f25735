//! What `stsbridge` tells its users, as types: the outcome of each fragment and the
//! `stsbridge/fragment` bus message that reports it, with the names of its structures.
//! Applications (the stream worker, tests) parse messages through these instead of string
//! literals, so a change here breaks their build, not their behaviour.

use super::breaker::BreakerState;
use super::response::Reason;

/// Name of the element message posted for every fragment.
pub const FRAGMENT_MESSAGE: &str = "stsbridge/fragment";
/// Name of the element message posted on every circuit breaker transition.
pub const BREAKER_MESSAGE: &str = "stsbridge/breaker";
/// Name of the element message posted for every answer that came after its fragment went out.
pub const LATE_MESSAGE: &str = "stsbridge/late-response";
/// Name of the `stats` structure.
pub const STATS_STRUCTURE: &str = "application/x-stsbridge-stats";

/// Names of the `stats` fields applications read.
pub mod stats_field {
    /// `u64`: requests in flight now.
    pub const IN_FLIGHT: &str = "in-flight";
    /// `&str`: [`super::BreakerState::as_str`].
    pub const BREAKER_STATE: &str = "breaker-state";
}

/// Requests in flight and the breaker state, from a `stats` structure; `None` for any other
/// structure.
pub fn stats_summary(s: &gst::StructureRef) -> Option<(u64, BreakerState)> {
    if s.name() != STATS_STRUCTURE {
        return None;
    }
    Some((
        s.get(stats_field::IN_FLIGHT).ok()?,
        BreakerState::parse(s.get::<&str>(stats_field::BREAKER_STATE).ok()?)?,
    ))
}

/// What went out for a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The STS answer.
    Dubbed,
    /// The fallback (`fallback` property), for this reason.
    Fallback(Reason),
    /// `bypass` was on: the original, no request.
    Bypass,
    /// No `url`: the original, no request.
    Passthrough,
    /// A GAP buffer: passed through, no request.
    Gap,
}

impl Outcome {
    /// The `outcome` field of the bus message.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Dubbed => "dubbed",
            Outcome::Fallback(_) => "fallback",
            Outcome::Bypass => "bypass",
            Outcome::Passthrough => "passthrough",
            Outcome::Gap => "gap",
        }
    }

    pub fn reason(self) -> Option<Reason> {
        match self {
            Outcome::Fallback(r) => Some(r),
            _ => None,
        }
    }

    /// From the `outcome` and `reason` fields of the bus message.
    pub fn parse(outcome: &str, reason: &str) -> Option<Outcome> {
        Some(match outcome {
            "dubbed" => Outcome::Dubbed,
            "fallback" => Outcome::Fallback(Reason::parse(reason)?),
            "bypass" => Outcome::Bypass,
            "passthrough" => Outcome::Passthrough,
            "gap" => Outcome::Gap,
            _ => return None,
        })
    }
}

impl Reason {
    /// From [`Reason::as_str`].
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl BreakerState {
    /// From [`BreakerState::as_str`].
    pub fn parse(s: &str) -> Option<BreakerState> {
        [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ]
        .into_iter()
        .find(|b| b.as_str() == s)
    }
}

/// The `stsbridge/breaker` message, posted on every circuit breaker transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerReport {
    pub state: BreakerState,
    pub previous: BreakerState,
    pub consecutive_failures: u32,
}

impl BreakerReport {
    pub fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder(BREAKER_MESSAGE)
            .field("state", self.state.as_str())
            .field("previous", self.previous.as_str())
            .field("consecutive-failures", self.consecutive_failures)
            .build()
    }

    /// Parses a `stsbridge/breaker` structure; `None` for any other.
    pub fn from_structure(s: &gst::StructureRef) -> Option<BreakerReport> {
        if s.name() != BREAKER_MESSAGE {
            return None;
        }
        Some(BreakerReport {
            state: BreakerState::parse(s.get::<&str>("state").ok()?)?,
            previous: BreakerState::parse(s.get::<&str>("previous").ok()?)?,
            consecutive_failures: s.get("consecutive-failures").ok()?,
        })
    }
}

/// The `stsbridge/fragment` message. Times are nanoseconds (`u64::MAX`: unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct FragmentReport {
    pub sequence_number: u64,
    pub fragment_id: String,
    pub pts: u64,
    pub duration: u64,
    pub frames: u64,
    pub outcome: Outcome,
    /// Why it fell back, in words (never credentials); empty otherwise.
    pub detail: String,
    /// Round-trip time of the last attempt (0: no request).
    pub rtt: u64,
    pub attempts: u32,
    pub transcript: String,
    pub translated_text: String,
    /// The STS's own processing time.
    pub processing_time: u64,
    /// `overflow=trim`: frames the dub was padded (positive) or cut (negative) by.
    pub fitted_frames: i64,
    /// Where the fragment's own speech plays (running on past the fragment when it is
    /// longer), in the stream's time; `u64::MAX` when the fragment has no speech of its own.
    pub speech_start: u64,
    pub speech_end: u64,
    /// Tempo the speech plays at (1.0: as the service made it; above: compressed).
    pub tempo: f64,
}

impl FragmentReport {
    pub fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder(FRAGMENT_MESSAGE)
            .field("sequence-number", self.sequence_number)
            .field("fragment-id", &self.fragment_id)
            .field("pts", self.pts)
            .field("duration", self.duration)
            .field("frames", self.frames)
            .field("outcome", self.outcome.as_str())
            .field("reason", self.outcome.reason().map_or("", Reason::as_str))
            .field("detail", &self.detail)
            .field("rtt", self.rtt)
            .field("attempts", self.attempts)
            .field("transcript", &self.transcript)
            .field("translated-text", &self.translated_text)
            .field("processing-time", self.processing_time)
            .field("fitted-frames", self.fitted_frames)
            .field("speech-start", self.speech_start)
            .field("speech-end", self.speech_end)
            .field("tempo", self.tempo)
            .build()
    }

    /// Parses a `stsbridge/fragment` structure; `None` for any other structure.
    pub fn from_structure(s: &gst::StructureRef) -> Option<FragmentReport> {
        if s.name() != FRAGMENT_MESSAGE {
            return None;
        }
        let text = |f: &str| s.get::<String>(f).ok();
        Some(FragmentReport {
            sequence_number: s.get("sequence-number").ok()?,
            fragment_id: text("fragment-id")?,
            pts: s.get("pts").ok()?,
            duration: s.get("duration").ok()?,
            frames: s.get("frames").ok()?,
            outcome: Outcome::parse(&text("outcome")?, &text("reason")?)?,
            detail: text("detail")?,
            rtt: s.get("rtt").ok()?,
            attempts: s.get("attempts").ok()?,
            transcript: text("transcript")?,
            translated_text: text("translated-text")?,
            processing_time: s.get("processing-time").ok()?,
            fitted_frames: s.get("fitted-frames").ok()?,
            speech_start: s.get("speech-start").ok()?,
            speech_end: s.get("speech-end").ok()?,
            tempo: s.get("tempo").ok()?,
        })
    }
}

/// The `stsbridge/late-response` message: an answer that came after its fragment went out as
/// its fallback (live: past the fragment's deadline). It is discarded and counted
/// (`late-responses` in `stats`); `rtt` says how long the service took, to tune `latency`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateReport {
    pub sequence_number: u64,
    pub fragment_id: String,
    /// What the answer would have made of the fragment: [`Outcome::Dubbed`] or a fallback.
    pub outcome: Outcome,
    /// Round-trip time of the last attempt, ns (0: no request).
    pub rtt: u64,
    pub attempts: u32,
}

impl LateReport {
    pub fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder(LATE_MESSAGE)
            .field("sequence-number", self.sequence_number)
            .field("fragment-id", &self.fragment_id)
            .field("outcome", self.outcome.as_str())
            .field("reason", self.outcome.reason().map_or("", Reason::as_str))
            .field("rtt", self.rtt)
            .field("attempts", self.attempts)
            .build()
    }

    /// Parses a `stsbridge/late-response` structure; `None` for any other.
    pub fn from_structure(s: &gst::StructureRef) -> Option<LateReport> {
        if s.name() != LATE_MESSAGE {
            return None;
        }
        let text = |f: &str| s.get::<String>(f).ok();
        Some(LateReport {
            sequence_number: s.get("sequence-number").ok()?,
            fragment_id: text("fragment-id")?,
            outcome: Outcome::parse(&text("outcome")?, &text("reason")?)?,
            rtt: s.get("rtt").ok()?,
            attempts: s.get("attempts").ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_states_round_trip_through_their_names() {
        for r in Reason::ALL {
            let o = Outcome::Fallback(r);
            assert_eq!(Outcome::parse(o.as_str(), r.as_str()), Some(o));
        }
        for o in [
            Outcome::Dubbed,
            Outcome::Bypass,
            Outcome::Passthrough,
            Outcome::Gap,
        ] {
            assert_eq!(Outcome::parse(o.as_str(), ""), Some(o));
        }
        assert_eq!(Outcome::parse("fallback", "nope"), None);
        assert_eq!(Outcome::parse("maybe", ""), None);
        for b in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            assert_eq!(BreakerState::parse(b.as_str()), Some(b));
        }
    }

    #[test]
    fn the_fragment_message_round_trips() {
        gst::init().unwrap();
        let r = FragmentReport {
            sequence_number: 3,
            fragment_id: "id".into(),
            pts: 3_000_000_000,
            duration: 1_000_000_000,
            frames: 48000,
            outcome: Outcome::Fallback(Reason::Deadline),
            detail: "late".into(),
            rtt: 5,
            attempts: 2,
            transcript: "hello".into(),
            translated_text: "hola".into(),
            processing_time: 7,
            fitted_frames: -12,
            speech_start: 3_100_000_000,
            speech_end: 4_300_000_000,
            tempo: 1.1,
        };
        let s = r.to_structure();
        assert_eq!(s.name(), FRAGMENT_MESSAGE);
        assert_eq!(s.get::<String>("reason").unwrap(), "deadline");
        assert_eq!(FragmentReport::from_structure(&s), Some(r));
        let other = gst::Structure::new_empty(BREAKER_MESSAGE);
        assert_eq!(FragmentReport::from_structure(&other), None);
        let b = BreakerReport {
            state: BreakerState::Open,
            previous: BreakerState::HalfOpen,
            consecutive_failures: 6,
        };
        assert_eq!(BreakerReport::from_structure(&b.to_structure()), Some(b));
        assert_eq!(BreakerReport::from_structure(&s), None);
        let l = LateReport {
            sequence_number: 4,
            fragment_id: "late".into(),
            outcome: Outcome::Dubbed,
            rtt: 1_200_000_000,
            attempts: 1,
        };
        assert_eq!(l.to_structure().name(), LATE_MESSAGE);
        assert_eq!(LateReport::from_structure(&l.to_structure()), Some(l));
        assert_eq!(LateReport::from_structure(&s), None);
    }
}
