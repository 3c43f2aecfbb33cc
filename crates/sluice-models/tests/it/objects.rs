//! Models in object storage (moto's S3 on loopback): copied into the model cache once, loaded by
//! the kind their files show, loaded from the copy when the store is gone, and copied again when
//! an object changes.

use std::path::Path;

use sluice_core::storage::Location;
use sluice_models::m2m100::ComputeType;
use sluice_models::service::{self, LoadContext, Spelling, TranslationParams};
use sluice_models::source::{ModelSource, ObjectSettings};
use sluice_testkit::S3Server;

fn upload(dir: &Path, url: &str, options: &[(String, String)]) {
    let location = Location::parse_with(url, options).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_str().unwrap();
            location.upload_blocking(name, &path).unwrap();
        }
    }
}

fn translate(model: &service::Model) -> String {
    let service = model.translation().expect("a translation model");
    let params = TranslationParams {
        from: "en".into(),
        to: "fr".into(),
        beams: Some(1),
        max_new_tokens: Some(8),
        ..TranslationParams::default()
    };
    let request = service.check(&params, Spelling::Toml).unwrap();
    let mut out = service.translate(&request, &["Hello, world."], 1);
    out.remove(0).unwrap().text
}

#[test]
fn a_model_in_object_storage_is_copied_once_and_loads_by_the_kind_of_its_files() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let options = s3.options();
    let tiny = sluice_testkit::fixture("tiny-m2m100");
    upload(&tiny, "s3://models/tiny", &options);
    upload(
        &sluice_testkit::fixture("onnx").join("tone-detector"),
        "s3://models/tone",
        &options,
    );
    let cache = tempfile::tempdir().unwrap();
    let context = LoadContext {
        objects: ObjectSettings {
            cache_dir: cache.path().to_owned(),
            options: options.clone(),
        },
        ..LoadContext::cpu(ComputeType::Float32)
    };
    let source = ModelSource::parse("s3://models/tiny");
    assert_eq!(source, ModelSource::Object("s3://models/tiny".into()));

    let from_store = service::load(&source, &context).unwrap();
    let local = service::load(
        &ModelSource::Dir(tiny),
        &LoadContext::cpu(ComputeType::Float32),
    );
    assert_eq!(translate(&from_store), translate(&local.unwrap()));
    let tone = service::load(&ModelSource::parse("s3://models/tone"), &context).unwrap();
    assert_eq!(tone.kind(), "audio-classifier");

    // Loaded again, nothing is copied: the copy's files are the same files.
    let weights = cache.path().join("s3/models/tiny/model.safetensors");
    let copied = std::fs::metadata(&weights).unwrap().modified().unwrap();
    service::load(&source, &context).unwrap();
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        copied
    );

    // A changed object is copied again.
    let notes = tempfile::tempdir().unwrap();
    std::fs::write(notes.path().join("NOTES.txt"), "first").unwrap();
    upload(notes.path(), "s3://models/tiny", &options);
    service::load(&source, &context).unwrap();
    std::fs::write(notes.path().join("NOTES.txt"), "second, longer").unwrap();
    upload(notes.path(), "s3://models/tiny", &options);
    service::load(&source, &context).unwrap();
    let copy = std::fs::read_to_string(cache.path().join("s3/models/tiny/NOTES.txt")).unwrap();
    assert_eq!(copy, "second, longer");

    // With the store gone, the copy serves.
    drop(s3);
    let offline = service::load(&source, &context).unwrap();
    assert_eq!(translate(&offline), translate(&from_store));

    // A prefix that holds nothing, and one never copied with no store, are errors.
    let empty = ModelSource::parse("s3://models/nothing-here");
    assert!(service::load(&empty, &context).is_err());
}
