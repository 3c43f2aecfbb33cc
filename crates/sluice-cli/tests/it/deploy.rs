//! The container image and the Kubernetes manifests against the real binary: every `sluice`
//! container's arguments parse, pipeline files in ConfigMaps load, and the server started with the
//! Deployment's own arguments answers its probes on its port and drains on SIGTERM, and the daily
//! CronJob's run does yesterday's data.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_testkit::{fixture, free_port, http_request, http_status, repo_root};
use yaml_rust2::{Yaml, YamlLoader};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Every YAML document under `k8s/`, with its file.
fn manifests() -> Vec<(PathBuf, Yaml)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Yaml)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let docs = YamlLoader::load_from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.extend(docs.into_iter().map(|d| (path.clone(), d)));
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo_root().join("k8s"), &mut out);
    assert!(out.len() > 10, "found only {} manifests", out.len());
    out
}

/// Every container (and init container) in a document, wherever its pod template sits.
fn containers(doc: &Yaml, out: &mut Vec<Yaml>) {
    match doc {
        Yaml::Hash(map) => {
            for (key, value) in map {
                if matches!(key.as_str(), Some("containers" | "initContainers")) {
                    out.extend(value.as_vec().into_iter().flatten().cloned());
                }
                containers(value, out);
            }
        }
        Yaml::Array(items) => items.iter().for_each(|i| containers(i, out)),
        _ => {}
    }
}

/// A `sluice` container's arguments with `$(VAR)` expanded as the kubelet does: from the
/// container's `env` values, and the Job completion index as 0.
fn expanded_args(container: &Yaml) -> Vec<String> {
    let mut vars = Vec::new();
    for var in container["env"].as_vec().into_iter().flatten() {
        let name = var["name"].as_str().unwrap().to_string();
        let value = match var["value"].as_str() {
            Some(v) => v.to_string(),
            None if name == "JOB_COMPLETION_INDEX" => "0".into(),
            None => continue,
        };
        vars.push((name, value));
    }
    container["args"]
        .as_vec()
        .into_iter()
        .flatten()
        .map(|a| {
            let mut arg = match a {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(n) => n.to_string(),
                other => panic!("argument {other:?} is not a string"),
            };
            for (name, value) in &vars {
                arg = arg.replace(&format!("$({name})"), value);
            }
            assert!(!arg.contains("$("), "undeclared variable in {arg:?}");
            arg
        })
        .collect()
}

fn entrypoint(dockerfile: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join(dockerfile)).unwrap();
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .unwrap_or_else(|| panic!("{dockerfile} has no ENTRYPOINT"))
        .trim()
        .to_string()
}

#[test]
fn every_sluice_container_passes_arguments_the_binary_accepts() {
    // Both images run the binary itself, so manifests pass only arguments.
    for dockerfile in ["Dockerfile", "Dockerfile.cuda"] {
        assert_eq!(entrypoint(dockerfile), r#"["sluice"]"#, "{dockerfile}");
    }
    let mut checked = 0;
    for (file, doc) in manifests() {
        let mut found = Vec::new();
        containers(&doc, &mut found);
        for container in found {
            let image = container["image"].as_str().unwrap_or("");
            if !image.starts_with("sluice") {
                continue;
            }
            let name = container["name"].as_str().unwrap_or("?");
            let place = format!("{} container {name}", file.display());
            assert!(
                container["command"].is_badvalue(),
                "{place}: sets command, bypassing the image's entrypoint"
            );
            let args = expanded_args(&container);
            if args.is_empty() {
                continue; // a patch that only changes resources or the image
            }
            // clap checks every flag and value before it prints help.
            let out = Command::new(SLUICE)
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{place}: sluice {args:?} is refused: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    // Server, workers, jobs and their init containers.
    assert!(checked >= 8, "checked only {checked} containers");
}

#[test]
fn pipeline_files_in_configmaps_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (file, doc) in manifests() {
        if doc["kind"].as_str() != Some("ConfigMap") {
            continue;
        }
        for (key, value) in doc["data"].as_hash().into_iter().flatten() {
            let key = key.as_str().unwrap();
            if !key.ends_with(".toml") {
                continue;
            }
            let path = dir.path().join(format!("{checked}-{key}"));
            std::fs::write(&path, value.as_str().unwrap()).unwrap();
            let text = value.as_str().unwrap();
            // Each command checks the whole file before it reaches out: a worker fails only at
            // the (closed) NATS port, a run only at its input, which is not here.
            let (args, expected) =
                if text.contains("kind = \"nats\"\n") && text.contains("consumer") {
                    (
                        vec![
                            "worker",
                            path.to_str().unwrap(),
                            "--set",
                            "source.url=nats://127.0.0.1:9",
                        ],
                        "cannot connect to NATS",
                    )
                } else {
                    (
                        vec!["run", path.to_str().unwrap()],
                        "cannot open the source",
                    )
                };
            let out = Command::new(SLUICE).args(&args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && stderr.contains(expected),
                "{} ({key}): {stderr}",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "checked only {checked} pipeline files");
}

#[test]
fn the_server_runs_as_the_deployment_says_and_answers_its_probes() {
    let (file, doc) = manifests()
        .into_iter()
        .find(|(f, d)| {
            f.ends_with("base/deployment.yaml") && d["kind"].as_str() == Some("Deployment")
        })
        .expect("k8s/base/deployment.yaml");
    let pod = &doc["spec"]["template"]["spec"];
    let server = pod["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["args"][0].as_str() == Some("serve"))
        .unwrap_or_else(|| panic!("{}: no serve container", file.display()));
    let port = server["ports"][0]["containerPort"].as_i64().unwrap();
    assert_eq!(port, 9527);
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap() as u64;

    // The manifest's arguments, with the volumes' mount points and the port swapped for local ones.
    let data = tempfile::tempdir().unwrap();
    let local_port = free_port();
    let model = fixture("tiny-m2m100");
    let args: Vec<String> = expanded_args(server)
        .into_iter()
        .map(|a| match a.as_str() {
            "/model" => model.display().to_string(),
            "/data" => data.path().display().to_string(),
            "9527" => local_port.to_string(),
            _ => a,
        })
        .collect();
    assert!(
        args.contains(&local_port.to_string()),
        "the manifest does not pass --port: {args:?}"
    );
    let mut child = Command::new(SLUICE)
        .args(&args)
        .args(["--host", "127.0.0.1"])
        .env("SLUICE_DEVICE", "cpu")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], local_port));
    let probe = |kind: &str| {
        let path = server[kind]["httpGet"]["path"]
            .as_str()
            .unwrap()
            .to_string();
        http_request(addr, "GET", &path).and_then(|r| http_status(&r))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while probe("readinessProbe").ok() != Some(200) {
        assert!(Instant::now() < deadline, "not ready within 120 s");
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(probe("livenessProbe").unwrap(), 200);
    assert_eq!(probe("startupProbe").unwrap(), 200);

    // The image's HEALTHCHECK command, against this server and against nothing.
    let url = format!("http://{addr}/healthz");
    let ok = Command::new(SLUICE)
        .args(["healthcheck", "--url", &url])
        .status()
        .unwrap();
    assert!(ok.success());
    let closed = format!("http://127.0.0.1:{}/healthz", free_port());
    let down = Command::new(SLUICE)
        .args(["healthcheck", "--url", &closed])
        .output()
        .unwrap();
    assert!(!down.status.success());

    // SIGTERM (what the kubelet sends after preStop) drains well within the grace period.
    let stopping = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(stopping.elapsed() < Duration::from_secs(grace));
}

/// The daily CronJob as the cluster would run it: its ConfigMap's pipeline and its container's
/// arguments, with each volume's mountPath mapped to a local directory, on a file of
/// yesterday's events; its Pushgateway is a local receiver.
#[test]
fn the_daily_cronjob_runs_yesterdays_events_into_their_own_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = root.join("k8s/schedule/daily-cronjob.yaml");
    let docs = YamlLoader::load_from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let config = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .unwrap();
    let cron = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("CronJob"))
        .unwrap();
    let mut found = Vec::new();
    containers(cron, &mut found);
    let container = &found[0];
    let local = tempfile::tempdir().unwrap();
    // Each mount's path, then the longest first, so that /data never matches inside /data2.
    let mut mounts: Vec<(String, String)> = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| {
            let at = m["mountPath"].as_str().unwrap().to_owned();
            let here = local.path().join(at.trim_start_matches('/'));
            std::fs::create_dir_all(&here).unwrap();
            (at, here.display().to_string())
        })
        .collect();
    mounts.sort_by_key(|(at, _)| std::cmp::Reverse(at.len()));
    // A path that starts with a mountPath (an argument, or a quoted string of the pipeline)
    // moves under the local directory; placeholders first, so that a local path (under /tmp)
    // is never mapped again by the /tmp mount.
    let localize = |text: &str| {
        let marked = mounts
            .iter()
            .enumerate()
            .fold(text.to_owned(), |text, (i, (at, _))| {
                let mark = format!("\u{1}{i}\u{1}/");
                let text = match text.strip_prefix(&format!("{at}/")) {
                    Some(rest) => format!("{mark}{rest}"),
                    None => text,
                };
                text.replace(&format!("\"{at}/"), &format!("\"{mark}"))
            });
        mounts
            .iter()
            .enumerate()
            .fold(marked, |text, (i, (_, here))| {
                text.replace(&format!("\u{1}{i}\u{1}"), here)
            })
    };
    let pipeline = config["data"]["daily.toml"].as_str().unwrap();
    let pipeline_path = container["args"][1].as_str().unwrap();
    std::fs::write(localize(pipeline_path), localize(pipeline)).unwrap();
    // Yesterday's events (and today's, which the run must leave alone).
    // The run computes "yesterday" itself: keep clear of midnight (UTC) so both agree.
    let to_midnight = 86_400 - chrono::Timelike::num_seconds_from_midnight(&chrono::Utc::now());
    if to_midnight < 60 {
        std::thread::sleep(Duration::from_secs(u64::from(to_midnight) + 1));
    }
    let today = chrono::Utc::now().date_naive();
    let yesterday = today.pred_opt().unwrap();
    for (day, n) in [(yesterday, 30), (today, 5)] {
        let events: String = (0..n)
            .map(|i| format!("{{\"id\": \"{day}-{i}\", \"n\": {i}}}\n"))
            .collect();
        let path = localize(&format!("/data/events/{day}.jsonl"));
        std::fs::create_dir_all(Path::new(&path).parent().unwrap()).unwrap();
        std::fs::write(path, events).unwrap();
    }
    let (port, received) = crate::run::receive_one();
    let args: Vec<String> = expanded_args(container)
        .iter()
        .map(|a| {
            if a.starts_with("http://prometheus-pushgateway") {
                format!("http://127.0.0.1:{port}")
            } else {
                localize(a)
            }
        })
        .collect();
    let out = Command::new(SLUICE).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sluice {args:?}: {stderr}");
    let rows = crate::classify::read_table(
        Path::new(&localize(&format!("/results/daily/{yesterday}/x")))
            .parent()
            .unwrap(),
    );
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..30).map(|i| format!("{yesterday}-{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "{stderr}");
    assert!(!Path::new(&localize(&format!("/results/daily/{today}/x")))
        .parent()
        .unwrap()
        .exists());
    let (request, body) = received.join().unwrap();
    assert!(
        request.starts_with("PUT /metrics/job/sluice/pipeline/daily"),
        "{request}"
    );
    assert!(body.contains("sluice_run_success 1"), "{body}");
    assert!(body.contains(&format!("date=\"{yesterday}\"")), "{body}");
}
