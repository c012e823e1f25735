//! Building each output fragment without GStreamer: fitting the dubbed audio to the fragment's
//! sample count, the fallback signals, mixing the original under the dub, and smoothing the
//! seams where the output switches between dubbed and fallback audio.

/// What a fragment's output is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// The dubbed audio, with the original mixed under it at this linear gain (0 = off).
    Dub { original_gain: f32 },
    /// The original audio at this linear gain (1 = untouched: passthrough, bypass, `original`
    /// fallback; below 1: `ducked` fallback).
    Original { gain: f32 },
    /// Digital silence.
    Silence,
}

impl Signal {
    /// The sample this signal has at `i` for this fragment, if it can be computed from the
    /// input alone (everything except the dub).
    fn without_dub(self, input: &[i16], i: usize) -> Option<f32> {
        match self {
            Signal::Dub { .. } => None,
            Signal::Original { gain } => Some(f32::from(input[i]) * gain),
            Signal::Silence => Some(0.0),
        }
    }

    fn sample(self, input: &[i16], dub: Option<&[i16]>, i: usize) -> f32 {
        match self {
            Signal::Dub { original_gain } => {
                let d = dub.map_or(0.0, |d| f32::from(d[i]));
                if original_gain > 0.0 {
                    d + f32::from(input[i]) * original_gain
                } else {
                    d
                }
            }
            Signal::Original { gain } => f32::from(input[i]) * gain,
            Signal::Silence => 0.0,
        }
    }
}

/// Decibels to a linear amplitude factor.
pub fn db_to_gain(db: f64) -> f32 {
    10f64.powf(db / 20.0) as f32
}

/// What the previous fragment ended with, for the seam with the next one.
#[derive(Debug, Clone, Default)]
pub struct Seam {
    prev: Option<Signal>,
    last: Vec<f32>,
}

impl Seam {
    /// Forgets the previous fragment (flush, discontinuity, caps change): no smoothing against
    /// audio that is not adjacent.
    pub fn reset(&mut self) {
        self.prev = None;
        self.last.clear();
    }
}

fn to_i16(v: f32) -> i16 {
    v.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

/// Writes `signal` for a whole range, with copies where no arithmetic is needed.
fn fill(signal: Signal, input: &[i16], dub: Option<&[i16]>, out: &mut [i16]) {
    match (signal, dub) {
        (Signal::Original { gain: 1.0 }, _) => out.copy_from_slice(input),
        (Signal::Silence, _) => out.fill(0),
        (Signal::Dub { original_gain }, Some(d)) if original_gain <= 0.0 => out.copy_from_slice(d),
        (Signal::Dub { .. }, None) => out.fill(0),
        _ => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = to_i16(signal.sample(input, dub, i));
            }
        }
    }
}

/// Trims or zero-pads interleaved `dub` to exactly `frames` frames of `channels` channels.
/// Returns how many frames were added (positive) or removed (negative).
pub fn fit_length(dub: &mut Vec<i16>, frames: usize, channels: usize) -> i64 {
    let have = dub.len() / channels.max(1);
    dub.resize(frames * channels, 0);
    frames as i64 - have as i64
}

/// Renders one fragment into `out` (same length as `input`, interleaved, `channels` channels).
///
/// `dub` must already have the input's length when `signal` is [`Signal::Dub`]. At a change of
/// signal the first `crossfade` frames are smoothed: when the previous signal can be computed
/// for this fragment (original or silence) it is cross-faded into the new one; when it cannot
/// (the dub of a fragment that failed) the step between the previous output's last frame and
/// this fragment's first decays linearly to zero over the crossfade, so the waveform stays
/// continuous.
pub fn render(
    input: &[i16],
    channels: usize,
    signal: Signal,
    dub: Option<&[i16]>,
    crossfade: usize,
    seam: &mut Seam,
    out: &mut [i16],
) {
    let channels = channels.max(1);
    debug_assert_eq!(input.len(), out.len());
    let frames = input.len() / channels;
    let prev = seam.prev.filter(|p| *p != signal);
    let xf = if prev.is_some() && seam.last.len() == channels {
        crossfade.min(frames)
    } else {
        0
    };

    // The seam: the first `xf` frames, sample by sample.
    for f in 0..xf {
        for c in 0..channels {
            let i = f * channels + c;
            let mut v = signal.sample(input, dub, i);
            let w = (f + 1) as f32 / (xf + 1) as f32;
            if let (Some(Signal::Dub { original_gain: a }), Signal::Dub { original_gain: b }) =
                (prev, signal)
            {
                // The dub goes on (queued speech running into this fragment): only the level
                // of the original under it moves.
                let d = dub.map_or(0.0, |d| f32::from(d[i]));
                out[i] = to_i16(d + f32::from(input[i]) * (a * (1.0 - w) + b * w));
                continue;
            }
            match prev.and_then(|p| p.without_dub(input, i)) {
                Some(old) => v = old * (1.0 - w) + v * w,
                None => {
                    let first = signal.sample(input, dub, c);
                    v += (seam.last[c] - first) * (1.0 - w);
                }
            }
            out[i] = to_i16(v);
        }
    }
    // The rest: plain copies for the common signals.
    let from = xf * channels;
    fill(
        signal,
        &input[from..],
        dub.map(|d| &d[from..]),
        &mut out[from..],
    );

    seam.prev = Some(signal);
    if frames > 0 {
        seam.last.clear();
        let base = (frames - 1) * channels;
        seam.last
            .extend(out[base..base + channels].iter().map(|&s| f32::from(s)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(frames: usize, channels: usize, amp: f32, period: f32, phase: usize) -> Vec<i16> {
        (0..frames * channels)
            .map(|i| {
                let f = (i / channels + phase) as f32;
                (amp * (f * std::f32::consts::TAU / period).sin()) as i16
            })
            .collect()
    }

    fn max_step(a: &[i16], channels: usize) -> i32 {
        a.chunks(channels)
            .zip(a.chunks(channels).skip(1))
            .flat_map(|(x, y)| {
                x.iter()
                    .zip(y)
                    .map(|(p, q)| (i32::from(*p) - i32::from(*q)).abs())
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn fit_trims_and_pads() {
        let mut d = vec![1i16; 10 * 2];
        assert_eq!(fit_length(&mut d, 8, 2), -2);
        assert_eq!(d.len(), 16);
        assert_eq!(fit_length(&mut d, 12, 2), 4);
        assert_eq!(d.len(), 24);
        assert_eq!(&d[16..], &[0; 8]);
        assert_eq!(&d[..16], &[1; 16]);
    }

    #[test]
    fn identity_signals_are_exact() {
        let input = sine(480, 2, 12000.0, 37.0, 0);
        let mut out = vec![0i16; input.len()];
        let mut seam = Seam::default();
        for _ in 0..3 {
            render(
                &input,
                2,
                Signal::Original { gain: 1.0 },
                None,
                480,
                &mut seam,
                &mut out,
            );
            assert_eq!(out, input);
        }
        // Dub of the input itself (echo) is exact too, also after a dub fragment.
        let dub = Signal::Dub { original_gain: 0.0 };
        let mut seam = Seam::default();
        render(&input, 2, dub, Some(&input), 480, &mut seam, &mut out);
        render(&input, 2, dub, Some(&input), 480, &mut seam, &mut out);
        assert_eq!(out, input);
    }

    #[test]
    fn ducked_silence_and_original_mix() {
        let input = vec![1000i16, -2000, 30000, -30000];
        let dub = vec![100i16, 100, 10000, -10000];
        let mut out = vec![0i16; 4];
        let g = db_to_gain(-6.0206);
        render(
            &input,
            2,
            Signal::Original { gain: g },
            None,
            0,
            &mut Seam::default(),
            &mut out,
        );
        assert_eq!(out, vec![500, -1000, 15000, -15000]);
        render(
            &input,
            2,
            Signal::Silence,
            None,
            0,
            &mut Seam::default(),
            &mut out,
        );
        assert_eq!(out, vec![0; 4]);
        let s = Signal::Dub { original_gain: g };
        render(&input, 2, s, Some(&dub), 0, &mut Seam::default(), &mut out);
        // Mixed and clipped, never wrapped.
        assert_eq!(out, vec![600, -900, 25000, -25000]);
        let s = Signal::Dub { original_gain: 1.0 };
        render(&input, 2, s, Some(&dub), 0, &mut Seam::default(), &mut out);
        assert_eq!(out, vec![1100, -1900, 32767, -32768]);
    }

    #[test]
    fn fallback_to_dub_crossfades_from_the_original() {
        let ch = 2;
        let n = 4800;
        let a = sine(n, ch, 20000.0, 97.0, 0);
        let b = sine(n, ch, 20000.0, 97.0, n);
        // The dub: a different, unrelated waveform (phase-shifted).
        let dub = sine(n, ch, 20000.0, 41.0, 13);
        let mut seam = Seam::default();
        let mut out_a = vec![0i16; a.len()];
        let mut out_b = vec![0i16; b.len()];
        render(
            &a,
            ch,
            Signal::Original { gain: 1.0 },
            None,
            480,
            &mut seam,
            &mut out_a,
        );
        let s = Signal::Dub { original_gain: 0.0 };
        render(&b, ch, s, Some(&dub), 480, &mut seam, &mut out_b);
        let joined: Vec<i16> = out_a.iter().chain(&out_b).copied().collect();
        // Steps stay within what the two waveforms have on their own.
        let natural = max_step(&a, ch).max(max_step(&dub, ch));
        assert!(
            max_step(&joined, ch) <= natural + 2,
            "{}",
            max_step(&joined, ch)
        );
        // After the crossfade the dub is untouched.
        assert_eq!(&out_b[480 * ch..], &dub[480 * ch..]);

        // Without crossfade the seam is a click.
        let mut seam = Seam::default();
        render(
            &a,
            ch,
            Signal::Original { gain: 1.0 },
            None,
            0,
            &mut seam,
            &mut out_a,
        );
        render(&b, ch, s, Some(&dub), 0, &mut seam, &mut out_b);
        let joined: Vec<i16> = out_a.iter().chain(&out_b).copied().collect();
        assert!(max_step(&joined, ch) > natural * 3);
    }

    #[test]
    fn dub_to_fallback_step_decays() {
        let ch = 1;
        let n = 4800;
        // The dub ends at full scale, the original starts near the opposite extreme.
        let dub = vec![20000i16; n];
        let orig = vec![-15000i16; n];
        let mut seam = Seam::default();
        let mut out = vec![0i16; n];
        render(
            &orig,
            ch,
            Signal::Dub { original_gain: 0.0 },
            Some(&dub),
            480,
            &mut seam,
            &mut out,
        );
        render(
            &orig,
            ch,
            Signal::Original { gain: 1.0 },
            None,
            480,
            &mut seam,
            &mut out,
        );
        // Continuous: the first sample is next to the dub's last, then linear.
        assert!((i32::from(out[0]) - 20000).abs() < 100, "{}", out[0]);
        assert!(max_step(&out, 1) <= 35000 / 480 + 2);
        assert_eq!(&out[480..], &orig[480..]);
    }

    #[test]
    fn a_dub_that_goes_on_only_ramps_the_original_under_it() {
        let input = vec![1000i16; 100];
        let dub = sine(200, 1, 8000.0, 37.0, 0);
        let mut seam = Seam::default();
        let mut out = vec![0i16; 100];
        let a = Signal::Dub { original_gain: 0.0 };
        render(&input, 1, a, Some(&dub[..100]), 10, &mut seam, &mut out);
        let b = Signal::Dub { original_gain: 0.5 };
        render(&input, 1, b, Some(&dub[100..]), 10, &mut seam, &mut out);
        for (i, &o) in out.iter().enumerate() {
            let g = if i < 10 {
                0.5 * (i + 1) as f32 / 11.0
            } else {
                0.5
            };
            let want = f32::from(dub[100 + i]) + 1000.0 * g;
            assert!((f32::from(o) - want).abs() <= 1.0, "{i}: {o} vs {want}");
        }
    }

    #[test]
    fn reset_disables_smoothing() {
        let orig = vec![-15000i16; 100];
        let dub = vec![20000i16; 100];
        let mut seam = Seam::default();
        let mut out = vec![0i16; 100];
        render(
            &orig,
            1,
            Signal::Dub { original_gain: 0.0 },
            Some(&dub),
            48,
            &mut seam,
            &mut out,
        );
        seam.reset();
        render(
            &orig,
            1,
            Signal::Original { gain: 1.0 },
            None,
            48,
            &mut seam,
            &mut out,
        );
        assert_eq!(out, orig);
    }

    #[test]
    fn crossfade_longer_than_fragment_is_cut() {
        let a = vec![0i16; 10];
        let mut seam = Seam::default();
        let mut out = vec![0i16; 10];
        render(&a, 1, Signal::Silence, None, 480, &mut seam, &mut out);
        let b = vec![10000i16; 10];
        render(
            &b,
            1,
            Signal::Original { gain: 1.0 },
            None,
            480,
            &mut seam,
            &mut out,
        );
        assert!(out.windows(2).all(|w| w[0] <= w[1]));
        assert!(out[9] < 10000);
    }
}
