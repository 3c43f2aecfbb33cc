//! `sluice audio resample`: match → skip completed → convert (decode, channels, resample, encode,
//! streamed in chunks: [`crate::audio::convert`]), mirroring the source tree under the target,
//! with an audio summary (decoded duration, peak decoded audio in flight, failed files).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_core::storage::{Location, Matcher};
use sluice_pipeline::{
    Completed, Envelope, Failure, Pipeline, RunError, RunOptions, RunSummary, Sink, SinkError,
    StageOptions,
};

use crate::audio::convert::{ConvertFiles, Step};
use crate::audio::paths::PathRule;
use crate::audio::stages::{completed_sources, DecodeStats, Written};
use sluice_audio::encode::Output;
use sluice_audio::{AudioFormat, ChannelOp};

/// The settings of one resampling job.
#[derive(Clone)]
pub struct ResampleJob {
    /// Where the sources are (path or URL).
    pub source: String,
    /// Which files: suffixes or a glob relative to `source`.
    pub matcher: Matcher,
    /// Where the outputs go; the source tree is mirrored under it.
    pub target: String,
    /// Output sample rate.
    pub sample_rate: u32,
    /// Output channels.
    pub channels: ChannelOp,
    /// Output format.
    pub format: AudioFormat,
    /// Rewrite outputs that exist.
    pub overwrite: bool,
    /// Redo a source whose output is older than it.
    pub redo_if_older: bool,
    /// Engine settings (mode, shard, progress, failures and summary paths).
    pub options: RunOptions,
    /// Files per batch.
    pub batch_size: usize,
    /// Bytes of decoded audio the whole job may hold at once (default
    /// [`DEFAULT_MEMORY_BUDGET`]); files stream in chunks sized to fit it.
    pub memory_budget: Option<usize>,
}

/// Decoded audio a job holds at most by default: 8 MiB, chunks of 128k frames of stereo on two
/// workers (2.7 s at 48 kHz), past the size where per-chunk costs matter (16 MiB measured no
/// faster, and more memory is more for the allocator to keep).
pub const DEFAULT_MEMORY_BUDGET: usize = 8 << 20;

/// The part of `budget` one file in flight may hold: the budget shared by the stage's workers.
pub fn file_budget(budget: usize, options: &StageOptions) -> usize {
    let workers = options
        .workers
        .fixed()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    budget / workers.max(1)
}

/// Where failed files are listed when not said: `_failures.jsonl` in the target, local or an
/// object prefix.
pub fn default_failures_path(target: &str) -> PathBuf {
    match sluice_core::storage::local_path(target) {
        Some(dir) => dir.join("_failures.jsonl"),
        // Beside the outputs in the store (written whole like them), not in the working
        // directory.
        None => PathBuf::from(format!("{}/_failures.jsonl", target.trim_end_matches('/'))),
    }
}

/// A file that did not make it, for the audio summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedFile {
    /// The source's path relative to the source location.
    pub file: String,
    /// The stage it failed in.
    pub stage: String,
    /// Why.
    pub error: String,
}

/// The audio part of a run's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioSummary {
    /// Files decoded.
    pub files_decoded: u64,
    /// Outputs written.
    pub files_written: u64,
    /// Total decoded duration in seconds.
    pub decoded_seconds: f64,
    /// The same in minutes.
    pub decoded_minutes: f64,
    /// The same in hours.
    pub decoded_hours: f64,
    /// The most bytes of decoded samples held at once.
    pub peak_decoded_bytes: u64,
    /// Files that failed.
    pub files_failed: usize,
    /// Each failed file with its stage and reason.
    pub failed: Vec<FailedFile>,
}

impl AudioSummary {
    /// Builds the summary from decode counts, outputs and failures.
    pub fn new(stats: &DecodeStats, written: u64, failures: &[Failure]) -> Self {
        let seconds = stats.seconds();
        AudioSummary {
            files_decoded: stats.files(),
            files_written: written,
            decoded_seconds: seconds,
            decoded_minutes: seconds / 60.0,
            decoded_hours: seconds / 3600.0,
            peak_decoded_bytes: stats.peak_bytes(),
            files_failed: failures.len(),
            failed: failures
                .iter()
                .map(|f| FailedFile {
                    file: f.key.clone(),
                    stage: f.stage.clone(),
                    error: f.error.clone(),
                })
                .collect(),
        }
    }

    /// Human-readable lines for the end of a run.
    pub fn render(&self) -> String {
        let mut out = format!(
            "audio: {} files decoded, {:.3} s ({:.2} min, {:.4} h), at most {:.1} MiB decoded at \
             once; {} written; {} failed\n",
            self.files_decoded,
            self.decoded_seconds,
            self.decoded_minutes,
            self.decoded_hours,
            self.peak_decoded_bytes as f64 / f64::from(1 << 20),
            self.files_written,
            self.files_failed
        );
        for f in &self.failed {
            out += &format!("  failed: {} ({}): {}\n", f.file, f.stage, f.error);
        }
        out
    }
}

/// Counts outputs; the write stage already stored them. Knows which sources are done.
struct WrittenSink {
    written: u64,
    completed: Option<Completed>,
}

impl Sink<Written> for WrittenSink {
    fn write(&mut self, _item: Envelope<Written>) -> Result<(), SinkError> {
        self.written += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn completed(&mut self) -> Result<Option<Completed>, SinkError> {
        Ok(self.completed.clone())
    }
}

/// What a finished (or aborted) job reports.
#[derive(Debug)]
pub struct JobReport {
    /// The engine's summary.
    pub run: RunSummary,
    /// The audio summary.
    pub audio: AudioSummary,
}

impl JobReport {
    /// The combined summary as JSON: the run's fields plus `"audio"`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.run).unwrap_or_default();
        if let serde_json::Value::Object(map) = &mut value {
            map.insert(
                "audio".into(),
                serde_json::to_value(&self.audio).unwrap_or_default(),
            );
        }
        value
    }

    /// The engine's summary followed by the audio lines.
    pub fn render(&self) -> String {
        format!("{}{}", self.run.render(), self.audio.render())
    }
}

fn read_failures(path: &Option<PathBuf>, fallback: &[Failure]) -> Vec<Failure> {
    path.as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|text| {
            text.lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect()
        })
        .unwrap_or_else(|| fallback.to_vec())
}

impl ResampleJob {
    /// Runs the job; `Err` only when it could not start. An aborted run still reports.
    pub fn run(self) -> Result<Result<JobReport, (String, JobReport)>, RunError> {
        let mut options = self.options;
        options.skip_completed = !self.overwrite;
        Conversion {
            source: self.source,
            matcher: self.matcher,
            target: self.target,
            rule: PathRule::mirror_with_extension(self.format.extension()),
            redo_if_older: self.redo_if_older,
            // Channels first: both steps are linear, so the result is the same, and a downmix
            // then resamples one channel instead of several.
            steps: vec![
                Step::Channels(self.channels),
                Step::Resample(self.sample_rate),
            ],
            output: Output::Audio(self.format),
            memory_budget: self.memory_budget,
            stage: StageOptions::default().batch_size(self.batch_size.max(1)),
            options,
        }
        .run()
    }
}

/// One streaming conversion job, what `sluice audio resample` and audio pipeline files both run:
/// list the sources, work out which are done, convert the rest ([`ConvertFiles`]) and report.
pub(crate) struct Conversion {
    pub source: String,
    pub matcher: Matcher,
    pub target: String,
    pub rule: PathRule,
    pub redo_if_older: bool,
    pub steps: Vec<Step>,
    pub output: Output,
    /// Bytes of decoded audio in flight (default [`DEFAULT_MEMORY_BUDGET`]).
    pub memory_budget: Option<usize>,
    /// The conversion stage's batch size, workers and retries.
    pub stage: StageOptions,
    pub options: RunOptions,
}

impl Conversion {
    /// Runs the job; `Err` only when it could not start. An aborted run still reports.
    pub fn run(self) -> Result<Result<JobReport, (String, JobReport)>, RunError> {
        let source = Location::parse_source(&self.source)?;
        let target = Location::parse(&self.target)?;
        let stats = Arc::new(DecodeStats::default());
        let budget = self.memory_budget.unwrap_or(DEFAULT_MEMORY_BUDGET);
        let convert = ConvertFiles::new(
            "convert",
            source.clone(),
            target.clone(),
            self.rule.clone(),
            self.steps,
            self.output,
            file_budget(budget, &self.stage),
            self.stage,
            stats.clone(),
        );
        let mut options = self.options;
        let files = crate::audio::stages::match_files(&source, &self.matcher)?;
        let completed = if options.skip_completed {
            Some(completed_sources(
                &files,
                &target,
                std::slice::from_ref(&self.rule),
                self.redo_if_older,
            )?)
        } else {
            None
        };
        let summary_path = options.summary_path.take();
        let failures_path = options.failures_path.clone();
        let mut sink = WrittenSink {
            written: 0,
            completed,
        };
        let outcome = Pipeline::from_keyed(files.into_iter().map(|f| (f.rel.clone(), f)))
            .stage(convert)
            .run(&options, &mut sink);
        let (run, aborted) = match outcome {
            Ok(run) => (run, None),
            Err(RunError::Aborted { reason, summary }) => (*summary, Some(reason)),
            Err(e) => return Err(e),
        };
        let failures = read_failures(&failures_path, &run.failures);
        let report = JobReport {
            audio: AudioSummary::new(&stats, sink.written, &failures),
            run,
        };
        if let Some(path) = summary_path {
            let json = serde_json::to_vec_pretty(&report.to_json()).unwrap_or_default();
            sluice_core::fs::write_atomic(&path, |out| out.write_all(&json))
                .map_err(|e| RunError::io(format!("writing {}", path.display()), e))?;
        }
        Ok(match aborted {
            None => Ok(report),
            Some(reason) => Err((reason, report)),
        })
    }
}
