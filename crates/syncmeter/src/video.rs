//! Flash detection: frames whose mean luma jumps far above the frames before them.

use crate::decode::Frame;

/// Parameters of [`detect_flashes`].
#[derive(Debug, Clone, PartialEq)]
pub struct FlashParams {
    /// Minimum rise of the mean luma (0..255) above the median of the previous frames.
    pub min_jump: f32,
    /// Minimum mean luma (0..255) of a flash frame.
    pub min_luma: f32,
    /// How many previous (non-flash) frames make the baseline.
    pub history: usize,
}

impl Default for FlashParams {
    fn default() -> Self {
        Self {
            min_jump: 60.0,
            min_luma: 150.0,
            history: 5,
        }
    }
}

/// Times (seconds) of the first frame of each flash. `frames` must be in time order.
/// A flash lasts while the luma stays at least half the jump above the baseline it rose
/// from; its later frames are not reported and do not enter the baseline.
pub fn detect_flashes(frames: &[Frame], p: &FlashParams) -> Vec<f64> {
    let mut flashes = Vec::new();
    let mut history: Vec<f32> = Vec::with_capacity(p.history.max(1) + 1);
    let mut in_flash: Option<f32> = None; // baseline the current flash rose from
    for f in frames {
        if let Some(base) = in_flash {
            if f.luma >= base + p.min_jump / 2.0 {
                continue;
            }
            in_flash = None;
        }
        if !history.is_empty() {
            let base = median(&history);
            if f.luma - base >= p.min_jump && f.luma >= p.min_luma {
                flashes.push(f.time_s);
                in_flash = Some(base);
                continue;
            }
        }
        history.push(f.luma);
        if history.len() > p.history.max(1) {
            history.remove(0);
        }
    }
    flashes
}

fn median(v: &[f32]) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    s[s.len() / 2]
}
