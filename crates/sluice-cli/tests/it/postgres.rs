//! The `postgres` sink against a real PostgreSQL server the test kit starts on loopback: a table
//! created with its types, reruns and redeliveries that add no row, a run killed with SIGKILL and
//! rerun, a server restarted under a run, clear errors for a wrong password or a missing table,
//! and `sluice audio classify --output postgres://...`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_testkit::{PgServer, PG_PASSWORD};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Passes records through after `SLEEP_MS`, doubling `n`.
const SLOW_PY: &str = r#"
import json, os, sys, time
delay = float(os.environ.get("SLEEP_MS", "0")) / 1000
for line in sys.stdin:
    r = json.loads(line)
    time.sleep(delay)
    r["double"] = r["n"] * 2
    print(json.dumps(r))
    sys.stdout.flush()
"#;

/// Writes `items` input records and a pipeline into `dir` whose sink section is `sink`, with an
/// exec stage sleeping `sleep_ms` per record when `sleep_ms` is set.
fn pipeline(dir: &Path, items: u64, sleep_ms: Option<u64>, sink: &str) -> std::path::PathBuf {
    let input: String = (0..items)
        .map(|n| {
            format!(
                "{{\"id\": \"k{n}\", \"n\": {n}, \"score\": {}, \"ok\": {}, \"tags\": [\"t{}\"], \
                 \"meta\": {{\"half\": {}}}, \"note\": null}}\n",
                n as f64 / 4.0,
                n % 2 == 0,
                n % 3,
                n / 2
            )
        })
        .collect();
    std::fs::write(dir.join("in.jsonl"), input).unwrap();
    std::fs::write(dir.join("slow.py"), SLOW_PY).unwrap();
    let stage = match sleep_ms {
        Some(ms) => format!(
            "[[stage]]\nkind = \"exec\"\nname = \"slow\"\ncommand = [\"python3\", \"{}\"]\n\
             env = {{ SLEEP_MS = \"{ms}\" }}\nbatch_size = 5\nworkers = 2\n",
            dir.join("slow.py").display()
        ),
        None => String::new(),
    };
    let config = format!(
        "[run]\nfailures = \"{failures}\"\n\n[source]\nkind = \"jsonl\"\npath = \"{input}\"\n\
         key = \"id\"\n\n{stage}\n[sink]\nkind = \"postgres\"\n{sink}\n",
        failures = dir.join("failures.jsonl").display(),
        input = dir.join("in.jsonl").display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A `[sink]` body for `table` at `url`, keyed by `id`, with `extra` settings (TOML lines).
fn sink(url: &str, table: &str, extra: &str) -> String {
    format!("url = \"{url}\"\ntable = \"{table}\"\nkey = \"id\"\n{extra}")
}

fn run(pipeline: &Path, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(SLUICE)
        .args(["run", pipeline.to_str().unwrap(), "--progress", "off"])
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn run_ok(pipeline: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(pipeline, extra, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// (rows, distinct keys) of `table`.
fn counts(pg: &PgServer, table: &str) -> (i64, i64) {
    let row = pg
        .client()
        .unwrap()
        .query_one(
            &format!("SELECT count(*), count(DISTINCT id) FROM {table}"),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// The one number `sql` selects.
fn scalar(pg: &PgServer, sql: &str) -> i64 {
    pg.client().unwrap().query_one(sql, &[]).unwrap().get(0)
}

/// Polls until `table` holds at least `rows` rows.
fn wait_for_rows(pg: &PgServer, table: &str, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = pg
            .client()
            .ok()
            .and_then(|mut c| {
                c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .ok()
            })
            .map_or(0, |r| r.get::<_, i64>(0));
        if n >= rows {
            return;
        }
        assert!(Instant::now() < deadline, "{table} has {n} rows after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pipeline_creates_its_table_with_types_and_reruns_add_no_row() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), format!("{PG_PASSWORD}\n")).unwrap();
    let sink = sink(
        &pg.url_without_password(),
        "scores",
        &format!(
            "password_file = \"{}\"\nschema = \"results\"\ncreate = true\nbatch_rows = 7\n",
            dir.path().join("pw").display()
        ),
    );
    let pipeline = pipeline(dir.path(), 50, None, &sink);
    run_ok(&pipeline, &[], &[]);
    let mut client = pg.client().unwrap();
    let types: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'results' AND table_name = 'scores' ORDER BY ordinal_position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let types: Vec<(&str, &str)> = types
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("id", "text"),
            ("meta", "jsonb"),
            ("n", "bigint"),
            ("note", "jsonb"),
            ("ok", "boolean"),
            ("score", "double precision"),
            ("tags", "jsonb"),
        ]
    );
    let pk: String = client
        .query_one(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = 'results.scores'::regclass AND i.indisprimary",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pk, "id");
    let row = client
        .query_one(
            "SELECT n, score, ok, tags, meta, note IS NULL FROM results.scores WHERE id = 'k5'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 5);
    assert_eq!(row.get::<_, f64>(1), 1.25);
    assert!(!row.get::<_, bool>(2));
    assert_eq!(row.get::<_, Value>(3), serde_json::json!(["t2"]));
    assert_eq!(row.get::<_, Value>(4), serde_json::json!({"half": 2}));
    assert!(row.get::<_, bool>(5));
    assert_eq!(counts(&pg, "results.scores"), (50, 50));

    // A rerun reads the keys from the table and writes nothing.
    let again = run_ok(&pipeline, &[], &[]);
    assert!(again.contains("50 skipped"), "{again}");
    // Forced to write everything again (the input changed), rows are replaced, not added.
    let input = std::fs::read_to_string(dir.path().join("in.jsonl")).unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        input.replace("\"note\": null", "\"note\": \"second\""),
    )
    .unwrap();
    run_ok(&pipeline, &["--set", "run.skip_completed=false"], &[]);
    assert_eq!(counts(&pg, "results.scores"), (50, 50));
    let sql = "SELECT count(*) FROM results.scores WHERE note = '\"second\"'::jsonb";
    assert_eq!(scalar(&pg, sql), 50);
}

#[test]
fn a_run_killed_mid_way_then_rerun_writes_every_key_exactly_once() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    // Connection settings from the environment, as a Kubernetes Secret would give them.
    let sink = "table = \"results\"\ncreate = true\nkey = \"id\"\nbatch_rows = 10\n";
    let pipeline = pipeline(dir.path(), 300, Some(10), sink);
    let port = pg.addr.port().to_string();
    let env = [
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port.as_str()),
        ("PGUSER", sluice_testkit::PG_USER),
        ("PGDATABASE", "postgres"),
        ("PGPASSWORD", PG_PASSWORD),
    ];
    let mut child = Command::new(SLUICE)
        .args(["run", pipeline.to_str().unwrap(), "--progress", "off"])
        .envs(env)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_rows(&pg, "results", 40);
    child.kill().unwrap();
    child.wait().unwrap();
    let (before, distinct) = counts(&pg, "results");
    assert_eq!(before, distinct);
    assert!(before < 300, "the run finished before it was killed");
    let stderr = run_ok(&pipeline, &[], &env);
    assert!(stderr.contains(&format!("{before} skipped")), "{stderr}");
    assert_eq!(counts(&pg, "results"), (300, 300));
    assert_eq!(
        scalar(&pg, "SELECT count(*) FROM results WHERE double = 2 * n"),
        300
    );
}

#[test]
fn a_server_restarted_under_a_run_is_reconnected_to_and_nothing_is_lost() {
    let mut pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&pg.url(), "results", "create = true\nbatch_rows = 10\n");
    let pipeline = pipeline(dir.path(), 300, Some(10), &sink);
    let child = Command::new(SLUICE)
        .args(["run", pipeline.to_str().unwrap(), "--progress", "off"])
        .env("SLUICE_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_rows(&pg, "results", 30);
    pg.stop();
    std::thread::sleep(Duration::from_millis(1500));
    pg.restart();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("retrying"), "no retry logged: {stderr}");
    assert_eq!(counts(&pg, "results"), (300, 300));
}

#[test]
fn a_wrong_password_or_a_missing_table_is_a_clear_error_and_writes_nothing() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let wrong = sink(
        &format!("postgres://sluice:not-the-password@{}/postgres", pg.addr),
        "t",
        "create = true\n",
    );
    // The password from a libpq password file, which must not be readable by others.
    let pgpass = dir.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!(
            "127.0.0.1:{}:postgres:sluice:{PG_PASSWORD}\n",
            pg.addr.port()
        ),
    )
    .unwrap();
    let from_file = sink(&pg.url_without_password(), "from_file", "create = true\n");
    let env = [("PGPASSFILE", pgpass.to_str().unwrap())];
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&pipeline(dir.path(), 5, None, &from_file), &[], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("chmod 600"),
        "{stderr}"
    );
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    run_ok(&pipeline(dir.path(), 5, None, &from_file), &[], &env);
    assert_eq!(counts(&pg, "from_file"), (5, 5));

    let out = run(&pipeline(dir.path(), 5, None, &wrong), &[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("password authentication failed for user \"sluice\""),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");

    let missing = sink(&pg.url(), "absent", "");
    let out = run(&pipeline(dir.path(), 5, None, &missing), &[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("table absent: the table does not exist")
            && stderr.contains("create = true"),
        "{stderr}"
    );

    // A table without a column for a field: the run stops and names it; the table is untouched.
    pg.execute("CREATE TABLE narrow (id text PRIMARY KEY, n bigint)");
    let narrow = sink(&pg.url(), "narrow", "");
    let out = run(&pipeline(dir.path(), 5, None, &narrow), &[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "records have fields the table has no column for: \"meta\", \"note\", \"ok\", \
             \"score\", \"tags\""
        ),
        "{stderr}"
    );
    assert_eq!(counts(&pg, "narrow"), (0, 0));
}

#[test]
fn classify_writes_its_window_table_to_postgres_as_it_does_to_parquet() {
    let pg = PgServer::start();
    let data = crate::classify::volume();
    let model = sluice_testkit::fixture("onnx/tone-detector");
    let out = tempfile::tempdir().unwrap();
    let parquet = out.path().join("results.parquet");
    let table = format!("{}?table=windows&create=true", pg.url());
    let classify = |output: &str| -> Child {
        Command::new(SLUICE)
            .args(["audio", "classify", "--progress", "off", "--source"])
            .arg(data.path())
            .args(["--model", model.to_str().unwrap(), "--output", output])
            .arg("--failures")
            .arg(out.path().join("failures.jsonl"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for output in [parquet.to_str().unwrap(), table.as_str()] {
        let done = classify(output).wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        // One file of four is broken: exit status 3 (some records failed).
        assert_eq!(done.status.code(), Some(3), "{stderr}");
        assert!(!stderr.contains(PG_PASSWORD), "{stderr}");
    }
    let mut expected: Vec<(String, String, String)> = crate::classify::read_table(&parquet)
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                format!("{:.4}", r["start"].as_f64().unwrap()),
                format!("{} {:.5}", r["label"], r["score"].as_f64().unwrap()),
            )
        })
        .collect();
    let mut got: Vec<(String, String, String)> = pg
        .client()
        .unwrap()
        .query("SELECT id, start, label, score FROM windows", &[])
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                format!("{:.4}", r.get::<_, f64>(1)),
                format!(
                    "{} {:.5}",
                    Value::from(r.get::<_, String>(2)),
                    r.get::<_, f64>(3)
                ),
            )
        })
        .collect();
    expected.sort();
    got.sort();
    assert!(expected.len() > 3, "{expected:?}");
    assert_eq!(got, expected);
    // A rerun skips the three files in the table.
    let done = classify(&table).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("3 skipped"), "{stderr}");
    let rows = scalar(&pg, "SELECT count(*) FROM windows");
    assert_eq!(rows as usize, expected.len());
}

#[test]
fn sslmode_require_speaks_tls_and_checks_the_servers_certificate() {
    // The server takes TLS connections only: a run that wrote its rows spoke TLS.
    let pg = PgServer::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let trusted = sink(
        &pg.url(),
        "t",
        &format!("ca_file = \"{}\"\ncreate = true\n", pg.ca_file().display()),
    );
    run_ok(&pipeline(dir.path(), 20, None, &trusted), &[], &[]);
    assert_eq!(counts(&pg, "t"), (20, 20));

    // Without the CA the certificate is refused at once (no retrying), saying why.
    let untrusted = sink(&pg.url(), "t", "retry_for_s = 30\n");
    let started = Instant::now();
    let out = run(&pipeline(dir.path(), 5, None, &untrusted), &[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "{stderr}");

    // In plain text the server turns the connection away.
    let plain = sink(&pg.url().replace("?sslmode=require", ""), "t", "");
    let out = run(&pipeline(dir.path(), 5, None, &plain), &[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no encryption"), "{stderr}");
}
