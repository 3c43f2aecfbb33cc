//! The streaming conversion of whole files: decode → channels → resample → encode, chunk by
//! chunk, so that memory per file in flight is a few chunks whatever its length (an hour or a
//! day of audio). Decoding, converting and encoding run on three threads handing chunks over
//! channels of two, so a single long file keeps two cores busy; many files run on the stage's
//! workers as before.
//!
//! Outputs are staged: a temporary file beside the final one (renamed into place when complete)
//! on disk, a temporary local file uploaded in parts on object storage (the object appears when
//! the upload completes). A run killed mid-file leaves nothing under the final name, so a rerun
//! redoes that file.

use std::io::{BufWriter, Seek};
use std::sync::Arc;

use sluice_audio::decode::Decoder;
use sluice_audio::encode::{Output, StreamWriter};
use sluice_audio::resample::StreamResampler;
use sluice_audio::{Audio, AudioError, ChannelOp, ResamplerCache};
use sluice_core::storage::{FileEntry, Location};
use sluice_pipeline::{ItemError, Stage, StageError, StageOptions};

use crate::audio::paths::PathRule;
use crate::audio::stages::{storage_error, DecodeStats, Written};

/// Chunks in flight per file: one being decoded, two waiting, one being converted.
const CHUNKS_IN_FLIGHT: usize = 4;

/// One step between decoding and encoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Change the channel layout.
    Channels(ChannelOp),
    /// Change the sample rate.
    Resample(u32),
}

/// Converts each source file to one output file, streaming (see the module doc).
#[derive(Clone)]
pub struct ConvertFiles {
    name: String,
    source: Location,
    target: Location,
    rule: PathRule,
    steps: Vec<Step>,
    output: Output,
    /// Bytes of decoded audio one file may hold in flight.
    file_budget: usize,
    options: StageOptions,
    stats: Arc<DecodeStats>,
    caches: WorkerCaches,
}

/// Resamplers kept across one worker's files, one cache per resampling step. A clone (a new
/// worker) starts with none: resamplers hold per-stream state and are cheap to rebuild.
#[derive(Default)]
struct WorkerCaches(Vec<ResamplerCache>);

impl Clone for WorkerCaches {
    fn clone(&self) -> Self {
        WorkerCaches::default()
    }
}

impl ConvertFiles {
    /// Converts files of `source` into `target` (named by `rule`) through `steps`; each file
    /// holds at most `file_budget` bytes of decoded audio at a time.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        source: Location,
        target: Location,
        rule: PathRule,
        steps: Vec<Step>,
        output: Output,
        file_budget: usize,
        options: StageOptions,
        stats: Arc<DecodeStats>,
    ) -> Self {
        ConvertFiles {
            name: name.to_string(),
            source,
            target,
            rule,
            steps,
            output,
            file_budget,
            options,
            stats,
            caches: WorkerCaches::default(),
        }
    }

    fn convert_one(&mut self, file: &FileEntry) -> Result<Written, ItemError> {
        let out_rel = self
            .rule
            .apply(&file.rel)
            .map_err(|e| ItemError::permanent(e.to_string()))?;
        let input = self
            .source
            .open_blocking(&file.rel)
            .map_err(storage_error)?;
        let extension = std::path::Path::new(&file.rel)
            .extension()
            .and_then(|e| e.to_str());
        let probe = Decoder::new(input, extension, 1).map_err(audio_error)?;
        let channels = probe.channel_count().unwrap_or(2).max(1);
        let chunk_frames = (self.file_budget / (CHUNKS_IN_FLIGHT * channels * 4)).max(1024);
        let decoder = probe.with_chunk_frames(chunk_frames);

        let (staged, final_path) = match self.target.local_file(&out_rel).map_err(storage_error)? {
            Some(path) => {
                let dir = path.parent().unwrap_or(std::path::Path::new("."));
                std::fs::create_dir_all(dir).map_err(local_io)?;
                let tmp = tempfile::Builder::new()
                    .prefix(".sluice-")
                    .suffix(".part")
                    .tempfile_in(dir)
                    .map_err(local_io)?;
                (tmp, Some(path))
            }
            None => (tempfile::NamedTempFile::new().map_err(local_io)?, None),
        };
        let mut out = BufWriter::with_capacity(1 << 20, staged.as_file());
        self.caches
            .0
            .resize_with(self.steps.len(), ResamplerCache::default);
        let (frames, rate, channels, decoded_micros) = run(
            decoder,
            &self.steps,
            &mut self.caches.0,
            self.output,
            &mut out,
            &self.stats,
        )?;
        drop(out);
        staged.as_file().sync_all().map_err(local_io)?;
        let bytes = staged.as_file().metadata().map_err(local_io)?.len();
        match final_path {
            Some(path) => {
                staged.persist(&path).map_err(|e| local_io(e.error))?;
            }
            None => {
                self.target
                    .upload_blocking(&out_rel, staged.path())
                    .map_err(storage_error)?;
            }
        }
        self.stats.add_file(decoded_micros);
        Ok(Written {
            source: file.rel.clone(),
            target: self.target.url_of(&out_rel),
            sample_rate: rate,
            channels,
            frames: frames as usize,
            bytes: bytes as usize,
        })
    }
}

/// A step with its state for one stream.
enum Live<'a> {
    Channels(ChannelOp),
    Resample(Option<StreamResampler<'a>>),
}

/// What the converting thread hands the encoding thread.
enum Encode {
    Chunk(Audio),
    /// Everything was sent: finish the file.
    End,
}

/// Decodes, converts and encodes on three threads joined by channels of two chunks, so that a
/// single long file keeps two cores busy. Returns frames written, the output's rate and
/// channels, and the decoded duration in microseconds.
fn run<W: std::io::Write + Seek + Send>(
    mut decoder: Decoder,
    steps: &[Step],
    caches: &mut [ResamplerCache],
    output: Output,
    out: &mut W,
    stats: &DecodeStats,
) -> Result<(u64, u32, usize, u64), ItemError> {
    let (decoded_tx, decoded) =
        std::sync::mpsc::sync_channel::<Result<(Audio, Held<'_>), AudioError>>(2);
    let (converted, converted_rx) = std::sync::mpsc::sync_channel::<Encode>(2);
    std::thread::scope(|scope| {
        let decoding = scope.spawn(move || {
            let mut frames = 0u64;
            let mut rate = 0u32;
            loop {
                match decoder.next_chunk() {
                    Ok(Some(chunk)) => {
                        frames += chunk.frames() as u64;
                        rate = chunk.sample_rate;
                        let held = Held::new(stats, &chunk);
                        if decoded_tx.send(Ok((chunk, held))).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = decoded_tx.send(Err(e));
                        break;
                    }
                }
            }
            if rate == 0 {
                0
            } else {
                (frames as f64 / f64::from(rate) * 1e6).round() as u64
            }
        });
        let encoding = scope.spawn(move || encode(converted_rx, output, out));
        let conversion = convert(decoded, steps, caches, &converted);
        if conversion.is_ok() {
            let _ = converted.send(Encode::End);
        }
        drop(converted);
        let encoded = encoding
            .join()
            .map_err(|_| ItemError::permanent("the encoding thread panicked"))?;
        let micros = decoding
            .join()
            .map_err(|_| ItemError::permanent("the decoding thread panicked"))?;
        // A failed conversion says why; the encoder then only saw its channel close.
        let (rate, channels) = conversion?;
        let frames = encoded?;
        Ok((frames, rate, channels, micros))
    })
}

/// Writes converted chunks as they come; the file is finished only on [`Encode::End`].
fn encode<W: std::io::Write + Seek>(
    chunks: std::sync::mpsc::Receiver<Encode>,
    output: Output,
    out: &mut W,
) -> Result<u64, ItemError> {
    let mut writer: Option<StreamWriter<&mut W>> = None;
    let mut out = Some(out);
    let mut frames = 0u64;
    for message in chunks {
        let chunk = match message {
            Encode::Chunk(chunk) => chunk,
            Encode::End => {
                let writer =
                    writer.ok_or_else(|| ItemError::permanent("the file holds no audio"))?;
                writer.finish().map_err(audio_error)?;
                return Ok(frames);
            }
        };
        if writer.is_none() {
            let sink = out.take().expect("the writer is made once");
            writer = Some(
                StreamWriter::new(sink, output, chunk.sample_rate, chunk.channel_count())
                    .map_err(audio_error)?,
            );
        }
        writer
            .as_mut()
            .expect("made above")
            .write(&chunk)
            .map_err(audio_error)?;
        frames += chunk.frames() as u64;
    }
    Err(ItemError::permanent(
        "the conversion stopped before the end",
    ))
}

/// Runs the decoded chunks through the steps and hands them to the encoder. Returns the
/// output's rate and channels.
fn convert(
    chunks: std::sync::mpsc::Receiver<Result<(Audio, Held<'_>), AudioError>>,
    steps: &[Step],
    caches: &mut [ResamplerCache],
    encoder: &std::sync::mpsc::SyncSender<Encode>,
) -> Result<(u32, usize), ItemError> {
    let stopped = || ItemError::permanent("the encoder stopped");
    let mut lives: Vec<Live<'_>> = Vec::new();
    let mut layout = None;
    let mut caches = caches.iter_mut();
    for chunk in chunks {
        let (chunk, _held) = chunk.map_err(audio_error)?;
        if layout.is_none() {
            // The first chunk tells the layout each step sees; a step that cannot take it
            // (a channel that is not there) fails here, before anything is written.
            let (mut rate, mut channels) = (chunk.sample_rate, chunk.channel_count());
            for step in steps {
                let cache = caches.next().expect("one cache per step");
                lives.push(match *step {
                    Step::Channels(op) => {
                        let probe = Audio {
                            sample_rate: rate,
                            channels: vec![Vec::new(); channels],
                        };
                        channels = op.apply(probe).map_err(audio_error)?.channel_count();
                        Live::Channels(op)
                    }
                    Step::Resample(to) => {
                        let r = cache.stream(rate, to, channels).map_err(audio_error)?;
                        rate = to;
                        Live::Resample(Some(r))
                    }
                });
            }
            layout = Some((rate, channels));
        }
        let done = through(&mut lives, 0, chunk)?;
        encoder.send(Encode::Chunk(done)).map_err(|_| stopped())?;
    }
    let layout = layout.ok_or_else(|| ItemError::permanent("the file holds no audio"))?;
    for i in 0..lives.len() {
        if let Live::Resample(r) = &mut lives[i] {
            let tail = r
                .take()
                .expect("finished once")
                .finish()
                .map_err(audio_error)?;
            let tail = through(&mut lives, i + 1, tail)?;
            encoder.send(Encode::Chunk(tail)).map_err(|_| stopped())?;
        }
    }
    Ok(layout)
}

/// Passes `chunk` through the steps from `from` on.
fn through(lives: &mut [Live<'_>], from: usize, mut chunk: Audio) -> Result<Audio, ItemError> {
    for live in &mut lives[from..] {
        chunk = match live {
            Live::Channels(op) => op.apply(chunk).map_err(audio_error)?,
            Live::Resample(Some(r)) => r.push(&chunk).map_err(audio_error)?,
            Live::Resample(None) => chunk,
        };
    }
    Ok(chunk)
}

fn bytes_of(chunk: &Audio) -> u64 {
    (chunk.frames() * chunk.channel_count() * 4) as u64
}

fn audio_error(e: AudioError) -> ItemError {
    match e {
        // A full disk or a closed pipe may pass; what the audio is will not change.
        e @ AudioError::Output { .. } => ItemError::transient(e.to_string()),
        other => ItemError::permanent(other.to_string()),
    }
}

fn local_io(e: std::io::Error) -> ItemError {
    ItemError::transient(format!("local file: {e}"))
}

impl Stage for ConvertFiles {
    type In = FileEntry;
    type Out = Written;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn options(&self) -> StageOptions {
        self.options.clone()
    }

    fn process(
        &mut self,
        batch: &[FileEntry],
    ) -> Result<Vec<Result<Written, ItemError>>, StageError> {
        Ok(batch.iter().map(|file| self.convert_one(file)).collect())
    }
}

/// A decoded chunk counted as held until it is converted (or dropped with the channel), for the
/// peak of decoded audio in flight the summary reports.
struct Held<'a> {
    stats: &'a DecodeStats,
    bytes: u64,
}

impl<'a> Held<'a> {
    fn new(stats: &'a DecodeStats, chunk: &Audio) -> Self {
        let bytes = bytes_of(chunk);
        stats.hold(bytes);
        Held { stats, bytes }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.stats.release(self.bytes);
    }
}
