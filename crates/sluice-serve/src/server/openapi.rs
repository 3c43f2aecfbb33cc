//! The served OpenAPI document's per-model parts: each model's `/v1/models/{model}/infer` with
//! the request that model takes, so that a client generated from the document (or a fuzzer such
//! as schemathesis) sends only what the model accepts, and is refused for anything else.
//!
//! utoipa describes handlers at compile time; the models are known only when the server starts,
//! so these parts are added to the document's JSON here.

use serde_json::{json, Value};

use sluice_models::service::{translation, Description};

use crate::Limits;

/// What the document says about one served model.
pub struct ModelDoc<'a> {
    /// The model's name in paths.
    pub name: &'a str,
    /// What it says about itself, once loaded.
    pub description: Option<&'a Description>,
    /// Its kind (until loaded, what its source suggests).
    pub kind: &'static str,
    /// The input sources it takes (`text`, `data`, `path`, `url`).
    pub sources: Vec<&'static str>,
}

/// Standard base64, padded: what `data` must be.
const BASE64: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// A path the data root takes: relative, no NUL, no `..` component (one component is anything
/// but `/`, NUL and `..`; a link that leaves the root is refused with 403 when it is followed).
const RELATIVE_PATH: &str = concat!(
    "^(?:[^/.\\x00][^/\\x00]*|\\.(?:[^/.\\x00][^/\\x00]*)?|\\.\\.[^/\\x00]+)",
    "(?:/+(?:[^/.\\x00][^/\\x00]*|\\.(?:[^/.\\x00][^/\\x00]*)?|\\.\\.[^/\\x00]+))*/*$"
);

/// Replaces the generic `/v1/models/{name}/infer` of `doc` with one path per model, and gives
/// the v2 inference request its structure.
pub fn describe_models(doc: &mut Value, models: &[ModelDoc], limits: &Limits) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    // The models' names, so that a generated request names a served model.
    let names: Vec<&str> = models.iter().map(|m| m.name).collect();
    for item in paths.values_mut() {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            let params = op.get_mut("parameters").and_then(Value::as_array_mut);
            for param in params.into_iter().flatten() {
                if param["in"] == "path" && param["name"] == "name" {
                    param["schema"]["enum"] = json!(names);
                }
            }
        }
    }
    if let Some(v2) = paths.get_mut("/v2/models/{name}/infer") {
        v2["post"]["requestBody"]["content"]["application/json"]["schema"] = v2_request_schema();
    }
    let Some(generic) = paths.remove("/v1/models/{name}/infer") else {
        return;
    };
    for model in models {
        let mut item = generic.clone();
        let op = &mut item["post"];
        op["operationId"] = json!(format!("infer_{}", model.name));
        op["summary"] = json!(format!("Run model {:?}.", model.name));
        if let Some(params) = op["parameters"].as_array_mut() {
            params.retain(|p| p["in"] != "path");
        }
        op["requestBody"]["content"]["application/json"]["schema"] = request_schema(model, limits);
        paths.insert(format!("/v1/models/{}/infer", model.name), item);
    }
}

/// The request body `model` takes.
fn request_schema(model: &ModelDoc, limits: &Limits) -> Value {
    let mut properties = json!({ "id": { "type": "string" } });
    for &source in &model.sources {
        properties[source] = match source {
            "data" => json!({ "type": "string", "format": "byte", "pattern": BASE64 }),
            "path" => json!({ "type": "string", "pattern": RELATIVE_PATH }),
            "url" => json!({ "type": "string", "format": "uri" }),
            _ => json!({ "type": "string" }),
        };
    }
    let one_of: Vec<Value> = model
        .sources
        .iter()
        .map(|s| json!({ "required": [s] }))
        .collect();
    let input = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["id"],
        "properties": properties,
        "oneOf": one_of,
    });
    let inputs = json!({ "type": "array", "items": input, "maxItems": limits.max_records });
    let (parameters, required) = match model.description {
        Some(d) => d.parameters_schema.clone(),
        // Until it is loaded a translation model's parameters are known but not its languages.
        None if model.kind == translation::KIND_NAME => (
            translation::parameters_schema(None, &limits.translation()),
            true,
        ),
        None => (json!({ "type": "object", "maxProperties": 0 }), false),
    };
    let required = if required {
        json!(["inputs", "parameters"])
    } else {
        json!(["inputs"])
    };
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": {
            "inputs": inputs,
            "parameters": parameters,
        },
    })
}

/// The Open Inference Protocol's request: its structure, not each model's tensors (a tensor's
/// shape must agree with its data, and with the binary extension the data follows the JSON).
fn v2_request_schema() -> Value {
    let parameters = json!({ "type": "object" });
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["inputs"],
        "properties": {
            "id": { "type": ["string", "null"] },
            "parameters": parameters,
            "inputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["name", "shape", "datatype"],
                    "properties": {
                        "name": { "type": "string" },
                        "shape": { "type": "array", "items": { "type": "integer", "minimum": 0, "maximum": i64::MAX } },
                        "datatype": { "type": "string" },
                        "parameters": parameters,
                        "data": {},
                    },
                },
            },
            "outputs": {
                "type": ["array", "null"],
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["name"],
                    "properties": { "name": { "type": "string" }, "parameters": parameters },
                },
            },
        },
    })
}
