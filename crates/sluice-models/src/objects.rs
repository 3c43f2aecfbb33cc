//! Models kept in object storage (`s3://`, `gs://`, `az://`): the files under a prefix are
//! copied into a local model cache, and the model loads from there like any directory (its kind
//! told by its files, as for a hub id).
//!
//! The cache mirrors the URL (`s3://bucket/models/m2m100` → `CACHE/s3/bucket/models/m2m100`), so
//! it reads like the store. Each file is downloaded to a temporary name and renamed, so a killed
//! download never leaves a half file; a manifest records each object's size and modification time,
//! so an unchanged object is never downloaded again and a changed one always is, and whether the
//! last copy finished. When the store cannot be listed (an outage, no network), a finished earlier
//! copy is used, with a warning; a half-made one is not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sluice_core::storage::{Location, Matcher, StorageError};

use crate::error::{ModelError, Result};

/// URL schemes that name a model in object storage.
const SCHEMES: [&str; 4] = ["s3", "gs", "az", "memory"];

/// The file of a cached copy's [`Manifest`].
const MANIFEST: &str = ".sluice-objects.json";

/// What a cached copy holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Manifest {
    /// Object path → (size, modification in ms) of each object copied.
    objects: BTreeMap<String, (u64, i64)>,
    /// Whether the last copy finished: every object the store listed is here as listed.
    complete: bool,
}

/// Whether `s` names an object-storage prefix.
pub fn is_object_url(s: &str) -> bool {
    s.split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme))
}

/// Where object-storage models are cached, and how the store is reached.
#[derive(Debug, Clone)]
pub struct ObjectSettings {
    /// The model cache (`$SLUICE_MODEL_CACHE`, else `$XDG_CACHE_HOME/sluice/models`, else
    /// `~/.cache/sluice/models`).
    pub cache_dir: PathBuf,
    /// Object-store options (endpoint, credentials) on top of the `AWS_*`, `GOOGLE_*` and
    /// `AZURE_*` environment variables.
    pub options: Vec<(String, String)>,
}

impl ObjectSettings {
    /// The cache the environment names, and the store as the environment configures it.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let cache_dir = var("SLUICE_MODEL_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("sluice/models")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/sluice/models")))
            .unwrap_or_else(|| PathBuf::from(".sluice-models"));
        Self {
            cache_dir,
            options: Vec::new(),
        }
    }

    /// The local copy of the model under `url`, brought up to date with the store.
    pub fn fetch(&self, url: &str) -> Result<PathBuf> {
        let dir = self.cache_dir.join(mirror_path(url)?);
        let store = |e: StorageError| ModelError::Hub {
            repo: url.to_owned(),
            file: "the file list".into(),
            reason: e.to_string(),
            hint: "check the URL and the store's credentials (AWS_*, GOOGLE_*, AZURE_*)".into(),
        };
        let listed = Location::parse_source_with(url, &self.options)
            .and_then(|location| Ok((location.list_blocking(&Matcher::All)?, location)));
        let (files, location) = match listed {
            Ok(listed) => listed,
            Err(e) if read_manifest(&dir).is_some_and(|m| m.complete) => {
                tracing::warn!(url, error = %e, "cannot list the model's objects; using the copy in {}", dir.display());
                return Ok(dir);
            }
            Err(e) => return Err(store(e)),
        };
        if files.is_empty() {
            return Err(ModelError::NoSuchDirectory(PathBuf::from(url)));
        }
        std::fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
        let mut manifest = read_manifest(&dir).unwrap_or_default();
        // What the store holds now, and no longer what it held: a deleted object is not part
        // of the copy the next outage falls back on.
        manifest
            .objects
            .retain(|rel, _| files.iter().any(|f| &f.rel == rel));
        for file in &files {
            let stamp = (file.size, file.modified_ms);
            let local = dir.join(&file.rel);
            if manifest.objects.get(&file.rel) == Some(&stamp) && local.is_file() {
                continue;
            }
            if manifest.complete {
                // Until every object is copied again, the copy is not one to fall back on.
                manifest.complete = false;
                write_manifest(&dir, &manifest)?;
            }
            download(&location, &file.rel, &local).map_err(|e| match e {
                Fetch::Io(e) => ModelError::io(&local, e),
                Fetch::Store(e) => ModelError::Hub {
                    repo: url.to_owned(),
                    file: file.rel.clone(),
                    reason: e.to_string(),
                    hint: "the copy is resumed on the next load".into(),
                },
            })?;
            // Recorded one by one, so a copy killed half-way resumes where it stopped.
            manifest.objects.insert(file.rel.clone(), stamp);
            write_manifest(&dir, &manifest)?;
        }
        if !manifest.complete {
            manifest.complete = true;
            write_manifest(&dir, &manifest)?;
        }
        tracing::info!(url, dir = %dir.display(), files = files.len(), "model copied from object storage");
        Ok(dir)
    }
}

/// The cache path mirroring `url`; a `..` component is refused rather than followed.
fn mirror_path(url: &str) -> Result<PathBuf> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == ".." || *p == ".") {
        return Err(ModelError::InvalidSettings(format!(
            "model URL {url:?}: expected SCHEME://BUCKET/PREFIX without . or .. components"
        )));
    }
    Ok(std::iter::once(scheme).chain(parts).collect())
}

/// Why an object was not copied.
enum Fetch {
    Io(std::io::Error),
    Store(StorageError),
}

/// Downloads one object to `to` through a temporary file beside it.
fn download(location: &Location, rel: &str, to: &Path) -> std::result::Result<(), Fetch> {
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Fetch::Io)?;
    let mut part = tempfile::NamedTempFile::new_in(dir).map_err(Fetch::Io)?;
    location
        .download_blocking(rel, part.as_file_mut())
        .map_err(Fetch::Store)?;
    part.persist(to).map_err(|e| Fetch::Io(e.error))?;
    Ok(())
}

fn read_manifest(dir: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST);
    let text = serde_json::to_vec(manifest).unwrap_or_default();
    sluice_core::fs::write_atomic(&path, |out| std::io::Write::write_all(out, &text))
        .map_err(|e| ModelError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls_mirror_into_the_cache_and_dot_components_are_refused() {
        assert!(is_object_url("s3://bucket/models/m2m100"));
        assert!(!is_object_url("facebook/m2m100_418M"));
        assert!(!is_object_url("./models/m2m100"));
        assert_eq!(
            mirror_path("s3://bucket/models/m2m100/").unwrap(),
            PathBuf::from("s3/bucket/models/m2m100")
        );
        assert!(mirror_path("s3://bucket/../etc").is_err());
        assert!(mirror_path("gs://").is_err());
    }
}
