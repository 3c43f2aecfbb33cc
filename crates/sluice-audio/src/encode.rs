//! Encoding planar `f32` audio to WAV (hound) or FLAC (flacenc, pure Rust, so no libFLAC to
//! build or ship).
//!
//! Float to integer conversion clamps to [-1, 1], scales by 2^(bits-1), rounds half away from
//! zero (`f64::round`) and clamps to the integer range, so +1.0 becomes the largest integer
//! instead of overflowing and any integer sample decoded by [`crate::decode`] re-encodes to
//! itself at the same or a larger bit depth.

use std::io::Cursor;
use std::str::FromStr;

use flacenc::component::BitRepr;
use flacenc::error::Verify;
use serde::{Deserialize, Serialize};

use crate::audio::{Audio, AudioError};

/// Sample type of a WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WavSample {
    /// 16-bit integer PCM.
    I16,
    /// 24-bit integer PCM.
    I24,
    /// 32-bit integer PCM.
    I32,
    /// 32-bit IEEE float, written unclipped (float WAV may carry values beyond ±1).
    F32,
}

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AudioFormat {
    /// RIFF WAVE with the given sample type.
    Wav(WavSample),
    /// FLAC with 16 or 24 bits per sample.
    Flac {
        /// Bits per sample: 16 or 24.
        bits: u8,
    },
}

const FORMAT_CHOICES: &str = "wav, wav16, wav24, wav32, wavf32, flac, flac16, flac24";

impl AudioFormat {
    /// File extension without the dot.
    pub fn extension(&self) -> &'static str {
        match self {
            Self::Wav(_) => "wav",
            Self::Flac { .. } => "flac",
        }
    }
}

impl FromStr for AudioFormat {
    type Err = AudioError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "wav" | "wav16" => Self::Wav(WavSample::I16),
            "wav24" => Self::Wav(WavSample::I24),
            "wav32" => Self::Wav(WavSample::I32),
            "wavf32" => Self::Wav(WavSample::F32),
            "flac" | "flac16" => Self::Flac { bits: 16 },
            "flac24" => Self::Flac { bits: 24 },
            _ => {
                return Err(AudioError::Invalid(format!(
                    "unknown audio format {s:?}; use one of {FORMAT_CHOICES}"
                )))
            }
        })
    }
}

impl std::fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Wav(WavSample::I16) => "wav16",
            Self::Wav(WavSample::I24) => "wav24",
            Self::Wav(WavSample::I32) => "wav32",
            Self::Wav(WavSample::F32) => "wavf32",
            Self::Flac { bits: 24 } => "flac24",
            Self::Flac { .. } => "flac16",
        })
    }
}

/// Encodes `audio` as a complete file in `format`.
pub fn encode(audio: &Audio, format: AudioFormat) -> Result<Vec<u8>, AudioError> {
    if audio.channel_count() == 0 {
        return Err(AudioError::Invalid(
            "cannot encode audio with no channels".into(),
        ));
    }
    if audio.sample_rate == 0 {
        return Err(AudioError::Invalid("cannot encode audio at 0 Hz".into()));
    }
    if let Some((i, c)) = audio
        .channels
        .iter()
        .enumerate()
        .find(|(_, c)| c.len() != audio.frames())
    {
        return Err(AudioError::Invalid(format!(
            "channel {i} has {} samples but channel 0 has {}",
            c.len(),
            audio.frames()
        )));
    }
    match format {
        AudioFormat::Wav(sample) => encode_wav(audio, sample),
        AudioFormat::Flac {
            bits: bits @ (16 | 24),
        } => encode_flac(audio, bits),
        AudioFormat::Flac { bits } => Err(AudioError::Invalid(format!(
            "FLAC output supports 16 or 24 bits per sample, not {bits}"
        ))),
    }
}

/// Converts one sample to a `bits`-bit integer (see the module doc for the rounding rule).
fn to_int(x: f32, bits: u32) -> i32 {
    let scale = f64::from(1u32 << (bits - 1));
    // NaN has no meaningful integer value; silence is the least harmful.
    let x = if x.is_nan() {
        0.0
    } else {
        f64::from(x).clamp(-1.0, 1.0)
    };
    (x * scale).round().clamp(-scale, scale - 1.0) as i32
}

fn interleaved(audio: &Audio) -> impl Iterator<Item = f32> + '_ {
    (0..audio.frames()).flat_map(move |t| audio.channels.iter().map(move |c| c[t]))
}

fn encode_wav(audio: &Audio, sample: WavSample) -> Result<Vec<u8>, AudioError> {
    let channels = u16::try_from(audio.channel_count()).map_err(|_| {
        AudioError::Invalid(format!(
            "WAV cannot hold {} channels",
            audio.channel_count()
        ))
    })?;
    let (bits, sample_format) = match sample {
        WavSample::I16 => (16, hound::SampleFormat::Int),
        WavSample::I24 => (24, hound::SampleFormat::Int),
        WavSample::I32 => (32, hound::SampleFormat::Int),
        WavSample::F32 => (32, hound::SampleFormat::Float),
    };
    let spec = hound::WavSpec {
        channels,
        sample_rate: audio.sample_rate,
        bits_per_sample: bits,
        sample_format,
    };
    let fail = |e: hound::Error| AudioError::Encode(format!("WAV: {e}"));
    let mut bytes = Vec::with_capacity(64 + audio.frames() * audio.channel_count() * 4);
    let mut writer = hound::WavWriter::new(Cursor::new(&mut bytes), spec).map_err(fail)?;
    match sample {
        WavSample::F32 => {
            for x in interleaved(audio) {
                writer.write_sample(x).map_err(fail)?;
            }
        }
        WavSample::I16 => {
            for x in interleaved(audio) {
                writer.write_sample(to_int(x, 16) as i16).map_err(fail)?;
            }
        }
        WavSample::I24 | WavSample::I32 => {
            for x in interleaved(audio) {
                writer
                    .write_sample(to_int(x, u32::from(bits)))
                    .map_err(fail)?;
            }
        }
    }
    writer.finalize().map_err(fail)?;
    Ok(bytes)
}

fn encode_flac(audio: &Audio, bits: u8) -> Result<Vec<u8>, AudioError> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| AudioError::Encode(format!("FLAC {what}: {e}"));
    let mut config = flacenc::config::Encoder::default();
    // Pipelines run one file per worker already; nested encoder threads would oversubscribe.
    config.multithread = false;
    let config = config
        .into_verified()
        .map_err(|(_, e)| fail("config", &e))?;
    let samples: Vec<i32> = interleaved(audio)
        .map(|x| to_int(x, u32::from(bits)))
        .collect();
    let source = flacenc::source::MemSource::from_samples(
        &samples,
        audio.channel_count(),
        usize::from(bits),
        audio.sample_rate as usize,
    );
    let mut stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
        .map_err(|e| fail("encoder", &e))?;
    // flacenc counts the short last block in STREAMINFO's minimum block size, which FLAC
    // excludes and symphonia rejects below 16; a fixed-size stream states its one size, as
    // libFLAC writes it.
    stream
        .stream_info_mut()
        .set_block_sizes(config.block_size, config.block_size)
        .map_err(|e| fail("stream info", &e))?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).map_err(|e| fail("output", &e))?;
    Ok(sink.into_inner())
}
