//! The audio-classifier kind: encoded audio is decoded, mixed to mono and resampled to the
//! model's rate, cut into windows as it streams, and the windows of every input (and, behind
//! the server, of every request) run through the graph in shared batches. A file of any length
//! is classified holding one decoded chunk and the windows waiting for a batch, and the server
//! and a pipeline give the same scores for the same file because both run this code.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use serde_json::json;
use sluice_audio::{ChannelOp, ResamplerCache};

use super::{
    element_text, tensor_inputs, Batch, Content, Description, InferInput, InferOutput, InputKind,
    InputProblem, Kind, LoadContext, Model, ModelService, NamedTensor, Parameters, ServiceError,
    Spelling, Tensor, TensorInfo, WindowScores, Work,
};
use crate::classifier::{AudioClassifier, Window};
use crate::ModelError;

/// How the service registry recognises and loads audio classifiers: a `sluice-model.toml`.
pub const KIND: Kind = Kind {
    name: crate::classifier::KIND,
    detect: AudioClassifier::is_classifier_dir,
    load: |dir: &Path, _: &LoadContext| {
        // Classifiers run on the CPU (tract), whatever the device.
        let classifier = AudioClassifier::load(dir)?;
        Ok(Model::Classifier(Arc::new(ClassifierService::new(
            classifier,
        ))))
    },
};

/// Audio decoded and cut into the model's windows.
#[derive(Debug)]
pub struct PreparedAudio {
    /// Duration of the decoded audio, in seconds.
    pub duration: f64,
    /// The windows, in time order.
    pub windows: Vec<Window>,
}

/// An ONNX audio classifier behind the service interface.
#[derive(Debug)]
pub struct ClassifierService {
    classifier: AudioClassifier,
}

/// Where a window's scores go: its start and end in seconds.
pub type WindowSpan = (f64, f64);

impl ClassifierService {
    /// Wraps a loaded classifier.
    pub fn new(classifier: AudioClassifier) -> Self {
        Self { classifier }
    }

    /// The classifier.
    pub fn classifier(&self) -> &AudioClassifier {
        &self.classifier
    }

    /// Decodes `bytes` (any format the audio stages read; `name` gives the extension hint) and
    /// cuts all its windows, held in memory: for tests and short clips.
    pub fn windows_of(
        &self,
        bytes: &[u8],
        name: Option<&str>,
    ) -> Result<PreparedAudio, StreamError> {
        let mut windows = Vec::new();
        let duration = self.stream(
            std::io::Cursor::new(bytes.to_vec()),
            name,
            sluice_audio::decode::DEFAULT_CHUNK_FRAMES,
            &mut |mut cut| {
                windows.append(&mut cut);
                Ok(())
            },
        )?;
        Ok(PreparedAudio { duration, windows })
    }

    /// Decodes `source` in chunks of `chunk_frames`, mixes to mono, resamples to the model's
    /// rate and cuts windows, handing each chunk's windows to `windows` as soon as they are
    /// complete: memory holds one chunk and what `windows` keeps. Returns the decoded duration in
    /// seconds. The windows are those of [`crate::classifier::ClassifierSpec::windows`] on the
    /// whole file, sample for sample. A decoding failure is [`StreamError::Decode`]; `windows`'
    /// errors come back as they are.
    pub fn stream<R>(
        &self,
        source: R,
        name: Option<&str>,
        chunk_frames: usize,
        windows: &mut dyn FnMut(Vec<Window>) -> Result<(), ServiceError>,
    ) -> Result<f64, StreamError>
    where
        R: std::io::Read + std::io::Seek + Send + Sync + 'static,
    {
        let failed = |e: &dyn std::fmt::Display| StreamError::Decode(e.to_string());
        let ext = name
            .and_then(|n| Path::new(n).extension())
            .and_then(|e| e.to_str());
        let mut decoder = sluice_audio::decode::Decoder::new(source, ext, chunk_frames)
            .map_err(|e| failed(&e))?;
        let spec = self.classifier.spec();
        let rate = spec.sample_rate;
        let mut cutter = spec.cutter();
        let (mut frames, mut from_rate) = (0u64, 0u32);
        RESAMPLERS.with(|cache| {
            let mut cache = cache.borrow_mut();
            let mut resampler = None;
            let mut emit = |w: Vec<Window>| windows(w).map_err(StreamError::Emit);
            while let Some(chunk) = decoder.next_chunk().map_err(|e| failed(&e))? {
                frames += chunk.frames() as u64;
                from_rate = chunk.sample_rate;
                let mono = ChannelOp::Mono.apply(chunk).map_err(|e| failed(&e))?;
                let mono = if mono.sample_rate == rate {
                    mono
                } else {
                    if resampler.is_none() {
                        resampler = Some(
                            cache
                                .stream(mono.sample_rate, rate, 1)
                                .map_err(|e| failed(&e))?,
                        );
                    }
                    let r = resampler.as_mut().expect("made above");
                    r.push(&mono).map_err(|e| failed(&e))?
                };
                emit(cutter.push(mono.channels.first().map_or(&[][..], Vec::as_slice)))?;
            }
            if let Some(r) = resampler {
                let tail = r.finish().map_err(|e| failed(&e))?;
                emit(cutter.push(tail.channels.first().map_or(&[][..], Vec::as_slice)))?;
            }
            emit(cutter.finish().into_iter().collect())
        })?;
        Ok(if from_rate == 0 {
            0.0
        } else {
            frames as f64 / f64::from(from_rate)
        })
    }

    /// One window's scores with its top label, as answers give them.
    pub fn window_scores(&self, (start, end): WindowSpan, scores: Vec<f32>) -> WindowScores {
        let labels = &self.classifier.spec().labels;
        let (best, score) =
            scores
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, s)| if s > b.1 { (i, s) } else { b },
                );
        WindowScores {
            start,
            end,
            label: labels.get(best).cloned().unwrap_or_default(),
            score,
            scores,
        }
    }
}

/// Why [`ClassifierService::stream`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The audio could not be decoded.
    #[error("{0}")]
    Decode(String),
    /// Whoever took the windows failed.
    #[error(transparent)]
    Emit(ServiceError),
}

thread_local! {
    // Per thread rather than behind a lock: resampling a long file must not hold up the other
    // requests, and a resampler is built once per rate pair on each thread that needs it.
    static RESAMPLERS: RefCell<ResamplerCache> = RefCell::new(ResamplerCache::default());
}

impl Batch for ClassifierService {
    type Key = ();
    type Item = Vec<f32>;
    type Done = Vec<f32>;

    fn run(
        &self,
        _key: &(),
        items: Vec<Vec<f32>>,
    ) -> Result<Vec<Result<Vec<f32>, ModelError>>, ModelError> {
        let scores = self.classifier.run(&items)?;
        Ok(scores.into_iter().map(Ok).collect())
    }
}

impl ModelService for ClassifierService {
    type Params = ();
    type Tag = WindowSpan;

    fn kind(&self) -> &'static str {
        crate::classifier::KIND
    }

    fn describe(&self) -> Description {
        let spec = self.classifier.spec();
        let labels = spec.labels.clone();
        let width = labels.len() as i64;
        Description {
            input: InputKind::Audio,
            parameters: json!({}),
            parameters_schema: (json!({ "type": "object", "maxProperties": 0 }), false),
            details: serde_json::to_value(spec).unwrap_or_default(),
            languages: None,
            labels: Some(labels.clone()),
            platform: "sluice_onnx_audio_classifier",
            v2_outputs: vec![
                TensorInfo::new("scores", "FP32", &[-1, width]),
                TensorInfo::new("start", "FP64", &[-1]),
                TensorInfo::new("end", "FP64", &[-1]),
                TensorInfo::new("input_index", "INT32", &[-1]),
                TensorInfo::new("duration", "FP64", &[-1]),
            ],
            v2_parameters: json!({ "labels": labels }),
        }
    }

    fn parameters(&self, given: &Parameters, _spelling: Spelling) -> Result<(), ServiceError> {
        match given.keys().next() {
            None => Ok(()),
            Some(k) => Err(ServiceError::InvalidParameters(format!(
                "an audio classifier takes no parameters; got {k:?}"
            ))),
        }
    }

    fn streams(&self) -> bool {
        true
    }

    fn prepare(
        &self,
        _params: &(),
        index: usize,
        content: Content,
        emit: &mut dyn FnMut(Work<Self>) -> Result<(), ServiceError>,
    ) -> Result<InferOutput, ServiceError> {
        let mut windows = |cut: Vec<Window>| {
            cut.into_iter().try_for_each(|w| {
                emit(Work {
                    key: (),
                    cost: 1,
                    tag: (w.start, w.end),
                    item: w.samples,
                })
            })
        };
        let chunk = sluice_audio::decode::DEFAULT_CHUNK_FRAMES;
        let streamed = match content {
            Content::Text(_) => {
                return Err(ServiceError::Input {
                    index,
                    problem: InputProblem::WrongKind(TEXT_REFUSED),
                })
            }
            Content::Bytes { bytes, name } => self.stream(
                std::io::Cursor::new(bytes),
                name.as_deref(),
                chunk,
                &mut windows,
            ),
            Content::Stream { reader, name } => {
                self.stream(reader, name.as_deref(), chunk, &mut windows)
            }
        };
        let duration = streamed.map_err(|e| match e {
            StreamError::Decode(m) => ServiceError::Input {
                index,
                problem: InputProblem::InvalidAudio(m),
            },
            StreamError::Emit(e) => e,
        })?;
        Ok(InferOutput {
            duration: Some(duration),
            windows: Some(Vec::new()),
            ..InferOutput::default()
        })
    }

    fn fold(&self, output: &mut InferOutput, span: WindowSpan, scores: Vec<f32>) {
        output
            .windows
            .get_or_insert_with(Vec::new)
            .push(self.window_scores(span, scores));
    }

    fn warm_up(&self) -> Result<(), ModelError> {
        // The graph already ran one window at load.
        Ok(())
    }

    fn v2_inputs(&self, sources: &[&str]) -> Vec<TensorInfo> {
        let mut inputs = vec![TensorInfo::new("audio", "BYTES", &[-1])];
        for (source, name) in [("path", "path"), ("url", "url")] {
            if sources.contains(&source) {
                inputs.push(TensorInfo::new(name, "BYTES", &[-1]));
            }
        }
        inputs
    }

    /// Encoded audio travels as `data`, and paths and URLs as themselves, so every check and
    /// reader of `/v1` applies.
    fn v2_request(
        &self,
        input: &str,
        elements: Vec<Vec<u8>>,
        parameters: Parameters,
    ) -> Result<(Vec<InferInput>, Parameters), ServiceError> {
        if !["audio", "path", "url"].contains(&input) {
            return Err(ServiceError::InvalidRequest(format!(
                "an audio classifier takes the input \"audio\", \"path\" or \"url\", not \
                 {input:?}"
            )));
        }
        let inputs = tensor_inputs(elements, |one, i, bytes| {
            match input {
                "audio" => one.data = Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                "path" => one.path = Some(element_text(input, i, bytes)?),
                _ => one.url = Some(element_text(input, i, bytes)?),
            }
            Ok(())
        })?;
        Ok((inputs, parameters))
    }

    /// Every input's windows in order, each window's input in `input_index`.
    fn v2_outputs(&self, _shape: &[i64], outputs: Vec<InferOutput>) -> Vec<NamedTensor> {
        let labels = self.classifier.spec().labels.len();
        let (mut scores, mut start, mut end, mut index, mut duration) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, out) in outputs.into_iter().enumerate() {
            duration.push(out.duration.unwrap_or(0.0));
            for w in out.windows.unwrap_or_default() {
                scores.extend(w.scores);
                start.push(w.start);
                end.push(w.end);
                index.push(i as i32);
            }
        }
        let windows = start.len();
        let tensor = |name, shape, data| NamedTensor { name, shape, data };
        vec![
            tensor("scores", vec![windows, labels], Tensor::Fp32(scores)),
            tensor("start", vec![windows], Tensor::Fp64(start)),
            tensor("end", vec![windows], Tensor::Fp64(end)),
            tensor("input_index", vec![windows], Tensor::Int32(index)),
            tensor("duration", vec![duration.len()], Tensor::Fp64(duration)),
        ]
    }
}

/// Why a text input is refused.
pub const TEXT_REFUSED: &str = "an audio classifier takes audio as data, path or url, not text";
