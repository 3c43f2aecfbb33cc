//! `sluice audio resample` end to end with the real binary: the same job on a real S3-compatible
//! server (moto on loopback) writes the same bytes as on local disk, and a killed run leaves only
//! whole outputs and reruns exactly the rest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::storage::{Location, Matcher};
use sluice_testkit::S3Server;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

fn fixtures() -> PathBuf {
    sluice_testkit::fixture("audio/src")
}

fn resample_args(source: &str, target: &str, summary: &Path) -> Vec<String> {
    [
        "audio",
        "resample",
        "--source",
        source,
        "--target",
        target,
        "--suffix",
        ".wav",
        "--suffix",
        ".flac",
        "--suffix",
        ".mp3",
        "--suffix",
        ".ogg",
        "--suffix",
        ".m4a",
        "--sample-rate",
        "16000",
        "--channels",
        "mono",
        "--format",
        "flac",
        "--progress",
        "off",
        "--summary",
        summary.to_str().unwrap(),
        "--failures",
        summary.with_extension("failures.jsonl").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_ok(args: &[String], env: &[(String, String)]) -> serde_json::Value {
    let out = Command::new(SLUICE)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary = args
        .iter()
        .position(|a| a == "--summary")
        .map(|i| &args[i + 1])
        .unwrap();
    serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap()
}

#[test]
fn s3_job_writes_the_same_outputs_as_local_disk() {
    let server = S3Server::start();
    server.create_bucket("audio");
    let options = server.options();
    let local_src = Location::parse(fixtures().to_str().unwrap()).unwrap();
    let bucket = Location::parse_with("s3://audio", &options).unwrap();
    for file in local_src.list_blocking(&Matcher::All).unwrap() {
        let bytes = local_src.read_blocking(&file.rel).unwrap();
        bucket
            .write_blocking(&format!("in/{}", file.rel), bytes)
            .unwrap();
    }

    let work = tempfile::tempdir().unwrap();
    let local_out = work.path().join("local");
    let local = run_ok(
        &resample_args(
            fixtures().to_str().unwrap(),
            local_out.to_str().unwrap(),
            &work.path().join("local.json"),
        ),
        &[],
    );
    let remote = run_ok(
        &resample_args(
            "s3://audio/in",
            "s3://audio/out/",
            &work.path().join("s3.json"),
        ),
        &server.env(),
    );
    for key in ["items_out", "failed"] {
        assert_eq!(local[key], remote[key], "{key}: {local} vs {remote}");
    }
    assert_eq!(local["audio"]["failed"], remote["audio"]["failed"]);
    assert!(local["items_out"].as_u64().unwrap() >= 7, "{local}");

    let local_files = Location::parse(local_out.to_str().unwrap())
        .unwrap()
        .list_blocking(&Matcher::suffixes(&[".flac"]))
        .unwrap();
    let remote_out = Location::parse_with("s3://audio/out", &options).unwrap();
    let remote_files = remote_out
        .list_blocking(&Matcher::suffixes(&[".flac"]))
        .unwrap();
    let names = |files: &[sluice_core::storage::FileEntry]| -> Vec<String> {
        files.iter().map(|f| f.rel.clone()).collect()
    };
    assert_eq!(names(&local_files), names(&remote_files));
    for file in &local_files {
        let want = std::fs::read(local_out.join(&file.rel)).unwrap();
        let got = remote_out.read_blocking(&file.rel).unwrap();
        assert!(got[..] == want[..], "{} differs", file.rel);
    }

    // The rerun against S3 lists the target once and skips every finished file.
    let again = run_ok(
        &resample_args(
            "s3://audio/in",
            "s3://audio/out",
            &work.path().join("s3-again.json"),
        ),
        &server.env(),
    );
    assert_eq!(again["skipped"], local["items_out"], "{again}");
    assert_eq!(again["items_out"], 0);
}

#[test]
fn a_killed_job_leaves_whole_outputs_and_the_rerun_does_the_rest() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let one = std::fs::read(fixtures().join("music/sweep_48k_stereo_pcm16.wav")).unwrap();
    const FILES: usize = 150;
    for i in 0..FILES {
        let path = src.path().join(format!("d{}/f{i:03}.wav", i % 5));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &one).unwrap();
    }
    let summary = out.path().join("_summary.json");
    let mut args = resample_args(
        src.path().to_str().unwrap(),
        out.path().join("t").to_str().unwrap(),
        &summary,
    );
    args.extend(["--batch-size", "1", "--cpus", "1"].map(String::from));
    let outputs = |dir: &Path| -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if p.is_dir() {
                    stack.push(p);
                } else if !name.contains('#') {
                    // `name#N` is the local store's staging file for an upload cut short by the
                    // kill: never an output's name, and hidden from every listing.
                    found.push(p);
                }
            }
        }
        found
    };
    let mut child = Command::new(SLUICE)
        .args(&args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while outputs(&out.path().join("t")).len() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = outputs(&out.path().join("t"));
    assert!(
        (20..FILES).contains(&before.len()),
        "killed after {} outputs",
        before.len()
    );
    // Only whole outputs under their final names: each decodes to the full second.
    for path in &before {
        assert_eq!(
            path.extension().and_then(|e| e.to_str()),
            Some("flac"),
            "{path:?}"
        );
        let audio =
            sluice_audio::decode::decode(&std::fs::read(path).unwrap(), Some("flac")).unwrap();
        assert_eq!(audio.frames(), 16_000, "{path:?}");
    }

    let rerun = run_ok(&args, &[]);
    assert_eq!(rerun["skipped"], before.len(), "{rerun}");
    assert_eq!(rerun["items_out"], FILES - before.len());
    let after = outputs(&out.path().join("t"));
    assert_eq!(after.len(), FILES);
}
