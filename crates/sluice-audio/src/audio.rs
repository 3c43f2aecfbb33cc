//! The in-memory audio value every other module takes and returns, and the crate's error type.

use serde::{Deserialize, Serialize};

/// Decoded audio: planar `f32` samples in [-1, 1], every channel the same length.
///
/// Planar because every operation here (resampling, remixing, per-channel encoding) works one
/// channel at a time; interleaving happens only at the encoder boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audio {
    /// Frames per second.
    pub sample_rate: u32,
    /// One `Vec` per channel, all of `frames()` samples.
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    /// Number of frames (samples per channel); zero when there are no channels.
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Length in seconds; zero for a zero sample rate rather than a division by zero.
    pub fn duration_secs(&self) -> f64 {
        if self.sample_rate == 0 {
            return 0.0;
        }
        self.frames() as f64 / f64::from(self.sample_rate)
    }
}

/// Why audio could not be decoded, converted or encoded; messages are written for end users.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The input has zero bytes.
    #[error("empty input: the file has zero bytes")]
    Empty,
    /// No supported container or codec recognised the bytes (e.g. a text file named `.mp3`).
    #[error("not audio: {0}")]
    NotAudio(String),
    /// The container was recognised but its codec (or track layout) is not supported.
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    /// The stream is damaged: decoding failed part-way.
    #[error("corrupt audio: {0}")]
    Corrupt(String),
    /// The stream ends well before the length its header announces.
    #[error("truncated: the header promises {expected} frames, only {decoded} decode")]
    Truncated {
        /// Frames the header announces.
        expected: u64,
        /// Frames actually decoded.
        decoded: u64,
    },
    /// A caller passed a bad argument (zero rate, channel out of range, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The encoder failed.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// Writing the encoded bytes failed (a full disk, a closed pipe): unlike the audio, this
    /// may pass.
    #[error("encoding failed: {format} output: {source}")]
    Output {
        /// The format being written (`WAV`, `FLAC`, `.npy`).
        format: &'static str,
        /// The write's error.
        source: std::io::Error,
    },
}
