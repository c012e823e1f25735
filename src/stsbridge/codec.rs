//! Audio on the Socket.IO wire, without GStreamer: the fragments as `pcm_s16le`, `pcm_f32le` or
//! `wav`, and the answers in any of those or in `m4a` (AAC-LC in MP4) or ADTS AAC, decoded with
//! `symphonia` (WAV, MP4, AAC) into S16 samples at the answer's own format; the caller converts
//! them to the stream's.
//!
//! Why `wav` is the default wire format: the seeds' full STS service hands every format but
//! `pcm_f32le` to ffmpeg, which reads a WAV header (any rate, any channel count) but cannot
//! guess raw `pcm_s16le`; it takes `pcm_f32le` raw, as 16 kHz mono without looking at the
//! fields. So `wav` is the one format it reads correctly at every `wire-rate` and
//! `wire-channels`; `pcm_f32le` is right for it only at 16 kHz mono.

use std::io::Cursor;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::convert::Format;

/// The formats fragments are sent in (`wire-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    PcmS16le,
    PcmF32le,
    Wav,
}

impl WireFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WireFormat::PcmS16le => "pcm_s16le",
            WireFormat::PcmF32le => "pcm_f32le",
            WireFormat::Wav => "wav",
        }
    }
}

/// Encodes interleaved S16 `samples` of `format` as `wire`, in base64.
pub fn encode(samples: &[i16], format: Format, wire: WireFormat) -> String {
    match wire {
        WireFormat::PcmS16le => {
            let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
            STANDARD.encode(bytes)
        }
        WireFormat::PcmF32le => {
            let bytes: Vec<u8> = samples
                .iter()
                .flat_map(|&s| (f32::from(s) / 32768.0).to_le_bytes())
                .collect();
            STANDARD.encode(bytes)
        }
        WireFormat::Wav => {
            let spec = hound::WavSpec {
                channels: format.channels as u16,
                sample_rate: format.rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut out = Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
            {
                let mut w = hound::WavWriter::new(&mut out, spec).expect("in-memory WAV header");
                let mut w16 = w.get_i16_writer(samples.len() as u32);
                for &s in samples {
                    w16.write_sample(s);
                }
                w16.flush().expect("in-memory WAV data");
                w.finalize().expect("in-memory WAV");
            }
            STANDARD.encode(out.into_inner())
        }
    }
}

/// Decoded answer audio: interleaved S16 at its own rate and channel count.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub samples: Vec<i16>,
    pub format: Format,
}

/// Decodes an answer's audio. `format`, `rate` and `channels` are the JSON fields: raw PCM
/// needs them, containers carry their own (which win). At most `max_seconds` of audio are
/// decoded.
pub fn decode(
    format: &str,
    rate: u32,
    channels: u32,
    data_base64: &str,
    max_seconds: f64,
) -> Result<Decoded, String> {
    let bytes = STANDARD
        .decode(data_base64.as_bytes())
        .map_err(|e| format!("invalid base64: {e}"))?;
    let f = format.to_ascii_lowercase();
    let raw = Format::new(rate, channels);
    match f.as_str() {
        "pcm_s16le" | "s16le" => {
            check_raw(raw)?;
            if bytes.len() % (2 * channels as usize) != 0 {
                return Err(format!(
                    "{} bytes is not a whole number of {channels}-channel S16LE frames",
                    bytes.len()
                ));
            }
            let samples = bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            Ok(Decoded {
                samples,
                format: raw,
            })
        }
        "pcm_f32le" | "f32le" => {
            check_raw(raw)?;
            if bytes.len() % (4 * channels as usize) != 0 {
                return Err(format!(
                    "{} bytes is not a whole number of {channels}-channel F32LE frames",
                    bytes.len()
                ));
            }
            let samples = bytes
                .chunks_exact(4)
                .map(|b| f32_to_i16(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect();
            Ok(Decoded {
                samples,
                format: raw,
            })
        }
        "wav" => match pcm16_wav(&bytes) {
            Some(d) => Ok(d),
            // Float, 24-bit, …: symphonia reads them all.
            None => container(bytes, &f, max_seconds),
        },
        "m4a" | "mp4" | "aac" | "adts" => container(bytes, &f, max_seconds),
        other => Err(format!(
            "format {other:?} is not one of pcm_s16le, pcm_f32le, wav, m4a, aac"
        )),
    }
}

/// A 16-bit integer PCM WAV (what `wav` usually is, and what stsbridge sends): the header read
/// by hound, the samples copied at once (no per-sample decoding). `None` for anything else.
fn pcm16_wav(bytes: &[u8]) -> Option<Decoded> {
    let reader = hound::WavReader::new(Cursor::new(bytes)).ok()?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return None;
    }
    let samples = reader.len() as usize;
    // hound leaves the reader at the first sample of the data chunk.
    let at = reader.into_inner().position() as usize;
    let data = bytes.get(at..at.checked_add(samples.checked_mul(2)?)?)?;
    let format = Format::new(spec.sample_rate, u32::from(spec.channels));
    if !format.is_supported() || !samples.is_multiple_of(spec.channels.max(1) as usize) {
        return None;
    }
    let samples = data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Some(Decoded { samples, format })
}

fn check_raw(f: Format) -> Result<(), String> {
    if f.is_supported() {
        Ok(())
    } else {
        Err(format!(
            "{} Hz with {} channels: only 8–192 kHz and 1–8 channels are accepted",
            f.rate, f.channels
        ))
    }
}

/// Float to S16 the way `audioconvert` does it without dithering: scaled by 32768, rounded,
/// clamped (so S16 → F32 → S16 is exact).
fn f32_to_i16(v: f32) -> i16 {
    if v.is_nan() {
        return 0;
    }
    (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// WAV, MP4 (`m4a`) and ADTS AAC through symphonia's probe (the label only hints: the seeds'
/// worker sends ADTS labelled `m4a`).
fn container(bytes: Vec<u8>, label: &str, max_seconds: f64) -> Result<Decoded, String> {
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    hint.with_extension(match label {
        "adts" => "aac",
        l => l,
    });
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| format!("cannot read the {label} container: {e}"))?;
    let mut reader = probed.format;
    let track = reader
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| format!("no audio track in the {label} answer"))?;
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| format!("cannot decode the {label} answer: {e}"))?;
    let mut samples: Vec<i16> = Vec::new();
    let mut format: Option<Format> = None;
    let mut buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match reader.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(format!("reading the {label} answer: {e}")),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged packet: skip it, as players do.
            Err(SymphoniaError::DecodeError(_)) => continue,
            Err(e) => return Err(format!("decoding the {label} answer: {e}")),
        };
        let spec = *decoded.spec();
        let f = Format::new(spec.rate, spec.channels.count() as u32);
        if format.is_some_and(|g| g != f) {
            return Err(format!("the {label} answer changes format midway"));
        }
        format = Some(f);
        let b = buf.get_or_insert_with(|| SampleBuffer::new(decoded.capacity() as u64, spec));
        if b.capacity() < decoded.capacity() * spec.channels.count() {
            *b = SampleBuffer::new(decoded.capacity() as u64, spec);
        }
        b.copy_interleaved_ref(decoded);
        samples.extend(b.samples().iter().map(|&v| f32_to_i16(v)));
        if samples.len() as f64 > max_seconds * f64::from(f.rate) * f64::from(f.channels) {
            break;
        }
    }
    let format = format.ok_or_else(|| format!("the {label} answer holds no audio"))?;
    check_raw(format)?;
    Ok(Decoded { samples, format })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<i16> {
        (0..n).map(|i| ((i * 37) % 65536) as u16 as i16).collect()
    }

    #[test]
    fn every_wire_format_decodes_back_bit_exact() {
        let s = ramp(4800 * 2);
        let f = Format::new(48000, 2);
        for w in [WireFormat::PcmS16le, WireFormat::PcmF32le, WireFormat::Wav] {
            let b64 = encode(&s, f, w);
            let d = decode(w.as_str(), 48000, 2, &b64, 60.0).unwrap();
            assert_eq!(d.format, f, "{w:?}");
            assert_eq!(d.samples, s, "{w:?}");
        }
    }

    #[test]
    fn a_wav_header_wins_over_the_fields() {
        let s = ramp(2205);
        let b64 = encode(&s, Format::new(22050, 1), WireFormat::Wav);
        let d = decode("wav", 48000, 2, &b64, 60.0).unwrap();
        assert_eq!(d.format, Format::new(22050, 1));
        assert_eq!(d.samples, s);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for (fmt, data) in [
            ("m4a", STANDARD.encode(b"not an mp4 at all")),
            (
                "aac",
                STANDARD.encode([0xffu8, 0xf1, 0x50, 0x80, 0, 0x1f, 0xfc]),
            ),
            ("wav", STANDARD.encode(b"RIFF\x04\0\0\0WAVE")),
            ("pcm_s16le", STANDARD.encode([1u8, 2, 3])),
            ("pcm_f32le", STANDARD.encode([1u8, 2, 3, 4, 5])),
            ("opus", STANDARD.encode([0u8; 8])),
            ("pcm_s16le", "@@@".into()),
        ] {
            assert!(decode(fmt, 48000, 2, &data, 60.0).is_err(), "{fmt}");
        }
        assert!(decode("pcm_s16le", 4000, 1, "AAAA", 60.0).is_err());
    }

    /// AAC made by ffmpeg (installed by scripts/install-deps.sh), as MP4 and as ADTS.
    fn ffmpeg_aac(container: &str) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("codec-{}-{container}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(format!("a.{container}"));
        let ok = std::process::Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=22050:duration=1",
            ])
            .args(["-c:a", "aac", "-b:a", "64k"])
            .arg(&out)
            .status()
            .expect("ffmpeg runs (scripts/install-deps.sh installs it)");
        assert!(ok.success());
        let b = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        b
    }

    #[test]
    fn m4a_and_adts_answers_decode() {
        for (container, label) in [("m4a", "m4a"), ("aac", "aac"), ("aac", "m4a")] {
            let b64 = STANDARD.encode(ffmpeg_aac(container));
            let d = decode(label, 48000, 2, &b64, 60.0)
                .unwrap_or_else(|e| panic!("{container} as {label}: {e}"));
            assert_eq!(d.format, Format::new(22050, 1), "{container}");
            let secs = d.samples.len() as f64 / 22050.0;
            assert!((0.95..1.1).contains(&secs), "{container}: {secs} s");
            let peak = d.samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
            assert!(peak > 3000, "{container}: a tone, not silence ({peak})");
        }
    }

    #[test]
    fn f32_conversion_clamps_and_rounds() {
        assert_eq!(f32_to_i16(1.5), 32767);
        assert_eq!(f32_to_i16(-2.0), -32768);
        assert_eq!(f32_to_i16(f32::NAN), 0);
        assert_eq!(f32_to_i16(0.5), 16384);
    }
}
