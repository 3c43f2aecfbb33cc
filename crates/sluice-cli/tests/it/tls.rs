//! HTTPS wherever Sluice takes a URL, with certificates checked: the hub (`sluice fetch-model`
//! with `HF_ENDPOINT=https://...`), the remote `model` stage (`sluice audio classify --model
//! https://...`) and `sluice stress --url https://...`, each behind a TLS proxy on loopback whose
//! certificate authority is trusted only through `SSL_CERT_FILE`. Without it, each refuses the
//! certificate.

use std::path::Path;
use std::process::{Command, Output};

use sluice_testkit::{FakeHub, TlsProxy};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn sluice(args: &[&str], ca: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(SLUICE);
    cmd.args(args)
        .envs(env.iter().copied())
        .env_remove("HF_HUB_OFFLINE");
    // Nothing else is trusted: a CA file that does not exist leaves the store empty.
    cmd.env(
        "SSL_CERT_FILE",
        ca.unwrap_or(Path::new("/nonexistent/ca.pem")),
    )
    .env("SSL_CERT_DIR", "/nonexistent");
    cmd.output().unwrap()
}

fn addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

#[test]
fn the_hub_is_reached_over_https_with_its_certificate_checked() {
    let fixture = sluice_testkit::fixture("tiny-m2m100");
    let files = [
        "config.json",
        "vocab.json",
        "sentencepiece.bpe.model",
        "model.safetensors",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(fixture.join(f)).unwrap()))
    .collect();
    let hub = FakeHub::start("org/tiny", files, None);
    let tls = TlsProxy::start(addr(hub.url()));
    let endpoint = format!("https://localhost:{}", tls.port());
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let to = work.path().join("model");
    let env = [
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
    ];
    let args = ["fetch-model", "org/tiny", "--to", to.to_str().unwrap()];

    let refused = sluice(&args, None, &env);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "an untrusted certificate was accepted"
    );
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert!(
        hub.requests().is_empty(),
        "a request got through: {:?}",
        hub.requests()
    );

    let out = sluice(&args, Some(&tls.ca_file()), &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(to.join("model.safetensors").is_file());
}

/// A `sluice serve` on loopback with the tone detector.
struct Served(std::process::Child, u16);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(data: &Path) -> Served {
    let port = sluice_testkit::free_port();
    let model = format!(
        "tone={}",
        sluice_testkit::fixture("onnx/tone-detector").display()
    );
    let child = Command::new(SLUICE)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--model",
            &model,
        ])
        .arg("--data-root")
        .arg(data)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let served = Served(child, port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    while sluice_testkit::http_request(addr, "GET", "/readyz")
        .ok()
        .and_then(|r| sluice_testkit::http_status(&r).ok())
        != Some(200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not get ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    served
}

#[test]
fn the_remote_model_stage_and_stress_speak_https() {
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(
        sluice_testkit::fixture("onnx/audio/tone-16k-mono.wav"),
        data.path().join("tone.wav"),
    )
    .unwrap();
    let server = serve(data.path());
    let tls = TlsProxy::start(format!("127.0.0.1:{}", server.1).parse().unwrap());
    let out_dir = tempfile::tempdir().unwrap();
    let model = format!("https://localhost:{}/v1/models/tone", tls.port());
    let classify = |ca: Option<&Path>, name: &str| {
        let output = out_dir.path().join(name);
        let args = [
            "audio",
            "classify",
            "--progress",
            "off",
            "--source",
            data.path().to_str().unwrap(),
            "--model",
            &model,
            "--output",
            output.to_str().unwrap(),
        ];
        (sluice(&args, ca, &[]), output)
    };
    let (refused, _) = classify(None, "refused.parquet");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    // Not retried: the run stops at once, saying why.
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("certificate is not trusted"), "{stderr}");

    let (out, table) = classify(Some(&tls.ca_file()), "ok.parquet");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts = sluice_pipeline::PartSink::part_files(&table, sluice_pipeline::PartFormat::Parquet)
        .unwrap();
    assert_eq!(parts.len(), 1, "{parts:?}");

    // sluice stress against the v1 route is answered (a 4xx body, but over TLS).
    let url = format!("https://localhost:{}/translation", tls.port());
    let stress = |ca: Option<&Path>| {
        sluice(
            &[
                "stress",
                "--url",
                &url,
                "--num-req",
                "2",
                "--pay-size",
                "1",
                "--sleep",
                "0",
            ],
            ca,
            &[],
        )
    };
    let trusted = stress(Some(&tls.ca_file()));
    let text = String::from_utf8_lossy(&trusted.stdout).into_owned()
        + &String::from_utf8_lossy(&trusted.stderr);
    assert!(
        text.contains("404") || text.contains("503"),
        "the server answered over TLS: {text}"
    );
    let untrusted = stress(None);
    let text = String::from_utf8_lossy(&untrusted.stdout).into_owned()
        + &String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        !text.contains("404"),
        "an untrusted certificate was accepted: {text}"
    );
}
