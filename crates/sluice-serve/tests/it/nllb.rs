//! An NLLB-200 model served: `/translation`, `/v1` and `/v2` take its codes and the ISO 639-1
//! codes of the contract alike and answer with transformers' translations; an unknown code is a
//! 422 suggesting the NLLB code.

use crate::common::{self, TestServer};
use serde_json::{json, Value};
use sluice_serve::ServeConfig;

async fn server() -> TestServer {
    let mut config = ServeConfig {
        models: vec![common::model("nllb", &sluice_testkit::fixture("tiny-nllb"))],
        compute_type: sluice_models::m2m100::ComputeType::Float32,
        ..ServeConfig::default()
    };
    config.limits.max_input_tokens = Some(128);
    TestServer::start(config).await
}

/// The `text` of each answer in a list.
fn texts_of(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| a["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn every_route_takes_iso_and_nllb_codes_and_answers_as_transformers() {
    let (texts, want): (Vec<String>, Vec<String>) = sluice_testkit::tiny_nllb_en_fr()
        .into_iter()
        .take(5)
        .unzip();
    let server = server().await;

    let records: Vec<(&str, &str)> = texts.iter().map(|t| ("r", t.as_str())).collect();
    let (status, _, v) = server
        .translate(&common::request("en", "fr", &records))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(texts_of(&v["result"]), want);

    let inputs: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i.to_string(), "text": t}))
        .collect();
    let body = json!({"parameters": {"fromLang": "eng_Latn", "toLang": "fr"}, "inputs": inputs});
    let (status, v) = server.post_json("/v1/models/nllb/infer", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(texts_of(&v["outputs"]), want);

    let body = json!({
        "parameters": {"source_lang": "en", "target_lang": "fra_Latn"},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [texts.len()], "data": texts}],
    });
    let (status, v) = server.post_json("/v2/models/nllb/infer", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["outputs"][0]["data"], json!(want));

    let (status, _, v) = server
        .translate(&common::request("en", "fra", &records))
        .await;
    assert_eq!(status, 422, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"fra\" in payload.toLang (did you mean \"fra_Latn\"?)"),
        "{v}"
    );

    // The served schema takes both spellings of a language.
    let (_, doc) = server.get_json("/openapi.json").await;
    let to = &doc["paths"]["/v1/models/nllb/infer"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]["properties"]["parameters"]["properties"]["toLang"]["enum"];
    for code in ["en", "eng_Latn", "zho_Hant"] {
        assert!(
            to.as_array().unwrap().contains(&json!(code)),
            "{code}: {to}"
        );
    }
    server.stop().await.unwrap();
}
