//! Decoding any supported container/codec (WAV, FLAC, MP3, Ogg Vorbis, MP4/AAC, ADPCM) to
//! planar `f32` with symphonia.
//!
//! Gapless mode is on so that MP3 encoder delay and padding (from the LAME/Xing header) are
//! removed; the two trims symphonia 0.5 leaves undone (the end of Ogg Vorbis, the MP4 edit list
//! of AAC) are applied here, so lossy files decode to the length the encoder was given.
//! Samples are converted with symphonia's own sample conversion (integer PCM divided by
//! 2^(bits-1)), so lossless sources decode bit-exactly to the values other tools report.

use std::io::{Cursor, ErrorKind, Read, Seek, SeekFrom};

use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Signal};
use symphonia::core::codecs::{
    CodecParameters, DecoderOptions, CODEC_TYPE_FLAC, CODEC_TYPE_NULL, CODEC_TYPE_VORBIS,
};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::audio::{Audio, AudioError};
use crate::edit_list;

/// Lower bound of the truncation tolerance, in frames: lossy codecs report their priming and
/// final-packet lengths loosely, so a shortfall below one typical packet is not damage.
const MIN_TRUNCATION_TOLERANCE: u64 = 2048;

/// Frames per chunk a [`Decoder`] yields unless told otherwise: 64k frames is 0.5 MiB per channel
/// of `f32`, large enough that per-chunk overheads vanish and small enough that memory does not
/// depend on the file's length.
pub const DEFAULT_CHUNK_FRAMES: usize = 1 << 16;

/// Decodes a whole file held in memory; `extension` (without the dot) only hints the prober.
pub fn decode(bytes: &[u8], extension: Option<&str>) -> Result<Audio, AudioError> {
    // symphonia's media source must be 'static, hence the copy; it is small next to decoding.
    let mut decoder = Decoder::new(Cursor::new(bytes.to_vec()), extension, usize::MAX)?;
    let mut audio = decoder.next_chunk()?.unwrap_or(Audio {
        sample_rate: 0,
        channels: Vec::new(),
    });
    while let Some(chunk) = decoder.next_chunk()? {
        for (all, part) in audio.channels.iter_mut().zip(chunk.channels) {
            all.extend(part);
        }
    }
    Ok(audio)
}

/// A file decoded in chunks of at most `chunk_frames` frames, so that memory does not grow with
/// its length. Every check and trim of [`decode`] applies (it is this decoder read to the end):
/// damage is an error at the chunk where it is found, a truncation at the end of the stream, so
/// a caller that writes chunks as they come must keep its output staged until the end.
pub struct Decoder {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn symphonia::core::codecs::Decoder>,
    track_id: u32,
    params: CodecParameters,
    out: PlanarSink,
    chunk_frames: usize,
    /// A packet that failed: only damage if more packets follow.
    pending: Option<(u64, SymError)>,
    check_gaps: bool,
    next_ts: u64,
    /// Frames still to drop from the start (the MP4 edit list's priming).
    skip: u64,
    /// Frames still to give out after the skip, when the container states the length.
    keep: Option<u64>,
    /// Whether any chunk was given out yet (an empty stream still yields one empty chunk).
    yielded: bool,
    ended: bool,
}

impl Decoder {
    /// Opens `source` (read from where it is, at the start of the file); `extension` (without
    /// the dot) only hints the prober.
    pub fn new<R>(
        source: R,
        extension: Option<&str>,
        chunk_frames: usize,
    ) -> Result<Self, AudioError>
    where
        R: std::io::Read + std::io::Seek + Send + Sync + 'static,
    {
        unpanicked(|| Self::open(source, extension, chunk_frames))
    }

    fn open<R>(
        mut source: R,
        extension: Option<&str>,
        chunk_frames: usize,
    ) -> Result<Self, AudioError>
    where
        R: std::io::Read + std::io::Seek + Send + Sync + 'static,
    {
        let io = |e: std::io::Error| AudioError::Corrupt(format!("cannot read the file: {e}"));
        let mut head = Vec::with_capacity(16);
        std::io::Read::by_ref(&mut source)
            .take(16)
            .read_to_end(&mut head)
            .map_err(io)?;
        if head.is_empty() {
            return Err(AudioError::Empty);
        }
        // MP4 keeps its trims in the edit list, which symphonia does not apply (see the module doc).
        let edit = if head.get(4..8) == Some(b"ftyp") {
            Some(edit_list::read_moov(&mut source).map_err(io)?)
        } else {
            None
        };
        source.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut hint = Hint::new();
        if let Some(ext) = extension {
            hint.with_extension(ext.trim_start_matches('.'));
        }
        let stream = MediaSourceStream::new(
            Box::new(Seekable::new(source).map_err(io)?),
            MediaSourceStreamOptions::default(),
        );
        let format_opts = FormatOptions {
            enable_gapless: true,
            ..FormatOptions::default()
        };
        let probed = symphonia::default::get_probe()
            .format(&hint, stream, &format_opts, &MetadataOptions::default())
            .map_err(|e| probe_error(e, &head, extension))?;
        let format = probed.format;
        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| AudioError::Unsupported("the container holds no audio track".into()))?;
        let track_id = track.id;
        let params = track.codec_params.clone();
        let decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(|e| match e {
                SymError::Unsupported(_) => AudioError::Unsupported(format!(
                    "the audio codec (symphonia codec id {}) is not supported",
                    params.codec
                )),
                other => AudioError::Corrupt(format!("cannot set up the decoder: {other}")),
            })?;
        let (mut skip, mut keep) = (0, None);
        // Ogg Vorbis: symphonia reads the last granule position into `n_frames` but does not
        // trim the final packet to it (Symphonia issue #418); the granule position is the end.
        if params.codec == CODEC_TYPE_VORBIS {
            keep = params.n_frames;
        }
        // MP4: the edit list skips the encoder's priming and cuts the last frame's padding.
        if let (Some(Some(moov)), Some(rate)) = (&edit, params.sample_rate) {
            if let Some(edit) = edit_list::audio_edit(moov, track_id as usize, rate) {
                (skip, keep) = (edit.skip, edit.keep);
            }
        }
        Ok(Decoder {
            format,
            decoder,
            track_id,
            check_gaps: params.codec == CODEC_TYPE_FLAC,
            params,
            out: PlanarSink::default(),
            chunk_frames: chunk_frames.max(1),
            pending: None,
            next_ts: 0,
            skip,
            keep,
            yielded: false,
            ended: false,
        })
    }

    /// The channel count the stream's header states, when it states one.
    pub fn channel_count(&self) -> Option<usize> {
        self.params.channels.map(|c| c.count())
    }

    /// The same decoder yielding chunks of at most `chunk_frames` frames from now on.
    pub fn with_chunk_frames(mut self, chunk_frames: usize) -> Self {
        self.chunk_frames = chunk_frames.max(1);
        self
    }

    /// Frames decoded so far (before trims).
    pub fn frames_decoded(&self) -> u64 {
        self.out.frames
    }

    /// The next chunk, `None` at the end. A stream with no audio yields one empty chunk first,
    /// so that its rate and channels are known.
    pub fn next_chunk(&mut self) -> Result<Option<Audio>, AudioError> {
        while !self.ended && self.out.buffered() < self.chunk_frames {
            // A decoder that panicked may be in any state: nothing more is read from it.
            let read = unpanicked(|| self.read_packet()).inspect_err(|_| self.ended = true)?;
            if !read {
                self.ended = true;
                self.check_end()?;
            }
        }
        let take = self.out.buffered().min(self.chunk_frames);
        if take == 0 && self.ended && self.yielded {
            return Ok(None);
        }
        let mut chunk = self.out.take(take, &self.params)?;
        self.trim(&mut chunk);
        self.yielded = true;
        Ok(Some(chunk))
    }

    /// Reads and decodes one packet; false at the end of the stream.
    fn read_packet(&mut self) -> Result<bool, AudioError> {
        let packet = match self.format.next_packet() {
            Ok(packet) => packet,
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
            Err(SymError::ResetRequired) => {
                return Err(AudioError::Unsupported(
                    "the stream changes its parameters mid-way (chained stream)".into(),
                ))
            }
            Err(e) => {
                if self.out.frames == 0 && self.pending.is_none() {
                    return Err(AudioError::Corrupt(format!(
                        "cannot read the first packet: {e}"
                    )));
                }
                self.pending.get_or_insert((self.out.frames, e));
                return Ok(false);
            }
        };
        if packet.track_id() != self.track_id {
            return Ok(true);
        }
        // A packet that fails to decode is only damage if more packets follow: a cut-off file's
        // partial last packet fails too, and the truncation check then names the real problem.
        if let Some((at, err)) = self.pending.take() {
            return Err(corrupt_at(at, self.out.rate(&self.params), &err));
        }
        // symphonia's FLAC reader skips a frame it cannot read and resynchronises; the frame
        // headers' sample numbers reveal the hole.
        if self.check_gaps {
            if packet.ts() > self.next_ts {
                return Err(AudioError::Corrupt(format!(
                    "a damaged FLAC frame was skipped: {} frames missing at {}",
                    packet.ts() - self.next_ts,
                    position(self.next_ts, self.out.rate(&self.params)),
                )));
            }
            self.next_ts = packet.ts() + packet.dur();
        }
        match self.decoder.decode(&packet) {
            Ok(buf) => self.out.push(buf)?,
            Err(e @ (SymError::DecodeError(_) | SymError::IoError(_))) => {
                self.pending = Some((self.out.frames, e));
            }
            Err(SymError::ResetRequired) => {
                return Err(AudioError::Unsupported(
                    "the stream changes its parameters mid-way".into(),
                ))
            }
            Err(e) => return Err(corrupt_at(self.out.frames, self.out.rate(&self.params), &e)),
        }
        Ok(true)
    }

    /// The checks that need the whole stream read: the length the header states, and a failed
    /// packet with nothing after it.
    fn check_end(&mut self) -> Result<(), AudioError> {
        let decoded = self.out.frames;
        if let Some(expected) = stated_frames(&self.params, self.out.rate(&self.params)) {
            let tolerance = self
                .params
                .max_frames_per_packet
                .unwrap_or(0)
                .max(MIN_TRUNCATION_TOLERANCE);
            if decoded.saturating_add(tolerance) < expected {
                return Err(AudioError::Truncated { expected, decoded });
            }
        }
        if let Some((at, err)) = self.pending.take() {
            return Err(corrupt_at(at, self.out.rate(&self.params), &err));
        }
        Ok(())
    }

    /// Drops what is left of the start trim and cuts what is past the stated end.
    fn trim(&mut self, chunk: &mut Audio) {
        let frames = chunk.frames() as u64;
        let skip = self.skip.min(frames);
        self.skip -= skip;
        let mut end = frames;
        if let Some(keep) = &mut self.keep {
            let left = (frames - skip).min(*keep);
            *keep -= left;
            end = skip + left;
        }
        if skip > 0 || end < frames {
            for c in &mut chunk.channels {
                c.truncate(end as usize);
                c.drain(..skip as usize);
            }
        }
    }
}

/// Runs a step of symphonia's, turning a panic (its demuxers and decoders assert on some damaged
/// input, as fuzzing found) into the error of a corrupt file, so that one bad upload fails alone.
fn unpanicked<T>(step: impl FnOnce() -> Result<T, AudioError>) -> Result<T, AudioError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(AudioError::Corrupt(format!(
            "the decoder failed on this file ({why})"
        )))
    })
}

/// Any seekable reader as symphonia's media source (it implements one only for files and
/// cursors): Ogg and MP4 readers seek to find the stream's length and index.
struct Seekable<R> {
    inner: R,
    len: u64,
}

impl<R: Read + Seek> Seekable<R> {
    fn new(mut inner: R) -> std::io::Result<Self> {
        let len = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(0))?;
        Ok(Seekable { inner, len })
    }
}

impl<R: Read> Read for Seekable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: Seek> Seek for Seekable<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl<R: Read + Seek + Send + Sync> MediaSource for Seekable<R> {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
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

    /// Frames decoded and not yet taken.
    fn buffered(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Takes the first `frames` frames decoded as a chunk (the rate checked; a stream with no
    /// audio gets the channel count its header states).
    fn take(&mut self, frames: usize, params: &CodecParameters) -> Result<Audio, AudioError> {
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
        } else if frames == self.buffered() {
            // The common case of a whole buffer: hand it over, keep the capacity's size.
            self.channels
                .iter_mut()
                .map(|c| {
                    let cap = c.capacity();
                    std::mem::replace(c, Vec::with_capacity(cap))
                })
                .collect()
        } else {
            // The rest is at most one packet: moving it is cheaper than copying the chunk out.
            self.channels
                .iter_mut()
                .map(|c| {
                    let rest = c.split_off(frames);
                    std::mem::replace(c, rest)
                })
                .collect()
        };
        Ok(Audio {
            sample_rate,
            channels,
        })
    }
}
