//! Sample-exact timestamps for a run of contiguous audio.
//!
//! A [`Timeline`] starts at a PTS and counts frames (samples per channel). Every timestamp it
//! hands out is `start + frames × 1 s / rate`, computed from the frame count with exact integer
//! arithmetic, so rounding never accumulates however many buffers go by. Durations are the
//! difference of two such timestamps, so consecutive buffers never overlap and never leave a gap.

const NS_PER_S: u64 = 1_000_000_000;

/// `a × b / c` rounded to nearest, without overflow for any `u64` inputs (saturating).
pub fn mul_div_round(a: u64, b: u64, c: u64) -> u64 {
    debug_assert!(c > 0);
    let r = (u128::from(a) * u128::from(b) + u128::from(c) / 2) / u128::from(c);
    u64::try_from(r).unwrap_or(u64::MAX)
}

/// Nanoseconds taken by `frames` at `rate` Hz, rounded to nearest.
pub fn frames_to_ns(frames: u64, rate: u32) -> u64 {
    mul_div_round(frames, NS_PER_S, u64::from(rate))
}

/// Frames covering `ns` nanoseconds at `rate` Hz, rounded to nearest.
pub fn ns_to_frames(ns: u64, rate: u32) -> u64 {
    mul_div_round(ns, u64::from(rate), NS_PER_S)
}

/// Position of one output buffer on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub pts: u64,
    pub duration: u64,
    /// Sample offset of the first frame (`pts × rate`, as GStreamer audio elements count).
    pub offset: u64,
    pub offset_end: u64,
}

/// Contiguous audio starting at `start_pts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    rate: u32,
    start_pts: u64,
    start_offset: u64,
    /// Frames received since `start_pts` (input side).
    frames_in: u64,
    /// Frames handed out since `start_pts` (output side).
    frames_out: u64,
}

impl Timeline {
    pub fn new(start_pts: u64, rate: u32) -> Self {
        assert!(rate > 0, "rate must be positive");
        Timeline {
            rate,
            start_pts,
            start_offset: ns_to_frames(start_pts, rate),
            frames_in: 0,
            frames_out: 0,
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn start_pts(&self) -> u64 {
        self.start_pts
    }

    pub fn frames_in(&self) -> u64 {
        self.frames_in
    }

    pub fn frames_out(&self) -> u64 {
        self.frames_out
    }

    /// Timestamp of the frame `frames` after the start.
    pub fn pts_at(&self, frames: u64) -> u64 {
        self.start_pts
            .saturating_add(frames_to_ns(frames, self.rate))
    }

    /// Where the next input buffer should start if the stream is contiguous.
    pub fn expected_pts(&self) -> u64 {
        self.pts_at(self.frames_in)
    }

    /// True if an input buffer of `frames` at `pts` does not continue this timeline: it starts
    /// more than half its own duration away from where it should. Smaller jitter is absorbed.
    pub fn is_discont(&self, pts: u64, frames: u64) -> bool {
        let tolerance = frames_to_ns(frames, self.rate) / 2;
        self.expected_pts().abs_diff(pts) > tolerance
    }

    /// Records `frames` more input frames.
    pub fn advance_in(&mut self, frames: u64) {
        self.frames_in += frames;
    }

    /// Places the next `frames` output frames and advances the output side.
    pub fn take_out(&mut self, frames: u64) -> Placement {
        let pts = self.pts_at(self.frames_out);
        let end = self.pts_at(self.frames_out + frames);
        let offset = self.start_offset + self.frames_out;
        self.frames_out += frames;
        Placement {
            pts,
            duration: end - pts,
            offset,
            offset_end: offset + frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mul_div_is_exact_and_saturates() {
        assert_eq!(mul_div_round(48000, NS_PER_S, 48000), NS_PER_S);
        assert_eq!(mul_div_round(1, 1, 3), 0);
        assert_eq!(mul_div_round(2, 1, 3), 1);
        assert_eq!(mul_div_round(u64::MAX, u64::MAX, 1), u64::MAX);
        assert_eq!(frames_to_ns(1024, 44100), 23_219_955);
        assert_eq!(ns_to_frames(NS_PER_S, 22050), 22050);
    }

    #[test]
    fn placements_are_contiguous_and_exact() {
        let mut t = Timeline::new(5 * NS_PER_S, 44100);
        let mut expected_end = 5 * NS_PER_S;
        for _ in 0..10_000 {
            let p = t.take_out(1024);
            assert_eq!(p.pts, expected_end, "gap or overlap");
            expected_end = p.pts + p.duration;
            assert_eq!(p.offset_end - p.offset, 1024);
        }
        // 10 000 × 1024 frames at 44.1 kHz: computed from the count, not summed.
        assert_eq!(expected_end, 5 * NS_PER_S + frames_to_ns(10_240_000, 44100));
        assert_eq!(t.take_out(0).duration, 0);
    }

    #[test]
    fn offsets_follow_start_pts() {
        let mut t = Timeline::new(NS_PER_S, 48000);
        let p = t.take_out(480);
        assert_eq!((p.offset, p.offset_end), (48000, 48480));
    }

    #[test]
    fn discont_detection_tolerates_half_a_buffer() {
        let mut t = Timeline::new(0, 48000);
        t.advance_in(960); // 20 ms
        let expected = 20_000_000;
        assert!(!t.is_discont(expected, 960));
        assert!(!t.is_discont(expected + 9_999_999, 960));
        assert!(!t.is_discont(expected - 10_000_000, 960));
        assert!(t.is_discont(expected + 10_000_001, 960));
        assert!(t.is_discont(expected - 10_000_001, 960));
        assert!(t.is_discont(0, 960), "backwards jump");
    }
}
