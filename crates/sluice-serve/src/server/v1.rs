//! `/v1/models`: what the server serves, and `/v1/models/{name}/infer` on any of them (inline
//! data, paths confined to the data volume, or object-storage URLs).

use super::*;

/// Parameters of the translation model on `/v1/models/{name}/infer`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TranslationParameters {
    from_lang: String,
    to_lang: String,
    #[serde(default)]
    beams: Option<usize>,
    #[serde(default)]
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
        (status = 413, description = "Body, input file or window count too large", body = ErrorBody),
        (status = 422, description = "Undecodable audio, unknown language, text that is not UTF-8", body = ErrorBody),
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

/// Decodes every input, queues all their windows on the classifier's batcher (where they join
/// other requests' windows) and reassembles the scores per input.
pub(super) async fn classify_inputs(
    app: &Arc<App>,
    classify: &Arc<Classify>,
    queue: &Arc<Queue<Classify>>,
    inputs: Vec<InferInput>,
    deadline: Option<Instant>,
) -> Result<Vec<InferOutput>, ApiError> {
    for (i, input) in inputs.iter().enumerate() {
        if input.text.is_some() {
            return Err(bad_input(
                i,
                input,
                InputProblem::WrongKind(
                    "an audio classifier takes audio as data, path or url, not text",
                ),
            ));
        }
    }
    let (app2, classify2) = (app.clone(), classify.clone());
    let prepared = blocking(move || {
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let Content::Bytes { bytes, name } = app2.inputs.read(i, input)? else {
                    unreachable!("text inputs were refused above")
                };
                let p = crate::classify::prepare(classify2.classifier(), &bytes, name.as_deref())
                    .map_err(|m| bad_input(i, input, InputProblem::InvalidAudio(m)))?;
                Ok((input.id.clone(), p))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await?;
    let total: usize = prepared.iter().map(|(_, p)| p.windows.len()).sum();
    if total > queue.capacity() {
        return Err(ApiError::TooManyWindows {
            windows: total,
            capacity: queue.capacity(),
        });
    }
    let mut items = Vec::with_capacity(total);
    let mut pending = Vec::with_capacity(prepared.len());
    for (id, p) in prepared {
        let spans: Vec<(f64, f64)> = p.windows.iter().map(|w| (w.start, w.end)).collect();
        items.extend(p.windows.into_iter().map(|w| (w.samples, 1)));
        pending.push((id, p.duration, spans));
    }
    let mut answers = submit(app, queue, (), items, deadline).await?.into_iter();
    let labels = &classify.classifier().spec().labels;
    let mut outputs = Vec::with_capacity(pending.len());
    for (id, duration, spans) in pending {
        let mut windows = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            let scores = answers
                .next()
                .expect("one answer per window")
                .map_err(item_error)?;
            windows.push(crate::classify::window_scores(labels, start, end, scores));
        }
        outputs.push(InferOutput {
            id,
            duration: Some(duration),
            windows: Some(windows),
            ..InferOutput::default()
        });
    }
    Ok(outputs)
}

/// The models this server serves, with what each takes.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = [ModelInfo])))]
pub(super) async fn list_models(State(app): State<Arc<App>>) -> Json<Vec<ModelInfo>> {
    let inputs = |kind: ModelKind| {
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
        v.into_iter().map(str::to_owned).collect()
    };
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
                inputs: inputs(kind),
                input_kind: input_kind.to_owned(),
                parameters,
                details,
            }
        })
        .collect();
    Json(infos)
}
