//! The audio classifier behind `POST /v1/models/{name}/infer`: audio bytes are decoded, mixed
//! to mono and resampled to the model's rate, cut into windows, and the windows of every request
//! share the model's batcher, so a burst of short clips runs as a few large graph runs.
//!
//! The same preparation runs in-process in pipelines ([`prepare_stream`] and
//! [`AudioClassifier::run`]), so a pipeline and the server give the same scores for the same file;
//! [`prepare_stream`] cuts windows from the decoded chunks, so a file of any length is classified
//! in bounded memory.

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
    let mut windows = Vec::new();
    let duration = prepare_stream(
        classifier,
        std::io::Cursor::new(bytes.to_vec()),
        name,
        sluice_audio::decode::DEFAULT_CHUNK_FRAMES,
        |mut cut| {
            windows.append(&mut cut);
            Ok(())
        },
    )?;
    Ok(PreparedAudio { duration, windows })
}

/// [`prepare`] of a file of any length: decoded, mixed, resampled and cut in chunks of
/// `chunk_frames`, each chunk's windows handed to `windows` as soon as they are complete, so that
/// memory holds one chunk and what `windows` keeps. Returns the decoded duration in seconds. The
/// windows are those of [`prepare`] on the whole file, sample for sample.
pub fn prepare_stream<R>(
    classifier: &AudioClassifier,
    source: R,
    name: Option<&str>,
    chunk_frames: usize,
    mut windows: impl FnMut(Vec<Window>) -> Result<(), String>,
) -> Result<f64, String>
where
    R: std::io::Read + std::io::Seek + Send + Sync + 'static,
{
    let ext = name
        .and_then(|n| std::path::Path::new(n).extension())
        .and_then(|e| e.to_str());
    let mut decoder =
        sluice_audio::decode::Decoder::new(source, ext, chunk_frames).map_err(|e| e.to_string())?;
    let rate = classifier.spec().sample_rate;
    let mut cutter = classifier.spec().cutter();
    let (mut frames, mut from_rate) = (0u64, 0u32);
    RESAMPLERS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let mut resampler = None;
        while let Some(chunk) = decoder.next_chunk().map_err(|e| e.to_string())? {
            frames += chunk.frames() as u64;
            from_rate = chunk.sample_rate;
            let mono = ChannelOp::Mono.apply(chunk).map_err(|e| e.to_string())?;
            let mono = if mono.sample_rate == rate {
                mono
            } else {
                if resampler.is_none() {
                    resampler = Some(
                        cache
                            .stream(mono.sample_rate, rate, 1)
                            .map_err(|e| e.to_string())?,
                    );
                }
                let r = resampler.as_mut().expect("made above");
                r.push(&mono).map_err(|e| e.to_string())?
            };
            windows(cutter.push(mono.channels.first().map_or(&[][..], Vec::as_slice)))?;
        }
        if let Some(r) = resampler {
            let tail = r.finish().map_err(|e| e.to_string())?;
            windows(cutter.push(tail.channels.first().map_or(&[][..], Vec::as_slice)))?;
        }
        windows(cutter.finish().into_iter().collect())
    })?;
    Ok(if from_rate == 0 {
        0.0
    } else {
        frames as f64 / f64::from(from_rate)
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
