//! Writing `.npy` (NumPy array format v1.0, `<f4`, C order).
//!
//! Hand-written: the format is a magic string, a version, and a padded Python-dict header
//! followed by raw little-endian data; `npyz` would add a dependency for one function.

use crate::audio::{Audio, AudioError};

/// Header and data are aligned to this many bytes, as NumPy does since 1.x.
const ALIGN: usize = 64;

/// Encodes `data` (C order) as a `.npy` file of `shape`; the shape's product must match.
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>, AudioError> {
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| AudioError::Invalid(format!("npy shape {shape:?} overflows")))?;
    if count != data.len() {
        return Err(AudioError::Invalid(format!(
            "npy shape {shape:?} holds {count} values but {} were given",
            data.len()
        )));
    }
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a multiple of ALIGN.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(ALIGN) - unpadded));
    header.push('\n');
    let header_len = u16::try_from(header.len()).map_err(|_| {
        AudioError::Invalid(format!("npy shape {shape:?} is too long for a v1.0 header"))
    })?;
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Ok(out)
}

/// Encodes audio as a `(frames, channels)` array, i.e. interleaved, as NumPy audio tools expect.
pub fn encode_audio(audio: &Audio) -> Vec<u8> {
    let data: Vec<f32> = (0..audio.frames())
        .flat_map(|t| audio.channels.iter().map(move |c| c[t]))
        .collect();
    encode_f32(&[audio.frames(), audio.channel_count()], &data)
        .expect("an Audio value's shape always matches its sample count")
}
