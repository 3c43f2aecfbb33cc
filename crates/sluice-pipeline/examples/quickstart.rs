//! The typed Rust API: a stage with per-worker setup, a closure stage, and a JSON-lines sink that
//! makes reruns skip finished items.
//!
//! ```text
//! cargo run --release -p sluice-pipeline --example quickstart -- out/quickstart
//! ```

use sluice_pipeline::{
    map, ItemError, Mode, PartSink, Pipeline, Progress, RunOptions, Stage, StageError,
    StageOptions, WorkerContext,
};

/// Counts the words of a text that are in a vocabulary each worker loads once (here: built).
#[derive(Clone, Default)]
struct KnownWords {
    vocabulary: Option<std::collections::HashSet<&'static str>>,
}

impl Stage for KnownWords {
    type In = String;
    type Out = (String, usize);

    fn name(&self) -> String {
        "known_words".into()
    }

    fn options(&self) -> StageOptions {
        StageOptions::default().batch_size(64)
    }

    fn setup(&mut self, worker: &WorkerContext) -> Result<(), StageError> {
        // Where a model would be loaded: once per worker, before its first batch.
        eprintln!("{} worker {} ready", worker.stage, worker.worker);
        self.vocabulary = Some(["the", "a", "of", "is", "box"].into_iter().collect());
        Ok(())
    }

    fn process(
        &mut self,
        batch: &[String],
    ) -> Result<Vec<Result<(String, usize), ItemError>>, StageError> {
        let vocabulary = self.vocabulary.as_ref().expect("set up before process");
        Ok(batch
            .iter()
            .map(|text| {
                let known = text
                    .split_whitespace()
                    .filter(|w| vocabulary.contains(w))
                    .count();
                Ok((text.clone(), known))
            })
            .collect())
    }
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "out/quickstart".into());
    let texts = (0..10_000).map(|i| format!("item {i} is the {} of a box", i % 7));
    let ratio = map(
        "ratio",
        StageOptions::default(),
        |(text, known): &(String, usize)| {
            let words = text.split_whitespace().count();
            if words == 0 {
                return Err(ItemError::permanent("empty text"));
            }
            Ok(serde_json::json!({ "text": text, "known": *known as f64 / words as f64 }))
        },
    );
    let options = RunOptions {
        mode: Some(Mode::Streaming),
        skip_completed: true,
        progress: Progress::Auto,
        ..RunOptions::default()
    };
    let mut sink = PartSink::jsonl(&out, "key", 5_000, "").expect("output directory");
    // The compiler checks that each stage's output type is the next stage's input type.
    let summary = Pipeline::from_items(texts)
        .stage(KnownWords::default())
        .stage(ratio)
        .run(&options, &mut sink)
        .expect("run");
    eprint!("{}", summary.render());
}
