//! Object storage going away mid-run: an S3 server (moto) behind a proxy that is taken down for
//! 3 s while `sluice audio resample` and a `sluice run` with an S3 sink are writing to it, then
//! brought back. The runs retry with backoff and finish (or stop with an error, never hang), and
//! a rerun leaves every output present once, whole, with no staging object left.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::storage::{Location, Matcher};
use sluice_testkit::{OutageProxy, S3Server};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Runs `sluice ARGS` with `env`, which must succeed.
fn run_ok(args: &[String], env: &[(String, String)]) {
    let out = Command::new(SLUICE)
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Objects under `store` ending in `suffix`; 0 while it cannot be listed (the outage).
fn count(store: &Location, suffix: &str) -> usize {
    store
        .list_blocking(&Matcher::suffixes(&[suffix]))
        .map_or(0, |l| l.len())
}

/// Waits until `count()` reaches `n`.
fn wait_for_count(n: usize, mut count: impl FnMut() -> usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count() < n {
        assert!(Instant::now() < deadline, "only {} of {n}", count());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `args`, cutting the store off for 3 s once `started()` holds; the exit status and
/// stderr.
fn run_through_an_outage(
    args: &[String],
    env: &[(String, String)],
    proxy: &OutageProxy,
    started: impl FnMut() -> usize,
) -> (std::process::ExitStatus, String) {
    let child = Command::new(SLUICE)
        .args(args)
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_count(5, started);
    proxy.down();
    std::thread::sleep(Duration::from_secs(3));
    proxy.up();
    let out = child.wait_with_output().unwrap();
    eprintln!("the run through the outage: {}", out.status);
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_audio_job_rides_out_an_s3_outage_and_a_rerun_leaves_each_output_once() {
    let server = S3Server::start();
    server.create_bucket("audio");
    let proxy = OutageProxy::start(server.addr);
    let direct = Location::parse_with("s3://audio", &server.options()).unwrap();
    let one = std::fs::read(sluice_testkit::fixture(
        "audio/src/music/sweep_48k_stereo_pcm16.wav",
    ))
    .unwrap();
    const FILES: usize = 60;
    for i in 0..FILES {
        direct
            .write_blocking(&format!("in/f{i:03}.wav"), one.clone().into())
            .unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let args = |summary: &str| -> Vec<String> {
        [
            "audio",
            "resample",
            "--source",
            "s3://audio/in",
            "--target",
            "s3://audio/out/",
            "--suffix",
            ".wav",
            "--sample-rate",
            "16000",
            "--channels",
            "1",
            "--format",
            "flac",
            "--progress",
            "off",
            "--cpus",
            "1",
            "--batch-size",
            "1",
            "--summary",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([work.path().join(summary).display().to_string()])
        .collect()
    };
    let env = sluice_testkit::as_env(server.options_via(&proxy.url()));
    let outputs = || count(&direct, ".flac");
    let (status, stderr) = run_through_an_outage(&args("first.json"), &env, &proxy, outputs);
    // Retried through the outage, the run finishes; a run that gave up says so and exits 1.
    assert!(
        status.success() || (status.code() == Some(1) && stderr.contains("error")),
        "{status}: {stderr}"
    );
    run_ok(&args("again.json"), &env);
    let listed = direct.list_blocking(&Matcher::All).unwrap();
    // The failures file goes beside the outputs in the store, not into the working directory.
    assert!(
        listed.iter().any(|f| f.rel == "out/_failures.jsonl"),
        "{:?}",
        listed.iter().map(|f| &f.rel).collect::<Vec<_>>()
    );
    let outs: Vec<_> = listed
        .iter()
        .filter(|f| f.rel.starts_with("out/") && f.rel.ends_with(".flac"))
        .collect();
    assert_eq!(
        outs.len(),
        FILES,
        "{:?}",
        outs.iter().map(|f| &f.rel).collect::<Vec<_>>()
    );
    // Whole outputs only, and every one the same bytes (the same input made each).
    let first = direct.read_blocking(&outs[0].rel).unwrap();
    assert_eq!(&first[..4], b"fLaC");
    for f in &outs {
        assert_eq!(f.size as usize, first.len(), "{} is not whole", f.rel);
    }
}

#[test]
fn a_pipeline_with_an_s3_sink_rides_out_an_outage_and_a_rerun_writes_each_key_once() {
    let server = S3Server::start();
    server.create_bucket("data");
    let proxy = OutageProxy::start(server.addr);
    let direct = Location::parse_with("s3://data", &server.options()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    const RECORDS: usize = 300;
    let input: String = (0..RECORDS)
        .map(|n| format!("{{\"id\": \"k{n:03}\", \"n\": {n}}}\n"))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    std::fs::write(
        dir.path().join("slow.py"),
        "import sys, time\nfor line in sys.stdin:\n    time.sleep(0.01)\n    \
         sys.stdout.write(line)\n    sys.stdout.flush()\n",
    )
    .unwrap();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[source]\nkind = \"jsonl\"\npath = \"{input}\"\nkey = \"id\"\n\n\
             [[stage]]\nkind = \"exec\"\nname = \"slow\"\ncommand = [\"python3\", \"{slow}\"]\n\
             batch_size = 5\nworkers = 1\n\n\
             [sink]\nkind = \"parquet\"\npath = \"s3://data/out\"\nkey_field = \"id\"\n\
             part_items = 10\n",
            input = dir.path().join("in.jsonl").display(),
            slow = dir.path().join("slow.py").display(),
        ),
    )
    .unwrap();
    let env = sluice_testkit::as_env(server.options_via(&proxy.url()));
    let parts = || count(&direct, ".parquet");
    let args: Vec<String> = ["run", pipeline.to_str().unwrap(), "--progress", "off"]
        .map(String::from)
        .to_vec();
    let (status, stderr) = run_through_an_outage(&args, &env, &proxy, parts);
    assert!(
        status.success() || status.code() == Some(1),
        "{status}: {stderr}"
    );
    run_ok(&args, &env);
    // Every key once, read back through the table as a source.
    let back = dir.path().join("back.toml");
    let local = dir.path().join("local");
    std::fs::write(
        &back,
        format!(
            "[source]\nkind = \"parquet\"\npath = \"s3://data/out/\"\nkey = \"id\"\n\n\
             [sink]\nkind = \"jsonl\"\npath = \"{}\"\nkey_field = \"id\"\n",
            local.display()
        ),
    )
    .unwrap();
    let read: Vec<String> = ["run", back.to_str().unwrap(), "--progress", "off"]
        .map(String::from)
        .to_vec();
    run_ok(&read, &sluice_testkit::as_env(server.options()));
    let by_key = sluice_testkit::jsonl_parts_by(&local, "id");
    assert_eq!(by_key.len(), RECORDS);
    assert!(by_key.values().all(|v| v.len() == 1), "a key written twice");
    let listed = direct.list_blocking(&Matcher::All).unwrap();
    assert!(
        listed.iter().all(|f| !f.rel.contains(".sluice-")),
        "staging objects left: {listed:?}"
    );
}
