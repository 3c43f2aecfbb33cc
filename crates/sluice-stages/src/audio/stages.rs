//! What the audio stages share: finding files, counting decoded audio, what was written, storage
//! errors as item errors, and deciding up front which sources are already done (the conversion
//! itself streams in [`crate::audio::convert`]).
//!
//! Items are keyed by the source's path relative to the source location, so failures name the
//! file, shards split by file and reruns skip by file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_core::storage::{FileEntry, Location, Matcher, StorageError};
use sluice_pipeline::{Completed, ItemError};

use crate::audio::paths::PathRule;

/// What the conversion wrote for one source.
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
    /// Bytes of decoded samples held right now, and the most ever held at once.
    in_flight: AtomicU64,
    peak: AtomicU64,
}

impl DecodeStats {
    /// Counts one decoded file of `micros` microseconds.
    pub fn add_file(&self, micros: u64) {
        self.micros.fetch_add(micros, Relaxed);
        self.files.fetch_add(1, Relaxed);
    }

    /// Counts `bytes` of decoded samples as held until [`Self::release`].
    pub fn hold(&self, bytes: u64) {
        let now = self.in_flight.fetch_add(bytes, Relaxed) + bytes;
        self.peak.fetch_max(now, Relaxed);
    }

    /// Releases what [`Self::hold`] counted.
    pub fn release(&self, bytes: u64) {
        self.in_flight.fetch_sub(bytes, Relaxed);
    }

    /// The most bytes of decoded samples held at once during the run.
    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Relaxed)
    }

    /// Total decoded duration in seconds.
    pub fn seconds(&self) -> f64 {
        self.micros.load(Relaxed) as f64 / 1e6
    }

    /// Files decoded.
    pub fn files(&self) -> u64 {
        self.files.load(Relaxed)
    }
}

pub(crate) fn storage_error(e: StorageError) -> ItemError {
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
