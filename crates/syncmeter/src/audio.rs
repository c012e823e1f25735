//! Beep detection: where does a short sine tone (1 kHz by default) start?
//!
//! 1. Coarse: 20 ms Hann windows every 5 ms. In each, the amplitude of the beep frequency
//!    (a single DFT bin, i.e. Goertzel) is compared with the window's RMS: for a pure tone
//!    `(amp/√2)/rms ≈ 1`, for speech, noise or a tone of another frequency (440 Hz is
//!    ~12 bins away and the Hann window's leakage there is negligible) it is small.
//!    Windows that are loud enough and tonal enough form runs; a run of the right length
//!    is a beep.
//! 2. Fine: the signal is demodulated at the beep frequency and averaged over a centred
//!    5 ms box, which gives the tone's amplitude envelope with a linear 5 ms ramp centred
//!    on the onset. Walking back from the plateau, the onset is where the envelope falls
//!    through half the plateau level (interpolated between samples). Half-level crossing
//!    ignores AAC pre-echo (much weaker than the tone) and stops before any earlier sound.

/// Parameters of [`detect_beeps`].
#[derive(Debug, Clone, PartialEq)]
pub struct BeepParams {
    /// Frequency of the beep, in Hz.
    pub freq_hz: f64,
    /// Minimum amplitude of the tone (1.0 = full scale).
    pub min_level: f32,
    /// Minimum ratio of the tone's RMS to the window's RMS (0..1).
    pub min_tonality: f32,
    /// Shortest and longest accepted beep, in seconds.
    pub min_len_s: f64,
    pub max_len_s: f64,
}

impl Default for BeepParams {
    fn default() -> Self {
        Self {
            freq_hz: 1000.0,
            min_level: 0.01,
            min_tonality: 0.7,
            min_len_s: 0.03,
            max_len_s: 2.0,
        }
    }
}

/// One detected beep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Beep {
    /// Onset time in seconds (`start_s` + sample position, sub-sample interpolated).
    pub onset_s: f64,
    /// Approximate end of the beep, in seconds.
    pub end_s: f64,
    /// Plateau amplitude of the tone (1.0 = full scale).
    pub level: f32,
}

/// Finds the beeps in mono `samples` at `rate` Hz whose first sample is at `start_s`.
pub fn detect_beeps(samples: &[f32], rate: u32, start_s: f64, p: &BeepParams) -> Vec<Beep> {
    if rate == 0
        || samples.is_empty()
        || p.freq_hz.is_nan()
        || p.freq_hz <= 0.0
        || p.freq_hz * 2.0 >= f64::from(rate)
    {
        return Vec::new();
    }
    let fs = f64::from(rate);
    let n = ((fs * 0.020).round() as usize).max(16);
    let hop = ((fs * 0.005).round() as usize).max(1);
    if samples.len() < n {
        return Vec::new();
    }
    let omega = 2.0 * std::f64::consts::PI * p.freq_hz / fs;

    // Hann-weighted carrier for one window.
    let w: Vec<f64> = (0..n)
        .map(|k| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * k as f64 / n as f64).cos())
        .collect();
    let wc: Vec<f64> = (0..n).map(|k| w[k] * (omega * k as f64).cos()).collect();
    let ws: Vec<f64> = (0..n).map(|k| w[k] * (omega * k as f64).sin()).collect();
    let sw: f64 = w.iter().sum();

    let windows = (samples.len() - n) / hop + 1;
    let mut detected = Vec::with_capacity(windows);
    for i in 0..windows {
        let x = &samples[i * hop..i * hop + n];
        let (mut re, mut im, mut e) = (0.0f64, 0.0f64, 0.0f64);
        for k in 0..n {
            let v = f64::from(x[k]);
            re += v * wc[k];
            im += v * ws[k];
            e += v * v * w[k];
        }
        let amp = 2.0 * (re * re + im * im).sqrt() / sw;
        let rms = (e / sw).sqrt();
        let tonality = if rms > 0.0 {
            amp / std::f64::consts::SQRT_2 / rms
        } else {
            0.0
        };
        detected.push(amp >= f64::from(p.min_level) && tonality >= f64::from(p.min_tonality));
    }

    // Runs of detected windows, bridging gaps of up to two windows.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, &d) in detected.iter().enumerate() {
        if !d {
            continue;
        }
        match runs.last_mut() {
            Some((_, last)) if i - *last <= 3 => *last = i,
            _ => runs.push((i, i)),
        }
    }

    let mut beeps = Vec::new();
    for (first, last) in runs {
        let span_s = ((last - first) * hop) as f64 / fs;
        if span_s < p.min_len_s || span_s > p.max_len_s {
            continue;
        }
        if let Some((onset, level)) = refine_onset(samples, fs, omega, first * hop, last * hop, n) {
            beeps.push(Beep {
                onset_s: start_s + onset / fs,
                end_s: start_s + (last * hop + n / 2) as f64 / fs,
                level,
            });
        }
    }
    beeps
}

/// Sample position (fractional) of the onset of the tone whose first detecting window
/// starts at `first` and last one at `last` (both sample indices); window length `n`.
fn refine_onset(
    x: &[f32],
    fs: f64,
    omega: f64,
    first: usize,
    last: usize,
    n: usize,
) -> Option<(f64, f32)> {
    let l = ((fs * 0.005).round() as usize).max(4);
    let half = l / 2;
    // The onset lies before `first + n` (that window holds tone), and the tone lasts at
    // least until `last`. Envelope index j is the box [j - half, j - half + l).
    let search_lo = first.saturating_sub((fs * 0.03) as usize).max(half);
    let plateau_lo = (first + n + half).min(x.len().saturating_sub(l));
    let plateau_hi = last
        .saturating_sub(half)
        .min(plateau_lo + (fs * 0.03) as usize)
        .max(plateau_lo + 1);
    let hi = (plateau_hi + half).min(x.len());
    if search_lo >= plateau_lo || plateau_lo + half >= hi {
        return None;
    }

    // Prefix sums of the demodulated signal over [base, hi).
    let base = search_lo - half;
    let mut pre_c = Vec::with_capacity(hi - base + 1);
    let mut pre_s = Vec::with_capacity(hi - base + 1);
    let (mut c, mut s) = (0.0f64, 0.0f64);
    pre_c.push(0.0);
    pre_s.push(0.0);
    for (k, &v) in x.iter().enumerate().take(hi).skip(base) {
        let ph = omega * k as f64;
        c += f64::from(v) * ph.cos();
        s += f64::from(v) * ph.sin();
        pre_c.push(c);
        pre_s.push(s);
    }
    let env = |j: usize| -> Option<f64> {
        let a = j.checked_sub(half)?.checked_sub(base)?;
        let b = a + l;
        if b >= pre_c.len() {
            return None;
        }
        let dc = pre_c[b] - pre_c[a];
        let ds = pre_s[b] - pre_s[a];
        Some(2.0 * (dc * dc + ds * ds).sqrt() / l as f64)
    };

    let mut plateau: Vec<f64> = (plateau_lo..plateau_hi).filter_map(env).collect();
    if plateau.is_empty() {
        return None;
    }
    plateau.sort_by(f64::total_cmp);
    let level = plateau[plateau.len() / 2];
    if level <= 0.0 {
        return None;
    }
    let thr = 0.5 * level;

    // Walk back from the plateau start to the half-level crossing.
    let mut j = plateau_lo;
    let mut above = env(j)?;
    if above < thr {
        // The plateau start is unusually low (e.g. a dip): move forward to the first
        // sample at or above half level, then cross backwards from there.
        while j < plateau_hi && above < thr {
            j += 1;
            above = env(j)?;
        }
        if above < thr {
            return None;
        }
    }
    while j > search_lo {
        let below = env(j - 1)?;
        if below < thr {
            let frac = if above > below {
                (thr - below) / (above - below)
            } else {
                0.0
            };
            return Some(((j - 1) as f64 + frac, level as f32));
        }
        above = below;
        j -= 1;
    }
    None
}
