//! `POST /translation` answers exactly per docs/CONTRACT.md, with transformers' translations.

use crate::common;

use common::{reference_en_ja, request, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn contract_example_returns_one_result_with_its_id_and_the_reference_translation() {
    let server = TestServer::start(common::config()).await;
    let body: Value = serde_json::from_str(
        r#"{"payload":{"fromLang":"en","records":[{"id":"123","text":"Life is like a box of chocolates."}],"toLang":"ja"}}"#,
    )
    .unwrap();
    let (status, headers, v) = server.translate(&body).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let expected = &reference_en_ja()[0];
    assert_eq!(expected.0, "Life is like a box of chocolates.");
    assert_eq!(v, json!({"result": [{"id": "123", "text": expected.1}]}));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn fifty_records_in_one_request_come_back_in_order_with_their_ids() {
    let server = TestServer::start(common::config()).await;
    let refs = reference_en_ja();
    let records = common::reference_records(50, "r");
    let (status, _, v) = server
        .translate(&common::request_owned("en", "ja", &records))
        .await;
    assert_eq!(status, 200, "{v}");
    let result = v["result"].as_array().unwrap();
    assert_eq!(result.len(), 50);
    for (i, r) in result.iter().enumerate() {
        assert_eq!(r["id"], format!("r{i}"));
        assert_eq!(r["text"], refs[i % refs.len()].1, "record {i}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn empty_records_empty_texts_and_duplicate_ids_are_kept() {
    let server = TestServer::start(common::config()).await;
    let (status, _, v) = server.translate(&request("en", "ja", &[])).await;
    assert_eq!((status, v), (200, json!({"result": []})));

    let refs = reference_en_ja();
    let body = request(
        "en",
        "ja",
        &[("a", ""), ("a", &refs[1].0), ("b", ""), ("a", &refs[1].0)],
    );
    let (status, _, v) = server.translate(&body).await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"result": [
            {"id": "a", "text": ""},
            {"id": "a", "text": refs[1].1},
            {"id": "b", "text": ""},
            {"id": "a", "text": refs[1].1},
        ]})
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn per_request_generation_settings_are_applied() {
    let server = TestServer::start(common::config()).await;
    let r = common::reference();
    let greedy = r["generation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "greedy")
        .unwrap()
        .clone();
    assert_eq!(
        (
            greedy["tgt"].as_str(),
            greedy["options"]["num_beams"].as_u64()
        ),
        (Some("fr"), Some(1))
    );
    let text = r["encoder"][0]["text"].as_str().unwrap();
    let mut body = request("en", "fr", &[("1", text)]);
    body["payload"]["beams"] = json!(1);
    let (status, _, v) = server.translate(&body).await;
    assert_eq!(status, 200);
    assert_eq!(v["result"][0]["text"], greedy["texts"][0]);

    // Two new tokens: the language token and one more, so one piece of text at most.
    body["payload"]["maxNewTokens"] = json!(2);
    let (status, _, v) = server.translate(&body).await;
    assert_eq!(status, 200);
    let ids = greedy["ids"][0].as_array().unwrap();
    assert!(
        ids.len() > 3,
        "the greedy reference is longer than two tokens"
    );
    let short = v["result"][0]["text"].as_str().unwrap();
    assert!(
        short.chars().count() < greedy["texts"][0].as_str().unwrap().chars().count(),
        "{short:?}"
    );
    server.stop().await.unwrap();
}
