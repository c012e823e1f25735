//! Packing 608 byte pairs for H.264: ATSC A/53 `cc_data`, the ITU-T T.35 "GA94" SEI message
//! that carries it, and where that SEI NAL unit goes in an access unit (avc length-prefixed or
//! Annex B byte-stream). No GStreamer here.
//!
//! The access unit's own NAL units are never touched: the SEI NAL unit is put before the first
//! coded slice (after any access unit delimiter, parameter sets and SEI already there, as
//! H.264 7.4.1.2.3 orders them).

use std::fmt;

use super::cea608::{Pair, with_parity};

/// `cc_data()` (ATSC A/53 Part 4) of 608 pairs for `field` (1 or 2): one `cc_type` 0 or 1
/// triple per pair, valid, with odd parity. With no pairs (a frame that has no 608 slot at
/// high frame rates), one triple marked not valid, so every frame still carries the service.
pub fn cc_data(field: u8, pairs: &[Pair]) -> Vec<u8> {
    let cc_type = if field == 2 { 1 } else { 0 };
    let count = pairs.len().clamp(1, 31);
    let mut out = Vec::with_capacity(3 + 3 * count);
    // process_em_data_flag 0, process_cc_data_flag 1, additional_data_flag 0, cc_count.
    out.push(0x40 | count as u8);
    out.push(0xff); // em_data
    if pairs.is_empty() {
        out.extend_from_slice(&[0xf8 | cc_type, 0x80, 0x80]);
    }
    for p in pairs.iter().take(31) {
        // marker_bits '11111', cc_valid 1, cc_type.
        out.push(0xfc | cc_type);
        out.push(with_parity(p[0]));
        out.push(with_parity(p[1]));
    }
    out.push(0xff); // marker_bits
    out
}

/// The SEI NAL unit (header included, emulation prevention applied) holding `cc_data` as
/// ATSC user data: `user_data_registered_itu_t_t35`, country 0xB5 (USA), provider 0x0031,
/// user identifier "GA94", `user_data_type_code` 3.
pub fn sei_nal(cc_data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + cc_data.len());
    payload.extend_from_slice(&[0xb5, 0x00, 0x31]);
    payload.extend_from_slice(b"GA94");
    payload.push(0x03);
    payload.extend_from_slice(cc_data);

    let mut rbsp = Vec::with_capacity(payload.len() + 4);
    rbsp.push(4); // payload type: user_data_registered_itu_t_t35
    let mut size = payload.len();
    while size >= 255 {
        rbsp.push(0xff);
        size -= 255;
    }
    rbsp.push(size as u8);
    rbsp.extend_from_slice(&payload);
    rbsp.push(0x80); // rbsp_trailing_bits

    let mut nal = Vec::with_capacity(rbsp.len() + 4);
    nal.push(0x06); // forbidden 0, nal_ref_idc 0, type 6 (SEI)
    let mut zeros = 0;
    for b in rbsp {
        if zeros >= 2 && b <= 3 {
            nal.push(0x03);
            zeros = 0;
        }
        nal.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    nal
}

/// How NAL units are delimited in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NalFraming {
    /// `avc`/`avc3`: each NAL unit after its big-endian length on this many bytes (1, 2 or 4).
    Length(usize),
    /// `byte-stream` (Annex B): start codes.
    StartCode,
}

impl NalFraming {
    /// `nal` framed for the stream (a 4-byte start code in byte-stream).
    pub fn frame(self, nal: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(nal.len() + 4);
        match self {
            NalFraming::Length(n) => {
                let len = (nal.len() as u64).to_be_bytes();
                out.extend_from_slice(&len[8 - n..]);
            }
            NalFraming::StartCode => out.extend_from_slice(&[0, 0, 0, 1]),
        }
        out.extend_from_slice(nal);
        out
    }

    /// The NAL length size of an `avcC` record (`codec_data`).
    pub fn from_avcc(avcc: &[u8]) -> Result<NalFraming, AuError> {
        if avcc.len() < 7 || avcc[0] != 1 {
            return Err(AuError::BadCodecData);
        }
        match (avcc[4] & 0x03) + 1 {
            3 => Err(AuError::BadCodecData),
            n => Ok(NalFraming::Length(n as usize)),
        }
    }
}

/// What is wrong with an access unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuError {
    /// A NAL length runs past the end of the buffer (wrong NAL length size?).
    Truncated { offset: usize },
    /// No coded slice (NAL type 1–5) in the access unit.
    NoSlice,
    /// codec_data is not an avcC record (version 1) with a NAL length size of 1, 2 or 4.
    BadCodecData,
}

impl fmt::Display for AuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuError::Truncated { offset } => write!(
                f,
                "NAL unit at byte {offset} runs past the end of the access unit (wrong NAL length size in codec_data?)"
            ),
            AuError::NoSlice => write!(f, "no coded slice in the access unit"),
            AuError::BadCodecData => write!(
                f,
                "codec_data is not an avcC record with a NAL length size of 1, 2 or 4"
            ),
        }
    }
}

impl std::error::Error for AuError {}

/// NAL units of an access unit: (offset of its framing, NAL type).
pub fn nal_units(au: &[u8], framing: NalFraming) -> Result<Vec<(usize, u8)>, AuError> {
    let mut out = Vec::new();
    match framing {
        NalFraming::Length(n) => {
            let mut off = 0;
            while off < au.len() {
                if off + n > au.len() {
                    return Err(AuError::Truncated { offset: off });
                }
                let len = au[off..off + n]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | *b as usize);
                let start = off + n;
                if len == 0 || start + len > au.len() {
                    return Err(AuError::Truncated { offset: off });
                }
                out.push((off, au[start] & 0x1f));
                off = start + len;
            }
        }
        NalFraming::StartCode => {
            let mut i = 0;
            while i + 3 <= au.len() {
                if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
                    let framing_start = if i > 0 && au[i - 1] == 0 { i - 1 } else { i };
                    if i + 3 < au.len() {
                        out.push((framing_start, au[i + 3] & 0x1f));
                    }
                    i += 3;
                } else {
                    i += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Where the caption SEI goes: the offset of the first coded slice's framing.
pub fn insertion_point(au: &[u8], framing: NalFraming) -> Result<usize, AuError> {
    nal_units(au, framing)?
        .into_iter()
        .find(|(_, t)| (1..=5).contains(t))
        .map(|(off, _)| off)
        .ok_or(AuError::NoSlice)
}

/// The access unit with `sei` (an unframed NAL unit) inserted: a new buffer, for tests and
/// callers without zero-copy buffers.
pub fn insert(au: &[u8], framing: NalFraming, sei: &[u8]) -> Result<Vec<u8>, AuError> {
    let at = insertion_point(au, framing)?;
    let framed = framing.frame(sei);
    let mut out = Vec::with_capacity(au.len() + framed.len());
    out.extend_from_slice(&au[..at]);
    out.extend_from_slice(&framed);
    out.extend_from_slice(&au[at..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cc_data_layout() {
        let d = cc_data(1, &[[0x14, 0x2f], [0x00, 0x00]]);
        assert_eq!(
            d,
            vec![0x42, 0xff, 0xfc, 0x94, 0x2f, 0xfc, 0x80, 0x80, 0xff]
        );
        let d2 = cc_data(2, &[[0x15, 0x2c]]);
        assert_eq!(d2, vec![0x41, 0xff, 0xfd, 0x15, 0x2c, 0xff]);
        let empty = cc_data(1, &[]);
        assert_eq!(empty, vec![0x41, 0xff, 0xf8, 0x80, 0x80, 0xff]);
    }

    #[test]
    fn sei_message_layout() {
        let cc = cc_data(1, &[[0x14, 0x20]]);
        let nal = sei_nal(&cc);
        assert_eq!(
            nal,
            vec![
                0x06, 0x04, 14, 0xb5, 0x00, 0x31, b'G', b'A', b'9', b'4', 0x03, 0x41, 0xff, 0xfc,
                0x94, 0x20, 0xff, 0x80
            ]
        );
    }

    #[test]
    fn emulation_prevention() {
        // A payload with 00 00 01 inside gets 00 00 03 01.
        let nal = sei_nal(&[0x00, 0x00, 0x01, 0x00, 0x00, 0x00]);
        let body = &nal[11..];
        assert_eq!(&body[..4], &[0x00, 0x00, 0x03, 0x01]);
        assert_eq!(&body[4..8], &[0x00, 0x00, 0x03, 0x00]);
        for w in nal.windows(3) {
            assert!(!(w[0] == 0 && w[1] == 0 && w[2] <= 2), "{nal:02x?}");
        }
    }

    #[test]
    fn long_payload_size_is_ff_coded() {
        let nal = sei_nal(&[0x11; 300]);
        assert_eq!(&nal[1..4], &[0x04, 0xff, 53]);
    }

    fn avc(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| NalFraming::Length(4).frame(n))
            .collect()
    }

    #[test]
    fn avc_insertion_after_aud_sps_pps_sei() {
        let au = avc(&[
            &[0x09, 0xf0],
            &[0x67, 1, 2],
            &[0x68, 3],
            &[0x06, 5, 0x80],
            &[0x65, 9, 9],
            &[0x65, 8],
        ]);
        let at = insertion_point(&au, NalFraming::Length(4)).unwrap();
        assert_eq!(at, 6 + 7 + 6 + 7);
        let sei = [0x06, 0x04, 0x01, 0xaa, 0x80];
        let out = insert(&au, NalFraming::Length(4), &sei).unwrap();
        assert_eq!(&out[..at], &au[..at]);
        assert_eq!(
            &out[at..at + 9],
            &[0, 0, 0, 5, 0x06, 0x04, 0x01, 0xaa, 0x80]
        );
        assert_eq!(&out[at + 9..], &au[at..]);
        let types: Vec<u8> = nal_units(&out, NalFraming::Length(4))
            .unwrap()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(types, vec![9, 7, 8, 6, 6, 5, 5]);
    }

    #[test]
    fn avc_two_byte_lengths() {
        let au: Vec<u8> = [&[0x41u8, 1, 2][..]]
            .iter()
            .flat_map(|n| NalFraming::Length(2).frame(n))
            .collect();
        assert_eq!(au, vec![0, 3, 0x41, 1, 2]);
        let out = insert(&au, NalFraming::Length(2), &[0x06, 0x80]).unwrap();
        assert_eq!(out, vec![0, 2, 0x06, 0x80, 0, 3, 0x41, 1, 2]);
    }

    #[test]
    fn byte_stream_insertion() {
        let au = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x67, 7, 0, 0, 1, 0x68, 8, 0, 0, 0, 1, 0x65, 1, 2,
        ];
        let at = insertion_point(&au, NalFraming::StartCode).unwrap();
        assert_eq!(at, 16);
        let out = insert(&au, NalFraming::StartCode, &[0x06, 0x80]).unwrap();
        assert_eq!(&out[..16], &au[..16]);
        assert_eq!(&out[16..22], &[0, 0, 0, 1, 0x06, 0x80]);
        assert_eq!(&out[22..], &au[16..]);
        // Three-byte start code before the slice.
        let au3 = [0, 0, 1, 0x41, 5, 6];
        assert_eq!(insertion_point(&au3, NalFraming::StartCode), Ok(0));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(
            insertion_point(&[0, 0, 0, 9, 0x65], NalFraming::Length(4)),
            Err(AuError::Truncated { offset: 0 })
        );
        assert_eq!(
            insertion_point(&avc(&[&[0x67, 1]]), NalFraming::Length(4)),
            Err(AuError::NoSlice)
        );
        assert_eq!(
            NalFraming::from_avcc(&[1, 0x4d, 0, 0x15, 0xff, 0xe1, 0]),
            Ok(NalFraming::Length(4))
        );
        assert_eq!(
            NalFraming::from_avcc(&[1, 0x4d, 0, 0x15, 0xfd, 0xe1, 0]),
            Ok(NalFraming::Length(2))
        );
        assert_eq!(NalFraming::from_avcc(&[0, 1]), Err(AuError::BadCodecData));
    }
}
