//! Writing `.npy` (NumPy array format v1.0, `<f4`, C order).
//!
//! Hand-written: the format is a magic string, a version, and a padded Python-dict header
//! followed by raw little-endian data; `npyz` would add a dependency for one function.

use std::io::{Seek, SeekFrom, Write};

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

/// Header length of a streamed `.npy`: room for any shape, fixed so that the real shape can be
/// written over the placeholder at the end.
const STREAM_HEADER: usize = 128;

/// A `(frames, channels)` `.npy` written chunk by chunk, its shape filled in at the end.
pub struct NpyStream<W: Write + Seek> {
    out: W,
    channels: usize,
    frames: u64,
}

impl<W: Write + Seek> NpyStream<W> {
    /// Starts an array of `channels` columns in `out`.
    pub fn new(mut out: W, channels: usize) -> Result<Self, AudioError> {
        out.write_all(&stream_header(0, channels)?).map_err(io)?;
        Ok(NpyStream {
            out,
            channels,
            frames: 0,
        })
    }

    /// Appends a chunk's frames as rows.
    pub fn write(&mut self, chunk: &Audio) -> Result<(), AudioError> {
        let mut bytes = Vec::with_capacity(chunk.frames() * self.channels * 4);
        for t in 0..chunk.frames() {
            for c in &chunk.channels {
                bytes.extend_from_slice(&c[t].to_le_bytes());
            }
        }
        self.out.write_all(&bytes).map_err(io)?;
        self.frames += chunk.frames() as u64;
        Ok(())
    }

    /// Writes the real shape into the header and flushes.
    pub fn finish(mut self) -> Result<(), AudioError> {
        let frames = usize::try_from(self.frames)
            .map_err(|_| AudioError::Invalid("too many frames for this platform".into()))?;
        let header = stream_header(frames, self.channels)?;
        self.out.seek(SeekFrom::Start(0)).map_err(io)?;
        self.out.write_all(&header).map_err(io)?;
        self.out.seek(SeekFrom::End(0)).map_err(io)?;
        self.out.flush().map_err(io)
    }
}

fn io(source: std::io::Error) -> AudioError {
    AudioError::Output {
        format: ".npy",
        source,
    }
}

/// The header of a `(frames, channels)` array, padded to [`STREAM_HEADER`] bytes.
fn stream_header(frames: usize, channels: usize) -> Result<Vec<u8>, AudioError> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({frames}, {channels}), }}");
    let unpadded = 10 + header.len() + 1;
    if unpadded > STREAM_HEADER {
        return Err(AudioError::Invalid(format!(
            "npy shape ({frames}, {channels}) is too long for a streamed header"
        )));
    }
    header.push_str(&" ".repeat(STREAM_HEADER - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(STREAM_HEADER);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&((STREAM_HEADER - 10) as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
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
