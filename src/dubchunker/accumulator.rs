//! Where to cut the incoming audio into fragments (no GStreamer in here).
//!
//! The [`Accumulator`] is told how many frames arrive (and, in silence mode, their samples) and
//! answers with cut points: how many frames the next fragment holds. It never touches the audio
//! bytes themselves; the element keeps those in an adapter and takes exactly the frames a
//! [`Cut`] names, so the sum of fragment frames is the sum of input frames by construction.
//!
//! * Fixed mode: every fragment holds `frames` frames.
//! * Silence mode: once `max` frames are pending, the cut goes in the middle of the quietest
//!   20 ms window whose centre lies between `min` and `max` frames (candidates on a 10 ms grid).
//!   A window quieter than the threshold is a pause: the fragment ends between words. If no
//!   window is under the threshold the quietest one still wins (a lull beats a hard cut), and
//!   the cut is reported as forced.

use std::collections::VecDeque;

/// Windows whose mean square is within this ratio (0.5 dB) of the quietest tie with it.
const TIE_RATIO: f64 = 1.122;

/// How fragments are delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Boundary {
    Fixed {
        frames: u64,
    },
    Silence {
        min_frames: u64,
        max_frames: u64,
        /// dBFS (RMS over a window, relative to full scale); below it a window is a pause.
        threshold_db: f64,
    },
}

impl Boundary {
    /// The longest fragment this boundary can produce, in frames.
    pub fn max_frames(&self) -> u64 {
        match *self {
            Boundary::Fixed { frames } => frames,
            Boundary::Silence { max_frames, .. } => max_frames,
        }
    }
}

/// Why a fragment ended where it did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CutKind {
    /// Fixed mode: the fragment is full.
    Full,
    /// Silence mode: in a window under the threshold (its level in dBFS).
    Pause { level_db: f64 },
    /// Silence mode: no window under the threshold; cut at the quietest (or at `max` if the
    /// range holds no whole window).
    Forced { level_db: Option<f64> },
    /// Whatever was pending, on request (EOS, discontinuity, caps change…).
    Partial,
}

/// One fragment to emit: the next `frames` pending frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cut {
    pub frames: u64,
    /// Every frame of the fragment is silence filled in for a gap in the input.
    pub gap: bool,
    pub kind: CutKind,
}

/// Tracks pending frames and decides cut points.
#[derive(Debug)]
pub struct Accumulator {
    channels: usize,
    block_frames: u64,
    boundary: Boundary,
    /// Absolute frame counts since creation (or the last reset).
    total: u64,
    consumed: u64,
    /// Pending frames as runs of (frames, is_gap), oldest first.
    runs: VecDeque<(u64, bool)>,
    /// Silence mode: per 10 ms block, the sum over frames of the mean square sample (over
    /// channels). `blocks[0]` is block number `first_block`.
    blocks: VecDeque<f64>,
    first_block: u64,
    current_block: f64,
    /// Frames before this one were pushed without energy tracking (fixed mode).
    energy_from: u64,
}

impl Accumulator {
    pub fn new(rate: u32, channels: u32, boundary: Boundary) -> Self {
        assert!(rate > 0 && channels > 0);
        Accumulator {
            channels: channels as usize,
            block_frames: (u64::from(rate) / 100).max(1),
            boundary,
            total: 0,
            consumed: 0,
            runs: VecDeque::new(),
            blocks: VecDeque::new(),
            first_block: 0,
            current_block: 0.0,
            energy_from: 0,
        }
    }

    pub fn boundary(&self) -> Boundary {
        self.boundary
    }

    /// Changes the boundary; takes effect for the next cut.
    pub fn set_boundary(&mut self, boundary: Boundary) {
        self.boundary = boundary;
    }

    pub fn pending_frames(&self) -> u64 {
        self.total - self.consumed
    }

    /// Adds interleaved S16LE audio. `pcm.len()` must be a whole number of frames.
    pub fn push(&mut self, pcm: &[u8]) {
        let frame_bytes = 2 * self.channels;
        debug_assert_eq!(pcm.len() % frame_bytes, 0);
        let frames = (pcm.len() / frame_bytes) as u64;
        if frames == 0 {
            return;
        }
        if matches!(self.boundary, Boundary::Silence { .. }) {
            for frame in pcm.chunks_exact(frame_bytes) {
                let sum_sq: f64 = frame
                    .chunks_exact(2)
                    .map(|s| {
                        let v = f64::from(i16::from_le_bytes([s[0], s[1]]));
                        v * v
                    })
                    .sum();
                self.add_energy(sum_sq / self.channels as f64);
            }
        } else {
            self.total += frames;
            self.sync_blocks();
        }
        self.add_run(frames, false);
    }

    /// Adds `frames` of silence standing in for a gap in the input.
    pub fn push_gap(&mut self, frames: u64) {
        if frames == 0 {
            return;
        }
        if matches!(self.boundary, Boundary::Silence { .. }) {
            // Silence has no energy: whole blocks at once, no per-frame loop.
            let mut left = frames;
            while left > 0 {
                let room = self.block_frames - self.total % self.block_frames;
                let n = room.min(left);
                self.total += n;
                left -= n;
                if self.total.is_multiple_of(self.block_frames) {
                    self.close_block();
                }
            }
        } else {
            self.total += frames;
            self.sync_blocks();
        }
        self.add_run(frames, true);
    }

    /// The next full fragment, if enough audio is pending.
    pub fn next_cut(&mut self) -> Option<Cut> {
        let pending = self.pending_frames();
        let (frames, kind) = match self.boundary {
            Boundary::Fixed { frames } => {
                let frames = frames.max(1);
                if pending < frames {
                    return None;
                }
                (frames, CutKind::Full)
            }
            Boundary::Silence {
                min_frames,
                max_frames,
                threshold_db,
            } => {
                let max_frames = max_frames.max(1);
                if pending < max_frames {
                    return None;
                }
                self.choose_silence_cut(min_frames.min(max_frames), max_frames, threshold_db)
            }
        };
        Some(self.consume(frames, kind))
    }

    /// Everything pending as one (partial) fragment.
    pub fn take_partial(&mut self) -> Option<Cut> {
        let pending = self.pending_frames();
        (pending > 0).then(|| self.consume(pending, CutKind::Partial))
    }

    /// Forgets everything pending (flush).
    pub fn clear(&mut self) {
        let pending = self.pending_frames();
        if pending > 0 {
            self.consume(pending, CutKind::Partial);
        }
    }

    fn add_run(&mut self, frames: u64, gap: bool) {
        match self.runs.back_mut() {
            Some((n, g)) if *g == gap => *n += frames,
            _ => self.runs.push_back((frames, gap)),
        }
    }

    fn add_energy(&mut self, mean_sq: f64) {
        self.current_block += mean_sq;
        self.total += 1;
        if self.total.is_multiple_of(self.block_frames) {
            self.close_block();
        }
    }

    fn close_block(&mut self) {
        let index = self.total / self.block_frames - 1;
        let energy = std::mem::take(&mut self.current_block);
        if index * self.block_frames < self.energy_from {
            return; // Part of this block went by without energy tracking.
        }
        if self.blocks.is_empty() {
            self.first_block = index;
        }
        self.blocks.push_back(energy);
    }

    /// Fixed mode keeps no energy: forget the blocks, and only trust blocks that start after
    /// this point if silence mode comes back.
    fn sync_blocks(&mut self) {
        self.blocks.clear();
        self.current_block = 0.0;
        self.energy_from = self.total;
    }

    fn block_energy(&self, index: u64) -> Option<f64> {
        let i = index.checked_sub(self.first_block)?;
        self.blocks.get(usize::try_from(i).ok()?).copied()
    }

    fn choose_silence_cut(
        &self,
        min_frames: u64,
        max_frames: u64,
        threshold_db: f64,
    ) -> (u64, CutKind) {
        let b = self.block_frames;
        let lo = self.consumed + min_frames.max(1);
        let hi = self.consumed + max_frames;
        // Candidate cut c = k·b, centre of the window made of blocks k-1 and k.
        let mut candidates: Vec<(u64, f64)> = Vec::new();
        let mut k = lo.div_ceil(b).max(1);
        while k * b <= hi {
            if let (Some(e0), Some(e1)) = (self.block_energy(k - 1), self.block_energy(k)) {
                candidates.push((k * b, (e0 + e1) / (2 * b) as f64));
            }
            k += 1;
        }
        // Windows within 0.5 dB of the quietest are as good as it: take the middle one, the
        // centre of the pause rather than its edge.
        let min = candidates.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
        let tied: Vec<_> = candidates
            .iter()
            .filter(|c| c.1 <= min * TIE_RATIO)
            .collect();
        let best = tied.get(tied.len() / 2).copied().copied();
        match best {
            Some((cut, mean_sq)) => {
                let level_db = mean_sq_to_dbfs(mean_sq);
                let kind = if level_db < threshold_db {
                    CutKind::Pause { level_db }
                } else {
                    CutKind::Forced {
                        level_db: Some(level_db),
                    }
                };
                (cut - self.consumed, kind)
            }
            None => (max_frames, CutKind::Forced { level_db: None }),
        }
    }

    fn consume(&mut self, frames: u64, kind: CutKind) -> Cut {
        debug_assert!(frames <= self.pending_frames());
        self.consumed += frames;
        let mut left = frames;
        let mut gap = true;
        while left > 0 {
            let Some(front) = self.runs.front_mut() else {
                break;
            };
            gap &= front.1;
            if front.0 > left {
                front.0 -= left;
                left = 0;
            } else {
                left -= front.0;
                self.runs.pop_front();
            }
        }
        // Drop energy blocks that end before the new fragment start.
        let keep_from = self.consumed / self.block_frames;
        while self.first_block < keep_from && self.blocks.pop_front().is_some() {
            self.first_block += 1;
        }
        Cut { frames, gap, kind }
    }
}

/// Level in dBFS of a mean square S16 sample value.
pub fn mean_sq_to_dbfs(mean_sq: f64) -> f64 {
    if mean_sq <= 0.0 {
        return f64::NEG_INFINITY;
    }
    10.0 * (mean_sq / (32768.0 * 32768.0)).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(frames: usize, channels: usize, f: impl Fn(usize) -> i16) -> Vec<u8> {
        let mut v = Vec::with_capacity(frames * channels * 2);
        for i in 0..frames {
            let s = f(i).to_le_bytes();
            for _ in 0..channels {
                v.extend_from_slice(&s);
            }
        }
        v
    }

    fn drain(acc: &mut Accumulator) -> Vec<Cut> {
        std::iter::from_fn(|| acc.next_cut()).collect()
    }

    #[test]
    fn fixed_mode_cuts_exactly_and_keeps_every_frame() {
        let mut acc = Accumulator::new(48000, 2, Boundary::Fixed { frames: 48000 });
        let mut cuts = Vec::new();
        for i in 0..50 {
            acc.push(&pcm(960, 2, |_| 0));
            let c = drain(&mut acc);
            if i < 49 {
                assert!(c.is_empty(), "cut too early at push {i}");
            }
            cuts.extend(c);
        }
        assert_eq!(cuts.len(), 1);
        assert_eq!(cuts[0].frames, 48000);
        assert_eq!(cuts[0].kind, CutKind::Full);
        assert!(!cuts[0].gap);
        assert_eq!(acc.pending_frames(), 0);
        assert!(acc.take_partial().is_none());
    }

    #[test]
    fn odd_buffer_sizes_sum_exactly() {
        let mut acc = Accumulator::new(44100, 1, Boundary::Fixed { frames: 44100 });
        let mut out = 0;
        let mut n_cuts = 0;
        for i in 0..1000usize {
            let frames = 1 + (i * 7919) % 3000;
            acc.push(&pcm(frames, 1, |_| 1));
            for c in drain(&mut acc) {
                assert_eq!(c.frames, 44100);
                out += c.frames;
                n_cuts += 1;
            }
        }
        let input: u64 = (0..1000u64).map(|i| 1 + (i * 7919) % 3000).sum();
        out += acc.take_partial().map_or(0, |c| c.frames);
        assert_eq!(out, input);
        assert_eq!(n_cuts, input / 44100);
    }

    #[test]
    fn gap_runs_mark_only_all_gap_fragments() {
        let mut acc = Accumulator::new(8000, 1, Boundary::Fixed { frames: 800 });
        acc.push(&pcm(400, 1, |_| 5));
        acc.push_gap(400 + 800 + 100);
        let cuts = drain(&mut acc);
        assert_eq!(cuts.len(), 2);
        assert!(!cuts[0].gap, "half audio, half gap");
        assert!(cuts[1].gap);
        acc.push(&pcm(700, 1, |_| 5));
        let c = drain(&mut acc);
        assert_eq!(c.len(), 1);
        assert!(!c[0].gap);
        assert_eq!(acc.pending_frames(), 0);
    }

    /// Speech-like signal: loud with pauses of silence at known places.
    fn speech_with_pauses(rate: usize, seconds: usize, pauses: &[(f64, f64)]) -> Vec<u8> {
        pcm(rate * seconds, 1, |i| {
            let t = i as f64 / rate as f64;
            if pauses.iter().any(|&(a, b)| t >= a && t < b) {
                ((i % 7) as i16) - 3 // noise floor around -80 dBFS
            } else {
                ((t * 2.0 * std::f64::consts::PI * 220.0).sin() * 12000.0) as i16
            }
        })
    }

    #[test]
    fn silence_mode_cuts_inside_pauses() {
        let rate = 16000;
        let pauses = [(0.8, 0.95), (1.9, 2.1), (3.3, 3.4), (4.4, 4.6)];
        let data = speech_with_pauses(rate, 5, &pauses);
        let mut acc = Accumulator::new(
            rate as u32,
            1,
            Boundary::Silence {
                min_frames: rate as u64 / 2,
                max_frames: rate as u64 * 3 / 2,
                threshold_db: -40.0,
            },
        );
        let mut cuts = Vec::new();
        for chunk in data.chunks(2 * 320) {
            acc.push(chunk);
            cuts.extend(drain(&mut acc));
        }
        let mut pos = 0u64;
        for c in &cuts {
            pos += c.frames;
            let t = pos as f64 / rate as f64;
            assert!(
                pauses.iter().any(|&(a, b)| t > a && t < b),
                "cut at {t} s is not in a pause"
            );
            assert!(matches!(c.kind, CutKind::Pause { level_db } if level_db < -60.0));
            assert!(c.frames >= rate as u64 / 2 && c.frames <= rate as u64 * 3 / 2);
        }
        assert_eq!(cuts.len(), 4);
    }

    #[test]
    fn silence_mode_without_pause_is_forced_and_bounded() {
        let rate = 48000u32;
        let mut acc = Accumulator::new(
            rate,
            2,
            Boundary::Silence {
                min_frames: 24000,
                max_frames: 72000,
                threshold_db: -40.0,
            },
        );
        // Constant loud tone: no pause anywhere; every cut is forced and ≤ max.
        let data = pcm(rate as usize * 10, 2, |i| {
            ((i as f64 * 0.05).sin() * 20000.0) as i16
        });
        let mut total = 0;
        for chunk in data.chunks(4 * 1024) {
            acc.push(chunk);
            for c in drain(&mut acc) {
                assert!(matches!(c.kind, CutKind::Forced { .. }));
                assert!((24000..=72000).contains(&c.frames), "{}", c.frames);
                total += c.frames;
            }
        }
        total += acc.take_partial().unwrap().frames;
        assert_eq!(total, u64::from(rate) * 10);
    }

    #[test]
    fn silence_mode_prefers_the_quietest_window() {
        let rate = 8000usize;
        // Two dips: a shallow one at 0.7 s and a deeper one at 1.2 s, both within [0.5, 1.5].
        let data = pcm(rate * 2, 1, |i| {
            let t = i as f64 / rate as f64;
            let amp = if (0.68..0.72).contains(&t) {
                300.0
            } else if (1.18..1.22).contains(&t) {
                30.0
            } else {
                10000.0
            };
            ((t * 2.0 * std::f64::consts::PI * 300.0).sin() * amp) as i16
        });
        let mut acc = Accumulator::new(
            rate as u32,
            1,
            Boundary::Silence {
                min_frames: 4000,
                max_frames: 12000,
                threshold_db: -40.0,
            },
        );
        acc.push(&data);
        let c = acc.next_cut().unwrap();
        assert_eq!(c.frames, 9600, "cut in the middle of the deeper dip");
        assert!(matches!(c.kind, CutKind::Pause { .. }));
    }

    #[test]
    fn gaps_count_as_silence_in_silence_mode() {
        let rate = 8000u32;
        let mut acc = Accumulator::new(
            rate,
            1,
            Boundary::Silence {
                min_frames: 4000,
                max_frames: 12000,
                threshold_db: -40.0,
            },
        );
        acc.push(&pcm(7000, 1, |i| if i % 2 == 0 { 9000 } else { -9000 }));
        acc.push_gap(400);
        acc.push(&pcm(6000, 1, |i| if i % 2 == 0 { 9000 } else { -9000 }));
        let c = acc.next_cut().unwrap();
        assert_eq!(c.frames, 7200, "centre of the gap");
        assert!(matches!(c.kind, CutKind::Pause { level_db } if level_db.is_infinite()));
    }

    #[test]
    fn switching_modes_mid_stream_keeps_frames() {
        let mut acc = Accumulator::new(8000, 1, Boundary::Fixed { frames: 8000 });
        acc.push(&pcm(3333, 1, |_| 100));
        acc.set_boundary(Boundary::Silence {
            min_frames: 4000,
            max_frames: 8000,
            threshold_db: -40.0,
        });
        acc.push(&pcm(10000, 1, |_| 100));
        let mut total = 0;
        for c in drain(&mut acc) {
            assert!(c.frames <= 8000);
            total += c.frames;
        }
        total += acc.take_partial().map_or(0, |c| c.frames);
        assert_eq!(total, 13333);
    }

    #[test]
    fn min_above_max_is_clamped() {
        let mut acc = Accumulator::new(
            8000,
            1,
            Boundary::Silence {
                min_frames: 9000,
                max_frames: 4000,
                threshold_db: -40.0,
            },
        );
        acc.push(&pcm(8000, 1, |_| 0));
        assert_eq!(acc.next_cut().unwrap().frames, 4000);
    }

    #[test]
    fn clear_drops_pending() {
        let mut acc = Accumulator::new(8000, 1, Boundary::Fixed { frames: 800 });
        acc.push(&pcm(500, 1, |_| 0));
        acc.clear();
        assert_eq!(acc.pending_frames(), 0);
        acc.push(&pcm(800, 1, |_| 0));
        assert_eq!(acc.next_cut().unwrap().frames, 800);
    }
}
