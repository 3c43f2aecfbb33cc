//! The `model` stage in-process: any kind of model through the model service, driven by
//! [`run_inline`] as the server's batcher drives it, so a pipeline and the server give the same
//! outputs for the same inputs.
//!
//! A classifier's windows run through the graph in runs of [`WINDOW_RUN`] across the files of a
//! batch as they are cut, so a day-long recording holds one decoded chunk and one run of windows;
//! an output's window rows go to a row file in the run's scratch directory past
//! [`HELD_WINDOWS`] ([`sluice_pipeline::rows`]), so its 172,800 rows are never held either.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use sluice_core::storage::Location;
use sluice_models::service::{
    run_inline, Content, InferOutput, InputKind, ModelService, ServiceError, Spelling,
};
use sluice_models::with_service;
use sluice_pipeline::rows::RowsWriter;
use sluice_pipeline::stages::Record;
use sluice_pipeline::{ItemError, StageError, WorkerContext};

use super::{all_failed, field, output_value, read_bytes, InputAs, ModelSpec};
use crate::translate::{load_model, service_error};

/// Work run through the model together, across the inputs of a batch, as the server batches
/// them across requests; for a streamed kind also the most items held at once.
const WINDOW_RUN: usize = 64;

/// The most window rows of one output held in memory before they go to a row file. 512 windows
/// is 4 minutes at the test classifier's half-second hop.
const HELD_WINDOWS: usize = 512;

/// A model loaded in a worker, whatever its kind.
pub(super) trait LocalModel: Send + Sync {
    /// One output value per record of `batch`, in order.
    fn run(
        &self,
        spec: &ModelSpec,
        batch: &[Record],
        scratch: Option<&Path>,
    ) -> Vec<Result<Value, ItemError>>;
}

/// A model service with the stage's parameters, checked at setup.
struct Local<S: ModelService> {
    service: Arc<S>,
    params: S::Params,
    /// What its inputs hold (read once: describing a model builds its whole description).
    input: InputKind,
}

/// Loads `model` on the worker's device and checks the stage's parameters against it.
// The same code for every kind: a kind whose parameters are `()` binds a unit.
#[allow(clippy::let_unit_value)]
pub(super) fn load(
    spec: &ModelSpec,
    model: &str,
    worker: &WorkerContext,
) -> Result<Box<dyn LocalModel>, StageError> {
    let compute = spec.compute_type.unwrap_or_default();
    let model = load_model(model, compute, worker)?;
    with_service!(model, service => {
        let params = service
            .parameters(&spec.parameters, Spelling::Toml)
            .map_err(service_error)?;
        let input = service.describe().input;
        Ok(Box::new(Local {
            service,
            params,
            input,
        }) as Box<dyn LocalModel>)
    })
}

impl<S: ModelService> LocalModel for Local<S> {
    fn run(
        &self,
        spec: &ModelSpec,
        batch: &[Record],
        scratch: Option<&Path>,
    ) -> Vec<Result<Value, ItemError>> {
        let mut results: Vec<Result<Value, ItemError>> = Vec::with_capacity(batch.len());
        // The records read, each with its place in the batch and the name messages give it.
        let (mut read, mut contents) = (Vec::new(), Vec::new());
        for (at, record) in batch.iter().enumerate() {
            results.push(Ok(Value::Null));
            match content(spec, record, self.input) {
                Ok((content, name)) => {
                    contents.push(content);
                    read.push((at, name));
                }
                Err(e) => results[at] = Err(e),
            }
        }
        let max_items = match self.service.streams() {
            true => WINDOW_RUN,
            false => contents.len().max(1),
        };
        let mut rows: HashMap<usize, RowsWriter> = HashMap::new();
        let outputs = run_inline(
            &*self.service,
            &self.params,
            contents,
            max_items,
            |i, out| spill(&mut rows, i, out, scratch),
        );
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                rows.into_values().for_each(RowsWriter::discard);
                return all_failed(batch, e);
            }
        };
        for ((i, out), (at, name)) in outputs.into_iter().enumerate().zip(read) {
            let written = rows.remove(&i);
            results[at] = match out {
                Ok(out) => finish(out, written),
                Err(e) => {
                    written.into_iter().for_each(RowsWriter::discard);
                    Err(item_error(&name, e))
                }
            };
        }
        results
    }
}

/// What one record names, read as a model of `kind` takes it, with the name for messages.
fn content(
    spec: &ModelSpec,
    record: &Record,
    kind: InputKind,
) -> Result<(Content, String), ItemError> {
    let value = field(spec, record)?;
    let name = value.to_owned();
    if kind == InputKind::Text {
        let content = match spec.input {
            InputAs::Text => Content::Text(name.clone()),
            _ => Content::Bytes {
                bytes: read_bytes(spec, value)?,
                name: Some(name.clone()),
            },
        };
        return Ok((content, name));
    }
    let reader: Box<dyn sluice_models::service::ReadSeek> = match spec.input {
        InputAs::File => Box::new(
            std::fs::File::open(value)
                .map_err(|e| ItemError::permanent(format!("reading {value}: {e}")))?,
        ),
        InputAs::Url => Box::new(
            Location::open_url_blocking::<&str, &str>(value, &[])
                .map_err(|e| ItemError::permanent(e.to_string()))?,
        ),
        InputAs::Text => {
            return Err(ItemError::permanent(
                "an audio classifier takes files or URLs, not text",
            ))
        }
    };
    Ok((
        Content::Stream {
            reader,
            name: Some(name.clone()),
        },
        name,
    ))
}

/// Moves an output's window rows to its row file once there are more than are held (they stay
/// in memory without a scratch directory).
fn spill(
    rows: &mut HashMap<usize, RowsWriter>,
    i: usize,
    out: &mut InferOutput,
    scratch: Option<&Path>,
) -> Result<(), ServiceError> {
    let Some(windows) = out.windows.as_mut() else {
        return Ok(());
    };
    let writer = match (rows.get_mut(&i), scratch) {
        (Some(w), _) => w,
        (None, Some(dir)) if windows.len() > HELD_WINDOWS => {
            let w = RowsWriter::create(dir).map_err(rows_error)?;
            rows.entry(i).or_insert(w)
        }
        _ => return Ok(()),
    };
    for row in windows.drain(..) {
        writer.push(&row).map_err(rows_error)?;
    }
    Ok(())
}

fn rows_error(e: std::io::Error) -> ServiceError {
    ServiceError::Model(sluice_models::ModelError::io("window rows", e))
}

/// The record's output field: the output, its rows replaced by the row file's reference.
fn finish(out: InferOutput, written: Option<RowsWriter>) -> Result<Value, ItemError> {
    let Some(writer) = written else {
        return output_value(out);
    };
    let duration = out.duration;
    writer
        .finish()
        .map(|rows| json!({"duration": duration, "windows": rows}))
        .map_err(|e| ItemError::transient(format!("writing window rows: {e}")))
}

/// An input's failure as the record's, naming what the record named.
fn item_error(name: &str, e: ServiceError) -> ItemError {
    let message = match &e {
        ServiceError::Input { .. } => format!("{name}: {e}"),
        _ => e.to_string(),
    };
    if e.is_permanent() {
        ItemError::permanent(message)
    } else {
        ItemError::transient(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_audio::encode::{encode, AudioFormat, WavSample};
    use sluice_audio::Audio;
    use sluice_models::classifier::AudioClassifier;
    use sluice_models::service::classifier::ClassifierService;

    fn write_tone(path: &Path, seconds: usize) {
        let rate = 16_000;
        let samples = (0..rate * seconds)
            .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 0.5)
            .collect();
        let audio = Audio {
            sample_rate: rate as u32,
            channels: vec![samples],
        };
        std::fs::write(
            path,
            encode(&audio, AudioFormat::Wav(WavSample::I16)).unwrap(),
        )
        .unwrap();
    }

    /// A file with more windows than are held has them in a row file, which reads back to
    /// exactly the rows held in memory without a scratch directory; a short file's stay inline.
    #[test]
    fn a_long_files_rows_go_to_a_row_file_that_reads_back_as_the_held_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (long, short) = (dir.path().join("long.wav"), dir.path().join("short.wav"));
        write_tone(&long, 300);
        write_tone(&short, 10);
        let model = sluice_testkit::fixture("onnx").join("tone-detector");
        let local = Local {
            service: Arc::new(ClassifierService::new(
                AudioClassifier::load(&model).unwrap(),
            )),
            params: (),
            input: InputKind::Audio,
        };
        let spec = ModelSpec::local(model.to_str().unwrap());
        let batch = [
            json!({"path": long.to_str().unwrap()}),
            json!({"path": short.to_str().unwrap()}),
        ];
        let held: Vec<Value> = local
            .run(&spec, &batch, None)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(held[0]["windows"].as_array().unwrap().len() > HELD_WINDOWS);
        let scratch = tempfile::tempdir().unwrap();
        let mut written: Vec<Value> = local
            .run(&spec, &batch, Some(scratch.path()))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let file = sluice_pipeline::rows::row_file(&written[0]["windows"]).map(Path::to_path_buf);
        assert!(
            file.is_some_and(|f| f.starts_with(scratch.path())),
            "{}",
            written[0]
        );
        assert!(written[1]["windows"].is_array());
        sluice_pipeline::rows::inline(&mut written[0]).unwrap();
        assert_eq!(written, held);
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    }
}
