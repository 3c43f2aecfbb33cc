//! Audio stages for the pipeline engine: find files, decode, change channels, resample, write
//! audio or `.npy` features, and decide up front which sources are already done.
//!
//! Items are keyed by the source's path relative to the source location, so failures name the
//! file, shards split by file and reruns skip by file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_core::storage::{FileEntry, Location, Matcher, StorageError};
use sluice_pipeline::{Completed, ItemError, Stage, StageError, StageOptions};

use crate::audio::paths::PathRule;
use sluice_audio::{encode, npy, Audio, AudioFormat, ChannelOp, ResamplerCache};

/// A decoded file on its way through the stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadedAudio {
    /// Where it came from.
    pub file: FileEntry,
    /// Its samples.
    pub audio: Audio,
}

/// What a write stage produced for one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Written {
    /// The source's path relative to the source location.
    pub source: String,
    /// The output's URL (or local path).
    pub target: String,
    /// Sample rate of what was written.
    pub sample_rate: u32,
    /// Channels of what was written.
    pub channels: usize,
    /// Frames of what was written.
    pub frames: usize,
    /// Bytes written.
    pub bytes: usize,
}

/// Decoded audio counted across a run's workers, for the audio summary.
#[derive(Debug, Default)]
pub struct DecodeStats {
    micros: AtomicU64,
    files: AtomicU64,
}

impl DecodeStats {
    /// Total decoded duration in seconds.
    pub fn seconds(&self) -> f64 {
        self.micros.load(Relaxed) as f64 / 1e6
    }

    /// Files decoded.
    pub fn files(&self) -> u64 {
        self.files.load(Relaxed)
    }
}

fn storage_error(e: StorageError) -> ItemError {
    // A missing object stays missing; anything else (network, throttling) may pass.
    match e {
        StorageError::NotFound { .. } | StorageError::Invalid { .. } => {
            ItemError::permanent(e.to_string())
        }
        StorageError::Store { .. } => ItemError::transient(e.to_string()),
    }
}

/// Lists the files under `location` that `matcher` keeps (the `match_files` step).
pub fn match_files(location: &Location, matcher: &Matcher) -> Result<Vec<FileEntry>, StorageError> {
    location.list_blocking(matcher)
}

/// Reads and decodes source files (`load_audio`).
#[derive(Clone)]
pub struct LoadAudio {
    source: Location,
    options: StageOptions,
    stats: Arc<DecodeStats>,
}

impl LoadAudio {
    /// Decodes files of `source`, counting decoded audio in `stats`.
    pub fn new(source: Location, options: StageOptions, stats: Arc<DecodeStats>) -> Self {
        LoadAudio {
            source,
            options,
            stats,
        }
    }
}

impl Stage for LoadAudio {
    type In = FileEntry;
    type Out = LoadedAudio;

    fn name(&self) -> String {
        "load_audio".into()
    }

    fn options(&self) -> StageOptions {
        self.options.clone()
    }

    fn process(
        &mut self,
        batch: &[FileEntry],
    ) -> Result<Vec<Result<LoadedAudio, ItemError>>, StageError> {
        Ok(batch
            .iter()
            .map(|file| {
                let bytes = self
                    .source
                    .read_blocking(&file.rel)
                    .map_err(storage_error)?;
                let extension = std::path::Path::new(&file.rel)
                    .extension()
                    .and_then(|e| e.to_str());
                let audio = sluice_audio::decode::decode(&bytes, extension)
                    .map_err(|e| ItemError::permanent(e.to_string()))?;
                let micros = (audio.duration_secs() * 1e6).round() as u64;
                self.stats.micros.fetch_add(micros, Relaxed);
                self.stats.files.fetch_add(1, Relaxed);
                Ok(LoadedAudio {
                    file: file.clone(),
                    audio,
                })
            })
            .collect())
    }
}

/// Applies a conversion to each file's samples; a file it refuses fails alone.
fn map_audio(
    batch: &[LoadedAudio],
    mut convert: impl FnMut(&Audio) -> Result<Audio, sluice_audio::AudioError>,
) -> Vec<Result<LoadedAudio, ItemError>> {
    batch
        .iter()
        .map(|item| {
            let audio = convert(&item.audio).map_err(|e| ItemError::permanent(e.to_string()))?;
            Ok(LoadedAudio {
                file: item.file.clone(),
                audio,
            })
        })
        .collect()
}

/// Converts to one sample rate (`resample`); each worker keeps its resamplers across files.
pub struct Resample {
    to_rate: u32,
    options: StageOptions,
    cache: ResamplerCache,
}

impl Clone for Resample {
    fn clone(&self) -> Self {
        Resample::new(self.to_rate, self.options.clone())
    }
}

impl Resample {
    /// Resamples every file to `to_rate` Hz.
    pub fn new(to_rate: u32, options: StageOptions) -> Self {
        Resample {
            to_rate,
            options,
            cache: ResamplerCache::default(),
        }
    }
}

impl Stage for Resample {
    type In = LoadedAudio;
    type Out = LoadedAudio;

    fn name(&self) -> String {
        "resample".into()
    }

    fn options(&self) -> StageOptions {
        self.options.clone()
    }

    fn process(
        &mut self,
        batch: &[LoadedAudio],
    ) -> Result<Vec<Result<LoadedAudio, ItemError>>, StageError> {
        let (cache, to_rate) = (&mut self.cache, self.to_rate);
        Ok(map_audio(batch, |audio| cache.resample(audio, to_rate)))
    }
}

/// Changes the channel layout (`channels`).
#[derive(Clone)]
pub struct Channels {
    op: ChannelOp,
    options: StageOptions,
}

impl Channels {
    /// Applies `op` to every file.
    pub fn new(op: ChannelOp, options: StageOptions) -> Self {
        Channels { op, options }
    }
}

impl Stage for Channels {
    type In = LoadedAudio;
    type Out = LoadedAudio;

    fn name(&self) -> String {
        "channels".into()
    }

    fn options(&self) -> StageOptions {
        self.options.clone()
    }

    fn process(
        &mut self,
        batch: &[LoadedAudio],
    ) -> Result<Vec<Result<LoadedAudio, ItemError>>, StageError> {
        let op = self.op;
        Ok(map_audio(batch, |audio| op.apply(audio.clone())))
    }
}

/// How a write stage encodes a file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    /// An audio file.
    Audio(AudioFormat),
    /// A `.npy` array of shape (frames, channels).
    Npy,
}

/// Writes each file under the target location, named by a [`PathRule`] (`write_audio`,
/// `write_features`). Each output is one atomic object, so a killed run leaves none half-written.
#[derive(Clone)]
pub struct WriteFiles {
    target: Location,
    rule: PathRule,
    encoding: Encoding,
    options: StageOptions,
}

impl WriteFiles {
    /// Writes encoded audio (`write_audio`).
    pub fn audio(
        target: Location,
        rule: PathRule,
        format: AudioFormat,
        options: StageOptions,
    ) -> Self {
        WriteFiles {
            target,
            rule,
            encoding: Encoding::Audio(format),
            options,
        }
    }

    /// Writes the samples as `.npy` features (`write_features`).
    pub fn features(target: Location, rule: PathRule, options: StageOptions) -> Self {
        WriteFiles {
            target,
            rule,
            encoding: Encoding::Npy,
            options,
        }
    }

    fn write_one(&self, item: &LoadedAudio) -> Result<Written, ItemError> {
        let rel = self
            .rule
            .apply(&item.file.rel)
            .map_err(ItemError::permanent)?;
        let bytes = match self.encoding {
            Encoding::Audio(format) => encode::encode(&item.audio, format)
                .map_err(|e| ItemError::permanent(e.to_string()))?,
            Encoding::Npy => npy::encode_audio(&item.audio),
        };
        let size = bytes.len();
        self.target
            .write_blocking(&rel, bytes.into())
            .map_err(storage_error)?;
        Ok(Written {
            source: item.file.rel.clone(),
            target: self.target.url_of(&rel),
            sample_rate: item.audio.sample_rate,
            channels: item.audio.channel_count(),
            frames: item.audio.frames(),
            bytes: size,
        })
    }
}

impl Stage for WriteFiles {
    type In = LoadedAudio;
    type Out = Written;

    fn name(&self) -> String {
        match self.encoding {
            Encoding::Audio(_) => "write_audio".into(),
            Encoding::Npy => "write_features".into(),
        }
    }

    fn options(&self) -> StageOptions {
        self.options.clone()
    }

    fn process(
        &mut self,
        batch: &[LoadedAudio],
    ) -> Result<Vec<Result<Written, ItemError>>, StageError> {
        Ok(batch.iter().map(|item| self.write_one(item)).collect())
    }
}

/// Which sources are already done (`skip_completed`): every output the rules name exists in the
/// target and, with `redo_if_older`, is not older than its source. The target is listed once, so
/// deciding costs one listing, not a request per file.
pub fn completed_sources(
    sources: &[FileEntry],
    target: &Location,
    rules: &[PathRule],
    redo_if_older: bool,
) -> Result<Completed, StorageError> {
    let existing: HashMap<String, i64> = target
        .list_blocking(&Matcher::All)?
        .into_iter()
        .map(|f| (f.rel, f.modified_ms))
        .collect();
    let done: std::collections::HashSet<String> = sources
        .iter()
        .filter(|source| {
            rules.iter().all(|rule| {
                rule.apply(&source.rel)
                    .ok()
                    .and_then(|out| existing.get(&out))
                    .is_some_and(|&modified| !redo_if_older || modified >= source.modified_ms)
            })
        })
        .map(|source| source.rel.clone())
        .collect();
    Ok(Arc::new(move |key: &str| done.contains(key)))
}
