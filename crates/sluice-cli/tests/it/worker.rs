//! `sluice worker` against a real `nats-server` with JetStream: a publisher (`sluice run` with a
//! nats sink) fills a work stream, workers pull, ack after their outputs are written, survive a
//! SIGKILLed peer (its items are redelivered and written once), and dead-letter a poison item.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_testkit::NatsServer;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A JSON-lines program: upper-cases `text`, fails `poison`, kills its worker on `crash`, sleeps
/// `SLEEP_MS` per record.
const UPPER_PY: &str = r#"
import json, os, signal, sys, time
delay = float(os.environ.get("SLEEP_MS", "0")) / 1000
for line in sys.stdin:
    r = json.loads(line)
    time.sleep(delay)
    if r["id"] == "crash":
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)
    if r["id"] == "poison":
        print(json.dumps({"sluice_error": "poisoned record"}))
    else:
        r["upper"] = r["text"].upper()
        print(json.dumps(r))
    sys.stdout.flush()
"#;

struct Setup {
    dir: tempfile::TempDir,
    publish: PathBuf,
    worker: PathBuf,
}

/// Writes the input, the publisher's and the workers' pipeline files.
fn setup(nats: &NatsServer, ids: &[String], sleep_ms: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let input: String = ids
        .iter()
        .map(|id| format!("{{\"id\": \"{id}\", \"text\": \"item {id}\"}}\n"))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    std::fs::write(dir.path().join("upper.py"), UPPER_PY).unwrap();
    let publish = dir.path().join("publish.toml");
    std::fs::write(
        &publish,
        format!(
            r#"[source]
kind = "jsonl"
path = "{input}"
key = "id"

[sink]
kind = "nats"
url = "{url}"
stream = "work"
subject = "work.items"
retention = "workqueue"
"#,
            input = p("in.jsonl"),
            url = nats.url(),
        ),
    )
    .unwrap();
    let worker = dir.path().join("worker.toml");
    std::fs::write(
        &worker,
        format!(
            r#"[source]
kind = "nats"
url = "{url}"
stream = "work"
subject = "work.items"
consumer = "workers"
key = "id"
fetch = 20
ack_wait_s = 2
max_deliver = 3
retry_delay_ms = 100
flush_ms = 300

[[stage]]
kind = "exec"
name = "upper"
command = ["python3", "{script}"]
env = {{ SLEEP_MS = "{sleep_ms}" }}
batch_size = 5
workers = 1

[sink]
kind = "jsonl"
path = "{out}"
part_items = 10
"#,
            url = nats.url(),
            script = p("upper.py"),
            out = p("out"),
        ),
    )
    .unwrap();
    Setup {
        dir,
        publish,
        worker,
    }
}

fn publish(setup: &Setup) -> String {
    let out = Command::new(SLUICE)
        .args(["run", setup.publish.to_str().unwrap(), "--progress", "off"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "publishing: {stderr}");
    stderr
}

fn start_worker(setup: &Setup, extra: &[&str]) -> Child {
    Command::new(SLUICE)
        .args([
            "worker",
            setup.worker.to_str().unwrap(),
            "--progress",
            "off",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a worker started with --exit-when-drained, checks its exit status against its
/// summary's failed count, and returns its stderr.
fn finish(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let failed = sluice_testkit::failed_in_summary(&stderr);
    sluice_testkit::assert_run_exit(out.status, failed, &stderr);
    stderr
}

/// The worker's closing `messages: {...}` line.
fn counts(stderr: &str) -> serde_json::Value {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("messages: "))
        .unwrap_or_else(|| panic!("no messages line in: {stderr}"));
    serde_json::from_str(line).unwrap()
}

/// Output records by id, over every part file (each whole JSON).
fn outputs(dir: &Path) -> HashMap<String, Vec<serde_json::Value>> {
    sluice_testkit::jsonl_parts_by(&dir.join("out"), "id")
}

fn part_files_of(dir: &Path, pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(dir.join("out")) else {
        return 0;
    };
    let tag = format!("-{pid}-");
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("part-") && name.contains(&tag)
        })
        .count()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Messages in a stream, and every message it holds (subject headers and payload).
fn stream_messages(nats: &NatsServer, stream: &str) -> Vec<async_nats::jetstream::Message> {
    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.unwrap();
        let count = stream.info().await.unwrap().state.messages as usize;
        if count == 0 {
            return Vec::new();
        }
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(count)
            .messages()
            .await
            .unwrap();
        let mut messages = Vec::new();
        while let Some(m) = batch.next().await {
            messages.push(m.unwrap());
        }
        messages
    })
}

fn stream_len(nats: &NatsServer, stream: &str) -> u64 {
    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_stream(stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
    })
}

#[test]
fn two_workers_process_everything_once_even_when_one_is_killed() {
    let nats = NatsServer::start();
    let ids: Vec<String> = (0..300).map(|i| format!("item-{i:04}")).collect();
    let setup = setup(&nats, &ids, 15);
    publish(&setup);
    // Publishing again is idempotent: every key carries its Nats-Msg-Id.
    publish(&setup);
    assert_eq!(stream_len(&nats, "work"), 300);

    let doomed = start_worker(&setup, &[]);
    let survivor = start_worker(&setup, &["--exit-when-drained"]);
    // Kill the first worker once it has written some parts: it still holds pulled items.
    let deadline = Instant::now() + Duration::from_secs(60);
    while part_files_of(setup.dir.path(), doomed.id()) < 2 {
        assert!(Instant::now() < deadline, "the first worker wrote no parts");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut doomed = doomed;
    unsafe { libc::kill(doomed.id() as i32, libc::SIGKILL) };
    let _ = doomed.wait();
    let stderr = finish(survivor);

    let by_id = outputs(setup.dir.path());
    let missing: Vec<_> = ids.iter().filter(|id| !by_id.contains_key(*id)).collect();
    assert!(missing.is_empty(), "missing {missing:?}\n{stderr}");
    let doubled: Vec<_> = by_id.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(doubled.is_empty(), "written twice: {doubled:?}");
    assert_eq!(by_id.len(), 300);
    assert_eq!(by_id["item-0042"][0]["upper"], "ITEM ITEM-0042");
    let counts = counts(&stderr);
    assert!(
        counts["redelivered"].as_u64().unwrap() > 0,
        "the killed worker's items were not redelivered: {counts}"
    );
    assert_eq!(counts["dead_lettered"], 0);
    // Work-queue retention: acked items leave the stream.
    assert_eq!(stream_len(&nats, "work"), 0, "{stderr}");
}

#[test]
fn a_poison_item_is_dead_lettered_after_max_deliver() {
    let nats = NatsServer::start();
    let mut ids: Vec<String> = (0..20).map(|i| format!("item-{i:04}")).collect();
    ids.insert(7, "poison".into());
    let setup = setup(&nats, &ids, 0);
    publish(&setup);
    let stderr = finish(start_worker(&setup, &["--exit-when-drained"]));

    let by_id = outputs(setup.dir.path());
    assert_eq!(by_id.len(), 20, "{stderr}");
    assert!(!by_id.contains_key("poison"));
    let counts = counts(&stderr);
    assert_eq!(counts["dead_lettered"], 1, "{stderr}");
    assert_eq!(counts["retried"], 2, "{stderr}");

    let dead = stream_messages(&nats, "work-dead");
    assert_eq!(dead.len(), 1);
    let message = &dead[0];
    assert_eq!(message.subject.as_str(), "work.dead");
    let record: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(record["id"], "poison");
    let headers = message.headers.as_ref().unwrap();
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("Sluice-Deliveries").as_deref(), Some("3"));
    assert_eq!(header("Sluice-Stage").as_deref(), Some("upper"));
    assert!(header("Sluice-Error").unwrap().contains("poisoned record"));
    assert_eq!(header("Sluice-Subject").as_deref(), Some("work.items"));
    assert_eq!(stream_len(&nats, "work"), 0);
}

#[test]
fn an_item_that_kills_its_workers_is_dead_lettered_after_max_deliver() {
    let nats = NatsServer::start();
    let mut ids: Vec<String> = (0..10).map(|i| format!("item-{i:04}")).collect();
    ids.push("crash".into());
    let setup = setup(&nats, &ids, 0);
    publish(&setup);
    // Each delivery of `crash` kills the worker holding it; a supervisor (here the test, in a
    // cluster the Deployment) starts another.
    let mut killed = 0;
    let stderr = loop {
        let out = start_worker(&setup, &["--exit-when-drained"])
            .wait_with_output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        killed += 1;
        assert!(killed <= 3, "killed more than max_deliver times");
    };
    assert_eq!(killed, 3, "{stderr}");
    let counts = counts(&stderr);
    assert_eq!(counts["dead_lettered"], 1, "{stderr}");
    let dead = stream_messages(&nats, "work-dead");
    assert_eq!(dead.len(), 1);
    let headers = dead[0].headers.as_ref().unwrap();
    assert_eq!(headers.get("Sluice-Stage").unwrap().as_str(), "worker");
    assert_eq!(headers.get("Sluice-Deliveries").unwrap().as_str(), "4");
    let by_id = outputs(setup.dir.path());
    assert_eq!(by_id.len(), 10);
    assert!(by_id.values().all(|v| v.len() == 1));
    assert_eq!(stream_len(&nats, "work"), 0);
}

#[test]
fn a_worker_drains_on_sigterm_and_acks_what_it_wrote() {
    let nats = NatsServer::start();
    let ids: Vec<String> = (0..200).map(|i| format!("item-{i:04}")).collect();
    let setup = setup(&nats, &ids, 20);
    publish(&setup);
    let worker = start_worker(&setup, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while part_files_of(setup.dir.path(), worker.id()) < 1 {
        assert!(Instant::now() < deadline, "the worker wrote no parts");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let stderr = finish(worker);
    let written = outputs(setup.dir.path()).len() as u64;
    assert!(written > 0 && written < 200, "{written}: {stderr}");
    let counts = counts(&stderr);
    // Everything written was acked, and only that left the stream.
    assert_eq!(counts["acked"].as_u64().unwrap(), written, "{stderr}");
    assert_eq!(stream_len(&nats, "work"), 200 - written);

    // A second worker finishes the rest; nothing is written twice.
    let stderr = finish(start_worker(&setup, &["--exit-when-drained"]));
    let by_id = outputs(setup.dir.path());
    assert_eq!(by_id.len(), 200, "{stderr}");
    assert!(by_id.values().all(|v| v.len() == 1));
}

#[test]
fn nats_sources_and_sinks_refuse_what_cannot_work() {
    let nats = NatsServer::start();
    let setup = setup(&nats, &["a".to_string()], 0);
    let (worker, publish) = (
        setup.worker.to_str().unwrap(),
        setup.publish.to_str().unwrap(),
    );
    // Runs `sluice ARGS`, which must fail; returns its stderr.
    let refused = |args: &[&str]| {
        let out = Command::new(SLUICE).args(args).output().unwrap();
        assert!(!out.status.success(), "sluice {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // `run` does not read a stream forever; `worker` reads only streams.
    let stderr = refused(&["run", worker]);
    assert!(stderr.contains("sluice worker"), "{stderr}");
    let stderr = refused(&["worker", publish]);
    assert!(stderr.contains("kind = \"nats\""), "{stderr}");
    // Outputs must be written before the server would redeliver.
    let stderr = refused(&["worker", worker, "--set", "source.flush_ms=1500"]);
    assert!(
        stderr.contains("worker.toml:1") && stderr.contains("flush_ms"),
        "{stderr}"
    );
    // A stream cannot tell what is done.
    let stderr = refused(&["run", publish, "--set", "run.skip_completed=true"]);
    assert!(stderr.contains("skip_completed"), "{stderr}");
    // No server: a clear error, not a hang.
    let stderr = refused(&["worker", worker, "--set", "source.url=nats://127.0.0.1:9"]);
    assert!(
        stderr.contains("cannot connect to NATS at nats://127.0.0.1:9"),
        "{stderr}"
    );
}

/// Polls `done` every 50 ms for up to `secs` seconds.
fn wait_for(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn publisher_and_workers_ride_out_a_nats_server_restart_and_write_each_key_once() {
    let mut nats = NatsServer::start();
    let ids: Vec<String> = (0..600).map(|i| format!("item-{i:04}")).collect();
    let setup = setup(&nats, &ids, 5);
    // A publisher slowed by a stage (5 ms a record), so that the server dies under it.
    let publish = std::fs::read_to_string(&setup.publish).unwrap().replace(
        "[sink]",
        &format!(
            "[[stage]]\nkind = \"exec\"\nname = \"slow\"\ncommand = [\"python3\", \"{}\"]\n\
             env = {{ SLEEP_MS = \"5\" }}\nbatch_size = 8\nworkers = 1\n\n[sink]",
            setup.dir.path().join("upper.py").display()
        ),
    );
    let slow_publish = setup.dir.path().join("slow-publish.toml");
    std::fs::write(&slow_publish, publish).unwrap();
    let publisher = Command::new(SLUICE)
        .args(["run", slow_publish.to_str().unwrap(), "--progress", "off"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let workers = [start_worker(&setup, &[]), start_worker(&setup, &[])];
    wait_for(60, "the first outputs", || {
        outputs(setup.dir.path()).len() >= 30
    });

    // The server dies mid-stream (SIGKILL) and comes back 2 s later on the same store.
    nats.kill();
    std::thread::sleep(Duration::from_secs(2));
    nats.restart();

    let published = publisher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&published.stderr);
    assert!(
        published.status.success(),
        "the publisher gave up: {stderr}"
    );
    wait_for(180, "every key in the outputs", || {
        outputs(setup.dir.path()).len() == ids.len()
    });
    wait_for(60, "the stream to empty", || stream_len(&nats, "work") == 0);
    let mut dead = 0;
    for w in workers {
        unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
        let stderr = finish(w);
        dead += counts(&stderr)["dead_lettered"].as_u64().unwrap();
    }
    assert_eq!(dead, 0, "items dead-lettered by the outage");
    let by_id = outputs(setup.dir.path());
    let doubled: Vec<_> = by_id.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(doubled.is_empty(), "written twice: {doubled:?}");
    assert_eq!(by_id.len(), ids.len());
}

#[test]
fn a_worker_that_cannot_write_its_outputs_acks_nothing_and_loses_nothing() {
    let nats = NatsServer::start();
    let ids: Vec<String> = (0..50).map(|i| format!("item-{i:04}")).collect();
    let setup = setup(&nats, &ids, 0);
    publish(&setup);
    // The output directory's place is taken by a file: every part write fails (as a full or
    // read-only disk would), whoever runs the test.
    let out = setup.dir.path().join("out");
    std::fs::write(&out, "not a directory").unwrap();
    let failed = Command::new(SLUICE)
        .args([
            "worker",
            setup.worker.to_str().unwrap(),
            "--progress",
            "off",
        ])
        .args(["--exit-when-drained"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert_eq!(
        stream_len(&nats, "work"),
        50,
        "items left the stream: {stderr}"
    );

    // With the disk back, another worker writes every item once.
    std::fs::remove_file(&out).unwrap();
    let stderr = finish(start_worker(&setup, &["--exit-when-drained"]));
    let by_id = outputs(setup.dir.path());
    assert_eq!(by_id.len(), 50, "{stderr}");
    assert!(by_id.values().all(|v| v.len() == 1));
}

#[test]
fn workers_fill_a_postgres_table_and_a_killed_workers_redelivered_items_add_no_row() {
    let nats = NatsServer::start();
    let pg = sluice_testkit::PgServer::start();
    let ids: Vec<String> = (0..200).map(|i| format!("item-{i:04}")).collect();
    let setup = setup(&nats, &ids, 10);
    let config = std::fs::read_to_string(&setup.worker).unwrap();
    let sink_at = config.find("[sink]").unwrap();
    std::fs::write(
        &setup.worker,
        format!(
            "{}[sink]\nkind = \"postgres\"\nurl = \"{}\"\ntable = \"items\"\ncreate = true\n\
             key = \"id\"\nbatch_rows = 10\n",
            &config[..sink_at],
            pg.url()
        ),
    )
    .unwrap();
    publish(&setup);
    let rows = || -> (i64, i64) {
        pg.client()
            .ok()
            .and_then(|mut c| {
                c.query_one("SELECT count(*), count(DISTINCT id) FROM items", &[])
                    .ok()
            })
            .map_or((0, 0), |r| (r.get(0), r.get(1)))
    };
    let mut worker = start_worker(&setup, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows().0 < 20 {
        assert!(Instant::now() < deadline, "the worker wrote no rows");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Killed outright: rows it committed but had not acked yet come back to the next worker.
    worker.kill().unwrap();
    worker.wait().unwrap();
    let stderr = finish(start_worker(&setup, &["--exit-when-drained"]));
    assert_eq!(rows(), (200, 200), "{stderr}");
    let counts = counts(&stderr);
    assert!(counts["redelivered"].as_u64().unwrap() > 0, "{stderr}");
    let upper: i64 = pg
        .client()
        .unwrap()
        .query_one("SELECT count(*) FROM items WHERE upper = upper(text)", &[])
        .unwrap()
        .get(0);
    assert_eq!(upper, 200);
}
