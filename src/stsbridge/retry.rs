//! Retry timing without GStreamer: exponential backoff with jitter, `Retry-After`, deadlines.

use std::time::{Duration, SystemTime};

/// First backoff step; doubles per retry up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest backoff between two attempts (a longer `Retry-After` still wins).
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// An attempt started with less time than this before the deadline is not worth sending.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(20);

/// Backoff before retry number `retry` (1 for the first retry): `BACKOFF_BASE × 2^(retry-1)`
/// capped at `BACKOFF_MAX`, scaled by `jitter` in [0, 1) to a value in [50 %, 100 %] of the
/// step ("equal jitter": never zero, never in lockstep with other clients).
pub fn backoff(retry: u32, jitter: f64) -> Duration {
    let exp = retry.saturating_sub(1).min(16);
    let step = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
    let j = jitter.clamp(0.0, 1.0);
    step.mul_f64(0.5 + 0.5 * j)
}

/// The delay before the next attempt: the backoff, or the server's `Retry-After` if longer.
pub fn retry_delay(retry: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
    let b = backoff(retry, jitter);
    match retry_after {
        Some(ra) if ra > b => ra,
        _ => b,
    }
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether a retry that must first wait `delay` still fits before the deadline.
pub fn retry_fits(delay: Duration, remaining: Option<Duration>) -> bool {
    match remaining {
        Some(r) => delay + MIN_ATTEMPT <= r,
        None => true,
    }
}

/// Running-time deadline of a live fragment: the moment its audio must leave this element so
/// that the sink still plays it on time. `running_time` is the fragment's start, `upstream` the
/// upstream minimum latency and `own` this element's `latency`; `margin` is kept for downstream
/// (encoder, muxer). The fragment's own duration is already covered by upstream's latency (the
/// chunker reports it).
pub fn live_deadline(running_time: u64, upstream: u64, own: u64, margin: u64) -> u64 {
    running_time
        .saturating_add(upstream)
        .saturating_add(own.saturating_sub(margin.min(own / 2)))
}

/// How long a non-live fragment may wait for its answer before it goes out as fallback: every
/// attempt's `timeout`, the longest backoff between them and a second of slack. A safety net,
/// so that no wait is without a deadline; the requests' own limits normally end them first.
pub fn give_up_after(timeout: Duration, max_retries: u32) -> Duration {
    let attempts = max_retries.saturating_add(1);
    timeout
        .saturating_mul(attempts)
        .saturating_add(BACKOFF_MAX.saturating_mul(max_retries))
        .saturating_add(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(10, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX, 0.0), BACKOFF_MAX / 2);
        for j in [0.0, 0.3, 0.99] {
            let d = backoff(2, j);
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
        }
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let ra = Some(Duration::from_secs(1));
        assert_eq!(retry_delay(1, 1.0, ra), Duration::from_secs(1));
        assert_eq!(
            retry_delay(1, 1.0, Some(Duration::from_millis(10))),
            Duration::from_millis(100)
        );
        assert_eq!(retry_delay(2, 1.0, None), Duration::from_millis(200));
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // 2015-10-21 07:28:00 GMT is now; 07:28:05 is 5 s away.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn retries_never_start_past_the_deadline() {
        assert!(retry_fits(Duration::from_millis(100), None));
        assert!(retry_fits(
            Duration::from_millis(100),
            Some(Duration::from_millis(120))
        ));
        assert!(!retry_fits(
            Duration::from_millis(100),
            Some(Duration::from_millis(110))
        ));
    }

    #[test]
    fn non_live_fragments_give_up_after_every_attempt() {
        let t = Duration::from_secs(8);
        assert_eq!(give_up_after(t, 0), Duration::from_secs(9));
        assert_eq!(give_up_after(t, 2), Duration::from_secs(8 * 3 + 2 * 2 + 1));
        assert_eq!(give_up_after(Duration::MAX, 10), Duration::MAX);
    }

    #[test]
    fn live_deadline_adds_latencies_minus_margin() {
        let s = 1_000_000_000;
        // Fragment at 10 s, chunker reports 1 s, own 5 s, 200 ms margin.
        assert_eq!(live_deadline(10 * s, s, 5 * s, s / 5), 15 * s + 800_000_000);
        // The margin never eats more than half of the own budget.
        assert_eq!(live_deadline(0, 0, s / 10, s), s / 20);
        assert_eq!(live_deadline(u64::MAX, s, s, 0), u64::MAX);
    }
}
