//! An NLLB-200 model served: `/translation`, `/v1` and `/v2` take its codes and the ISO 639-1
//! codes of the contract alike and answer with transformers' translations; an unknown code is a
//! 422 suggesting the NLLB code.

use crate::common::{self, TestServer};
use serde_json::{json, Value};
use sluice_serve::ServeConfig;

fn reference() -> Value {
    let dir = sluice_testkit::fixture("tiny-nllb");
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

async fn server() -> TestServer {
    let mut config = ServeConfig {
        models: vec![common::model("nllb", &sluice_testkit::fixture("tiny-nllb"))],
        compute_type: sluice_models::m2m100::ComputeType::Float32,
        ..ServeConfig::default()
    };
    config.limits.max_input_tokens = Some(128);
    TestServer::start(config).await
}

async fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let r = server
        .client
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn every_route_takes_iso_and_nllb_codes_and_answers_as_transformers() {
    let r = reference();
    let case = &r["generation"][0];
    assert_eq!(case["name"], "defaults");
    let texts: Vec<&str> = r["tokenize"]
        .as_array()
        .unwrap()
        .iter()
        .take(5)
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = case["texts"]
        .as_array()
        .unwrap()
        .iter()
        .take(5)
        .map(|t| t.as_str().unwrap())
        .collect();
    let server = server().await;

    let records: Vec<(&str, &str)> = texts.iter().map(|t| ("r", *t)).collect();
    let (status, _, v) = server
        .translate(&common::request("en", "fr", &records))
        .await;
    assert_eq!(status, 200, "{v}");
    let got: Vec<&str> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["text"].as_str().unwrap())
        .collect();
    assert_eq!(got, want);

    let inputs: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i.to_string(), "text": t}))
        .collect();
    let body = json!({"parameters": {"fromLang": "eng_Latn", "toLang": "fr"}, "inputs": inputs});
    let (status, v) = post(&server, "/v1/models/nllb/infer", &body).await;
    assert_eq!(status, 200, "{v}");
    let got: Vec<&str> = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["text"].as_str().unwrap())
        .collect();
    assert_eq!(got, want);

    let body = json!({
        "parameters": {"source_lang": "en", "target_lang": "fra_Latn"},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [texts.len()], "data": texts}],
    });
    let (status, v) = post(&server, "/v2/models/nllb/infer", &body).await;
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
    let doc: Value = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
