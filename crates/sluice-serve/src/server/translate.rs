//! `POST /translation`: the contract route (`docs/CONTRACT.md`) on the translation model.

use super::*;

/// Translate records from one language to another.
#[utoipa::path(
    post,
    path = "/translation",
    request_body = TranslationRequest,
    params(("x-sluice-deadline-ms" = Option<u64>, Header, description = "Deadline in milliseconds; 504 once it passes")),
    responses(
        (status = 200, description = "One result per record, in request order", body = TranslationResponse),
        (status = 400, description = "Malformed JSON or missing fields", body = ErrorBody),
        (status = 413, description = "Body too large or too many records", body = ErrorBody),
        (status = 422, description = "Unknown language, text too long or setting out of range", body = ErrorBody),
        (status = 503, description = "Queue full, model loading or shutting down; see Retry-After", body = ErrorBody),
        (status = 504, description = "Deadline passed", body = ErrorBody),
    )
)]
pub(super) async fn translation(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TranslationResponse>, ApiError> {
    let (body, deadline) = accept(&app, &headers, body)?;
    let request: TranslationRequest = parse_json(&body)?;
    let payload = request.payload;
    check_count(&app, payload.records.len(), "records")?;
    let Some(slot) = app.translation_slot() else {
        return Err(ApiError::NoTranslationModel);
    };
    let (translator, queue) = match loaded(&app, slot)? {
        Loaded::Translation { translator, queue } => (translator, queue),
        Loaded::Classifier { .. } => unreachable!("the translation slot holds a translator"),
    };
    let result = translate(&app, translator, queue, payload, deadline).await?;
    Ok(Json(TranslationResponse { result }))
}

/// Queues the records of one request on the translation batcher and awaits them all.
pub(super) async fn translate(
    app: &App,
    translator: &Arc<Translator>,
    queue: &Arc<Queue<Translator>>,
    payload: crate::api::Payload,
    deadline: Option<Instant>,
) -> Result<Vec<RecordOut>, ApiError> {
    // Checked even with no records: an unknown language is the same mistake with none.
    // Tokenizing hundreds of records is real work: keep it off the async threads.
    let translator = translator.clone();
    let limits = app.config.limits.clone();
    let prepared = blocking(move || translator.prepare(&limits, payload)).await?;
    // Empty texts are answered without the model.
    let queued: Vec<bool> = prepared.items.iter().map(Option::is_some).collect();
    let items = prepared
        .items
        .into_iter()
        .flatten()
        .map(|tokens| {
            let cost = tokens.len();
            (tokens, cost)
        })
        .collect();
    let mut answers = submit(app, queue, prepared.key, items, deadline)
        .await?
        .into_iter();
    let mut result = Vec::with_capacity(prepared.ids.len());
    for (id, queued) in prepared.ids.into_iter().zip(queued) {
        let text = if queued {
            let answer = answers.next().expect("one answer per queued record");
            answer.map_err(item_error)?.text
        } else {
            String::new()
        };
        result.push(RecordOut { id, text });
    }
    Ok(result)
}
