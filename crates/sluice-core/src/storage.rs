//! Storage locations: a local path, `file://`, `s3://`, `gs://`, `az://` or `memory://` URL opened
//! through `object_store`, so every stage reads, lists and writes the same way wherever the data is.
//!
//! Credentials and endpoints come from the usual environment variables (`AWS_*`, `GOOGLE_*`,
//! `AZURE_*`) or from explicit options, which win. An `http://` endpoint (a local S3-compatible
//! server) turns on plain HTTP for that store. Writes are atomic: object stores publish an object
//! whole on a single PUT (or on completing a multipart upload), and the local store writes a staging
//! file and renames it. `memory://NAME` stores live as long as the process and are shared by every
//! location naming the same `NAME`, for tests and dry runs.
//!
//! The async methods suit servers; the `_blocking` ones run on a small runtime of their own, for
//! pipeline workers that are plain threads (never call them from inside an async runtime).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

/// What went wrong with a storage location or object.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL or path cannot name a location.
    #[error("{url}: {message}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// Why.
        message: String,
    },
    /// The object does not exist.
    #[error("{url}: not found")]
    NotFound {
        /// The object's URL.
        url: String,
    },
    /// The store refused or failed the operation.
    #[error("{url}: {source}")]
    Store {
        /// The object's or location's URL.
        url: String,
        /// The store's error.
        source: object_store::Error,
    },
}

impl StorageError {
    fn store(url: String, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound { url },
            source => StorageError::Store { url, source },
        }
    }
}

/// A file found by [`Location::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the listed location, `/`-separated (`music/a.mp3`).
    pub rel: String,
    /// The full URL (or local path) of the file.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

/// Which files a listing keeps.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Every file.
    All,
    /// Files whose name ends with one of these suffixes, compared without regard to case.
    Suffixes(Vec<String>),
    /// Files whose relative path matches this glob (`**/*.wav`, `music/*.{mp3,flac}`).
    Glob(globset::GlobMatcher),
}

impl Matcher {
    /// Files ending with any of `suffixes` (a leading dot is optional: `mp3` means `.mp3`).
    pub fn suffixes<S: AsRef<str>>(suffixes: &[S]) -> Self {
        Matcher::Suffixes(
            suffixes
                .iter()
                .map(|s| {
                    let s = s.as_ref().to_lowercase();
                    if s.starts_with('.') {
                        s
                    } else {
                        format!(".{s}")
                    }
                })
                .collect(),
        )
    }

    /// Files whose path relative to the location matches `pattern`.
    pub fn glob(pattern: &str) -> Result<Self, StorageError> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| StorageError::Invalid {
                url: pattern.to_string(),
                message: format!("not a valid glob: {e}"),
            })?;
        Ok(Matcher::Glob(glob.compile_matcher()))
    }

    /// Whether a file at `rel` is kept.
    pub fn matches(&self, rel: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Suffixes(suffixes) => {
                let lower = rel.to_lowercase();
                suffixes.iter().any(|s| lower.ends_with(s.as_str()))
            }
            Matcher::Glob(glob) => glob.is_match(rel),
        }
    }
}

/// A directory-like place in some store: the store plus a prefix inside it.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// How the user named it, without a trailing slash, for messages and child URLs.
    base: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Location({})", self.base)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

fn invalid(url: &str, message: impl Into<String>) -> StorageError {
    StorageError::Invalid {
        url: url.to_string(),
        message: message.into(),
    }
}

/// Environment variables with `prefix`, lower-cased, as builder options.
fn env_options(prefix: &str) -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect()
}

/// Whether `target` names an object (`s3://`, `gs://`, `az://`, `memory://`...) rather than a
/// local file (a plain path or a `file://` URL).
pub fn is_object_url(target: &std::path::Path) -> bool {
    target
        .to_str()
        .is_some_and(|t| t.contains("://") && local_path(t).is_none())
}

/// Writes the file `target` names whole or not at all: a local path through a temporary file
/// renamed into place ([`crate::fs::write_atomic`]), an object URL through a local temporary file
/// uploaded in one (multipart) upload that completes or leaves nothing.
pub fn write_output(
    target: &std::path::Path,
    write: impl FnOnce(&mut (dyn std::io::Write + Send)) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::io::Write;
    let Some(url) = target.to_str().filter(|_| is_object_url(target)) else {
        let local = target.to_str().and_then(local_path);
        return crate::fs::write_atomic(local.as_deref().unwrap_or(target), write);
    };
    let (dir, name) = url
        .rsplit_once('/')
        .ok_or_else(|| std::io::Error::other(format!("{url}: not an object URL")))?;
    let location = Location::parse(dir).map_err(std::io::Error::other)?;
    let mut staged = tempfile::NamedTempFile::new()?;
    {
        let mut out = std::io::BufWriter::new(staged.as_file_mut());
        write(&mut out)?;
        out.flush()?;
    }
    location
        .upload_blocking(name, staged.path())
        .map_err(std::io::Error::other)?;
    Ok(())
}

/// The directory a local path or `file://` URL names; `None` for object-store URLs.
pub fn local_path(url: &str) -> Option<std::path::PathBuf> {
    match url.split_once("://") {
        None => Some(url.into()),
        Some(("file", path)) => Some(path.into()),
        Some(_) => None,
    }
}

impl Location {
    /// Opens `url` with credentials and endpoints from the environment.
    pub fn parse(url: &str) -> Result<Self, StorageError> {
        Self::parse_with::<&str, &str>(url, &[])
    }

    /// Opens `url` to read from: a local directory must already exist (a mistyped source is an
    /// error, not an empty run).
    pub fn parse_source(url: &str) -> Result<Self, StorageError> {
        Self::parse_source_with::<&str, &str>(url, &[])
    }

    /// As [`Location::parse_source`], with explicit options as in [`Location::parse_with`].
    pub fn parse_source_with<K: AsRef<str>, V: AsRef<str>>(
        url: &str,
        options: &[(K, V)],
    ) -> Result<Self, StorageError> {
        if let Some(dir) = local_path(url) {
            if !dir.is_dir() {
                return Err(StorageError::NotFound {
                    url: url.to_owned(),
                });
            }
        }
        Self::parse_with(url, options)
    }

    /// Reads the one object a URL names (`s3://bucket/dir/file.wav`, a local path), opening its
    /// parent as a source.
    pub fn read_url_blocking<K: AsRef<str>, V: AsRef<str>>(
        url: &str,
        options: &[(K, V)],
    ) -> Result<bytes::Bytes, StorageError> {
        let (dir, file) = url.rsplit_once('/').unwrap_or(("", url));
        Self::parse_source_with(dir, options)?.read_blocking(file)
    }

    /// Opens the one object a URL names for reading from its start, without holding it in
    /// memory ([`Location::open_blocking`] in its parent).
    pub fn open_url_blocking<K: AsRef<str>, V: AsRef<str>>(
        url: &str,
        options: &[(K, V)],
    ) -> Result<std::fs::File, StorageError> {
        let (dir, file) = url.rsplit_once('/').unwrap_or(("", url));
        Self::parse_source_with(dir, options)?.open_blocking(file)
    }

    /// Opens `url`; `options` (e.g. `("aws_endpoint", "http://127.0.0.1:9000")`) win over the
    /// environment. Keys are the `object_store` builders' config keys.
    pub fn parse_with<K: AsRef<str>, V: AsRef<str>>(
        url: &str,
        options: &[(K, V)],
    ) -> Result<Self, StorageError> {
        let base = url.trim_end_matches('/').to_string();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Self::local(url, base);
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = ObjectPath::parse(prefix.trim_end_matches('/'))
            .map_err(|e| invalid(url, format!("not a valid object path: {e}")))?;
        let explicit = |prefix: &str| {
            let mut all = env_options(prefix);
            all.extend(
                options
                    .iter()
                    .map(|(k, v)| (k.as_ref().to_lowercase(), v.as_ref().to_string())),
            );
            all
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            "file" => return Self::local(rest, base),
            "memory" => memory_stores()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(bucket.to_string())
                .or_insert_with(|| Arc::new(object_store::memory::InMemory::new()))
                .clone(),
            "s3" | "s3a" => {
                let mut builder =
                    object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
                let mut plain_http = false;
                for (key, value) in explicit("AWS_") {
                    if key.ends_with("endpoint") || key.ends_with("endpoint_url") {
                        plain_http |= value.starts_with("http://");
                    }
                    if key == "aws_allow_http" {
                        plain_http |= value == "true";
                        continue;
                    }
                    if let Ok(key) = key.parse() {
                        builder = builder.with_config(key, value);
                    }
                }
                let builder = builder.with_allow_http(plain_http);
                Arc::new(builder.build().map_err(|e| invalid(url, e.to_string()))?)
            }
            "gs" => {
                let mut builder =
                    object_store::gcp::GoogleCloudStorageBuilder::new().with_bucket_name(bucket);
                for (key, value) in explicit("GOOGLE_") {
                    if let Ok(key) = key.parse() {
                        builder = builder.with_config(key, value);
                    }
                }
                Arc::new(builder.build().map_err(|e| invalid(url, e.to_string()))?)
            }
            "az" | "azure" | "abfs" => {
                let mut builder =
                    object_store::azure::MicrosoftAzureBuilder::new().with_container_name(bucket);
                let mut plain_http = false;
                for (key, value) in explicit("AZURE_") {
                    if key.ends_with("endpoint") {
                        plain_http |= value.starts_with("http://");
                    }
                    if let Ok(key) = key.parse() {
                        builder = builder.with_config(key, value);
                    }
                }
                let builder = builder.with_allow_http(plain_http);
                Arc::new(builder.build().map_err(|e| invalid(url, e.to_string()))?)
            }
            other => {
                return Err(invalid(
                    url,
                    format!(
                        "unknown scheme {other:?}: expected a local path, file://, s3://, gs://, \
                         az:// or memory://"
                    ),
                ))
            }
        };
        Ok(Location {
            store,
            prefix,
            base,
        })
    }

    fn local(path: &str, base: String) -> Result<Self, StorageError> {
        let dir = std::path::Path::new(path);
        // The local store roots itself at an existing, canonical directory; a target that does
        // not exist yet is created, as an object store's "directory" would be on first write.
        std::fs::create_dir_all(dir)
            .map_err(|e| invalid(path, format!("cannot create the directory: {e}")))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| invalid(path, e.to_string()))?;
        Ok(Location {
            store: Arc::new(store),
            prefix: ObjectPath::default(),
            base,
        })
    }

    /// Whether this is the local file system (where paths can be handed to other programs).
    pub fn is_local(&self) -> bool {
        local_path(&self.base).is_some()
    }

    fn path(&self, rel: &str) -> Result<ObjectPath, StorageError> {
        let clean = rel.trim_start_matches('/');
        if clean.split('/').any(|part| part == ".." || part == ".") {
            return Err(invalid(rel, "relative paths may not contain . or .."));
        }
        let mut path = self.prefix.clone();
        for part in clean.split('/').filter(|p| !p.is_empty()) {
            path = path.child(part);
        }
        Ok(path)
    }

    /// The URL (or local path) of `rel` under this location.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}/{}", self.base, rel.trim_start_matches('/'))
    }

    /// Files under this location that `matcher` keeps, sorted by relative path.
    pub async fn list(&self, matcher: &Matcher) -> Result<Vec<FileEntry>, StorageError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let metas: Vec<_> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|e| StorageError::store(self.base.clone(), e))?;
        let skip = if self.prefix.as_ref().is_empty() {
            0
        } else {
            self.prefix.as_ref().len() + 1
        };
        let mut files: Vec<FileEntry> = metas
            .into_iter()
            .filter_map(|meta| {
                let rel = meta.location.as_ref().get(skip..)?.to_string();
                matcher.matches(&rel).then(|| FileEntry {
                    url: self.url_of(&rel),
                    rel,
                    size: meta.size,
                    modified_ms: meta.last_modified.timestamp_millis(),
                })
            })
            .collect();
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(files)
    }

    /// Starts reading `rel`; returns the answer with the object's URL, for messages.
    async fn get(&self, rel: &str) -> Result<(object_store::GetResult, String), StorageError> {
        let path = self.path(rel)?;
        let url = self.url_of(rel);
        match self.store.get(&path).await {
            Ok(got) => Ok((got, url)),
            Err(e) => Err(StorageError::store(url, e)),
        }
    }

    /// The whole content of `rel`.
    pub async fn read(&self, rel: &str) -> Result<bytes::Bytes, StorageError> {
        let (got, url) = self.get(rel).await?;
        got.bytes().await.map_err(|e| StorageError::store(url, e))
    }

    /// Writes `bytes` to `rel` as one atomic object, replacing what was there.
    pub async fn write(&self, rel: &str, bytes: bytes::Bytes) -> Result<(), StorageError> {
        let path = self.path(rel)?;
        self.store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| StorageError::store(self.url_of(rel), e))?;
        Ok(())
    }

    /// Size and modification time of `rel`, or `None` when it does not exist.
    pub async fn head(&self, rel: &str) -> Result<Option<FileEntry>, StorageError> {
        let path = self.path(rel)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(FileEntry {
                rel: rel.to_string(),
                url: self.url_of(rel),
                size: meta.size,
                modified_ms: meta.last_modified.timestamp_millis(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store(self.url_of(rel), e)),
        }
    }

    /// Removes `rel`; removing what does not exist is not an error.
    pub async fn delete(&self, rel: &str) -> Result<(), StorageError> {
        let path = self.path(rel)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::store(self.url_of(rel), e)),
        }
    }

    /// The file `rel` names on this machine when the location is a local directory, so that it
    /// can be read and written in place; `None` for object storage.
    pub fn local_file(&self, rel: &str) -> Result<Option<std::path::PathBuf>, StorageError> {
        self.path(rel)?;
        Ok(local_path(&self.base).map(|dir| dir.join(rel.trim_start_matches('/'))))
    }

    /// Opens `rel` for reading from its start without holding it in memory: a local file in
    /// place, an object copied to a temporary file as it downloads. A local file's I/O errors
    /// read as the store's would (missing: [`StorageError::NotFound`]).
    pub fn open_blocking(&self, rel: &str) -> Result<std::fs::File, StorageError> {
        let url = self.url_of(rel);
        let local = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => StorageError::NotFound { url: url.clone() },
            _ => StorageError::Store {
                url: url.clone(),
                source: object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                },
            },
        };
        if let Some(path) = self.local_file(rel)? {
            return std::fs::File::open(path).map_err(local);
        }
        let mut copy = tempfile::tempfile().map_err(local)?;
        self.download_blocking(rel, &mut copy)?;
        std::io::Seek::rewind(&mut copy).map_err(local)?;
        Ok(copy)
    }

    /// Copies `rel` into `file` as it arrives, so memory holds one network chunk, not the object.
    pub async fn download(&self, rel: &str, file: &mut std::fs::File) -> Result<u64, StorageError> {
        use std::io::Write;
        let (got, url) = self.get(rel).await?;
        let mut stream = got.into_stream();
        let mut copied = 0u64;
        while let Some(part) = stream.next().await {
            let part = part.map_err(|e| StorageError::store(url.clone(), e))?;
            file.write_all(&part)
                .map_err(|e| invalid(&url, format!("writing a local copy: {e}")))?;
            copied += part.len() as u64;
        }
        Ok(copied)
    }

    /// Uploads the local file `from` as `rel`: in one request up to 8 MiB, else in parts (a
    /// multipart upload on object storage) holding at most a few parts in memory; the object
    /// appears whole when the upload completes, never in part.
    pub async fn upload(&self, rel: &str, from: &std::path::Path) -> Result<u64, StorageError> {
        use std::io::Read;
        const PART: usize = 8 << 20;
        let path = self.path(rel)?;
        let url = self.url_of(rel);
        let local = |e: std::io::Error| invalid(&url, format!("reading {}: {e}", from.display()));
        let mut file = std::fs::File::open(from).map_err(local)?;
        let size = file.metadata().map_err(local)?.len();
        if size <= PART as u64 {
            // One request (a put is whole or absent too), and the one every store emulates.
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).map_err(local)?;
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(|e| StorageError::store(url.clone(), e))?;
            return Ok(size);
        }
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| StorageError::store(url.clone(), e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; PART];
        let mut sent = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(local)?;
            if n == 0 {
                break;
            }
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| StorageError::store(url.clone(), e))?;
            writer.write(&buf[..n]);
            sent += n as u64;
        }
        writer
            .finish()
            .await
            .map_err(|e| StorageError::store(url.clone(), e))?;
        Ok(sent)
    }

    /// [`Location::download`] from a plain thread.
    pub fn download_blocking(
        &self,
        rel: &str,
        file: &mut std::fs::File,
    ) -> Result<u64, StorageError> {
        runtime().block_on(self.download(rel, file))
    }

    /// [`Location::upload`] from a plain thread.
    pub fn upload_blocking(&self, rel: &str, from: &std::path::Path) -> Result<u64, StorageError> {
        runtime().block_on(self.upload(rel, from))
    }

    /// [`Location::list`] from a plain thread.
    pub fn list_blocking(&self, matcher: &Matcher) -> Result<Vec<FileEntry>, StorageError> {
        runtime().block_on(self.list(matcher))
    }

    /// [`Location::read`] from a plain thread.
    pub fn read_blocking(&self, rel: &str) -> Result<bytes::Bytes, StorageError> {
        runtime().block_on(self.read(rel))
    }

    /// [`Location::write`] from a plain thread.
    pub fn write_blocking(&self, rel: &str, bytes: bytes::Bytes) -> Result<(), StorageError> {
        runtime().block_on(self.write(rel, bytes))
    }

    /// [`Location::head`] from a plain thread.
    pub fn head_blocking(&self, rel: &str) -> Result<Option<FileEntry>, StorageError> {
        runtime().block_on(self.head(rel))
    }

    /// [`Location::delete`] from a plain thread.
    pub fn delete_blocking(&self, rel: &str) -> Result<(), StorageError> {
        runtime().block_on(self.delete(rel))
    }
}

/// The runtime behind the blocking methods: object stores' HTTP clients need one, and pipeline
/// workers are plain threads. Two threads are plenty: the calls wait on the network, not the CPU.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-storage")
            .enable_all()
            .build()
            .expect("starting the storage runtime")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_ignore_case_and_accept_a_missing_dot() {
        let m = Matcher::suffixes(&["mp3", ".FLAC"]);
        assert!(m.matches("a/b.MP3"));
        assert!(m.matches("c.flac"));
        assert!(!m.matches("mp3.txt"));
        assert!(!m.matches("amp3"));
    }

    #[test]
    fn globs_match_relative_paths_with_literal_separators() {
        let m = Matcher::glob("music/*.{wav,flac}").unwrap();
        assert!(m.matches("music/a.wav"));
        assert!(!m.matches("music/deep/a.wav"));
        assert!(Matcher::glob("**/*.wav")
            .unwrap()
            .matches("music/deep/a.wav"));
        assert!(Matcher::glob("[").is_err());
    }

    #[test]
    fn a_missing_source_directory_is_an_error_and_is_not_created() {
        let base = std::env::temp_dir().join(format!("sluice-missing-{}", std::process::id()));
        let missing = base.join("typo");
        let e = Location::parse_source(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, StorageError::NotFound { .. }), "{e}");
        assert!(!base.exists());
    }

    #[test]
    fn unknown_schemes_and_escaping_paths_are_refused() {
        let e = Location::parse("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("unknown scheme \"ftp\""), "{e}");
        let loc = Location::parse("memory://unit-escape").unwrap();
        let e = loc.read_blocking("../secret").unwrap_err().to_string();
        assert!(e.contains("may not contain"), "{e}");
    }
}
