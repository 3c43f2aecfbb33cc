//! A stand-in for the Hugging Face hub on a loopback port, for the download path's tests (the real
//! hub cannot be reached from tests): the two endpoints `hf-hub` calls, the repository's file list
//! and byte-range file downloads, optionally gated behind a token as gated models are.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The commit every file of the fake repository is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// One request the fake hub answered: its path and its `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRequest {
    /// Path and query.
    pub path: String,
    /// The `Authorization` header, when sent.
    pub authorization: Option<String>,
}

/// A fake hub serving one repository's files; stops when dropped.
pub struct FakeHub {
    url: String,
    requests: Arc<Mutex<Vec<HubRequest>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeHub {
    /// Serves `files` (name, bytes) of `repo` at any revision; with `token`, every request must
    /// carry `Authorization: Bearer <token>` or gets 401, as a gated repository does.
    pub fn start(repo: &str, files: Vec<(String, Vec<u8>)>, token: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (repo, token) = (repo.to_owned(), token.map(str::to_owned));
        let (log, stopping) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = answer(stream, &repo, &files, token.as_deref(), &log);
                }
            }
        });
        FakeHub {
            url,
            requests,
            stop,
        }
    }

    /// The endpoint to give as `HF_ENDPOINT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<HubRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// Reads one request and answers it (one request per connection: `Connection: close`).
fn answer(
    mut stream: TcpStream,
    repo: &str,
    files: &[(String, Vec<u8>)],
    token: Option<&str>,
    log: &Mutex<Vec<HubRequest>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (mut authorization, mut range) = (None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_owned()),
                "range" => range = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    log.lock().unwrap().push(HubRequest {
        path: path.clone(),
        authorization: authorization.clone(),
    });
    let respond =
        |stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]| {
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes())?;
            stream.write_all(body)
        };
    if let Some(t) = token {
        if authorization.as_deref() != Some(&format!("Bearer {t}")) {
            let body = br#"{"error":"Access to this gated model is restricted; pass a token"}"#;
            return respond(&mut stream, "401 Unauthorized", &[], body);
        }
    }
    if path.starts_with(&format!("/api/models/{repo}")) {
        let siblings: Vec<_> = files
            .iter()
            .map(|(name, _)| serde_json::json!({ "rfilename": name }))
            .collect();
        let body = serde_json::json!({"id": repo, "sha": COMMIT, "siblings": siblings}).to_string();
        let headers = [("Content-Type".to_owned(), "application/json".to_owned())];
        return respond(&mut stream, "200 OK", &headers, body.as_bytes());
    }
    let file = path
        .strip_prefix(&format!("/{repo}/resolve/"))
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(_, name)| files.iter().find(|(n, _)| n == name));
    let Some((name, bytes)) = file else {
        return respond(
            &mut stream,
            "404 Not Found",
            &[],
            b"{\"error\":\"Entry not found\"}",
        );
    };
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(bytes.len().saturating_sub(1));
            (a.min(bytes.len()), (b + 1).min(bytes.len()))
        }
        None => (0, bytes.len()),
    };
    let headers = [
        ("x-repo-commit".to_owned(), COMMIT.to_owned()),
        ("etag".to_owned(), format!("\"{name}-{}\"", bytes.len())),
        (
            "Content-Range".to_owned(),
            format!("bytes {start}-{}/{}", end.saturating_sub(1), bytes.len()),
        ),
    ];
    respond(
        &mut stream,
        "206 Partial Content",
        &headers,
        &bytes[start..end],
    )
}
