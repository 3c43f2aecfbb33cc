//! Audio pipelines in TOML for `sluice run`: a `match_files` source, then `load_audio`, any
//! `channels` / `resample` stages, and an `audio` or `features` sink. The file is read by the
//! engine's [`RawConfig`] and has the shape of every pipeline file, so `[run]`, shared stage
//! settings, `--set` (`sink.path=...` included) and `file:line` errors work as everywhere.
//!
//! ```toml
//! [source]
//! kind = "match_files"
//! url = "s3://bucket/raw"      # or a directory
//! suffix = [".mp3", ".wav"]    # or glob = "**/*.flac"
//!
//! [[stage]]
//! kind = "load_audio"          # takes the shared settings (workers, batch_size, ...): the
//!                              # steps below run inside each file's streaming conversion
//!
//! [[stage]]
//! kind = "channels"
//! to = "mono"                  # keep | mono | stereo | a channel number
//!
//! [[stage]]
//! kind = "resample"
//! sample_rate = 16000
//!
//! [sink]
//! kind = "audio"               # or features (.npy arrays)
//! path = "out/16k"             # or s3://, gs://, az:// URLs
//! format = "wav"               # wav, wav24, wav32, wavf32, flac, flac24
//! redo_if_older = false
//! ```

use serde::Deserialize;
use sluice_core::storage::{local_path, Matcher};
use sluice_pipeline::config::{
    section, ConfigError, ConfigProblem, Kind, KindDoc, Kinds, RawConfig, RawSection, RawStage,
};
use sluice_pipeline::{RunError, RunOptions};

use crate::audio::convert::Step;
use crate::audio::job::{default_failures_path, Conversion, JobReport};
use crate::audio::paths::{PathRule, Suffix};
use sluice_audio::encode::Output;
use sluice_audio::{AudioFormat, ChannelOp};

/// The source kind that makes a pipeline file an audio pipeline.
pub const SOURCE_KIND: &str = "match_files";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AudioSourceSection {
    #[allow(dead_code)]
    kind: String,
    url: String,
    #[serde(default)]
    suffix: Vec<String>,
    glob: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsSection {
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResampleSection {
    sample_rate: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkSection {
    path: String,
    format: Option<String>,
    #[serde(default)]
    from_prefix: String,
    #[serde(default)]
    to_prefix: String,
    /// Replaces the extension; default: the format's (`.wav`, `.flac`, or `.npy` added).
    suffix: Option<String>,
    #[serde(default)]
    redo_if_older: bool,
}

/// A checked audio pipeline, ready to run.
pub struct AudioPipeline {
    source: String,
    matcher: Matcher,
    load_options: sluice_pipeline::StageOptions,
    steps: Vec<Step>,
    memory_budget: Option<usize>,
    target: String,
    write: Output,
    rule: PathRule,
    redo_if_older: bool,
    /// The run options the file sets (command-line flags may change them before running).
    pub options: RunOptions,
}

/// What an audio sink writes, where, and whether it redoes outputs older than their source.
type AudioSink = (Output, String, PathRule, bool);

/// Builds a step of the streaming conversion from its `[[stage]]` table.
type StepBuilder = fn(&RawStage) -> Result<Step, ConfigError>;

/// Builds an audio `[sink]` from its table (without `kind`).
type SinkBuilder = fn(&RawSection) -> Result<AudioSink, ConfigError>;

/// The steps an audio pipeline's stages after `load_audio` may be.
fn steps() -> Kinds<StepBuilder> {
    let step = |doc, build: StepBuilder| Kind::new(doc, build);
    let moved = || KindDoc::bare("replaced by the `audio` and `features` sinks");
    Kinds::new("[[stage]]")
        .with(
            "channels",
            step(
                KindDoc::of::<ChannelsSection>("keep, mix to mono or stereo, or pick a channel"),
                channels_step,
            ),
        )
        .with(
            "resample",
            step(
                KindDoc::of::<ResampleSection>("resample to a rate, streaming (rubato)"),
                resample_step,
            ),
        )
        .with("write_audio", step(moved(), moved_to_sink))
        .with("write_features", step(moved(), moved_to_sink))
}

/// The sinks an audio pipeline may write.
fn sinks() -> Kinds<SinkBuilder> {
    let audio: SinkBuilder = |s| build_sink(s, "audio");
    let features: SinkBuilder = |s| build_sink(s, "features");
    Kinds::new("[sink]")
        .with(
            "audio",
            Kind::new(
                KindDoc::of::<SinkSection>("encoded audio files (WAV, FLAC), one per source file"),
                audio,
            ),
        )
        .with(
            "features",
            Kind::new(
                KindDoc::of::<SinkSection>("decoded samples as `.npy` arrays, one per source file"),
                features,
            ),
        )
}

/// The kinds of an audio pipeline file, each with what it says about itself: the `[source]`,
/// the `[[stage]]` steps after `load_audio`, and the `[sink]`s.
pub fn reference() -> [(&'static str, Vec<(&'static str, KindDoc)>); 3] {
    let source = KindDoc::of::<AudioSourceSection>(
        "audio files under a directory or object-storage URL (makes an audio pipeline)",
    );
    let load = KindDoc::bare("decodes each file (first stage; takes the shared stage settings)");
    let owned = |kinds: Vec<(&'static str, &KindDoc)>| {
        kinds
            .into_iter()
            .map(|(k, d)| (k, d.clone()))
            .collect::<Vec<_>>()
    };
    let mut stages = vec![("load_audio", load)];
    stages.extend(owned(steps().docs().collect()));
    [
        ("[source]", vec![(SOURCE_KIND, source)]),
        ("[[stage]]", stages),
        ("[sink]", owned(sinks().docs().collect())),
    ]
}

/// Builds `[sink]` with the builder its kind names.
fn pick_sink(sink: &RawSection) -> Result<AudioSink, ConfigError> {
    let place = &sink.place;
    let Some(kind) = sink.table.get("kind").and_then(|k| k.as_str()) else {
        return Err(ConfigError::new(
            place,
            ConfigProblem::MissingKind {
                part: "[sink]".into(),
                expected: "\"audio\" or \"features\"".into(),
            },
        ));
    };
    let Some(build) = sinks().get(kind).copied() else {
        return Err(ConfigError::new(
            place,
            ConfigProblem::UnknownKind {
                part: format!("[sink] ({kind})"),
                kind: kind.into(),
                expected: "an audio pipeline writes \"audio\" or \"features\"".into(),
            },
        ));
    };
    let mut rest = sink.clone();
    rest.table.remove("kind");
    build(&rest)
}

fn channels_step(stage: &RawStage) -> Result<Step, ConfigError> {
    let spec: ChannelsSection = stage.spec()?;
    let op: ChannelOp = spec.to.parse().map_err(|e| stage.error(e))?;
    Ok(Step::Channels(op))
}

fn resample_step(stage: &RawStage) -> Result<Step, ConfigError> {
    let spec: ResampleSection = stage.spec()?;
    if spec.sample_rate == 0 {
        return Err(stage.error("sample_rate must be above 0"));
    }
    Ok(Step::Resample(spec.sample_rate))
}

fn moved_to_sink(stage: &RawStage) -> Result<Step, ConfigError> {
    let kind = stage.kind.trim_start_matches("write_");
    Err(stage.error(format!(
        "audio is written by the sink now: replace this stage with [sink] kind = \"{kind}\" \
         (its target becomes path)"
    )))
}

/// Builds `[sink] kind = "audio" | "features"`.
fn build_sink(sink: &RawSection, kind: &str) -> Result<AudioSink, ConfigError> {
    let place = &sink.place;
    let what = format!("[sink] ({kind})");
    let bad = |e: String| ConfigError::invalid(place, &what, e);
    let spec: SinkSection = section(&sink.table, &what, place)?;
    let (write, default_suffix) = match kind {
        "audio" => {
            let format: AudioFormat = spec
                .format
                .as_deref()
                .unwrap_or("wav")
                .parse()
                .map_err(|e: sluice_audio::AudioError| bad(e.to_string()))?;
            (
                Output::Audio(format),
                Suffix::Replace(format!(".{}", format.extension())),
            )
        }
        _ if spec.format.is_some() => {
            return Err(bad("format only applies to kind = \"audio\"".into()));
        }
        _ => (Output::Npy, Suffix::Add(".npy".into())),
    };
    let rule = PathRule {
        from_prefix: spec.from_prefix,
        to_prefix: spec.to_prefix,
        suffix: spec.suffix.map(Suffix::Replace).unwrap_or(default_suffix),
    };
    Ok((write, spec.path, rule, spec.redo_if_older))
}

impl AudioPipeline {
    /// Builds an audio pipeline from a file whose source kind is [`SOURCE_KIND`].
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let src: AudioSourceSection = section(&raw.source.table, "[source]", &raw.source.place)?;
        let matcher = match (&src.glob, src.suffix.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigError::invalid(
                    &raw.source.place,
                    "[source]",
                    "give suffix or glob, not both",
                ))
            }
            (Some(glob), true) => Matcher::glob(glob)
                .map_err(|e| ConfigError::invalid(&raw.source.place, "[source]", e))?,
            (None, false) => Matcher::suffixes(&src.suffix),
            (None, true) => Matcher::All,
        };
        let mut stages = raw.stages.iter();
        let load = stages
            .next()
            .filter(|s| s.kind == "load_audio")
            .ok_or_else(|| {
                ConfigError::new(
                    &raw.file,
                    ConfigProblem::Missing(
                        "an audio pipeline starts with a [[stage]] of kind = \"load_audio\"".into(),
                    ),
                )
            })?;
        if !load.table.is_empty() {
            return Err(load.error("takes only the shared stage settings"));
        }
        let (steps, mut steps_built) = (self::steps(), Vec::new());
        for stage in stages {
            // The steps run inside each file's streaming conversion, on load_audio's workers:
            // settings of their own would silently do nothing.
            if matches!(stage.kind.as_str(), "channels" | "resample")
                && stage.options != sluice_pipeline::StageOptions::default()
            {
                return Err(stage.error(
                    "runs inside each file's streaming conversion: set batch_size, workers, \
                     cpus and retries on the load_audio stage",
                ));
            }
            let Some(build) = steps.get(&stage.kind) else {
                return Err(stage.error(format!(
                    "unknown kind {:?}: expected channels or resample",
                    stage.kind
                )));
            };
            steps_built.push(build(stage)?);
        }
        let Some(sink) = &raw.sink else {
            return Err(ConfigError::new(
                &raw.file,
                ConfigProblem::Missing(
                    "an audio pipeline needs a [sink] of kind = \"audio\" or \"features\" \
                     (path = ...)"
                        .into(),
                ),
            ));
        };
        let (write, target, rule, redo_if_older) = pick_sink(sink)?;
        let mut options = raw.run_options(local_path(&target).as_deref());
        options
            .failures_path
            .get_or_insert_with(|| default_failures_path(&target));
        Ok(AudioPipeline {
            source: src.url,
            matcher,
            load_options: load.options.clone(),
            steps: steps_built,
            memory_budget: raw.memory_budget_mb().map(|mb| (mb as usize) << 20),
            target,
            write,
            rule,
            redo_if_older,
            options,
        })
    }

    /// Runs the pipeline; an aborted run still reports, with the reason.
    pub fn run(self) -> Result<Result<JobReport, (String, JobReport)>, RunError> {
        Conversion {
            source: self.source,
            matcher: self.matcher,
            target: self.target,
            rule: self.rule,
            redo_if_older: self.redo_if_older,
            steps: self.steps,
            output: self.write,
            memory_budget: self.memory_budget,
            stage: self.load_options,
            options: self.options,
        }
        .run()
    }
}
