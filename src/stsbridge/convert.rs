//! Converting interleaved S16 audio between sample rates and channel counts, without
//! GStreamer: the fragments sent at `wire-rate` / `wire-channels`, and the dubbed audio that a
//! real engine answers at its own format (22 050 Hz mono for espeak-ng, 16 or 24 kHz for many
//! neural voices) back to the stream's.
//!
//! Resampling is done by `rubato`: its FFT resampler where the two rates share a large common
//! divisor (every usual pair: 8, 11.025, 16, 22.05, 24, 32, 44.1, 48, 96 kHz …), its sinc
//! resampler otherwise. The output holds `round(frames × to / from)` frames, the resampler's
//! delay trimmed, so speech keeps its place and its length.
//!
//! Channels: equal counts are kept; a mono source is copied to every channel; anything else is
//! mixed to mono (the mean) and that is copied to every output channel. Dubbed speech is one
//! voice: it has no stereo image to keep.

use std::cell::RefCell;
use std::collections::HashMap;

use rubato::audioadapter_buffers::number_to_float::InterleavedNumbers;
use rubato::{
    Async, Fft, FixedAsync, FixedSync, Resampler, SincInterpolationParameters,
    SincInterpolationType, WindowFunction,
};

/// Lowest and highest rates accepted, as the element's caps.
pub const RATES: std::ops::RangeInclusive<u32> = 8000..=192_000;
/// Channel counts accepted, as the element's caps.
pub const CHANNELS: std::ops::RangeInclusive<u32> = 1..=8;

/// A sample rate and channel count of interleaved S16 audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Format {
    pub rate: u32,
    pub channels: u32,
}

impl Format {
    pub fn new(rate: u32, channels: u32) -> Self {
        Format { rate, channels }
    }

    /// Whether the element can take or give audio of this format.
    pub fn is_supported(self) -> bool {
        RATES.contains(&self.rate) && CHANNELS.contains(&self.channels)
    }
}

/// Why audio could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError(pub String);

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Chunk size the resamplers are built for, in input frames.
const CHUNK: usize = 1024;
/// Largest input block an FFT resampler may need for a rate pair (`rate / gcd`); beyond it the
/// sinc resampler is cheaper.
const MAX_FFT_BLOCK: u32 = 4096;
/// Resamplers kept per thread (request tasks run on the runtime's few worker threads).
const CACHE_SIZE: usize = 8;

/// Mono resamplers by (from, to) rate.
type Resamplers = HashMap<(u32, u32), Box<dyn Resampler<f32>>>;

thread_local! {
    static RESAMPLERS: RefCell<Resamplers> = RefCell::new(HashMap::new());
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Mixes interleaved `samples` from `from` channels to `to` channels (see the module doc).
pub fn mix_channels(samples: &[i16], from: usize, to: usize) -> Vec<i16> {
    let (from, to) = (from.max(1), to.max(1));
    if from == to {
        return samples.to_vec();
    }
    let frames = samples.len() / from;
    let mut out = Vec::with_capacity(frames * to);
    for frame in samples.chunks_exact(from) {
        let v = if from == 1 {
            frame[0]
        } else {
            let sum: i32 = frame.iter().map(|&s| i32::from(s)).sum();
            // Rounded to nearest: the mean of equal channels is that channel exactly.
            (f64::from(sum) / from as f64).round() as i16
        };
        out.extend(std::iter::repeat_n(v, to));
    }
    out
}

/// Resamples mono `samples` from `from` Hz to `to` Hz.
fn resample_mono(samples: &[i16], from: u32, to: u32) -> Result<Vec<i16>, ConvertError> {
    if samples.is_empty() {
        return Ok(Vec::new());
    }
    let frames = samples.len();
    let input = InterleavedNumbers::<&[i16], f32>::new(samples, 1, frames)
        .map_err(|e| ConvertError(format!("resampler input: {e}")))?;
    RESAMPLERS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(&(from, to)) {
            if cache.len() >= CACHE_SIZE {
                cache.clear();
            }
            cache.insert((from, to), new_resampler(from, to)?);
        }
        let r = cache.get_mut(&(from, to)).expect("just inserted");
        r.reset();
        let mut out = vec![0i16; r.process_all_needed_output_len(frames)];
        let len = out.len();
        let (_, produced) = {
            let mut output = InterleavedNumbers::<&mut [i16], f32>::new_mut(&mut out, 1, len)
                .map_err(|e| ConvertError(format!("resampler output: {e}")))?;
            r.process_all_into_buffer(&input, &mut output, frames, None)
                .map_err(|e| ConvertError(format!("resampling {from} → {to} Hz: {e}")))?
        };
        // rubato rounds the length up from a float ratio; the length is the exact one.
        let exact = (frames as u64 * u64::from(to) + u64::from(from) / 2) / u64::from(from);
        out.truncate(produced);
        out.resize(exact as usize, 0);
        Ok(out)
    })
}

fn new_resampler(from: u32, to: u32) -> Result<Box<dyn Resampler<f32>>, ConvertError> {
    let built = |e: rubato::ResamplerConstructionError| {
        ConvertError(format!("cannot resample {from} → {to} Hz: {e}"))
    };
    let g = gcd(from, to);
    if from / g <= MAX_FFT_BLOCK && to / g <= MAX_FFT_BLOCK {
        let r = Fft::<f32>::new(from as usize, to as usize, CHUNK, 1, FixedSync::Input)
            .map_err(built)?;
        return Ok(Box::new(r));
    }
    let params = SincInterpolationParameters {
        sinc_len: 128,
        f_cutoff: None,
        oversampling_factor: 128,
        interpolation: SincInterpolationType::Cubic,
        window: WindowFunction::BlackmanHarris2,
    };
    let r = Async::<f32>::new_sinc(
        f64::from(to) / f64::from(from),
        1.0,
        &params,
        CHUNK,
        1,
        FixedAsync::Input,
    )
    .map_err(built)?;
    Ok(Box::new(r))
}

/// Converts interleaved S16 `samples` of format `from` to format `to`. Returns the input
/// untouched when the formats are equal.
pub fn convert(samples: Vec<i16>, from: Format, to: Format) -> Result<Vec<i16>, ConvertError> {
    for (what, f) in [("source", from), ("target", to)] {
        if !f.is_supported() {
            return Err(ConvertError(format!(
                "{what} audio of {} Hz, {} channels is outside 8–192 kHz, 1–8 channels",
                f.rate, f.channels
            )));
        }
    }
    if from == to {
        return Ok(samples);
    }
    if from.rate == to.rate {
        return Ok(mix_channels(
            &samples,
            from.channels as usize,
            to.channels as usize,
        ));
    }
    // Resampled as one channel: several channels are mixed first (speech, see the module doc).
    let mono = if from.channels == 1 {
        samples
    } else {
        mix_channels(&samples, from.channels as usize, 1)
    };
    let resampled = resample_mono(&mono, from.rate, to.rate)?;
    Ok(if to.channels == 1 {
        resampled
    } else {
        mix_channels(&resampled, 1, to.channels as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f64, frames: usize, amp: f64) -> Vec<i16> {
        (0..frames)
            .map(|i| (amp * (std::f64::consts::TAU * hz * i as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    /// Amplitude of `hz` in mono `x` at `rate` (single-bin DFT), as a fraction of full scale.
    fn level_at(x: &[i16], rate: u32, hz: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in x.iter().enumerate() {
            let p = std::f64::consts::TAU * hz * i as f64 / f64::from(rate);
            re += f64::from(s) * p.cos();
            im += f64::from(s) * p.sin();
        }
        2.0 * (re * re + im * im).sqrt() / x.len() as f64 / 32768.0
    }

    #[test]
    fn equal_formats_are_untouched() {
        let x = vec![1i16, -2, 3, -4];
        let f = Format::new(48000, 2);
        assert_eq!(convert(x.clone(), f, f).unwrap(), x);
    }

    #[test]
    fn channels_are_mixed_and_spread() {
        // Stereo to mono: the mean.
        assert_eq!(mix_channels(&[100, 300, -100, -300], 2, 1), vec![200, -200]);
        // Mono to 3 channels: copies.
        assert_eq!(mix_channels(&[5, -6], 1, 3), vec![5, 5, 5, -6, -6, -6]);
        // 3 to 2: the mean of the three on both.
        assert_eq!(mix_channels(&[3, 6, 9], 3, 2), vec![6, 6]);
        let f = convert(
            vec![10, 20, 30, 40],
            Format::new(16000, 2),
            Format::new(16000, 1),
        );
        assert_eq!(f.unwrap(), vec![15, 35]);
    }

    #[test]
    fn espeak_mono_becomes_48_khz_stereo_with_its_length_and_pitch() {
        // 1 s of a 440 Hz tone at 22 050 Hz mono, as espeak-ng answers.
        let x = sine(22050, 440.0, 22050, 16000.0);
        let y = convert(x, Format::new(22050, 1), Format::new(48000, 2)).unwrap();
        assert_eq!(y.len(), 48000 * 2);
        let left: Vec<i16> = y.iter().step_by(2).copied().collect();
        assert_eq!(y[0], y[1]);
        // The tone keeps its frequency and level (away from the edges).
        let mid = &left[4800..43200];
        assert!((level_at(mid, 48000, 440.0) - 16000.0 / 32768.0).abs() < 0.01);
        assert!(level_at(mid, 48000, 480.0) < 0.01);
    }

    #[test]
    fn downsampling_to_the_wire_keeps_speech_band_and_drops_the_rest() {
        // 300 Hz (speech band) plus 12 kHz (above 8 kHz, the new Nyquist).
        let rate = 48000;
        let x: Vec<i16> = sine(rate, 300.0, 48000, 8000.0)
            .iter()
            .zip(sine(rate, 12000.0, 48000, 8000.0))
            .flat_map(|(a, b)| {
                let v = a + b;
                [v, v]
            })
            .collect();
        let y = convert(x, Format::new(48000, 2), Format::new(16000, 1)).unwrap();
        assert_eq!(y.len(), 16000);
        let mid = &y[1600..14400];
        assert!((level_at(mid, 16000, 300.0) - 8000.0 / 32768.0).abs() < 0.01);
        // 12 kHz would alias to 4 kHz: it must be filtered out.
        assert!(level_at(mid, 16000, 4000.0) < 0.005);
    }

    #[test]
    fn odd_rate_pairs_use_the_sinc_resampler() {
        let x = sine(44101, 1000.0, 44101, 10000.0);
        let y = convert(x, Format::new(44101, 1), Format::new(48000, 1)).unwrap();
        assert_eq!(y.len(), 48000);
        assert!((level_at(&y[4800..43200], 48000, 1000.0) - 10000.0 / 32768.0).abs() < 0.01);
    }

    #[test]
    fn unsupported_formats_are_refused() {
        let e = convert(vec![0; 4], Format::new(4000, 1), Format::new(48000, 1)).unwrap_err();
        assert!(e.0.contains("4000 Hz"), "{e}");
        assert!(convert(vec![0; 4], Format::new(48000, 9), Format::new(48000, 1)).is_err());
        assert!(
            convert(vec![], Format::new(16000, 1), Format::new(48000, 2))
                .unwrap()
                .is_empty()
        );
    }
}
