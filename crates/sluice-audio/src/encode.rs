//! Encoding planar `f32` audio to WAV (hound) or FLAC (flacenc, pure Rust, so no libFLAC to
//! build or ship).
//!
//! Float to integer conversion clamps to [-1, 1], scales by 2^(bits-1), rounds half away from
//! zero (`f64::round`) and clamps to the integer range, so +1.0 becomes the largest integer
//! instead of overflowing and any integer sample decoded by [`crate::decode`] re-encodes to
//! itself at the same or a larger bit depth.

use std::io::{Cursor, Seek, Write};
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
    check_layout(audio)?;
    let mut bytes = Vec::with_capacity(64 + audio.frames() * audio.channel_count() * 4);
    let mut writer = StreamWriter::new(
        Cursor::new(&mut bytes),
        Output::Audio(format),
        audio.sample_rate,
        audio.channel_count(),
    )?;
    writer.write(audio)?;
    writer.finish()?;
    Ok(bytes)
}

fn check_layout(audio: &Audio) -> Result<(), AudioError> {
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
    Ok(())
}

/// What a [`StreamWriter`] writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    /// An audio file.
    Audio(AudioFormat),
    /// A `.npy` array of shape (frames, channels).
    Npy,
}

/// A file written chunk by chunk: the header first, with the lengths it needs patched in at
/// [`StreamWriter::finish`] (hence `Seek`), so memory is one chunk whatever the length. Pass a
/// buffered writer (`&mut BufWriter<File>`): samples are written one at a time.
pub struct StreamWriter<W: Write + Seek> {
    kind: Kind<W>,
    sample_rate: u32,
    channels: usize,
}

enum Kind<W: Write + Seek> {
    Wav(hound::WavWriter<W>, WavSample),
    Flac(Box<FlacStream<W>>),
    Npy(crate::npy::NpyStream<W>),
}

impl<W: Write + Seek> StreamWriter<W> {
    /// Starts a file of `channels` channels at `sample_rate` in `out`.
    pub fn new(
        out: W,
        output: Output,
        sample_rate: u32,
        channels: usize,
    ) -> Result<Self, AudioError> {
        if channels == 0 {
            return Err(AudioError::Invalid(
                "cannot encode audio with no channels".into(),
            ));
        }
        if sample_rate == 0 {
            return Err(AudioError::Invalid("cannot encode audio at 0 Hz".into()));
        }
        let kind = match output {
            Output::Audio(AudioFormat::Wav(sample)) => {
                Kind::Wav(wav_writer(out, sample, sample_rate, channels)?, sample)
            }
            Output::Audio(AudioFormat::Flac {
                bits: bits @ (16 | 24),
            }) => Kind::Flac(Box::new(FlacStream::new(out, bits, sample_rate, channels)?)),
            Output::Audio(AudioFormat::Flac { bits }) => {
                return Err(AudioError::Invalid(format!(
                    "FLAC output supports 16 or 24 bits per sample, not {bits}"
                )))
            }
            Output::Npy => Kind::Npy(crate::npy::NpyStream::new(out, channels)?),
        };
        Ok(StreamWriter {
            kind,
            sample_rate,
            channels,
        })
    }

    /// Appends a chunk (same rate and channels as the file).
    pub fn write(&mut self, chunk: &Audio) -> Result<(), AudioError> {
        check_layout(chunk)?;
        if chunk.sample_rate != self.sample_rate || chunk.channel_count() != self.channels {
            return Err(AudioError::Invalid(format!(
                "a chunk of {} channels at {} Hz written to a file of {} channels at {} Hz",
                chunk.channel_count(),
                chunk.sample_rate,
                self.channels,
                self.sample_rate
            )));
        }
        let wav = wav_error;
        match &mut self.kind {
            Kind::Wav(w, WavSample::F32) => {
                for x in interleaved(chunk) {
                    w.write_sample(x).map_err(wav)?;
                }
            }
            Kind::Wav(w, WavSample::I16) => {
                for x in interleaved(chunk) {
                    w.write_sample(to_int(x, 16) as i16).map_err(wav)?;
                }
            }
            Kind::Wav(w, sample) => {
                let bits = if *sample == WavSample::I24 { 24 } else { 32 };
                for x in interleaved(chunk) {
                    w.write_sample(to_int(x, bits)).map_err(wav)?;
                }
            }
            Kind::Flac(f) => f.write(chunk)?,
            Kind::Npy(n) => n.write(chunk)?,
        }
        Ok(())
    }

    /// Completes the file (lengths, checksums written into its header) and flushes it.
    pub fn finish(self) -> Result<(), AudioError> {
        match self.kind {
            Kind::Wav(w, _) => w.finalize().map_err(wav_error),
            Kind::Flac(f) => f.finish(),
            Kind::Npy(n) => n.finish(),
        }
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
    let y = x * scale;
    // `round` (half away from zero) without the libm call: y has at most 24 significant bits,
    // so y ± 0.5 is exact in f64 and truncating it rounds exactly as `round` does.
    (y + 0.5f64.copysign(y)).trunc().clamp(-scale, scale - 1.0) as i32
}

fn interleaved(audio: &Audio) -> impl Iterator<Item = f32> + '_ {
    (0..audio.frames()).flat_map(move |t| audio.channels.iter().map(move |c| c[t]))
}

fn wav_writer<W: Write + Seek>(
    out: W,
    sample: WavSample,
    sample_rate: u32,
    channels: usize,
) -> Result<hound::WavWriter<W>, AudioError> {
    let channels = u16::try_from(channels)
        .map_err(|_| AudioError::Invalid(format!("WAV cannot hold {channels} channels")))?;
    let (bits, sample_format) = match sample {
        WavSample::I16 => (16, hound::SampleFormat::Int),
        WavSample::I24 => (24, hound::SampleFormat::Int),
        WavSample::I32 => (32, hound::SampleFormat::Int),
        WavSample::F32 => (32, hound::SampleFormat::Float),
    };
    let spec = hound::WavSpec {
        channels,
        sample_rate,
        bits_per_sample: bits,
        sample_format,
    };
    hound::WavWriter::new(out, spec).map_err(wav_error)
}

/// FLAC written frame by frame: a STREAMINFO with placeholder totals first, each frame as soon as
/// its block is full, and the real STREAMINFO (length, MD5, frame sizes) written over the first
/// one at the end, as libFLAC does.
struct FlacStream<W: Write + Seek> {
    out: W,
    config: flacenc::error::Verified<flacenc::config::Encoder>,
    stream: flacenc::component::Stream,
    buf: (flacenc::source::FrameBuf, flacenc::source::Context),
    /// Interleaved integer samples of the block being filled.
    block: Vec<i32>,
    block_size: usize,
    channels: usize,
    bits: u32,
    frames: usize,
}

/// A WAV writer's error: its output's I/O failures apart from the rest.
fn wav_error(e: hound::Error) -> AudioError {
    match e {
        hound::Error::IoError(source) => AudioError::Output {
            format: "WAV",
            source,
        },
        other => AudioError::Encode(format!("WAV: {other}")),
    }
}

/// A FLAC output's I/O failure.
fn flac_output(source: std::io::Error) -> AudioError {
    AudioError::Output {
        format: "FLAC",
        source,
    }
}

fn flac_error(what: &str, e: &dyn std::fmt::Display) -> AudioError {
    AudioError::Encode(format!("FLAC {what}: {e}"))
}

impl<W: Write + Seek> FlacStream<W> {
    fn new(mut out: W, bits: u8, sample_rate: u32, channels: usize) -> Result<Self, AudioError> {
        let mut config = flacenc::config::Encoder::default();
        // Pipelines run one file per worker already; nested encoder threads would oversubscribe.
        config.multithread = false;
        // libFLAC's default (-5) order: flacenc's 10 costs a quarter more in its autocorrelation
        // (fused multiply-adds through libm on a baseline x86-64 build) for a file about 0.3 %
        // smaller.
        config.subframe_coding.qlpc.lpc_order = 8;
        let config = config
            .into_verified()
            .map_err(|(_, e)| flac_error("config", &e))?;
        let block_size = config.block_size;
        let stream =
            flacenc::component::Stream::new(sample_rate as usize, channels, usize::from(bits))
                .map_err(|e| flac_error("stream", &e))?;
        let buf = (
            flacenc::source::FrameBuf::with_size(channels, block_size)
                .map_err(|e| flac_error("buffer", &e))?,
            flacenc::source::Context::new(usize::from(bits), channels),
        );
        write_bits(&mut out, &stream)?;
        Ok(FlacStream {
            out,
            config,
            stream,
            buf,
            block: Vec::with_capacity(block_size * channels),
            block_size,
            channels,
            bits: u32::from(bits),
            frames: 0,
        })
    }

    fn write(&mut self, chunk: &Audio) -> Result<(), AudioError> {
        for x in interleaved(chunk) {
            self.block.push(to_int(x, self.bits));
            if self.block.len() == self.block_size * self.channels {
                self.flush_block()?;
            }
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<(), AudioError> {
        use flacenc::source::Fill;
        self.buf
            .fill_interleaved(&self.block)
            .map_err(|e| flac_error("input", &e))?;
        let number = self.buf.1.current_frame_number().unwrap_or(0);
        let frame = flacenc::encode_fixed_size_frame(
            &self.config,
            &self.buf.0,
            number,
            self.stream.stream_info(),
        )
        .map_err(|e| flac_error("encoder", &e))?;
        self.stream.stream_info_mut().update_frame_info(&frame);
        write_bits(&mut self.out, &frame)?;
        self.frames += self.block.len() / self.channels;
        self.block.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(), AudioError> {
        if !self.block.is_empty() {
            self.flush_block()?;
        }
        let info = self.stream.stream_info_mut();
        info.set_md5_digest(&self.buf.1.md5_digest());
        info.set_total_samples(self.frames);
        // flacenc counts the short last block in STREAMINFO's minimum block size, which FLAC
        // excludes and symphonia rejects below 16; a fixed-size stream states its one size, as
        // libFLAC writes it.
        info.set_block_sizes(self.block_size, self.block_size)
            .map_err(|e| flac_error("stream info", &e))?;
        let io = flac_output;
        self.out.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        write_bits(&mut self.out, &self.stream)?;
        self.out.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        self.out.flush().map_err(io)
    }
}

/// Writes a FLAC component (a frame, or a stream with no frames: `fLaC` and its STREAMINFO).
fn write_bits<W: Write>(out: &mut W, part: &impl BitRepr) -> Result<(), AudioError> {
    let mut sink = flacenc::bitsink::ByteSink::with_capacity(part.count_bits());
    part.write(&mut sink).map_err(|e| flac_error("bits", &e))?;
    out.write_all(sink.as_slice()).map_err(flac_output)
}
