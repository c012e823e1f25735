//! Rendering of the dubbed audio (interleaved S16LE).

use crate::Mode;

/// Frequency of [`Mode::Tone`].
pub const TONE_HZ: f64 = 440.0;
/// Peak amplitude of [`Mode::Tone`], as a fraction of full scale.
pub const TONE_AMPLITUDE: f64 = 0.3;
/// Upper bound of one rendered answer, whatever the faults ask for.
const MAX_OUTPUT_BYTES: u64 = 256 << 20;

/// Shape of a block of interleaved S16LE audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub rate: u32,
    pub channels: u32,
    pub frames: u64,
}

impl Shape {
    /// The shape of the answer to `input` once `wrong_rate`, `wrong_channels` and
    /// `duration_factor` are applied. The duration is kept when only the rate changes.
    pub fn answer(input: Shape, rate: Option<u32>, channels: Option<u32>, factor: f64) -> Shape {
        let rate_out = rate.unwrap_or(input.rate);
        let channels_out = channels.unwrap_or(input.channels);
        let frames = if input.rate == 0 {
            0.0
        } else {
            input.frames as f64
                * factor.clamp(0.0, crate::faults::MAX_DURATION_FACTOR)
                * f64::from(rate_out)
                / f64::from(input.rate)
        };
        let max_frames = MAX_OUTPUT_BYTES / (2 * u64::from(channels_out.max(1)));
        Shape {
            rate: rate_out,
            channels: channels_out,
            // `as` saturates; NaN becomes 0.
            frames: (frames.round() as u64).min(max_frames),
        }
    }
}

/// Renders `out` for `mode` from the `input` audio (`pcm` of shape `input`).
///
/// Echo (and translate, whose `pcm` is the synthesised speech) copies input frames (nearest frame when the rate differs, channel `c % in_channels`
/// when the channel count differs) and pads with silence past the input's end.
pub fn render(mode: Mode, pcm: &[u8], input: Shape, out: Shape) -> Vec<u8> {
    let channels = out.channels as usize;
    let mut data = vec![0u8; out.frames as usize * channels * 2];
    if channels == 0 {
        return data;
    }
    match mode {
        Mode::Silence => {}
        Mode::Tone => {
            let amp = TONE_AMPLITUDE * f64::from(i16::MAX);
            let step = std::f64::consts::TAU * TONE_HZ / f64::from(out.rate.max(1));
            for (i, frame) in data.chunks_exact_mut(channels * 2).enumerate() {
                let s = ((step * i as f64).sin() * amp).round() as i16;
                for sample in frame.chunks_exact_mut(2) {
                    sample.copy_from_slice(&s.to_le_bytes());
                }
            }
        }
        Mode::Echo | Mode::Translate => {
            let in_ch = input.channels.max(1) as usize;
            let in_frames = (pcm.len() / (2 * in_ch)) as u64;
            for (i, frame) in data.chunks_exact_mut(channels * 2).enumerate() {
                let src = if out.rate == input.rate || out.rate == 0 {
                    i as u64
                } else {
                    i as u64 * u64::from(input.rate) / u64::from(out.rate)
                };
                if src >= in_frames {
                    break;
                }
                let base = src as usize * in_ch * 2;
                for (c, sample) in frame.chunks_exact_mut(2).enumerate() {
                    let at = base + (c % in_ch) * 2;
                    sample.copy_from_slice(&pcm[at..at + 2]);
                }
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(pcm: &[u8]) -> Vec<i16> {
        pcm.chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    #[test]
    fn answer_shape() {
        let input = Shape {
            rate: 48000,
            channels: 2,
            frames: 4800,
        };
        assert_eq!(Shape::answer(input, None, None, 1.0), input);
        let s = Shape::answer(input, Some(16000), Some(1), 1.0);
        assert_eq!((s.rate, s.channels, s.frames), (16000, 1, 1600));
        assert_eq!(Shape::answer(input, None, None, 1.3).frames, 6240);
        assert_eq!(Shape::answer(input, None, None, 0.7).frames, 3360);
        assert_eq!(Shape::answer(input, None, None, f64::NAN).frames, 0);
        let zero_rate = Shape { rate: 0, ..input };
        assert_eq!(Shape::answer(zero_rate, None, None, 1.0).frames, 0);
    }

    #[test]
    fn echo_maps_channels_rate_and_pads() {
        // Stereo, 4 frames: L = 1,2,3,4 ; R = -1,-2,-3,-4.
        let pcm: Vec<u8> = (1..=4i16)
            .flat_map(|i| [i, -i])
            .flat_map(i16::to_le_bytes)
            .collect();
        let input = Shape {
            rate: 8000,
            channels: 2,
            frames: 4,
        };
        assert_eq!(render(Mode::Echo, &pcm, input, input), pcm);
        let mono_half_rate = Shape {
            rate: 4000,
            channels: 1,
            frames: 2,
        };
        assert_eq!(
            samples(&render(Mode::Echo, &pcm, input, mono_half_rate)),
            [1, 3]
        );
        let longer = Shape {
            frames: 6,
            channels: 3,
            ..input
        };
        assert_eq!(
            samples(&render(Mode::Echo, &pcm, input, longer)),
            [1, -1, 1, 2, -2, 2, 3, -3, 3, 4, -4, 4, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn tone_and_silence() {
        let out = Shape {
            rate: 48000,
            channels: 2,
            frames: 48000,
        };
        let tone = samples(&render(Mode::Tone, &[], out, out));
        assert_eq!(tone.len(), 96000);
        let peak = tone.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((9700..=9831).contains(&peak), "{peak}");
        assert!(tone.chunks_exact(2).all(|f| f[0] == f[1]));
        let rising = tone
            .chunks_exact(2)
            .map(|f| f[0])
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] < 0 && w[1] >= 0)
            .count();
        assert!((439..=441).contains(&rising), "{rising}");
        assert!(render(Mode::Silence, &[], out, out).iter().all(|&b| b == 0));
        let none = Shape { channels: 0, ..out };
        assert!(render(Mode::Tone, &[], out, none).is_empty());
    }
}
