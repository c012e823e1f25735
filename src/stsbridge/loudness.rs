//! Loudness matching without GStreamer: each dub plays at the loudness of the speech it
//! replaces, as voice-over does, measured by EBU R128 (the `ebur128` crate).
//!
//! For every dubbed fragment the gated loudness of the fragment's original audio and of the
//! dub are measured (BS.1770 K-weighting, 400 ms blocks, absolute and relative gates); the
//! difference is the gain the dub needs. The applied gain follows it smoothed across fragments
//! (an exponential average, half of each step), within ±`max-gain`, and is lowered where the
//! dub would peak above −1 dBTP. A fragment whose original holds no gated block (a pause) or
//! whose dub is silent leaves the gain where it is: silence never pulls the level.

use ebur128::{EbuR128, Mode};

/// True-peak ceiling of the dub after gain, dBTP.
pub const TRUE_PEAK_CEILING_DB: f64 = -1.0;
/// Share of each new measurement in the smoothed gain.
const SMOOTHING: f64 = 0.5;
/// Below this sample peak (−4 dBFS) the true peak cannot reach the ceiling (inter-sample
/// peaks of band-limited audio stay within 3 dB of the samples): no true-peak measurement.
const SAFE_SAMPLE_PEAK: f64 = 0.631;

/// Decibels to a linear factor.
fn gain_of(db: f64) -> f64 {
    10f64.powf(db / 20.0)
}

/// The loudness matcher of one stream format.
pub struct Matcher {
    channels: u32,
    rate: u32,
    meter: EbuR128,
    peak: EbuR128,
    /// The smoothed gain, dB; `None` until a first dub had a reference.
    gain_db: Option<f64>,
    /// The gain last applied to a dub with sound (after the true-peak limit), dB.
    applied_db: f64,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("channels", &self.channels)
            .field("rate", &self.rate)
            .field("gain_db", &self.gain_db)
            .finish_non_exhaustive()
    }
}

impl Matcher {
    /// `None` for a format the meter cannot take.
    pub fn new(rate: u32, channels: u32) -> Option<Matcher> {
        Some(Matcher {
            channels,
            rate,
            meter: EbuR128::new(channels, rate, Mode::I).ok()?,
            peak: EbuR128::new(channels, rate, Mode::TRUE_PEAK).ok()?,
            gain_db: None,
            applied_db: 0.0,
        })
    }

    pub fn format(&self) -> (u32, u32) {
        (self.rate, self.channels)
    }

    /// The smoothed gain, dB (0 until a dub was matched).
    pub fn gain_db(&self) -> f64 {
        self.gain_db.unwrap_or(0.0)
    }

    /// The gain applied to the last dub that had sound, true-peak limit included, dB.
    pub fn applied_db(&self) -> f64 {
        self.applied_db
    }

    /// Gated loudness of a clip, LUFS; `None` when no block passes the gates.
    pub fn loudness(&mut self, samples: &[i16]) -> Option<f64> {
        self.meter.reset();
        self.meter.add_frames_i16(samples).ok()?;
        let l = self.meter.loudness_global().ok()?;
        l.is_finite().then_some(l)
    }

    fn true_peak(&mut self, samples: &[i16]) -> f64 {
        self.peak.reset();
        if self.peak.add_frames_i16(samples).is_err() {
            return 1.0;
        }
        (0..self.channels)
            .filter_map(|c| self.peak.true_peak(c).ok())
            .fold(0.0, f64::max)
    }

    /// Brings `dub` to the loudness of `original` (the fragment it replaces): updates the
    /// smoothed gain, applies it within ±`max_gain_db` and under the true-peak ceiling.
    /// Returns the gain applied, dB.
    pub fn apply(&mut self, original: &[i16], dub: &mut [i16], max_gain_db: f64) -> f64 {
        let Some(dub_lufs) = self.loudness(dub) else {
            return 0.0;
        };
        if let Some(orig_lufs) = self.loudness(original) {
            let wanted = (orig_lufs - dub_lufs).clamp(-max_gain_db, max_gain_db);
            let g = match self.gain_db {
                Some(g) => g + SMOOTHING * (wanted - g),
                None => wanted,
            };
            self.gain_db = Some(g);
        }
        let Some(mut db) = self.gain_db else {
            return 0.0;
        };
        let sample_peak = dub.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0) as f64 / 32768.0;
        if sample_peak * gain_of(db) > SAFE_SAMPLE_PEAK {
            let tp = self.true_peak(dub) * gain_of(db);
            let ceiling = gain_of(TRUE_PEAK_CEILING_DB);
            if tp > ceiling {
                db -= 20.0 * (tp / ceiling).log10();
            }
        }
        self.applied_db = db;
        if db != 0.0 {
            let k = gain_of(db) as f32;
            for s in dub.iter_mut() {
                *s = (f32::from(*s) * k).round().clamp(-32768.0, 32767.0) as i16;
            }
        }
        db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `secs` of a speech-like signal (a 220 Hz tone with harmonics under a 4 Hz syllable
    /// envelope) at `amp` of full scale, stereo 48 kHz.
    fn speech(secs: f64, amp: f64) -> Vec<i16> {
        let n = (48000.0 * secs) as usize;
        (0..n)
            .flat_map(|i| {
                let t = i as f64 / 48000.0;
                let env = (std::f64::consts::TAU * 4.0 * t).sin().abs();
                let v = (1..5)
                    .map(|h| {
                        (std::f64::consts::TAU * 220.0 * f64::from(h) * t).sin() / f64::from(h)
                    })
                    .sum::<f64>();
                let s = (amp * 32767.0 * env * v / 2.1) as i16;
                [s, s]
            })
            .collect()
    }

    #[test]
    fn a_louder_or_quieter_dub_ends_at_the_originals_loudness() {
        for offset_db in [10.0, -10.0] {
            let mut m = Matcher::new(48000, 2).unwrap();
            let original = speech(1.0, 0.1);
            let target = m.loudness(&original).unwrap();
            let mut last = 0.0;
            for _ in 0..4 {
                let mut dub = speech(1.3, 0.1 * gain_of(offset_db));
                m.apply(&original, &mut dub, 12.0);
                last = m.loudness(&dub).unwrap();
            }
            assert!(
                (last - target).abs() < 1.0,
                "{offset_db}: {last} vs {target}"
            );
            assert!((m.gain_db() + offset_db).abs() < 0.5, "{}", m.gain_db());
        }
    }

    #[test]
    fn the_gain_is_limited_and_the_true_peak_kept_under_the_ceiling() {
        let mut m = Matcher::new(48000, 2).unwrap();
        // The original 30 dB above the dub: only 12 dB are given.
        let original = speech(1.0, 0.5);
        let mut dub = speech(1.0, 0.5 * gain_of(-30.0));
        let db = m.apply(&original, &mut dub, 12.0);
        assert!((db - 12.0).abs() < 1e-9, "{db}");
        // A dub that would peak near full scale: the gain stops at -1 dBTP.
        let mut m = Matcher::new(48000, 2).unwrap();
        let probe = speech(1.0, 1.0);
        let peak = probe.iter().map(|s| s.unsigned_abs()).max().unwrap() as f64 / 32768.0;
        let loud = 0.97 / peak;
        let original = speech(1.0, loud);
        let mut dub = speech(1.0, loud * gain_of(-6.0));
        let db = m.apply(&original, &mut dub, 12.0);
        assert!(db < 6.0, "{db}");
        let tp = m.true_peak(&dub);
        assert!(20.0 * tp.log10() <= TRUE_PEAK_CEILING_DB + 0.05, "{tp}");
    }

    #[test]
    fn silent_originals_and_silent_dubs_leave_the_gain_alone() {
        let mut m = Matcher::new(48000, 2).unwrap();
        let original = speech(1.0, 0.1);
        let mut dub = speech(1.0, 0.1 * gain_of(6.0));
        m.apply(&original, &mut dub, 12.0);
        let g = m.gain_db();
        assert!((g + 6.0).abs() < 0.5);
        // A pause in the original: the dub keeps the last gain.
        let mut dub2 = speech(1.0, 0.1 * gain_of(6.0));
        let db = m.apply(&vec![0i16; 96000], &mut dub2, 12.0);
        assert_eq!(db, g);
        // A silent dub: untouched.
        let mut silent = vec![0i16; 96000];
        assert_eq!(m.apply(&original, &mut silent, 12.0), 0.0);
        assert_eq!(m.gain_db(), g);
        // An echo (the dub is the original) is left exactly as it is.
        let mut m = Matcher::new(48000, 2).unwrap();
        let mut echo = original.clone();
        assert_eq!(m.apply(&original, &mut echo, 12.0), 0.0);
        assert_eq!(echo, original);
    }
}
