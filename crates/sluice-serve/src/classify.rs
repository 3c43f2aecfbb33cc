//! The audio classifier behind `POST /v1/models/{name}/infer`: audio bytes are decoded, mixed
//! to mono and resampled to the model's rate, cut into windows, and the windows of every request
//! share the model's batcher, so a burst of short clips runs as a few large graph runs.
//!
//! The same preparation runs in-process in pipelines ([`prepare`] and [`AudioClassifier::run`]),
//! so a pipeline and the server give the same scores for the same file.

use std::cell::RefCell;
use std::sync::Arc;

use sluice_audio::{ChannelOp, ResamplerCache};
use sluice_models::classifier::{AudioClassifier, Window};

use crate::batcher::{Backend, BackendError};
use crate::infer::WindowScores;

/// Audio decoded and cut into the model's windows.
#[derive(Debug)]
pub struct PreparedAudio {
    /// Duration of the decoded audio, in seconds.
    pub duration: f64,
    /// The windows, in time order.
    pub windows: Vec<Window>,
}

/// Decodes `bytes` (any format the audio stages read; `name` gives the extension hint), mixes
/// to mono, resamples to the model's rate and cuts windows.
pub fn prepare(
    classifier: &AudioClassifier,
    bytes: &[u8],
    name: Option<&str>,
) -> Result<PreparedAudio, String> {
    let ext = name
        .and_then(|n| std::path::Path::new(n).extension())
        .and_then(|e| e.to_str());
    let audio = sluice_audio::decode::decode(bytes, ext).map_err(|e| e.to_string())?;
    let duration = audio.duration_secs();
    let audio = ChannelOp::Mono.apply(audio).map_err(|e| e.to_string())?;
    let rate = classifier.spec().sample_rate;
    let audio = if audio.sample_rate == rate {
        audio
    } else {
        RESAMPLERS
            .with(|cache| cache.borrow_mut().resample(&audio, rate))
            .map_err(|e| e.to_string())?
    };
    let mono = audio.channels.into_iter().next().unwrap_or_default();
    Ok(PreparedAudio {
        duration,
        windows: classifier.spec().windows(&mono),
    })
}

thread_local! {
    // Per thread rather than behind a lock: resampling a long file must not hold up the other
    // requests, and a resampler is built once per rate pair on each thread that needs it.
    static RESAMPLERS: RefCell<ResamplerCache> = RefCell::new(ResamplerCache::default());
}

/// Runs batches of windows through an [`AudioClassifier`].
pub struct Classify {
    classifier: Arc<AudioClassifier>,
}

impl Classify {
    /// Wraps a loaded classifier.
    pub fn new(classifier: Arc<AudioClassifier>) -> Self {
        Self { classifier }
    }

    /// The classifier.
    pub fn classifier(&self) -> &AudioClassifier {
        &self.classifier
    }
}

impl Backend for Classify {
    type Input = Vec<f32>;
    type Key = ();
    type Output = Vec<f32>;

    fn run(
        &self,
        _key: &(),
        inputs: Vec<Vec<f32>>,
    ) -> Result<Vec<Result<Vec<f32>, BackendError>>, BackendError> {
        let scores = self.classifier.run(&inputs)?;
        Ok(scores.into_iter().map(Ok).collect())
    }
}

/// A window's scores with its top label, as the server answers them.
pub fn window_scores(labels: &[String], start: f64, end: f64, scores: Vec<f32>) -> WindowScores {
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
