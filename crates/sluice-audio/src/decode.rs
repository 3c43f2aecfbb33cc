//! Decoding any supported container/codec (WAV, FLAC, MP3, Ogg Vorbis, MP4/AAC, ADPCM) to
//! planar `f32` with symphonia.
//!
//! Gapless mode is on so that MP3 encoder delay and padding (from the LAME/Xing header) are
//! removed; the two trims symphonia 0.5 leaves undone (the end of Ogg Vorbis, the MP4 edit list
//! of AAC) are applied here, so lossy files decode to the length the encoder was given.
//! Samples are converted with symphonia's own sample conversion (integer PCM divided by
//! 2^(bits-1)), so lossless sources decode bit-exactly to the values other tools report.

use std::io::{Cursor, ErrorKind};

use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Signal};
use symphonia::core::codecs::{
    CodecParameters, DecoderOptions, CODEC_TYPE_FLAC, CODEC_TYPE_NULL, CODEC_TYPE_VORBIS,
};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::audio::{Audio, AudioError};
use crate::edit_list;

/// Lower bound of the truncation tolerance, in frames: lossy codecs report their priming and
/// final-packet lengths loosely, so a shortfall below one typical packet is not damage.
const MIN_TRUNCATION_TOLERANCE: u64 = 2048;

/// Decodes a whole file held in memory; `extension` (without the dot) only hints the prober.
pub fn decode(bytes: &[u8], extension: Option<&str>) -> Result<Audio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext.trim_start_matches('.'));
    }
    // symphonia's media source must be 'static, hence the copy; it is small next to decoding.
    let source = MediaSourceStream::new(
        Box::new(Cursor::new(bytes.to_vec())),
        MediaSourceStreamOptions::default(),
    );
    let format_opts = FormatOptions {
        enable_gapless: true,
        ..FormatOptions::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&hint, source, &format_opts, &MetadataOptions::default())
        .map_err(|e| probe_error(e, bytes, extension))?;
    decode_first_audio_track(probed.format, bytes)
}

/// Maps a probe failure: "nothing recognised" is `NotAudio`; a recognised container whose
/// headers are broken or cut off is `Corrupt`.
fn probe_error(err: SymError, bytes: &[u8], extension: Option<&str>) -> AudioError {
    let named = extension.map_or(String::new(), |e| format!(" (file named .{e})"));
    match err {
        SymError::Unsupported(_) => AudioError::NotAudio(format!(
            "no supported audio format recognised{named}; supported: WAV, FLAC, MP3, Ogg Vorbis, MP4/M4A (AAC)"
        )),
        // The prober also reads a few bytes past a possible marker, so a short text file can end
        // here; only a file that starts like a container is a cut-off one.
        SymError::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => match container_magic(bytes) {
            Some(name) => AudioError::Corrupt(format!(
                "the {name} file ends inside its headers or index{named}: it is cut off or damaged"
            )),
            None => AudioError::NotAudio(format!(
                "no supported audio format recognised{named}; the data is too short or not audio"
            )),
        },
        other => AudioError::Corrupt(format!("damaged container{named}: {other}")),
    }
}

/// The container a file's first bytes announce, if any.
fn container_magic(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [b'R', b'I', b'F', b'F', ..] => Some("WAV"),
        [b'f', b'L', b'a', b'C', ..] => Some("FLAC"),
        [b'O', b'g', b'g', b'S', ..] => Some("Ogg"),
        [b'I', b'D', b'3', ..] => Some("MP3"),
        [_, _, _, _, b'f', b't', b'y', b'p', ..] => Some("MP4"),
        _ => None,
    }
}

fn decode_first_audio_track(
    mut format: Box<dyn FormatReader>,
    bytes: &[u8],
) -> Result<Audio, AudioError> {
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::Unsupported("the container holds no audio track".into()))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(_) => AudioError::Unsupported(format!(
                "the audio codec (symphonia codec id {}) is not supported",
                params.codec
            )),
            other => AudioError::Corrupt(format!("cannot set up the decoder: {other}")),
        })?;

    let mut out = PlanarSink::default();
    // A packet that fails to decode is only damage if more packets follow: a cut-off file's
    // partial last packet fails too, and the truncation check then names the real problem.
    let mut pending: Option<(u64, SymError)> = None;
    // symphonia's FLAC reader skips a frame it cannot read and resynchronises; the frame
    // headers' sample numbers reveal the hole.
    let check_gaps = params.codec == CODEC_TYPE_FLAC;
    let mut next_ts = 0u64;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => {
                return Err(AudioError::Unsupported(
                    "the stream changes its parameters mid-way (chained stream)".into(),
                ))
            }
            Err(e) => {
                if out.frames == 0 && pending.is_none() {
                    return Err(AudioError::Corrupt(format!(
                        "cannot read the first packet: {e}"
                    )));
                }
                pending.get_or_insert((out.frames, e));
                break;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        if let Some((at, err)) = pending.take() {
            return Err(corrupt_at(at, out.rate(&params), &err));
        }
        if check_gaps {
            if packet.ts() > next_ts {
                return Err(AudioError::Corrupt(format!(
                    "a damaged FLAC frame was skipped: {} frames missing at {}",
                    packet.ts() - next_ts,
                    position(next_ts, out.rate(&params)),
                )));
            }
            next_ts = packet.ts() + packet.dur();
        }
        match decoder.decode(&packet) {
            Ok(buf) => out.push(buf)?,
            Err(e @ (SymError::DecodeError(_) | SymError::IoError(_))) => {
                pending = Some((out.frames, e));
            }
            Err(SymError::ResetRequired) => {
                return Err(AudioError::Unsupported(
                    "the stream changes its parameters mid-way".into(),
                ))
            }
            Err(e) => return Err(corrupt_at(out.frames, out.rate(&params), &e)),
        }
    }

    let decoded = out.frames;
    if let Some(expected) = stated_frames(&params, out.rate(&params)) {
        let tolerance = params
            .max_frames_per_packet
            .unwrap_or(0)
            .max(MIN_TRUNCATION_TOLERANCE);
        if decoded.saturating_add(tolerance) < expected {
            return Err(AudioError::Truncated { expected, decoded });
        }
    }
    if let Some((at, err)) = pending {
        return Err(corrupt_at(at, out.rate(&params), &err));
    }
    let mut audio = out.finish(&params)?;
    trim_to_stated_length(&mut audio, &params, bytes, track_id);
    Ok(audio)
}

/// Applies the end (and start) trims symphonia 0.5 leaves undone, so lossy files decode to the
/// length the encoder was given.
fn trim_to_stated_length(audio: &mut Audio, params: &CodecParameters, bytes: &[u8], track: u32) {
    // Ogg Vorbis: symphonia reads the last granule position into `n_frames` but does not trim
    // the final packet to it (Symphonia issue #418); the granule position is the exact end.
    if params.codec == CODEC_TYPE_VORBIS {
        if let Some(n) = params.n_frames.and_then(|n| usize::try_from(n).ok()) {
            audio.channels.iter_mut().for_each(|c| c.truncate(n));
        }
    }
    // MP4: the edit list skips the encoder's priming and cuts the last frame's padding.
    if bytes.get(4..8) == Some(b"ftyp") {
        if let Some(edit) = edit_list::audio_edit(bytes, track as usize, audio.sample_rate) {
            let skip = usize::try_from(edit.skip).unwrap_or(usize::MAX);
            for c in &mut audio.channels {
                c.drain(..skip.min(c.len()));
                if let Some(keep) = edit.keep.and_then(|k| usize::try_from(k).ok()) {
                    c.truncate(keep);
                }
            }
        }
    }
}

/// The length the container states, in frames. MP4 states it in media-timescale ticks, which
/// need not be frames (a 90 kHz timescale is legal), so it is rescaled by the time base.
fn stated_frames(params: &CodecParameters, rate: Option<u32>) -> Option<u64> {
    let n = params.n_frames?;
    match (params.time_base, rate) {
        (Some(tb), Some(rate))
            if tb.denom > 0 && u64::from(tb.denom) != u64::from(rate) * u64::from(tb.numer) =>
        {
            let frames =
                u128::from(n) * u128::from(tb.numer) * u128::from(rate) / u128::from(tb.denom);
            u64::try_from(frames).ok()
        }
        _ => Some(n),
    }
}

fn corrupt_at(frame: u64, rate: Option<u32>, err: &SymError) -> AudioError {
    AudioError::Corrupt(format!(
        "decoding failed at {}: {err}",
        position(frame, rate)
    ))
}

/// "frame N (T s)", the time only when the rate is known.
fn position(frame: u64, rate: Option<u32>) -> String {
    match rate {
        Some(r) if r > 0 => format!("frame {frame} ({:.3} s)", frame as f64 / f64::from(r)),
        _ => format!("frame {frame}"),
    }
}

/// Accumulates decoded packets as planar `f32`, checking that the layout never changes.
#[derive(Default)]
struct PlanarSink {
    channels: Vec<Vec<f32>>,
    sample_rate: Option<u32>,
    frames: u64,
    scratch: Option<AudioBuffer<f32>>,
}

impl PlanarSink {
    fn rate(&self, params: &CodecParameters) -> Option<u32> {
        self.sample_rate.or(params.sample_rate)
    }

    fn push(&mut self, buf: AudioBufferRef<'_>) -> Result<(), AudioError> {
        let spec = *buf.spec();
        let count = spec.channels.count();
        match self.sample_rate {
            None => {
                self.sample_rate = Some(spec.rate);
                self.channels = vec![Vec::new(); count];
            }
            Some(rate) if rate != spec.rate || self.channels.len() != count => {
                return Err(AudioError::Unsupported(format!(
                    "the stream changes from {} channels at {rate} Hz to {count} channels at {} Hz mid-way",
                    self.channels.len(),
                    spec.rate
                )))
            }
            Some(_) => {}
        }
        if buf.frames() == 0 {
            return Ok(());
        }
        let scratch = match &mut self.scratch {
            Some(s) if s.capacity() >= buf.capacity() && *s.spec() == spec => s,
            slot => slot.insert(AudioBuffer::new(buf.capacity() as u64, spec)),
        };
        buf.convert(scratch);
        for (c, dest) in self.channels.iter_mut().enumerate() {
            dest.extend_from_slice(scratch.chan(c));
        }
        self.frames += buf.frames() as u64;
        Ok(())
    }

    fn finish(self, params: &CodecParameters) -> Result<Audio, AudioError> {
        let sample_rate = self.sample_rate.or(params.sample_rate).ok_or_else(|| {
            AudioError::Corrupt("the stream declares no sample rate and holds no audio".into())
        })?;
        if sample_rate == 0 {
            return Err(AudioError::Corrupt(
                "the header declares a 0 Hz sample rate".into(),
            ));
        }
        let channels = if self.channels.is_empty() {
            vec![Vec::new(); params.channels.map_or(0, |c| c.count())]
        } else {
            self.channels
        };
        Ok(Audio {
            sample_rate,
            channels,
        })
    }
}
