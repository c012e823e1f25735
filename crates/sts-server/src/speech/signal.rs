//! The request audio as the recogniser needs it, and the fast no-speech check.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

/// Rate the recogniser works at.
pub const ASR_RATE: u32 = 16_000;
/// Input rates accepted by [`to_asr_input`].
pub const RATES: std::ops::RangeInclusive<u32> = 8_000..=192_000;
/// Input channel counts accepted by [`to_asr_input`].
pub const CHANNELS: std::ops::RangeInclusive<u32> = 1..=8;
/// Window of the no-speech check.
pub const SPEECH_WINDOW_MS: u32 = 20;
/// Level a window must exceed to count as speech, in dBFS (RMS over the window, all
/// channels). Speech in a broadcast sits around −30 … −15 dBFS RMS in its loud windows (the
/// fixture's peak-normalised espeak-ng voice: about −20), while digital silence, AAC-coded
/// silence and a quiet studio stay below −60: −45 leaves 15 dB of margin on both sides, and a
/// fragment holding a single 20 ms window of a syllable above it still goes to recognition.
pub const SPEECH_THRESHOLD_DBFS: f64 = -45.0;
/// FFT resampler chunk (input frames per step).
const RESAMPLE_CHUNK: usize = 1024;

/// Interleaved S16LE bytes as samples.
pub fn samples_of(pcm: &[u8]) -> Vec<i16> {
    pcm.chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Samples as S16LE bytes.
pub fn bytes_of(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Whether any [`SPEECH_WINDOW_MS`] window of the interleaved S16LE `pcm` is louder than
/// [`SPEECH_THRESHOLD_DBFS`] (a trailing partial window counts when at least 5 ms long).
pub fn has_speech(pcm: &[u8], rate: u32, channels: u32) -> bool {
    let channels = channels.max(1) as usize;
    let window = (rate as usize * SPEECH_WINDOW_MS as usize / 1000).max(1) * channels;
    let min_len = (rate as usize * 5 / 1000).max(1) * channels;
    let threshold = f64::from(i16::MAX) * 10f64.powf(SPEECH_THRESHOLD_DBFS / 20.0);
    let threshold_sq = threshold * threshold;
    let samples = samples_of(pcm);
    samples
        .chunks(window)
        .filter(|w| w.len() >= min_len.min(window))
        .any(|w| {
            let energy: f64 = w.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
            energy / w.len() as f64 > threshold_sq
        })
}

/// Downmixes interleaved S16LE `pcm` (`rate` Hz, `channels`) to mono and resamples it to
/// [`ASR_RATE`] with rubato's FFT resampler.
pub fn to_asr_input(pcm: &[u8], rate: u32, channels: u32) -> Result<Vec<i16>, String> {
    if !RATES.contains(&rate) {
        return Err(format!(
            "sample_rate_hz {rate} is outside {}..={} Hz",
            RATES.start(),
            RATES.end()
        ));
    }
    if !CHANNELS.contains(&channels) {
        return Err(format!(
            "channels {channels} is outside {}..={}",
            CHANNELS.start(),
            CHANNELS.end()
        ));
    }
    let ch = channels as usize;
    let scale = 1.0 / (f32::from(i16::MAX) * channels as f32);
    let mono: Vec<f32> = pcm
        .chunks_exact(2 * ch)
        .map(|frame| {
            frame
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))
                .sum::<f32>()
                * scale
        })
        .collect();
    if rate == ASR_RATE || mono.is_empty() {
        return Ok(mono.iter().map(|&s| to_i16(s)).collect());
    }
    let mut resampler = Fft::<f32>::new(
        rate as usize,
        ASR_RATE as usize,
        RESAMPLE_CHUNK,
        1,
        FixedSync::Input,
    )
    .map_err(|e| format!("cannot resample {rate} Hz to {ASR_RATE} Hz: {e}"))?;
    let input =
        InterleavedSlice::new(&mono, 1, mono.len()).map_err(|e| format!("resampler input: {e}"))?;
    let out = resampler
        .process_all(&input, mono.len(), None)
        .map_err(|e| format!("resampling failed: {e}"))?;
    Ok(out.take_data().into_iter().map(to_i16).collect())
}

fn to_i16(s: f32) -> i16 {
    (s * f32::from(i16::MAX))
        .round()
        .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, channels: u32, secs: f64, hz: f64, amp: f64) -> Vec<u8> {
        let frames = (f64::from(rate) * secs) as usize;
        let mut out = Vec::new();
        for i in 0..frames {
            let v = (std::f64::consts::TAU * hz * i as f64 / f64::from(rate)).sin() * amp;
            let s = (v * f64::from(i16::MAX)) as i16;
            for _ in 0..channels {
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn speech_check_threshold() {
        assert!(!has_speech(&vec![0u8; 48000 * 4], 48000, 2));
        // −60 dBFS RMS noise floor: a sine of amplitude 0.0014 (RMS −60 dBFS).
        assert!(!has_speech(&sine(48000, 2, 1.0, 300.0, 0.0014), 48000, 2));
        // −40 dBFS RMS: speech.
        assert!(has_speech(&sine(48000, 2, 1.0, 300.0, 0.0141), 48000, 2));
        // One loud 20 ms window in a second of silence is enough.
        let mut pcm = vec![0u8; 16000 * 2];
        let burst = sine(16000, 1, 0.02, 500.0, 0.3);
        pcm[16000..16000 + burst.len()].copy_from_slice(&burst);
        assert!(has_speech(&pcm, 16000, 1));
        assert!(!has_speech(&[], 16000, 1));
    }

    #[test]
    fn downmix_and_resample_keep_duration_and_pitch() {
        for (rate, channels) in [(48000, 2), (44100, 1), (8000, 1), (16000, 6), (192000, 8)] {
            let pcm = sine(rate, channels, 1.0, 440.0, 0.5);
            let out = to_asr_input(&pcm, rate, channels).unwrap();
            assert!(
                (out.len() as i64 - 16000).abs() <= 1,
                "{rate}/{channels}: {} samples",
                out.len()
            );
            let rising = out
                .windows(2)
                .skip(100)
                .take(15800)
                .filter(|w| w[0] < 0 && w[1] >= 0)
                .count();
            assert!((430..=445).contains(&rising), "{rate}/{channels}: {rising}");
            let peak = out
                .iter()
                .skip(100)
                .map(|s| s.unsigned_abs())
                .max()
                .unwrap();
            assert!(
                (15000..=17500).contains(&peak),
                "{rate}/{channels}: peak {peak}"
            );
        }
        // Channels are averaged: L = +x, R = −x cancel out.
        let pcm: Vec<u8> = (0..1600)
            .flat_map(|i| {
                let s = ((i % 50) as i16 - 25) * 400;
                [s, -s]
            })
            .flat_map(i16::to_le_bytes)
            .collect();
        assert!(
            to_asr_input(&pcm, 16000, 2)
                .unwrap()
                .iter()
                .all(|&s| s == 0)
        );
        assert!(to_asr_input(&[], 48000, 2).unwrap().is_empty());
        assert!(to_asr_input(&[0; 4], 4000, 1).unwrap_err().contains("4000"));
        assert!(
            to_asr_input(&[0; 18], 16000, 9)
                .unwrap_err()
                .contains("channels 9")
        );
    }
}
