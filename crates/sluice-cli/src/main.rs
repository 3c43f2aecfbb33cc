//! The `sluice` binary: a thin shell over the library crates. Errors surface here as `anyhow`
//! with their whole cause chain.

mod audio;
mod backfill;
mod push;
mod reference;
mod stress;

use std::io::{BufRead, BufWriter, Write};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_models::m2m100::{ComputeType, EarlyStopping};
use sluice_models::service::translation::Translation;
use sluice_models::service::{
    LoadContext, ServiceError, Spelling, TranslationLimits, TranslationParams,
};
use sluice_models::source::{fetch_model, HubSettings, DEFAULT_MODEL};
use sluice_models::{DeviceSpec, ModelSource};
use sluice_serve::batcher::BatchConfig;
use sluice_serve::{Limits, ServeConfig};

/// Sluice: serve ML models and run inference pipelines.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What the exit status says, for schedulers that alert on it (also in docs/guides/operations.md).
const EXIT_CODES: &str = "Exit status: 0 everything done; 1 error or aborted run; 2 usage error; \
3 completed, but some records failed (run, worker, audio: they are in the failures file, and a \
rerun retries them).";

/// The exit status of a run that completed with failed records.
const EXIT_FAILED_RECORDS: u8 = 3;

/// A run that completed with failed records: not an error, but not everything done either.
#[derive(Debug)]
pub(crate) struct FailedRecords {
    /// How many failed.
    pub count: u64,
    /// What became of them.
    pub note: &'static str,
}

impl std::fmt::Display for FailedRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} record(s) failed; {}", self.count, self.note)
    }
}

impl std::error::Error for FailedRecords {}

/// `Ok` when nothing failed, else the [`FailedRecords`] that makes the exit status 3.
pub(crate) fn failed_records(failed: u64) -> anyhow::Result<()> {
    match failed {
        0 => Ok(()),
        count => Err(FailedRecords {
            count,
            note: "they are listed in the failures file and a rerun retries them",
        }
        .into()),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Translate stdin, one text per line, to stdout, one translation per line in the same order
    /// (a line that fails gives an empty line and its error on stderr, and the exit status 3).
    Translate(TranslateArgs),
    /// Download a model from the Hugging Face hub into a directory (for init containers).
    FetchModel(FetchArgs),
    /// Run a pipeline described in a TOML file (source, stages, sink).
    Run(RunArgs),
    /// Process a pipeline's items from a NATS JetStream stream until stopped (SIGTERM drains):
    /// run as many workers as you like, on any machines.
    Worker(WorkerArgs),
    /// Exit 0 when a URL (a server's /healthz) answers 2xx: for container health checks.
    Healthcheck(HealthcheckArgs),
    /// Serve models over HTTP: POST /translation, /v1/models/{name}/infer, the Open Inference
    /// Protocol's /v2, health, readiness and metrics.
    Serve(ServeArgs),
    /// Load-test a running server: send translation requests and report latency and throughput.
    Stress(stress::StressArgs),
    /// Audio jobs: resample a tree of audio files, or classify them into a table, between local
    /// disk, object storage and PostgreSQL.
    #[command(subcommand)]
    Audio(audio::AudioCommand),
    /// Write the reference pages (docs/reference) from the code.
    #[command(hide = true)]
    Reference(ReferenceArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// A model to serve, as NAME=SOURCE or SOURCE; repeat for several (env: comma-separated).
    /// SOURCE is an M2M100 directory (Hugging Face layout) or hub id (downloaded on first start),
    /// or an audio classifier directory (model.onnx + sluice-model.toml). Unnamed, a translation
    /// model is called m2m100 and a classifier after its directory.
    #[arg(long = "model", env = "SLUICE_MODEL", value_delimiter = ',', default_value = DEFAULT_MODEL)]
    models: Vec<String>,
    /// Directory that `path` inputs of /v1/models/{name}/infer are confined to (a mounted
    /// volume); without it, path inputs are refused.
    #[arg(long, env = "SLUICE_DATA_ROOT")]
    data_root: Option<std::path::PathBuf>,
    /// Object-storage URL prefix that `url` inputs may read under (e.g. s3://bucket/audio/);
    /// repeat for several. Credentials come from the usual environment variables.
    #[arg(long = "allow-url", env = "SLUICE_ALLOW_URLS", value_delimiter = ',')]
    allow_urls: Vec<String>,
    /// Audio windows an audio classifier's queue holds at most (503 beyond).
    #[arg(long, env = "SLUICE_WINDOW_CAPACITY", default_value_t = ServeConfig::default().window_capacity)]
    window_capacity: NonZeroUsize,
    /// Largest file read whole for one path or url input of a translation model, in bytes (audio
    /// inputs stream at any length).
    #[arg(long, env = "SLUICE_MAX_INPUT_BYTES", default_value_t = ServeConfig::default().max_input_bytes)]
    max_input_bytes: u64,
    /// Address to listen on.
    #[arg(long, env = "SLUICE_HOST", default_value = "0.0.0.0")]
    host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "SLUICE_PORT", default_value_t = 9527)]
    port: u16,
    /// Most records in one batch.
    #[arg(long, env = "SLUICE_MAX_BATCH_SIZE", default_value_t = BatchConfig::default().max_items)]
    max_batch_size: NonZeroUsize,
    /// Most padded source tokens (longest record × records) in one batch.
    #[arg(long, env = "SLUICE_MAX_BATCH_TOKENS", default_value_t = BatchConfig::default().max_tokens)]
    max_batch_tokens: usize,
    /// Longest wait, in milliseconds, for a batch to fill while the model is idle.
    #[arg(long, env = "SLUICE_MAX_WAIT_MS", default_value_t = BatchConfig::default().max_wait.as_millis() as u64)]
    max_wait_ms: u64,
    /// Records queued or being translated at most; more are refused with 503 + Retry-After.
    #[arg(long, env = "SLUICE_QUEUE_CAPACITY", default_value_t = BatchConfig::default().queue_capacity)]
    queue_capacity: NonZeroUsize,
    /// Compute threads, each running one batch at a time.
    #[arg(long, env = "SLUICE_COMPUTE_WORKERS", default_value_t = BatchConfig::default().workers)]
    compute_workers: NonZeroUsize,
    /// Most records in one request (at most the queue capacity).
    #[arg(long, env = "SLUICE_MAX_RECORDS", default_value_t = Limits::default().max_records)]
    max_records: usize,
    /// Largest request body in bytes.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// An API key callers must send as `Authorization: Bearer KEY`; repeat for several (env:
    /// comma-separated). Without any, the server takes every caller.
    #[arg(
        long = "api-key",
        env = "SLUICE_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// A file of API keys, one per line (blank lines and `#` comments skipped), added to
    /// --api-key: for keys mounted from a secret.
    #[arg(long, env = "SLUICE_API_KEY_FILE")]
    api_key_file: Option<std::path::PathBuf>,
    /// Route groups served without a key when keys are set: health (/healthz, /readyz,
    /// /v2/health/*), metrics (/metrics), openapi (/openapi.json); "none" for none.
    #[arg(
        long,
        env = "SLUICE_OPEN_ROUTES",
        value_delimiter = ',',
        default_value = "health,metrics"
    )]
    open_routes: Vec<String>,
    /// Requests a second each caller may send (per API key, or per client address without
    /// keys); past it, 429 with Retry-After. Off by default.
    #[arg(long, env = "SLUICE_RATE_LIMIT")]
    rate_limit: Option<std::num::NonZeroU32>,
    /// Requests a caller may send at once above --rate-limit (default: the rate).
    #[arg(long, env = "SLUICE_RATE_LIMIT_BURST")]
    rate_limit_burst: Option<std::num::NonZeroU32>,
    /// An origin browsers may call the server from (CORS), e.g. `https://app.example.com`, or `*`
    /// for any; repeat for several (env: comma-separated). Off by default.
    #[arg(
        long = "cors-origin",
        env = "SLUICE_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// Bytes of requests the server holds at once, each counted as twice its body (the body and
    /// what is decoded from it); a request past it is refused with 503 and Retry-After.
    #[arg(long, env = "SLUICE_MAX_BUFFERED_BYTES", default_value_t = ServeConfig::default().max_buffered_bytes)]
    max_buffered_bytes: usize,
    /// Most source tokens per record [default: the model's max_position_embeddings].
    #[arg(long, env = "SLUICE_MAX_INPUT_TOKENS")]
    max_input_tokens: Option<usize>,
    /// Most beams a request may ask for.
    #[arg(long, env = "SLUICE_MAX_BEAMS", default_value_t = Limits::default().max_beams)]
    max_beams: NonZeroUsize,
    /// Most new tokens a request may ask for (also caps the model's default).
    #[arg(long, env = "SLUICE_MAX_NEW_TOKENS", default_value_t = Limits::default().max_new_tokens)]
    max_new_tokens: NonZeroUsize,
    /// Deadline in milliseconds for requests that do not send x-sluice-deadline-ms (504 after it).
    #[arg(long, env = "SLUICE_DEADLINE_MS")]
    deadline_ms: Option<u64>,
    /// Seconds shutdown waits for in-flight requests.
    #[arg(long, env = "SLUICE_SHUTDOWN_TIMEOUT", default_value_t = ServeConfig::default().shutdown_timeout.as_secs())]
    shutdown_timeout: u64,
    /// Seconds a refused client is told to wait (Retry-After) while a model loads, while the
    /// server drains, and before a queue's throughput is measured; after that a full queue's
    /// Retry-After is the time the measured throughput needs to drain it (1 to 60 s).
    #[arg(long, env = "SLUICE_RETRY_AFTER", default_value_t = ServeConfig::default().retry_after)]
    retry_after: u64,
    /// Where translation models run: cpu, cuda, cuda:N, or auto (a GPU when this build has
    /// CUDA and one is present). Audio classifiers run on the CPU.
    #[arg(long, env = "SLUICE_DEVICE", default_value_t = ServeConfig::default().device)]
    device: DeviceSpec,
    /// How translation models compute: int8 (int8 weights and activations, float32 scales),
    /// float32, or auto (int8 on the CPU, float32 on a GPU).
    #[arg(long, env = "SLUICE_COMPUTE_TYPE", default_value_t = ServeConfig::default().compute_type)]
    compute_type: ComputeType,
}

#[derive(clap::Args, Debug)]
struct TranslateArgs {
    /// Model directory (Hugging Face layout) or hub id such as facebook/m2m100_418M.
    #[arg(long, env = "SLUICE_MODEL", default_value = DEFAULT_MODEL)]
    model: String,
    /// Source language code (en, fr, ja, ...).
    #[arg(long)]
    from: String,
    /// Target language code.
    #[arg(long)]
    to: String,
    /// Beams for beam search (1 = greedy); default from the model's generation config.
    #[arg(long)]
    beams: Option<usize>,
    /// Maximum generated tokens per sentence.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Minimum generated tokens before the sentence may end.
    #[arg(long)]
    min_new_tokens: Option<usize>,
    /// Length penalty exponent for beam search.
    #[arg(long)]
    length_penalty: Option<f64>,
    /// Beam stopping rule: true, false or never.
    #[arg(long)]
    early_stopping: Option<EarlyStopping>,
    /// Sentences translated together.
    #[arg(long, env = "SLUICE_BATCH_SIZE", default_value_t = 16)]
    batch_size: usize,
    /// Most source tokens per line; a longer line fails alone (an empty output line, its error
    /// on stderr, exit status 3) [default: no limit].
    #[arg(long)]
    max_input_tokens: Option<usize>,
    /// int8 (int8 weights and activations, float32 scales), float32, or auto (int8: this command
    /// runs on the CPU).
    #[arg(long, env = "SLUICE_COMPUTE_TYPE", default_value = "auto")]
    compute_type: ComputeType,
    /// Print the generated token ids (space-separated, decoder start first) instead of text.
    #[arg(long)]
    output_ids: bool,
}

#[derive(clap::Args, Debug)]
struct ReferenceArgs {
    /// The directory to write them into.
    dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct FetchArgs {
    /// Hub id, e.g. facebook/m2m100_418M (optionally @revision).
    repo: String,
    /// Directory to write the model files into (created if missing).
    #[arg(long)]
    to: PathBuf,
}

/// What `sluice run` and `sluice worker` share: the pipeline file and what changes it.
#[derive(clap::Args, Debug)]
struct PipelineArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// Overrides a setting of the file, e.g. `stage.0.batch_size=8`, `run.cpus=4` or
    /// `source.url=nats://nats:4222` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// A variable for `${NAME}` in the file's strings (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// The run's logical date, YYYY-MM-DD, `today` or `yesterday` (UTC), for `${date}`,
    /// `${yesterday}`, `${tomorrow}` and `${date:%Y/%m/%d}`-style formats (default: today).
    #[arg(long, env = "SLUICE_DATE", value_name = "YYYY-MM-DD")]
    date: Option<String>,
    /// Progress display: auto (bars on a terminal, a log line every 10 s otherwise), bars, log, off.
    #[arg(long, default_value = "auto")]
    progress: ProgressArg,
    /// Serve Prometheus metrics at http://ADDR/metrics while it runs (e.g. 0.0.0.0:9528).
    #[arg(long, env = "SLUICE_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// How translate and model stages compute unless their section says `compute_type`: int8,
    /// float32 or auto (int8 on the CPU).
    #[arg(long, env = "SLUICE_COMPUTE_TYPE")]
    compute_type: Option<ComputeType>,
}

impl PipelineArgs {
    /// The file read with its variables and `--set`s applied, and the defaults of its stages.
    fn load(
        &self,
    ) -> anyhow::Result<(
        sluice_pipeline::config::RawConfig,
        sluice_pipeline::config::Vars,
        sluice_stages::ModelDefaults,
    )> {
        let vars = sluice_pipeline::config::Vars::from_args(self.date.as_deref(), &self.vars)?;
        let raw = sluice_pipeline::config::RawConfig::load_with(&self.pipeline, &self.sets, &vars)?;
        let defaults = sluice_stages::ModelDefaults {
            compute_type: self.compute_type.unwrap_or_default(),
        };
        Ok((raw, vars, defaults))
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    common: PipelineArgs,
    /// Overrides the file's mode: streaming, batch or debug.
    #[arg(long, env = "SLUICE_MODE")]
    mode: Option<sluice_pipeline::Mode>,
    /// Backfill: one run per date of START..END (both included), each as with --date, with its
    /// own outputs where the file uses `${date}`; a line per date and one overall, and the
    /// worst date's exit status.
    #[arg(long, value_name = "START..END", conflicts_with = "date")]
    dates: Option<String>,
    /// Dates of a backfill run at once.
    #[arg(long, default_value_t = 1, requires = "dates")]
    parallel: usize,
    /// A Prometheus Pushgateway to push the run's outcome to when it ends (last success and
    /// completion times, success, duration, items by outcome), e.g. http://pushgateway:9091.
    #[arg(long, env = "SLUICE_PUSH_METRICS", value_name = "URL")]
    push_metrics: Option<String>,
    /// The job label of pushed metrics (the group is /metrics/job/JOB/pipeline/FILE-STEM).
    #[arg(long, env = "SLUICE_PUSH_JOB", default_value = "sluice")]
    push_job: String,
    /// Process only the items whose key hashes to shard INDEX of COUNT, e.g. `0/4`.
    #[arg(long, env = "SLUICE_SHARD", value_name = "INDEX/COUNT")]
    shard: Option<sluice_pipeline::Shard>,
    /// Process every item even if its output exists (the default skips finished items).
    #[arg(long)]
    no_skip_completed: bool,
}

#[derive(clap::Args, Debug)]
struct WorkerArgs {
    /// The pipeline file's `[source]` is a broker's (kind = "nats").
    #[command(flatten)]
    common: PipelineArgs,
    /// Stop once the stream has nothing pending and nothing awaiting an acknowledgement.
    #[arg(long, env = "SLUICE_EXIT_WHEN_DRAINED")]
    exit_when_drained: bool,
}

#[derive(clap::Args, Debug)]
struct HealthcheckArgs {
    /// The URL to check.
    #[arg(
        long,
        env = "SLUICE_HEALTHCHECK_URL",
        default_value = "http://127.0.0.1:9527/healthz"
    )]
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ProgressArg {
    Auto,
    Bars,
    Log,
    Off,
}

impl From<ProgressArg> for sluice_pipeline::Progress {
    fn from(arg: ProgressArg) -> Self {
        match arg {
            ProgressArg::Auto => sluice_pipeline::Progress::Auto,
            ProgressArg::Bars => sluice_pipeline::Progress::Bars,
            ProgressArg::Log => sluice_pipeline::Progress::Log,
            ProgressArg::Off => sluice_pipeline::Progress::Off,
        }
    }
}

/// Applies the command line's overrides to a pipeline file's run options.
fn apply_run_args(options: &mut sluice_pipeline::RunOptions, args: &RunArgs) {
    if let Some(mode) = args.mode {
        options.mode = Some(mode);
    }
    if let Some(shard) = args.shard {
        options.shard = shard;
    }
    if args.no_skip_completed {
        options.skip_completed = false;
    }
    options.progress = args.common.progress.into();
}

/// Serves the pipeline metrics at `addr` for the rest of the process.
fn serve_metrics(addr: Option<&str>) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        let bound = sluice_serve::metrics::spawn_endpoint(listener)?;
        sluice_pipeline::describe_metrics();
        tracing::info!("metrics at http://{bound}/metrics");
    }
    Ok(())
}

fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let (raw, _, defaults) = args.common.load()?;
    serve_metrics(args.common.metrics_addr.as_deref())?;
    let registry = sluice_stages::registry_with(defaults);
    let mut config = sluice_pipeline::config::PipelineConfig::from_raw_with(raw, &registry)?;
    config.options.progress = args.common.progress.into();
    let options = sluice_pipeline::connector::WorkerOptions {
        exit_when_drained: args.exit_when_drained,
        ..Default::default()
    };
    sluice_pipeline::connector::stop_on_signals(options.stop.clone())
        .context("watching for SIGTERM")?;
    let outcome = config.run_worker(options);
    let messages = match &outcome {
        Ok((_, counts)) => Some(format!("messages: {}", serde_json::to_string(counts)?)),
        Err(_) => None,
    };
    report_run(
        outcome.map(|(summary, _)| summary),
        messages,
        "unacknowledged items are redelivered",
    )
}

fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let status = rt.block_on(async {
        reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(args.timeout.max(0.1)))
            .build()?
            .get(&args.url)
            .send()
            .await
            .map(|r| r.status())
    });
    match status {
        Ok(s) if s.is_success() => Ok(()),
        Ok(s) => anyhow::bail!("{} answered {s}", args.url),
        Err(e) => anyhow::bail!("{}: {e}", args.url),
    }
}

fn run_pipeline(args: RunArgs) -> anyhow::Result<()> {
    if let Some(range) = &args.dates {
        return backfill::run(range, args.parallel);
    }
    let (raw, vars, defaults) = args.common.load()?;
    serve_metrics(args.common.metrics_addr.as_deref())?;
    let mut pipeline = sluice_stages::load(raw, defaults)?;
    apply_run_args(pipeline.options_mut(), &args);
    let config = match pipeline {
        sluice_stages::AnyPipeline::Audio(pipeline) => {
            let summary = pipeline.options.summary_path.clone();
            return audio::report(pipeline.run()?, summary.as_deref());
        }
        sluice_stages::AnyPipeline::Records(config) => config,
    };
    let written = config
        .options
        .summary_path
        .clone()
        .map(|p| format!("summary written to {}", p.display()));
    let outcome = config.run();
    let pushed = args.push_metrics.as_deref().map(|gateway| {
        let (summary, completed) = match &outcome {
            Ok(s) => (Some(s), true),
            Err(sluice_pipeline::RunError::Aborted { summary, .. }) => (Some(&**summary), false),
            Err(_) => (None, false),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let body = push::exposition(
            &push::Outcome {
                summary,
                completed,
                date: Some(vars.date()),
            },
            now,
        );
        push::push(
            &push::group_url(gateway, &args.push_job, &args.common.pipeline),
            body,
        )
    });
    let reported = report_run(
        outcome,
        written,
        "rerun to continue: finished items are skipped",
    );
    match pushed {
        Some(Err(e)) if reported.is_ok() => Err(e),
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            reported
        }
        _ => reported,
    }
}

/// Prints a run's summary (and `written`, where the results went); an aborted run is an error
/// after its summary, with `after_abort` saying what becomes of the unfinished work.
pub(crate) fn report_run(
    outcome: Result<sluice_pipeline::RunSummary, sluice_pipeline::RunError>,
    written: Option<String>,
    after_abort: &str,
) -> anyhow::Result<()> {
    match outcome {
        Ok(summary) => {
            // One write: stage programs share this stderr, and a line split across writes (as
            // eprintln! does, the newline apart) can take their output in the middle, which
            // breaks whoever parses the `messages:` line.
            let mut report = summary.render();
            if let Some(w) = written {
                report.push_str(&w);
                report.push('\n');
            }
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), report.as_bytes());
            failed_records(summary.failed)
        }
        Err(sluice_pipeline::RunError::Aborted { reason, summary }) => {
            eprint!("{}", summary.render());
            anyhow::bail!("run aborted: {reason} ({after_abort})")
        }
        Err(e) => Err(e.into()),
    }
}

fn main() -> std::process::ExitCode {
    tune_for_inference();
    let cli = Cli::parse();
    // A server's log is its record of what happened; one-shot commands stay quiet unless asked.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Run(_) | Command::Worker(_) | Command::Audio(_) => {
            "info,async_nats=warn"
        }
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match std::env::var("SLUICE_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().flatten_event(true).init(),
        Ok("text") | Err(_) => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        Ok(other) => {
            eprintln!("error: SLUICE_LOG_FORMAT={other:?}: use \"text\" (the default) or \"json\"");
            return std::process::ExitCode::from(2);
        }
    }
    let result = match cli.command {
        Command::Translate(args) => translate(args),
        Command::FetchModel(args) => fetch(args),
        Command::Run(args) => run_pipeline(args),
        Command::Worker(args) => worker(args),
        Command::Healthcheck(args) => healthcheck(args),
        Command::Audio(command) => audio::run(command),
        Command::Serve(args) => serve(args),
        Command::Stress(args) => runtime().and_then(|rt| rt.block_on(stress::run(args))),
        Command::Reference(args) => {
            use clap::CommandFactory;
            reference::write(&args.dir, &Cli::command()).map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<FailedRecords>() || e.is::<backfill::DatesWithFailedRecords>() => {
            eprintln!("finished: {e}");
            std::process::ExitCode::from(EXIT_FAILED_RECORDS)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn hub_settings() -> HubSettings {
    HubSettings {
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ..HubSettings::from_env()
    }
}

fn translate(args: TranslateArgs) -> anyhow::Result<()> {
    let source = ModelSource::parse(&args.model);
    let context = LoadContext {
        device: DeviceSpec::Cpu,
        compute: args.compute_type,
        hub: hub_settings(),
        objects: sluice_models::source::ObjectSettings::from_env(),
        translation: TranslationLimits {
            max_input_tokens: args.max_input_tokens.or(Some(usize::MAX)),
            ..TranslationLimits::none()
        },
    };
    let started = std::time::Instant::now();
    let model = sluice_models::service::load(&source, &context)
        .with_context(|| format!("loading model {source}"))?;
    let Some(service) = model.translation() else {
        anyhow::bail!(
            "{source} is an {} model; sluice translate runs translation models",
            model.kind()
        );
    };
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "model loaded");
    // Checked before reading any input, so a typo fails at once.
    let params = TranslationParams {
        from: args.from.clone(),
        to: args.to.clone(),
        beams: args.beams,
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens,
        length_penalty: args.length_penalty,
        early_stopping: args.early_stopping,
    };
    let request = service.check(&params, Spelling::Cli)?;
    let batch = args.batch_size.max(1);
    // Read a few batches at a time: output starts early and memory stays bounded on long inputs,
    // while sorting inside the chunk still groups sentences of similar length.
    let chunk_len = batch * 8;
    let mut lines = std::io::stdin().lock().lines();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (started, cpu_started) = (std::time::Instant::now(), cpu_seconds());
    let (mut count, mut failed) = (0usize, 0u64);
    loop {
        let mut chunk = Vec::with_capacity(chunk_len);
        for line in lines.by_ref().take(chunk_len) {
            let line = line.context("reading stdin (is it UTF-8 text?)")?;
            chunk.push(line.trim_end_matches('\r').to_owned());
        }
        if chunk.is_empty() {
            break;
        }
        let translated = service.translate(&request, &chunk, batch);
        failed += write_translations(&mut out, translated, count, args.output_ids)?;
        out.flush()?;
        count += chunk.len();
    }
    tracing::info!(
        lines = count,
        failed,
        seconds = started.elapsed().as_secs_f64(),
        cpu_seconds = cpu_seconds() - cpu_started,
        "translated"
    );
    match failed {
        0 => Ok(()),
        count => Err(FailedRecords {
            count,
            note: "each gave an empty output line, with its error above",
        }
        .into()),
    }
}

/// Writes one line per translation (its ids with `ids`); a text that failed keeps its place as an
/// empty line, its error on stderr numbered from `first + 1`. Returns how many failed.
fn write_translations(
    out: &mut impl Write,
    translated: Vec<Result<Translation, ServiceError>>,
    first: usize,
    ids: bool,
) -> anyhow::Result<u64> {
    let mut failed = 0;
    for (i, translated) in translated.into_iter().enumerate() {
        let line = match translated {
            Ok(t) if ids => {
                let ids: Vec<String> = t.ids.iter().map(u32::to_string).collect();
                ids.join(" ")
            }
            // A translation never spans lines: one input line, one output line.
            Ok(t) => t.text.replace(['\n', '\r'], " "),
            Err(e) => {
                failed += 1;
                eprintln!("line {}: {e}", first + i + 1);
                String::new()
            }
        };
        writeln!(out, "{line}")?;
    }
    Ok(failed)
}

/// Process-wide settings for model inference, applied before any thread starts.
///
/// - Large allocations come from the heap instead of fresh `mmap`s: decoding allocates logits and
///   activations of megabytes every step, and with glibc's defaults each one was new zeroed pages
///   (9% of a batch-16 decode in page faults, measured with perf).
/// - candle's element-wise thread pool spins 25,000 times after every operation before sleeping;
///   on a machine with as many cores as threads that spinning takes the cores the int8 kernels
///   need (batch 16, 5 beams: 6.6 s at the default, 6.2 s at 200 spins, 6.1 s at 0; batch 1
///   greedy is slowest at 0). An explicit `CANDLE_BARRIER_POOL_SPIN_LIMIT` is kept.
fn tune_for_inference() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; no other thread exists yet.
    unsafe {
        // 32 MiB is the most glibc accepts on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
    }
}

/// CPU time this process has used (all threads, user and system), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The server's access settings from its flags: keys from --api-key and --api-key-file.
fn access_config(
    mut api_keys: Vec<String>,
    key_file: Option<&std::path::Path>,
    open_routes: &[String],
    rate: Option<std::num::NonZeroU32>,
    burst: Option<std::num::NonZeroU32>,
    cors_origins: Vec<String>,
) -> anyhow::Result<sluice_serve::AccessConfig> {
    if let Some(path) = key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--api-key-file {}", path.display()))?;
        api_keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let open = open_routes
        .iter()
        .filter(|g| g.as_str() != "none")
        .map(|g| {
            sluice_serve::OpenRoutes::parse(g).map_err(|e| anyhow::anyhow!("--open-routes: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(sluice_serve::AccessConfig {
        api_keys,
        open,
        rate,
        burst,
        cors_origins,
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let queue_capacity = args.queue_capacity;
    if args.max_records > queue_capacity.get() {
        tracing::warn!(
            max_records = args.max_records,
            queue_capacity,
            "--max-records exceeds --queue-capacity; lowering it so every valid request fits"
        );
    }
    let models = args
        .models
        .iter()
        .map(|m| sluice_serve::ModelEntry::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    // A device this build or machine lacks fails now, not after a long download.
    args.device.select()?;
    let config = ServeConfig {
        models,
        window_capacity: args.window_capacity,
        data_root: args.data_root,
        allow_urls: args.allow_urls,
        max_input_bytes: args.max_input_bytes,
        storage_options: Vec::new(),
        batch: BatchConfig {
            max_items: args.max_batch_size,
            max_tokens: args.max_batch_tokens,
            max_wait: Duration::from_millis(args.max_wait_ms),
            queue_capacity,
            workers: args.compute_workers,
        },
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_records: args.max_records.min(queue_capacity.get()),
            max_input_tokens: args.max_input_tokens,
            max_beams: args.max_beams,
            max_new_tokens: args.max_new_tokens,
        },
        max_buffered_bytes: args.max_buffered_bytes,
        access: access_config(
            args.api_keys,
            args.api_key_file.as_deref(),
            &args.open_routes,
            args.rate_limit,
            args.rate_limit_burst,
            args.cors_origins,
        )?,
        deadline: args.deadline_ms.map(Duration::from_millis),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        retry_after: args.retry_after,
        device: args.device,
        compute_type: args.compute_type,
    };
    let addr = std::net::SocketAddr::new(args.host, args.port);
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        sluice_serve::serve(listener, config, sluice_core::signal::terminated()).await
    })
}

fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let (repo, revision) = match ModelSource::parse(&args.repo) {
        ModelSource::Hub { repo, revision } => (repo, revision),
        ModelSource::Dir(d) => anyhow::bail!(
            "{} looks like a path; fetch-model takes a hub id such as {DEFAULT_MODEL}",
            d.display()
        ),
        ModelSource::Object(url) => anyhow::bail!(
            "{url} is in object storage: serve or run it by that URL (it is copied into the \
             model cache, SLUICE_MODEL_CACHE), or copy it with your store's tools"
        ),
    };
    let files = fetch_model(&repo, &revision, &args.to, &hub_settings())?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}
