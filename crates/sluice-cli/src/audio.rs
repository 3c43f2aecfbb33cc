//! `sluice audio ...`: built-in audio jobs on the pipeline engine.

use std::path::PathBuf;

use sluice_audio::job::{JobReport, ResampleJob};
use sluice_audio::{AudioFormat, ChannelOp};
use sluice_core::storage::Matcher;

use crate::ProgressArg;

/// Audio jobs.
#[derive(clap::Subcommand, Debug)]
pub enum AudioCommand {
    /// Decode, change channels, resample and write every matching file, mirroring the source tree
    /// under the target; reruns skip files whose output exists.
    Resample(ResampleArgs),
}

/// `sluice audio resample` options.
#[derive(clap::Args, Debug)]
pub struct ResampleArgs {
    /// Where the sources are: a directory, file://, s3://, gs://, az:// or memory:// URL.
    #[arg(long)]
    source: String,
    /// Keep files with this suffix (repeatable, case-insensitive), e.g. `.mp3`.
    #[arg(long = "suffix", value_name = "SUFFIX")]
    suffixes: Vec<String>,
    /// Keep files whose path relative to the source matches this glob, e.g. `**/*.wav`.
    #[arg(long, conflicts_with = "suffixes")]
    glob: Option<String>,
    /// Where the outputs go (same kinds of location as the source).
    #[arg(long)]
    target: String,
    /// Output sample rate in Hz.
    #[arg(long)]
    sample_rate: u32,
    /// Output channels: keep, mono (average), stereo (mono duplicated), or a channel number.
    #[arg(long, default_value = "keep")]
    channels: ChannelOp,
    /// Output format: wav (16-bit), wav24, wav32, wavf32, flac (16-bit), flac24.
    #[arg(long, default_value = "wav")]
    format: AudioFormat,
    /// Rewrite outputs that already exist.
    #[arg(long)]
    overwrite: bool,
    /// Redo a source whose output is older than the source.
    #[arg(long)]
    redo_if_older: bool,
    /// Write the run summary (with the audio totals and failed files) as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Write failed files as JSON lines here (default: `_failures.jsonl` in a local target, else
    /// in the working directory).
    #[arg(long)]
    failures: Option<PathBuf>,
    /// Files per batch in every stage. Decoded files are large, and each stage holds up to
    /// 2 × workers × batch of them, so small batches bound memory (2: ~130 MB for 30 s stereo
    /// files at 48 kHz on 2 cores).
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    /// streaming, batch or debug.
    #[arg(long, env = "SLUICE_MODE")]
    mode: Option<sluice_pipeline::Mode>,
    /// Process only the files whose path hashes to shard INDEX of COUNT, e.g. `0/4`.
    #[arg(long, env = "SLUICE_SHARD", value_name = "INDEX/COUNT")]
    shard: Option<sluice_pipeline::Shard>,
    /// CPU cores to use (default: all).
    #[arg(long)]
    cpus: Option<f64>,
    /// Progress display: auto, bars, log, off.
    #[arg(long, default_value = "auto")]
    progress: ProgressArg,
}

/// Runs an audio command.
pub fn run(command: AudioCommand) -> anyhow::Result<()> {
    let AudioCommand::Resample(args) = command;
    let matcher = match (&args.glob, args.suffixes.is_empty()) {
        (Some(glob), _) => Matcher::glob(glob)?,
        (None, false) => Matcher::suffixes(&args.suffixes),
        (None, true) => {
            anyhow::bail!("say which files to convert: --suffix .mp3 or --glob '**/*.wav'")
        }
    };
    let failures = args
        .failures
        .clone()
        .unwrap_or_else(|| sluice_audio::job::default_failures_path(&args.target));
    let options = sluice_pipeline::RunOptions {
        mode: args.mode,
        cpus: args.cpus,
        shard: args.shard.unwrap_or(sluice_pipeline::Shard::ALL),
        failures_path: Some(failures.clone()),
        summary_path: args.summary.clone(),
        progress: args.progress.into(),
        ..Default::default()
    };
    let job = ResampleJob {
        source: args.source,
        matcher,
        target: args.target,
        sample_rate: args.sample_rate,
        channels: args.channels,
        format: args.format,
        overwrite: args.overwrite,
        redo_if_older: args.redo_if_older,
        options,
        batch_size: args.batch_size,
    };
    eprintln!("failures go to {}", failures.display());
    report(job.run()?, args.summary.as_deref())
}

/// Prints an audio run's report; an aborted run is an error after its report.
pub fn report(
    outcome: Result<JobReport, (String, JobReport)>,
    summary: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    match outcome {
        Ok(report) => {
            eprint!("{}", report.render());
            if let Some(path) = summary {
                eprintln!("summary written to {}", path.display());
            }
            Ok(())
        }
        Err((reason, report)) => {
            eprint!("{}", report.render());
            anyhow::bail!("run aborted: {reason} (rerun to continue: finished files are skipped)")
        }
    }
}
