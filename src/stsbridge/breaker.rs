//! Circuit breaker for the STS connection, without GStreamer.
//!
//! * **Closed**: requests go out. Each retryable failure (transport error, timeout, 5xx, 429,
//!   retryable error code) adds one to a run of consecutive failures; a success resets the run.
//!   Non-retryable failures (the service is up but refuses this input) leave the run alone.
//!   When the run reaches `threshold`, the breaker opens.
//! * **Open**: no requests; every fragment falls back at once. After `cooldown` the next fragment
//!   becomes the probe and the breaker is half-open.
//! * **HalfOpen**: exactly one probe request is out; other fragments fall back. The probe's
//!   success closes the breaker, its retryable failure reopens it for another cooldown.
//!
//! Time is passed in by the caller as a [`Duration`] since its clock's origin (the element
//! passes the pipeline clock's time, so a test clock decides when a cooldown ends); tests drive
//! it directly. Should the clock change under an open breaker (the pipeline picks another one)
//! and read earlier than when the breaker opened, the cooldown restarts from that reading.

use std::time::Duration;

/// The breaker's state, as reported in stats and bus messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// What the breaker allows for a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: send.
    Allow,
    /// Half-open: send; this request is the probe whose result decides the state.
    Probe,
    /// Open (or half-open with the probe already out): fall back without a request.
    Reject,
}

/// A state change, to be logged and posted on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    /// Consecutive retryable failures at the time of the change.
    pub failures: u32,
}

/// The breaker. `threshold == 0` disables it (always closed).
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: BreakerState,
    failures: u32,
    /// When the breaker last opened, on the caller's clock.
    opened_at: Option<Duration>,
    probe_out: bool,
    opened_count: u64,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            state: BreakerState::Closed,
            failures: 0,
            opened_at: None,
            probe_out: false,
            opened_count: 0,
        }
    }

    /// Changes the settings; the current state is kept.
    pub fn configure(&mut self, threshold: u32, cooldown: Duration) {
        self.threshold = threshold;
        self.cooldown = cooldown;
        if threshold == 0 && self.state != BreakerState::Closed {
            self.state = BreakerState::Closed;
            self.opened_at = None;
            self.probe_out = false;
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// How many times the breaker has opened (including reopenings after a failed probe).
    pub fn opened_count(&self) -> u64 {
        self.opened_count
    }

    /// Decides whether a new request may go out at `now`. An `Open` breaker whose cooldown has
    /// elapsed turns half-open and hands out the probe (the transition is returned).
    pub fn admit(&mut self, now: Duration) -> (Admission, Option<Transition>) {
        match self.state {
            BreakerState::Closed => (Admission::Allow, None),
            BreakerState::Open => {
                if let Some(at) = self.opened_at
                    && now < at
                {
                    // Another clock: the cooldown counts from now.
                    self.opened_at = Some(now);
                }
                if self.opened_at.is_some_and(|at| now >= at + self.cooldown) {
                    let t = self.set(BreakerState::HalfOpen);
                    self.probe_out = true;
                    (Admission::Probe, t)
                } else {
                    (Admission::Reject, None)
                }
            }
            BreakerState::HalfOpen => {
                if self.probe_out {
                    (Admission::Reject, None)
                } else {
                    self.probe_out = true;
                    (Admission::Probe, None)
                }
            }
        }
    }

    /// Whether a retry of an already admitted request may go out: not while open. A half-open
    /// probe keeps its own retries.
    pub fn allows_retry(&self, probe: bool) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => probe,
            BreakerState::Open => false,
        }
    }

    /// Records a successful answer.
    pub fn on_success(&mut self, probe: bool) -> Option<Transition> {
        self.failures = 0;
        if probe {
            self.probe_out = false;
        }
        if self.state == BreakerState::Closed {
            return None;
        }
        // Any success proves the service is back (a request sent before the breaker opened
        // may well succeed while it is open).
        self.opened_at = None;
        self.probe_out = false;
        self.set(BreakerState::Closed)
    }

    /// Records a retryable failure (one attempt).
    pub fn on_failure(&mut self, now: Duration, probe: bool) -> Option<Transition> {
        self.failures = self.failures.saturating_add(1);
        if self.threshold == 0 {
            return None;
        }
        match self.state {
            BreakerState::Closed if self.failures >= self.threshold => self.open(now),
            BreakerState::HalfOpen if probe => self.open(now),
            _ => None,
        }
    }

    /// A probe that ended without a verdict (aborted by a flush, or a non-retryable answer):
    /// the next request becomes the probe.
    pub fn release_probe(&mut self, probe: bool) {
        if probe {
            self.probe_out = false;
        }
    }

    /// Back to closed with no history (stream restart).
    pub fn reset(&mut self) -> Option<Transition> {
        self.failures = 0;
        self.opened_at = None;
        self.probe_out = false;
        self.set(BreakerState::Closed)
    }

    fn open(&mut self, now: Duration) -> Option<Transition> {
        self.opened_at = Some(now);
        self.probe_out = false;
        self.opened_count += 1;
        let from = self.state;
        self.state = BreakerState::Open;
        Some(Transition {
            from,
            to: BreakerState::Open,
            failures: self.failures,
        })
    }

    fn set(&mut self, to: BreakerState) -> Option<Transition> {
        if self.state == to {
            return None;
        }
        let from = self.state;
        self.state = to;
        Some(Transition {
            from,
            to,
            failures: self.failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Duration::from_secs(1000);
        let mut b = Breaker::new(5, COOL);
        for _ in 0..4 {
            assert_eq!(b.admit(t0).0, Admission::Allow);
            assert_eq!(b.on_failure(t0, false), None);
        }
        assert_eq!(b.admit(t0).0, Admission::Allow);
        let t = b.on_failure(t0, false).unwrap();
        assert_eq!(
            (t.from, t.to, t.failures),
            (BreakerState::Closed, BreakerState::Open, 5)
        );
        assert_eq!(b.admit(t0).0, Admission::Reject);
        assert_eq!(
            b.admit(t0 + COOL - Duration::from_millis(1)).0,
            Admission::Reject
        );
        assert_eq!(b.opened_count(), 1);
    }

    #[test]
    fn success_resets_the_run() {
        let t0 = Duration::from_secs(1000);
        let mut b = Breaker::new(3, COOL);
        b.on_failure(t0, false);
        b.on_failure(t0, false);
        assert_eq!(b.on_success(false), None);
        b.on_failure(t0, false);
        b.on_failure(t0, false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.on_failure(t0, false).is_some());
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn half_open_single_probe_then_close() {
        let t0 = Duration::from_secs(1000);
        let mut b = Breaker::new(1, COOL);
        b.on_failure(t0, false);
        let later = t0 + COOL;
        let (a, t) = b.admit(later);
        assert_eq!(a, Admission::Probe);
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        // Only one probe at a time.
        assert_eq!(b.admit(later).0, Admission::Reject);
        assert!(b.allows_retry(true));
        assert!(!b.allows_retry(false));
        let t = b.on_success(true).unwrap();
        assert_eq!(
            (t.from, t.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert_eq!(b.admit(later).0, Admission::Allow);
    }

    #[test]
    fn failed_probe_reopens_for_another_cooldown() {
        let t0 = Duration::from_secs(1000);
        let mut b = Breaker::new(2, COOL);
        b.on_failure(t0, false);
        b.on_failure(t0, false);
        let t1 = t0 + COOL;
        assert_eq!(b.admit(t1).0, Admission::Probe);
        let t = b.on_failure(t1, true).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
        assert_eq!(b.admit(t1 + COOL / 2).0, Admission::Reject);
        assert_eq!(b.admit(t1 + COOL).0, Admission::Probe);
        assert_eq!(b.opened_count(), 2);
    }

    #[test]
    fn released_probe_lets_the_next_request_probe() {
        let t0 = Duration::from_secs(1000);
        let mut b = Breaker::new(1, COOL);
        b.on_failure(t0, false);
        assert_eq!(b.admit(t0 + COOL).0, Admission::Probe);
        b.release_probe(true);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(t0 + COOL).0, Admission::Probe);
    }

    #[test]
    fn late_success_while_open_closes() {
        let t0 = Duration::from_secs(1000);
        let mut b = Breaker::new(1, COOL);
        b.on_failure(t0, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.on_success(false).unwrap().to, BreakerState::Closed);
    }

    #[test]
    fn a_cooldown_change_applies_at_once() {
        let t0 = Duration::from_secs(1000);
        let mut b = Breaker::new(1, COOL);
        b.on_failure(t0, false);
        b.configure(1, COOL / 3);
        assert_eq!(b.admit(t0 + COOL / 3).0, Admission::Probe);
    }

    #[test]
    fn a_clock_reading_earlier_than_the_opening_restarts_the_cooldown() {
        let t0 = Duration::from_secs(1000);
        let mut b = Breaker::new(1, COOL);
        b.on_failure(t0, false);
        // The pipeline's clock replaced: it reads 10 s.
        let t1 = Duration::from_secs(10);
        assert_eq!(b.admit(t1).0, Admission::Reject);
        assert_eq!(b.admit(t1 + COOL / 2).0, Admission::Reject);
        assert_eq!(b.admit(t1 + COOL).0, Admission::Probe);
    }

    #[test]
    fn zero_threshold_never_opens() {
        let t0 = Duration::from_secs(1000);
        let mut b = Breaker::new(0, COOL);
        for _ in 0..100 {
            assert_eq!(b.on_failure(t0, false), None);
        }
        assert_eq!(b.admit(t0).0, Admission::Allow);
    }
}
