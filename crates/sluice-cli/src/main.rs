//! The `sluice` binary: a thin shell over the library crates (server, pipelines and workers come
//! with their issues). Errors surface here as `anyhow` with their whole cause chain.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_models::m2m100::{EarlyStopping, GenerationOptions};
use sluice_models::source::{fetch_model, HubSettings, DEFAULT_MODEL};
use sluice_models::{ModelSource, M2M100};

/// Sluice: serve ML models and run inference pipelines.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Translate stdin, one text per line, to stdout, one translation per line in the same order.
    Translate(TranslateArgs),
    /// Download a model from the Hugging Face hub into a directory (for init containers).
    FetchModel(FetchArgs),
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
}

#[derive(clap::Args, Debug)]
struct FetchArgs {
    /// Hub id, e.g. facebook/m2m100_418M (optionally @revision).
    repo: String,
    /// Directory to write the model files into (created if missing).
    #[arg(long)]
    to: PathBuf,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Translate(args) => translate(args),
        Command::FetchModel(args) => fetch(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
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
    let dir = source.resolve(&hub_settings())?;
    let started = std::time::Instant::now();
    let model = M2M100::load(&dir, &candle_core::Device::Cpu)
        .with_context(|| format!("loading model {source}"))?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "model loaded");
    // Check both codes before reading any input, so a typo fails at once.
    model.tokenizer().lang_id(&args.from)?;
    model.tokenizer().lang_id(&args.to)?;
    let opts = GenerationOptions {
        num_beams: args.beams,
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens,
        length_penalty: args.length_penalty,
        early_stopping: args.early_stopping,
    };
    let batch = args.batch_size.max(1);
    // Read a few batches at a time: output starts early and memory stays bounded on long inputs,
    // while sorting inside the chunk still groups sentences of similar length.
    let chunk_len = batch * 8;
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut lines = stdin.lines();
    let (started, mut count) = (std::time::Instant::now(), 0usize);
    loop {
        let mut chunk = Vec::with_capacity(chunk_len);
        for line in lines.by_ref().take(chunk_len) {
            let line = line.context("reading stdin (is it UTF-8 text?)")?;
            chunk.push(line.trim_end_matches('\r').to_owned());
        }
        if chunk.is_empty() {
            break;
        }
        for t in model.translate(&chunk, &args.from, &args.to, &opts, batch)? {
            // A translation never spans lines: one input line, one output line.
            writeln!(out, "{}", t.replace(['\n', '\r'], " "))?;
        }
        out.flush()?;
        count += chunk.len();
    }
    tracing::info!(
        lines = count,
        seconds = started.elapsed().as_secs_f64(),
        "translated"
    );
    Ok(())
}

fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let (repo, revision) = match ModelSource::parse(&args.repo) {
        ModelSource::Hub { repo, revision } => (repo, revision),
        ModelSource::Dir(d) => anyhow::bail!(
            "{} looks like a path; fetch-model takes a hub id such as {DEFAULT_MODEL}",
            d.display()
        ),
    };
    let files = fetch_model(&repo, &revision, &args.to, &hub_settings())?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}
