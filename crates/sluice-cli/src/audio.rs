//! `sluice audio ...`: built-in audio jobs on the pipeline engine.

use std::path::{Path, PathBuf};

use sluice_audio::{AudioFormat, ChannelOp};
use sluice_core::storage::Matcher;
use sluice_stages::audio::job::{JobReport, ResampleJob};

use crate::ProgressArg;

/// Audio jobs.
#[derive(clap::Subcommand, Debug)]
pub enum AudioCommand {
    /// Decode, change channels, resample and write every matching file, mirroring the source tree
    /// under the target; reruns skip files whose output exists.
    Resample(ResampleArgs),
    /// Classify every matching file with an audio classifier (in-process, or a Sluice server's
    /// model by URL) into a Parquet table with one row per window; reruns skip classified files.
    /// Without --suffix or --glob it reads .wav, .flac, .mp3, .ogg and .m4a files.
    Classify(ClassifyArgs),
}

/// `sluice audio classify` options.
#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// The audio files.
    #[command(flatten)]
    files: FileArgs,
    /// The classifier: a model directory (model.onnx + sluice-model.toml) run in-process, or a
    /// server's model, http://HOST:PORT/v1/models/NAME.
    #[arg(long)]
    model: String,
    /// The table: a directory of Parquet part files (id, path, duration, start, end, label,
    /// score, scores), as Spark and DuckDB read them (`read_parquet('results.parquet/*.parquet')`),
    /// or a PostgreSQL table, `postgres://USER@HOST/DB?table=NAME&create=true` (a row per
    /// window, keyed by id and windows_index; the password from the URL or PGPASSWORD).
    #[arg(long)]
    output: PathBuf,
    /// With a remote model: the local directory where the server's --data-root is mounted;
    /// files under it are sent as paths, others as data.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Files per batch (per request when remote).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Workers classifying (default: balanced automatically).
    #[arg(long)]
    workers: Option<usize>,
    /// Write the run summary as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Write failed files as JSON lines here [default: OUTPUT/_failures.jsonl, or
    /// `_failures.jsonl` in the working directory for a table URL].
    #[arg(long)]
    failures: Option<PathBuf>,
    /// streaming, batch or debug.
    #[arg(long, env = "SLUICE_MODE")]
    mode: Option<sluice_pipeline::Mode>,
    /// Process only the files whose path hashes to shard INDEX of COUNT, e.g. `0/4`.
    #[arg(long, env = "SLUICE_SHARD", value_name = "INDEX/COUNT")]
    shard: Option<sluice_pipeline::Shard>,
    /// Progress display: auto, bars, log, off.
    #[arg(long, default_value = "auto")]
    progress: ProgressArg,
}

/// `sluice audio resample` options.
#[derive(clap::Args, Debug)]
pub struct ResampleArgs {
    /// The source files.
    #[command(flatten)]
    files: FileArgs,
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
    /// Write failed files as JSON lines here (default: `_failures.jsonl` in the target, a local
    /// directory or an object-storage prefix).
    #[arg(long)]
    failures: Option<PathBuf>,
    /// Files per batch. Memory does not depend on it: files stream in chunks (see
    /// --memory-budget).
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    /// Decoded audio held at once across the workers, e.g. 8MiB (default) or 64M; files of any
    /// length stream through in chunks sized to fit it.
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    memory_budget: Option<usize>,
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

/// A size in bytes: a number with an optional K, M or G (powers of 1024; `KiB`, `MB` and the
/// like read the same).
fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let number: usize = t[..digits]
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 64MiB or 1048576"))?;
    let shift = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("{text:?}: unknown unit {other:?}: use K, M or G")),
    };
    number
        .checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?}: must be above 0 and fit in memory"))
}

/// Runs an audio command.
pub fn run(command: AudioCommand) -> anyhow::Result<()> {
    let args = match command {
        AudioCommand::Resample(args) => args,
        AudioCommand::Classify(args) => return classify(args),
    };
    let Some(matcher) = args.files.matcher()? else {
        anyhow::bail!("say which files to convert: --suffix .mp3 or --glob '**/*.wav'")
    };
    let failures = args
        .failures
        .clone()
        .unwrap_or_else(|| sluice_stages::audio::job::default_failures_path(&args.target));
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
        source: args.files.source,
        matcher,
        target: args.target,
        sample_rate: args.sample_rate,
        channels: args.channels,
        format: args.format,
        overwrite: args.overwrite,
        redo_if_older: args.redo_if_older,
        options,
        batch_size: args.batch_size,
        memory_budget: args.memory_budget,
    };
    eprintln!("failures go to {}", failures.display());
    report(job.run()?, args.summary.as_deref())
}

fn classify(args: ClassifyArgs) -> anyhow::Result<()> {
    use sluice_pipeline::{ItemError, Pipeline, StageOptions};
    use sluice_stages::{InputAs, ModelSpec, ModelStage};

    let matcher = args
        .files
        .matcher()?
        .unwrap_or_else(|| Matcher::suffixes(&[".wav", ".flac", ".mp3", ".ogg", ".m4a"]));
    let source = sluice_core::storage::Location::parse_source(&args.files.source)?;
    let files = source.list_blocking(&matcher)?;
    let local = source.is_local();
    let remote = args.model.starts_with("http://") || args.model.starts_with("https://");
    let mut spec = if remote {
        ModelSpec::remote(&args.model)
    } else {
        ModelSpec::local(&args.model)
    };
    spec.input = if local { InputAs::File } else { InputAs::Url };
    spec.data_root = args.data_root.clone();
    spec.request_inputs = args.batch_size.max(1);
    let mut stage_options = StageOptions::default().batch_size(args.batch_size.max(1));
    if let Some(n) = args.workers {
        stage_options.workers = sluice_pipeline::Workers::Fixed(n.max(1));
    }
    let model = ModelStage::new("classify", spec, stage_options);
    let items = files.into_iter().map(move |f| {
        let path = match sluice_core::storage::local_path(&f.url) {
            Some(p) if local => p.to_string_lossy().into_owned(),
            _ => f.url.clone(),
        };
        (
            f.rel.clone(),
            serde_json::json!({"id": f.rel, "path": path}),
        )
    });
    // The model's output object ({duration, windows}) becomes top-level fields, and the sink
    // writes one row per window.
    let flatten = sluice_pipeline::map(
        "table",
        // Moving fields costs next to nothing: it takes no core from the classifier's pool.
        StageOptions::default().batch_size(64).resources(0.0, 0.0),
        |record: &serde_json::Value| {
            let mut record = record.clone();
            let map = record
                .as_object_mut()
                .ok_or_else(|| ItemError::permanent("not an object"))?;
            if let Some(serde_json::Value::Object(result)) = map.remove("result") {
                map.extend(result);
            }
            Ok(record)
        },
    );
    let (sink, written) = classify_sink(&args.output)?;
    let failures = args.failures.clone().unwrap_or_else(|| {
        sink.local_dir()
            .unwrap_or(Path::new(""))
            .join("_failures.jsonl")
    });
    let options = sluice_pipeline::RunOptions {
        mode: args.mode,
        shard: args.shard.unwrap_or(sluice_pipeline::Shard::ALL),
        failures_path: Some(failures.clone()),
        summary_path: args.summary.clone(),
        progress: args.progress.into(),
        skip_completed: true,
        ..Default::default()
    };
    let mut sink = sink.open("id", &options.shard.part_tag())?;
    eprintln!("failures go to {}", failures.display());
    let outcome = Pipeline::from_keyed(items)
        .stage(model)
        .stage(flatten)
        .run(&options, sink.as_mut());
    crate::report_run(
        outcome,
        Some(written),
        "rerun to continue: finished classified files are skipped",
    )
}

/// The window table `--output` names, built by the sink kind that takes it: a sink whose URL
/// scheme it has (`postgres://...?table=windows`), else Parquet parts in a directory; a row per
/// window, keyed by the file's id and its window's position. Returns where it writes, for the
/// closing line.
fn classify_sink(
    output: &Path,
) -> anyhow::Result<(
    std::sync::Arc<dyn sluice_pipeline::connector::SinkConfig>,
    String,
)> {
    use sluice_pipeline::config::{RawSection, Registry};
    let registry = Registry::default();
    let url = output.to_string_lossy();
    let defaults = [("key", "id"), ("explode", "windows")];
    if let Some(sink) = registry.sink_for_url(&url, &defaults) {
        let sink = sink?;
        let written = format!("table written to {}", sink.describe());
        return Ok((sink, written));
    }
    let mut table = toml::Table::new();
    table.insert("kind".into(), "parquet".into());
    table.insert("path".into(), url.as_ref().into());
    table.insert("key_field".into(), "id".into());
    table.insert("explode".into(), "windows".into());
    let section = RawSection {
        place: "--output".into(),
        table,
    };
    let (_, sink) = registry.build_sink(&section)?;
    let written = format!("table written to {}", sink.describe());
    Ok((sink, written))
}

/// Which files an audio job reads: shared by every `sluice audio` command.
#[derive(clap::Args, Debug)]
pub struct FileArgs {
    /// Where the files are: a directory, file://, s3://, gs://, az:// or memory:// URL.
    #[arg(long)]
    source: String,
    /// Keep files with this suffix (repeatable, case-insensitive), e.g. `.mp3`.
    #[arg(long = "suffix", value_name = "SUFFIX")]
    suffixes: Vec<String>,
    /// Keep files whose path relative to the source matches this glob, e.g. `**/*.wav`.
    #[arg(long, conflicts_with = "suffixes")]
    glob: Option<String>,
}

impl FileArgs {
    /// The files `--glob` or `--suffix` select; `None` when neither is given.
    fn matcher(&self) -> anyhow::Result<Option<Matcher>> {
        Ok(match &self.glob {
            Some(glob) => Some(Matcher::glob(glob)?),
            None if self.suffixes.is_empty() => None,
            None => Some(Matcher::suffixes(&self.suffixes)),
        })
    }
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
            crate::failed_records(report.run.failed)
        }
        Err((reason, report)) => {
            eprint!("{}", report.render());
            anyhow::bail!("run aborted: {reason} (rerun to continue: finished files are skipped)")
        }
    }
}
