//! A loaded model behind its queue, driven the same way whatever its kind: the routes see a
//! [`Served`] and never the kind. Requests are read into the model service's inputs, the service
//! cuts them into work, the work joins the model's batcher (where other requests' work waits) and
//! the results are folded back per input.
//!
//! A kind whose inputs stream (a classifier over a long recording) has its work submitted in
//! groups as it is cut, the decoder waiting while a group is scored, so a request holds a bounded
//! amount of work whatever its files' lengths; any other kind's work is admitted as a whole.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use sluice_models::service::{
    self, Description, InferInput, InferOutput, InputKind, ModelService, NamedTensor, Parameters,
    ServiceError, Spelling, TensorInfo, Work,
};

use super::submit::{item_error, shutting_down, submit};
use super::{App, Slot};
use crate::batcher::{self, BatchConfig, Queue};
use crate::error::ApiError;
use crate::infer::refuse_text_for_audio;

/// A loaded model as the routes use it.
pub(super) trait Served: Send + Sync {
    /// The kind's name.
    fn kind(&self) -> &'static str;

    /// What the model says about itself.
    fn description(&self) -> &Description;

    /// Items queued or in compute, and the most the queue holds.
    fn depth_capacity(&self) -> (usize, usize);

    /// Runs one request's inputs with its parameters (spelled as `spelling`), answering one
    /// output per input in order.
    fn infer<'a>(
        &'a self,
        app: &'a Arc<App>,
        inputs: Vec<InferInput>,
        parameters: Parameters,
        spelling: Spelling,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Vec<InferOutput>, ApiError>>;

    /// The Open Inference Protocol's input tensors on this server.
    fn v2_inputs(&self, sources: &[&str]) -> Vec<TensorInfo>;

    /// Runs a v2 request's one input tensor (its name, shape and elements) with its parameters:
    /// read as the inputs it means, checked and run as `/v1` runs them, answered as tensors.
    fn infer_tensor<'a>(
        &'a self,
        app: &'a Arc<App>,
        tensor: V2Input<'a>,
        parameters: Parameters,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Vec<NamedTensor>, ApiError>>;
}

/// A v2 request's input tensor: its name, shape and elements.
pub(super) type V2Input<'a> = (&'a str, &'a [i64], Vec<Vec<u8>>);

/// A model service with its running batcher.
pub(super) struct Running<S: ModelService> {
    service: Arc<S>,
    queue: Arc<Queue<S>>,
    description: Description,
}

/// Starts the batcher of `service`; returns it served, and the batcher's handle to await at
/// shutdown.
pub(super) fn start<S: ModelService>(
    service: Arc<S>,
    mut config: BatchConfig,
    window_capacity: std::num::NonZeroUsize,
    name: &str,
) -> (Arc<dyn Served>, tokio::task::JoinHandle<()>) {
    if service.streams() {
        // A streamed item (a window) costs one unit: the batch size alone bounds a batch.
        config.max_tokens = usize::MAX;
        config.queue_capacity = window_capacity;
    }
    let running = batcher::start(service.clone(), config, name);
    let description = service.describe();
    let served = Running {
        service,
        queue: running.queue,
        description,
    };
    (Arc::new(served), running.finished)
}

/// What the reading thread hands the request: work cut from input `i`, or input `i` prepared.
enum Cut<S: ModelService> {
    Work(usize, Work<S>),
    Prepared(usize, InferOutput),
}

impl<S: ModelService> Served for Running<S> {
    fn kind(&self) -> &'static str {
        self.service.kind()
    }

    fn description(&self) -> &Description {
        &self.description
    }

    fn depth_capacity(&self) -> (usize, usize) {
        (self.queue.depth(), self.queue.capacity())
    }

    fn infer<'a>(
        &'a self,
        app: &'a Arc<App>,
        inputs: Vec<InferInput>,
        parameters: Parameters,
        spelling: Spelling,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Vec<InferOutput>, ApiError>> {
        Box::pin(self.run(app, inputs, parameters, spelling, deadline))
    }

    fn v2_inputs(&self, sources: &[&str]) -> Vec<TensorInfo> {
        self.service.v2_inputs(sources)
    }

    fn infer_tensor<'a>(
        &'a self,
        app: &'a Arc<App>,
        (name, shape, elements): V2Input<'a>,
        parameters: Parameters,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Vec<NamedTensor>, ApiError>> {
        Box::pin(async move {
            let ids: Vec<String> = (0..elements.len()).map(|i| i.to_string()).collect();
            let (inputs, parameters) = self
                .service
                .v2_request(name, elements, parameters)
                .map_err(|e| ApiError::from_service(e, &ids, Spelling::V2))?;
            app.inputs.check(&inputs)?;
            let outputs = self
                .run(app, inputs, parameters, Spelling::V2, deadline)
                .await?;
            Ok(self.service.v2_outputs(shape, outputs))
        })
    }
}

impl<S: ModelService> Running<S> {
    async fn run(
        &self,
        app: &Arc<App>,
        inputs: Vec<InferInput>,
        parameters: Parameters,
        spelling: Spelling,
        deadline: Option<Instant>,
    ) -> Result<Vec<InferOutput>, ApiError> {
        let ids: Vec<String> = inputs.iter().map(|i| i.id.clone()).collect();
        let failed = |e: ServiceError| ApiError::from_service(e, &ids, spelling);
        // Checked before any input is read: a wrong setting is the same mistake with no inputs.
        let params = Arc::new(
            self.service
                .parameters(&parameters, spelling)
                .map_err(failed)?,
        );
        let input_kind = self.description.input;
        if input_kind == InputKind::Audio {
            // All refused before any is decoded.
            for (i, input) in inputs.iter().enumerate() {
                refuse_text_for_audio(i, input)?;
            }
        }
        let group = if self.service.streams() {
            (self.queue.capacity() / 2).clamp(1, 256)
        } else {
            usize::MAX
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Cut<S>, ApiError>>(1);
        let (app2, service, ids2) = (app.clone(), self.service.clone(), ids.clone());
        let reading = tokio::task::spawn_blocking(move || {
            for (i, input) in inputs.iter().enumerate() {
                let content = app2.inputs.content(i, input, input_kind);
                let prepared = content.and_then(|content| {
                    service
                        .prepare(&params, i, content, &mut |work| {
                            tx.blocking_send(Ok(Cut::Work(i, work)))
                                .map_err(|_| ServiceError::Cancelled)
                        })
                        .map_err(|e| ApiError::from_service(e, &ids2, spelling))
                });
                let sent = tx.blocking_send(prepared.map(|out| Cut::Prepared(i, out)));
                if sent.is_err() {
                    return;
                }
            }
        });
        let mut outputs: Vec<InferOutput> = ids
            .iter()
            .map(|id| InferOutput {
                id: id.clone(),
                ..InferOutput::default()
            })
            .collect();
        // Work cut and not yet submitted, with the input each belongs to.
        let mut pending: Vec<(usize, Work<S>)> = Vec::new();
        while let Some(cut) = rx.recv().await {
            match cut? {
                Cut::Work(i, work) => {
                    pending.push((i, work));
                    while pending.len() >= group {
                        let rest = pending.split_off(group);
                        let ready = std::mem::replace(&mut pending, rest);
                        self.score(app, deadline, ready, &mut outputs).await?;
                    }
                }
                Cut::Prepared(i, prepared) => service::fill(&mut outputs[i], prepared),
            }
        }
        self.score(app, deadline, pending, &mut outputs).await?;
        reading
            .await
            .map_err(|e| ApiError::Internal(format!("reading task: {e}")))?;
        Ok(outputs)
    }

    /// Runs a group of work on the batcher and folds each result into its input's output.
    async fn score(
        &self,
        app: &App,
        deadline: Option<Instant>,
        pending: Vec<(usize, Work<S>)>,
        outputs: &mut [InferOutput],
    ) -> Result<(), ApiError> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut owners = Vec::with_capacity(pending.len());
        let mut items = Vec::with_capacity(pending.len());
        for (i, w) in pending {
            owners.push((i, w.tag));
            items.push((w.key, w.item, w.cost));
        }
        let answers = submit(app, &self.queue, items, deadline).await?;
        for ((i, tag), answer) in owners.into_iter().zip(answers) {
            let done = answer.map_err(item_error)?;
            self.service.fold(&mut outputs[i], tag, done);
        }
        Ok(())
    }
}

/// The slot's model once loaded, or the 503 that tells the client to come back.
pub(super) fn loaded<'a>(app: &App, slot: &'a Slot) -> Result<&'a Arc<dyn Served>, ApiError> {
    if app.draining.load(Ordering::SeqCst) {
        return Err(shutting_down(app));
    }
    slot.loaded.get().ok_or_else(|| ApiError::ModelLoading {
        name: slot.entry.name.clone(),
        retry_after: app.config.retry_after,
    })
}
