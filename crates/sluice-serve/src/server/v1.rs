//! `/v1/models`: what the server serves, and `/v1/models/{name}/infer` on any of them (inline
//! data, paths confined to the data volume, or object-storage URLs).

use super::*;
use sluice_models::classifier::Window;

/// Parameters of the translation model on `/v1/models/{name}/infer`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TranslationParameters {
    from_lang: String,
    to_lang: String,
    #[serde(default, deserialize_with = "crate::api::whole_number")]
    beams: Option<usize>,
    #[serde(default, deserialize_with = "crate::api::whole_number")]
    max_new_tokens: Option<usize>,
}

/// Run a model on inline data or on files from the data volume or object storage.
#[utoipa::path(
    post,
    path = "/v1/models/{name}/infer",
    request_body = InferRequest,
    params(
        ("name" = String, Path, description = "A model listed by GET /v1/models"),
        ("x-sluice-deadline-ms" = Option<u64>, Header, description = "Deadline in milliseconds; 504 once it passes"),
    ),
    responses(
        (status = 200, description = "One output per input, in input order", body = InferResponse),
        (status = 400, description = "Malformed JSON, an input with not exactly one source, a malformed path", body = ErrorBody),
        (status = 403, description = "A path resolving outside the data root, a URL outside the allowed prefixes", body = ErrorBody),
        (status = 404, description = "Unknown model, or an input file that does not exist", body = ErrorBody),
        (status = 413, description = "Body or input file too large", body = ErrorBody),
        (status = 422, description = "Undecodable audio, unknown language, text that is not UTF-8, a path that is not a regular file", body = ErrorBody),
        (status = 503, description = "Queue full, model loading or shutting down; see Retry-After", body = ErrorBody),
        (status = 504, description = "Deadline passed", body = ErrorBody),
    )
)]
pub(super) async fn infer(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InferResponse>, ApiError> {
    let (body, deadline) = accept(&app, &headers, body)?;
    let Some(slot) = app.slot(&name) else {
        return Err(ApiError::UnknownModel {
            name,
            served: app.slots.iter().map(|s| s.entry.name.clone()).collect(),
        });
    };
    let request: InferRequest = parse_json(&body)?;
    check_count(&app, request.inputs.len(), "inputs")?;
    app.inputs.check(&request.inputs)?;
    let (outputs, labels) = match loaded(&app, slot)? {
        Loaded::Translation { translator, queue } => {
            let params: TranslationParameters =
                serde_json::from_value(serde_json::Value::Object(request.parameters))
                    .map_err(|e| ApiError::InvalidParameters(format!("parameters: {e}")))?;
            let inputs = request.inputs;
            let ids: Vec<String> = inputs.iter().map(|i| i.id.clone()).collect();
            let app2 = app.clone();
            let texts = blocking(move || {
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, input)| match app2.inputs.read(i, input)? {
                        Content::Text(t) => Ok(t),
                        Content::Bytes { bytes, .. } => String::from_utf8(bytes)
                            .map_err(|_| bad_input(i, input, InputProblem::NotUtf8)),
                    })
                    .collect::<Result<Vec<String>, ApiError>>()
            })
            .await?;
            let payload = crate::api::Payload {
                from_lang: params.from_lang,
                to_lang: params.to_lang,
                records: ids
                    .into_iter()
                    .zip(texts)
                    .map(|(id, text)| RecordIn { id, text })
                    .collect(),
                beams: params.beams,
                max_new_tokens: params.max_new_tokens,
            };
            let outputs = translate(&app, translator, queue, payload, deadline)
                .await?
                .into_iter()
                .map(|r| InferOutput {
                    id: r.id,
                    text: Some(r.text),
                    ..InferOutput::default()
                })
                .collect();
            (outputs, None)
        }
        Loaded::Classifier { classify, queue } => {
            if !request.parameters.is_empty() {
                return Err(ApiError::InvalidParameters(format!(
                    "model {name:?} (an audio classifier) takes no parameters"
                )));
            }
            let outputs = classify_inputs(&app, classify, queue, request.inputs, deadline).await?;
            (outputs, Some(classify.classifier().spec().labels.clone()))
        }
    };
    Ok(Json(InferResponse {
        model: name,
        labels,
        outputs,
    }))
}

/// What the decoding task hands the request: windows of input `i` as they are cut, or its end.
enum Cut {
    Windows(usize, Vec<Window>),
    Done(usize, f64),
}

/// Decodes the inputs one after another in chunks, queues their windows on the classifier's
/// batcher in groups as they are cut (where they join other requests' windows) and reassembles
/// the scores per input. A group is at most half the queue, and the decoder waits while one is
/// being scored, so a request holds a bounded number of windows whatever its files' lengths.
pub(super) async fn classify_inputs(
    app: &Arc<App>,
    classify: &Arc<Classify>,
    queue: &Arc<Queue<Classify>>,
    inputs: Vec<InferInput>,
    deadline: Option<Instant>,
) -> Result<Vec<InferOutput>, ApiError> {
    // All refused before any is decoded.
    for (i, input) in inputs.iter().enumerate() {
        crate::infer::refuse_text_for_audio(i, input)?;
    }
    let group = (queue.capacity() / 2).clamp(1, 256);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Cut, ApiError>>(1);
    let ids: Vec<String> = inputs.iter().map(|input| input.id.clone()).collect();
    let (app2, classify2) = (app.clone(), classify.clone());
    let decoding = tokio::task::spawn_blocking(move || {
        for (i, input) in inputs.iter().enumerate() {
            let opened = app2.inputs.open_audio(i, input);
            let prepared = opened.and_then(|(source, name)| {
                crate::classify::prepare_stream(
                    classify2.classifier(),
                    source,
                    name.as_deref(),
                    sluice_audio::decode::DEFAULT_CHUNK_FRAMES,
                    |windows| {
                        if windows.is_empty() {
                            return Ok(());
                        }
                        tx.blocking_send(Ok(Cut::Windows(i, windows)))
                            .map_err(|_| "the request ended".to_string())
                    },
                )
                .map_err(|m| bad_input(i, input, InputProblem::InvalidAudio(m)))
            });
            let sent = match prepared {
                Ok(duration) => tx.blocking_send(Ok(Cut::Done(i, duration))),
                Err(e) => tx.blocking_send(Err(e)),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let labels = &classify.classifier().spec().labels;
    let mut outputs: Vec<InferOutput> = ids
        .into_iter()
        .map(|id| InferOutput {
            id,
            windows: Some(Vec::new()),
            ..InferOutput::default()
        })
        .collect();
    // Windows cut and not yet scored, with the input each belongs to.
    let mut pending: Vec<(usize, Window)> = Vec::new();
    while let Some(cut) = rx.recv().await {
        match cut? {
            Cut::Windows(i, windows) => {
                pending.extend(windows.into_iter().map(|w| (i, w)));
                while pending.len() >= group {
                    let rest = pending.split_off(group);
                    let ready = std::mem::replace(&mut pending, rest);
                    score(app, queue, labels, deadline, ready, &mut outputs).await?;
                }
            }
            Cut::Done(i, duration) => outputs[i].duration = Some(duration),
        }
    }
    score(app, queue, labels, deadline, pending, &mut outputs).await?;
    decoding
        .await
        .map_err(|e| ApiError::Internal(format!("decoding task: {e}")))?;
    Ok(outputs)
}

/// Scores a group of windows on the batcher and appends each score to its input's output.
async fn score(
    app: &Arc<App>,
    queue: &Arc<Queue<Classify>>,
    labels: &[String],
    deadline: Option<Instant>,
    pending: Vec<(usize, Window)>,
    outputs: &mut [InferOutput],
) -> Result<(), ApiError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut owners = Vec::with_capacity(pending.len());
    let mut items = Vec::with_capacity(pending.len());
    for (i, w) in pending {
        owners.push((i, w.start, w.end));
        items.push((w.samples, 1));
    }
    let answers = submit(app, queue, (), items, deadline).await?;
    for ((i, start, end), answer) in owners.into_iter().zip(answers) {
        let scores = answer.map_err(item_error)?;
        if let Some(windows) = outputs[i].windows.as_mut() {
            windows.push(crate::classify::window_scores(labels, start, end, scores));
        }
    }
    Ok(())
}

/// The input sources a model of `kind` takes on this server.
pub(super) fn input_sources(app: &App, kind: ModelKind) -> Vec<&'static str> {
    let mut v = match kind {
        ModelKind::Translation => vec!["text", "data"],
        ModelKind::AudioClassifier => vec!["data"],
    };
    if app.inputs.data_root.is_some() {
        v.push("path");
    }
    if !app.inputs.url_prefixes.is_empty() {
        v.push("url");
    }
    v
}

/// The models this server serves, with what each takes.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = [ModelInfo])))]
pub(super) async fn list_models(State(app): State<Arc<App>>) -> Json<Vec<ModelInfo>> {
    let infos = app
        .slots
        .iter()
        .map(|slot| {
            let kind = slot.kind();
            let (parameters, input_kind) = match kind {
                ModelKind::Translation => (
                    serde_json::json!({
                        "fromLang": "source language code (required)",
                        "toLang": "target language code (required)",
                        "beams": "beams for beam search, 1 = greedy (optional)",
                        "maxNewTokens": "most generated tokens per input (optional)",
                    }),
                    "text",
                ),
                ModelKind::AudioClassifier => (serde_json::json!({}), "audio"),
            };
            let details = match slot.loaded.get() {
                Some(Loaded::Classifier { classify, .. }) => {
                    serde_json::to_value(classify.classifier().spec()).ok()
                }
                Some(Loaded::Translation { translator, .. }) => Some(serde_json::json!({
                    "languages": translator.model().tokenizer().languages(),
                })),
                None => None,
            };
            ModelInfo {
                name: slot.entry.name.clone(),
                kind: kind.as_str().to_owned(),
                status: if slot.loaded.get().is_some() {
                    "ready"
                } else {
                    "loading"
                }
                .to_owned(),
                source: slot.entry.source.clone(),
                inputs: input_sources(&app, kind)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                input_kind: input_kind.to_owned(),
                parameters,
                details,
            }
        })
        .collect();
    Json(infos)
}
