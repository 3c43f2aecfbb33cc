//! Audio classifiers exported to ONNX (the whale-call detector pattern), run with `tract-onnx`.
//!
//! A model directory holds `model.onnx` and a `sluice-model.toml` describing what the graph
//! expects: mono waveform windows of a fixed length at a fixed sample rate, the hop between
//! windows, the labels and whether Sluice applies a sigmoid or softmax to the graph's output.
//! The graph takes one float input `[batch, window samples]` and gives one float output
//! `[batch, labels]`, the batch dimension symbolic so windows of many files and requests can be
//! scored in one run. Decoding and resampling happen before this module (in `sluice-audio`):
//! here samples are already mono at [`ClassifierSpec::sample_rate`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;

use crate::error::{ModelError, Result};

/// The file describing a model directory's contents.
pub const SPEC_FILE: &str = "sluice-model.toml";

/// What Sluice does to the graph's output before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// The graph already outputs scores: returned as they are.
    Scores,
    /// The graph outputs logits of independent labels: a sigmoid per label.
    Sigmoid,
    /// The graph outputs logits of exclusive labels: a softmax across labels.
    Softmax,
}

/// The contents of `sluice-model.toml` for an audio classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    /// Always `audio-classifier`.
    pub kind: String,
    /// The ONNX file, relative to the directory.
    #[serde(default = "default_model_file")]
    pub model: String,
    /// Samples per second the graph expects.
    pub sample_rate: u32,
    /// Length of one window, in seconds.
    pub window_seconds: f64,
    /// Distance between window starts, in seconds.
    pub hop_seconds: f64,
    /// One name per output column.
    pub labels: Vec<String>,
    /// What to apply to the graph's output.
    pub output: OutputKind,
}

fn default_model_file() -> String {
    "model.onnx".to_owned()
}

/// The kind name of audio classifiers in `sluice-model.toml` and `GET /v1/models`.
pub const KIND: &str = "audio-classifier";

impl ClassifierSpec {
    /// Reads and checks `dir/sluice-model.toml`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::MissingFile {
                dir: dir.to_owned(),
                file: SPEC_FILE.to_owned(),
                hint: "an audio classifier directory holds the .onnx file and a sluice-model.toml \
                       giving sample_rate, window_seconds, hop_seconds, labels and output"
                    .to_owned(),
            },
            _ => ModelError::io(&path, e),
        })?;
        let spec: Self = toml::from_str(&text).map_err(|e| invalid(&path, e.to_string()))?;
        spec.check().map_err(|reason| invalid(&path, reason))?;
        Ok(spec)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.kind != KIND {
            return Err(format!("kind is \"{}\"; expected \"{KIND}\"", self.kind));
        }
        if self.sample_rate == 0 {
            return Err("sample_rate must be positive".to_owned());
        }
        let (w, h) = (self.window_samples(), self.hop_samples());
        if !(self.window_seconds.is_finite() && w >= 1) {
            return Err(format!(
                "window_seconds {} is less than one sample at {} Hz",
                self.window_seconds, self.sample_rate
            ));
        }
        if !(self.hop_seconds.is_finite() && h >= 1) {
            return Err(format!(
                "hop_seconds {} is less than one sample at {} Hz",
                self.hop_seconds, self.sample_rate
            ));
        }
        if self.labels.is_empty() {
            return Err("labels is empty; give one name per output column".to_owned());
        }
        Ok(())
    }

    /// Samples in one window.
    pub fn window_samples(&self) -> usize {
        (self.window_seconds * f64::from(self.sample_rate)).round() as usize
    }

    /// Samples between window starts.
    pub fn hop_samples(&self) -> usize {
        (self.hop_seconds * f64::from(self.sample_rate)).round() as usize
    }

    /// Where the windows of `n` samples start.
    ///
    /// Full windows at every hop; when `n` is shorter than a window, one window at 0; when the
    /// last full window stops short of the end, one more at the next hop. Windows running past
    /// the end are zero-padded, so every sample is scored and no window is mostly padding.
    pub fn window_starts(&self, n: usize) -> Vec<usize> {
        let (w, h) = (self.window_samples(), self.hop_samples());
        if n <= w {
            return vec![0];
        }
        let full = (n - w) / h + 1;
        let mut starts: Vec<usize> = (0..full).map(|k| k * h).collect();
        if (full - 1) * h + w < n {
            starts.push(full * h);
        }
        starts
    }

    /// Cuts `samples` into windows (zero-padded at the end), with their start and end in seconds.
    pub fn windows(&self, samples: &[f32]) -> Vec<Window> {
        let w = self.window_samples();
        let rate = f64::from(self.sample_rate);
        self.window_starts(samples.len())
            .into_iter()
            .map(|start| {
                let end = (start + w).min(samples.len());
                let mut data = samples[start.min(end)..end].to_vec();
                data.resize(w, 0.0);
                Window {
                    start: start as f64 / rate,
                    end: end as f64 / rate,
                    samples: data,
                }
            })
            .collect()
    }
}

/// The windows of [`ClassifierSpec::windows`] cut from samples that arrive in pieces: each full
/// window as soon as its last sample is in, the padded last one at [`WindowCutter::finish`].
/// Holds less than one window of samples between calls, whatever the stream's length.
#[derive(Debug, Clone)]
pub struct WindowCutter {
    window: usize,
    hop: usize,
    rate: f64,
    /// Samples from `buf_start` on.
    buf: Vec<f32>,
    buf_start: usize,
    /// Where the next window starts.
    next: usize,
    total: usize,
}

impl ClassifierSpec {
    /// A cutter of this spec's windows for one stream of samples at its rate.
    pub fn cutter(&self) -> WindowCutter {
        WindowCutter {
            window: self.window_samples(),
            hop: self.hop_samples(),
            rate: f64::from(self.sample_rate),
            buf: Vec::new(),
            buf_start: 0,
            next: 0,
            total: 0,
        }
    }
}

impl WindowCutter {
    /// Takes the next samples; returns the windows they complete.
    pub fn push(&mut self, samples: &[f32]) -> Vec<Window> {
        self.buf.extend_from_slice(samples);
        self.total += samples.len();
        let mut out = Vec::new();
        while self.next + self.window <= self.total {
            out.push(self.cut(self.next));
            self.next += self.hop;
        }
        let drop = self.next.min(self.total) - self.buf_start;
        self.buf.drain(..drop);
        self.buf_start += drop;
        out
    }

    /// The last window, when the stream does not end on a full one (see
    /// [`ClassifierSpec::window_starts`]).
    pub fn finish(self) -> Option<Window> {
        let n = self.total;
        if n < self.window {
            return Some(self.cut(0));
        }
        // `next` is the start after the last full window.
        (self.next - self.hop + self.window < n).then(|| self.cut(self.next))
    }

    fn cut(&self, start: usize) -> Window {
        let end = (start + self.window).min(self.total);
        let from = start.min(end) - self.buf_start;
        let mut data = self.buf[from..end - self.buf_start].to_vec();
        data.resize(self.window, 0.0);
        Window {
            start: start as f64 / self.rate,
            end: end as f64 / self.rate,
            samples: data,
        }
    }
}

fn invalid(path: &Path, reason: String) -> ModelError {
    ModelError::InvalidFile {
        path: path.to_owned(),
        reason,
    }
}

/// One window of audio ready for the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Start, in seconds from the beginning of the audio.
    pub start: f64,
    /// End, in seconds, clipped to the audio's end.
    pub end: f64,
    /// Exactly [`ClassifierSpec::window_samples`] samples.
    pub samples: Vec<f32>,
}

type Plan = std::sync::Arc<TypedSimplePlan>;

/// A loaded ONNX audio classifier.
pub struct AudioClassifier {
    spec: ClassifierSpec,
    dir: PathBuf,
    plan: Plan,
}

impl std::fmt::Debug for AudioClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioClassifier")
            .field("dir", &self.dir)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl AudioClassifier {
    /// Whether `dir` holds an audio classifier (a `sluice-model.toml`).
    pub fn is_classifier_dir(dir: &Path) -> bool {
        dir.join(SPEC_FILE).is_file()
    }

    /// Loads `dir/sluice-model.toml` and the ONNX graph it names, with a symbolic batch size.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::NoSuchDirectory(dir.to_owned()));
        }
        let spec = ClassifierSpec::load(dir)?;
        let path = dir.join(&spec.model);
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                dir: dir.to_owned(),
                file: spec.model.clone(),
                hint: format!("{SPEC_FILE} names it as the model; export the graph there"),
            });
        }
        let bad = |e: TractError| invalid(&path, format!("not a usable ONNX graph: {e:#}"));
        let onnx = tract_onnx::onnx();
        let mut model = onnx.model_for_path(&path).map_err(bad)?;
        let batch = model.symbols.sym("batch");
        let window = spec.window_samples();
        // Pin the input to [batch, window] whatever the export declared, so a graph exported with
        // a fixed batch of 1 still takes many windows, and a wrong window length fails here.
        model
            .set_input_fact(0, f32::fact([batch.to_dim(), window.to_dim()]).into())
            .map_err(bad)?;
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(bad)?;
        let classifier = Self {
            spec,
            dir: dir.to_owned(),
            plan,
        };
        // One window through the graph: shape mismatches surface at load, not on the first request.
        let probe = classifier.run(&[vec![0.0; window]]).map_err(|e| {
            invalid(
                &path,
                format!("running one window of {window} samples failed: {e}"),
            )
        })?;
        let labels = classifier.spec.labels.len();
        if probe[0].len() != labels {
            return Err(invalid(
                &path,
                format!(
                    "the graph outputs {} scores per window but {SPEC_FILE} lists {labels} labels",
                    probe[0].len()
                ),
            ));
        }
        Ok(classifier)
    }

    /// The model's description.
    pub fn spec(&self) -> &ClassifierSpec {
        &self.spec
    }

    /// The directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Scores windows of exactly [`ClassifierSpec::window_samples`] samples in one run of the
    /// graph; one row of scores per window, with the output activation applied.
    pub fn run(&self, windows: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let w = self.spec.window_samples();
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let mut flat = Vec::with_capacity(windows.len() * w);
        for win in windows {
            if win.len() != w {
                return Err(ModelError::InvalidSettings(format!(
                    "a window has {} samples; the model takes {w}",
                    win.len()
                )));
            }
            flat.extend_from_slice(win);
        }
        let input = tract_ndarray::Array2::from_shape_vec((windows.len(), w), flat)
            .map_err(|e| ModelError::InvalidSettings(e.to_string()))?;
        let outputs = self
            .plan
            .run(tvec!(Tensor::from(input).into()))
            .map_err(|e| ModelError::Onnx(format!("{e:#}")))?;
        let out = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| ModelError::Onnx(format!("{e:#}")))?;
        let shape = out.shape().to_vec();
        if shape.len() != 2 || shape[0] != windows.len() {
            return Err(ModelError::Onnx(format!(
                "the graph output has shape {shape:?}; expected [{}, labels]",
                windows.len()
            )));
        }
        Ok(out
            .outer_iter()
            .map(|row| activate(self.spec.output, row.iter().copied().collect()))
            .collect())
    }
}

/// Applies the output activation to one row of graph outputs.
fn activate(kind: OutputKind, mut row: Vec<f32>) -> Vec<f32> {
    match kind {
        OutputKind::Scores => {}
        OutputKind::Sigmoid => {
            for v in &mut row {
                *v = 1.0 / (1.0 + (-*v).exp());
            }
        }
        OutputKind::Softmax => {
            // Shifting by the maximum keeps exp() finite for large logits.
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            for v in &mut row {
                *v = (*v - max).exp() / sum;
            }
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(window: f64, hop: f64) -> ClassifierSpec {
        ClassifierSpec {
            kind: KIND.to_owned(),
            model: "model.onnx".to_owned(),
            sample_rate: 10,
            window_seconds: window,
            hop_seconds: hop,
            labels: vec!["a".to_owned()],
            output: OutputKind::Scores,
        }
    }

    #[test]
    fn cut_in_pieces_is_cut_whole() {
        for (window, hop) in [(1.0, 0.5), (1.0, 1.0), (0.5, 0.3), (1.0, 2.0)] {
            let s = spec(window, hop);
            for n in [0usize, 1, 7, 9, 10, 11, 15, 16, 23, 40, 41] {
                let samples: Vec<f32> = (0..n).map(|i| i as f32).collect();
                let whole = s.windows(&samples);
                for piece in [1usize, 3, 10, 64] {
                    let mut cutter = s.cutter();
                    let mut got = Vec::new();
                    for part in samples.chunks(piece) {
                        got.extend(cutter.push(part));
                    }
                    got.extend(cutter.finish());
                    assert_eq!(
                        got, whole,
                        "window {window}, hop {hop}, n {n}, piece {piece}"
                    );
                }
            }
        }
    }

    #[test]
    fn windows_cover_every_sample_once_the_last_padded() {
        let s = spec(1.0, 0.5); // 10 samples, hop 5
        assert_eq!(s.window_starts(3), vec![0]);
        assert_eq!(s.window_starts(10), vec![0]);
        assert_eq!(s.window_starts(20), vec![0, 5, 10]);
        assert_eq!(s.window_starts(23), vec![0, 5, 10, 15]);
        let w = s.windows(&(0..23).map(|i| i as f32).collect::<Vec<_>>());
        let last = w.last().unwrap();
        assert_eq!((last.start, last.end), (1.5, 2.3));
        assert_eq!(
            &last.samples[..8],
            &[15., 16., 17., 18., 19., 20., 21., 22.]
        );
        assert_eq!(&last.samples[8..], &[0.0, 0.0]);
    }

    #[test]
    fn activations() {
        let s = activate(OutputKind::Softmax, vec![1000.0, 1000.0]);
        assert_eq!(s, vec![0.5, 0.5]);
        let g = activate(OutputKind::Sigmoid, vec![0.0]);
        assert_eq!(g, vec![0.5]);
    }
}
