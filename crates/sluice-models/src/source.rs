//! Where a model comes from: a local directory or a Hugging Face hub id resolved through the hub
//! cache (`hf-hub`), with `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT` and `HF_HUB_OFFLINE` honoured
//! as the Python `huggingface_hub` honours them.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{ModelError, Result};

/// The model Sluice serves when none is named.
pub const DEFAULT_MODEL: &str = "facebook/m2m100_418M";

/// Tokenizer and config files every M2M100 directory needs.
const REQUIRED: [&str; 3] = ["config.json", "vocab.json", "sentencepiece.bpe.model"];
/// Files read when present.
const OPTIONAL: [&str; 3] = [
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
/// Weight files in order of preference.
const WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// A model given on the command line: a directory, or a hub id (`org/name[@revision]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory in the Hugging Face layout.
    Dir(PathBuf),
    /// A repository on the Hugging Face hub.
    Hub {
        /// `org/name`.
        repo: String,
        /// Branch, tag or commit (default `main`).
        revision: String,
    },
}

impl ModelSource {
    /// Reads `--model`: an existing path or anything path-like is a directory, else a hub id.
    pub fn parse(s: &str) -> Self {
        let path_like = s.starts_with(['.', '/', '~'])
            || s.contains('\\')
            || s.matches('/').count() > 1
            || Path::new(s).exists();
        if path_like {
            return Self::Dir(PathBuf::from(s));
        }
        let (repo, revision) = s.split_once('@').unwrap_or((s, "main"));
        Self::Hub {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
        }
    }

    /// A local directory holding the model, downloading into the hub cache when needed.
    pub fn resolve(&self, hub: &HubSettings) -> Result<PathBuf> {
        match self {
            Self::Dir(d) if d.is_dir() => Ok(d.clone()),
            Self::Dir(d) => Err(ModelError::NoSuchDirectory(d.clone())),
            Self::Hub { repo, revision } => hub.snapshot(repo, revision).map(|s| s.dir),
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(d) => write!(f, "{}", d.display()),
            Self::Hub { repo, revision } if revision == "main" => write!(f, "{repo}"),
            Self::Hub { repo, revision } => write!(f, "{repo}@{revision}"),
        }
    }
}

/// How to reach the hub and its cache; [`HubSettings::from_env`] reads the usual variables.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The hub cache directory (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Hub base URL (`$HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// Never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Show download progress bars.
    pub progress: bool,
}

impl HubSettings {
    /// Settings from the environment, as `huggingface_hub` reads them.
    pub fn from_env() -> Self {
        let cache_dir = match std::env::var_os("HF_HUB_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => Cache::from_env().path().clone(),
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        Self {
            cache_dir,
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
            offline,
            progress: false,
        }
    }

    fn repo(repo: &str, revision: &str) -> Repo {
        Repo::with_revision(repo.to_owned(), RepoType::Model, revision.to_owned())
    }

    /// The cached files of a repo when config, tokenizer and weights are all there (or, for an
    /// audio classifier, `sluice-model.toml` and the graph it names).
    fn cached(&self, repo: &str, revision: &str) -> Option<Snapshot> {
        let cache = Cache::new(self.cache_dir.clone()).repo(Self::repo(repo, revision));
        if let Some(spec) = cache.get(crate::classifier::SPEC_FILE) {
            let graph = cache.get(&classifier_graph(&spec)?)?;
            let dir = spec.parent()?.to_owned();
            return Some(Snapshot {
                dir,
                files: vec![spec, graph],
            });
        }
        let mut files: Vec<PathBuf> = REQUIRED
            .iter()
            .map(|f| cache.get(f))
            .collect::<Option<_>>()?;
        files.push(WEIGHTS.iter().find_map(|f| cache.get(f))?);
        files.extend(OPTIONAL.iter().filter_map(|f| cache.get(f)));
        let dir = files[0].parent()?.to_owned();
        Some(Snapshot { dir, files })
    }

    /// The repo's files in the hub cache, downloaded if they are not there yet.
    pub fn snapshot(&self, repo: &str, revision: &str) -> Result<Snapshot> {
        if let Some(s) = self.cached(repo, revision) {
            return Ok(s);
        }
        let hint_fetch = format!(
            "On a machine with network run `sluice fetch-model {repo} --to DIR` and pass --model DIR"
        );
        if self.offline {
            return Err(ModelError::Hub {
                repo: repo.to_owned(),
                file: "config.json, tokenizer and weights".to_owned(),
                reason: format!(
                    "HF_HUB_OFFLINE is set and the cache at {} does not hold them",
                    self.cache_dir.display()
                ),
                hint: hint_fetch,
            });
        }
        let hub_err = |file: &str, e: &dyn std::fmt::Display| ModelError::Hub {
            repo: repo.to_owned(),
            file: file.to_owned(),
            reason: e.to_string(),
            hint: format!(
                "{hint_fetch}, or set HF_HUB_OFFLINE=1 to use only the cache at {}",
                self.cache_dir.display()
            ),
        };
        let mut builder = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_progress(self.progress)
            .with_retries(0);
        if let Some(e) = &self.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        let api = builder.build().map_err(|e| hub_err("(client)", &e))?;
        let api_repo = api.repo(Self::repo(repo, revision));
        let info = api_repo.info().map_err(|e| hub_err("the file list", &e))?;
        let listed = |f: &str| info.siblings.iter().any(|s| s.rfilename == f);
        if listed(crate::classifier::SPEC_FILE) {
            let spec = api_repo
                .get(crate::classifier::SPEC_FILE)
                .map_err(|e| hub_err(crate::classifier::SPEC_FILE, &e))?;
            let name = classifier_graph(&spec).ok_or_else(|| {
                hub_err(
                    crate::classifier::SPEC_FILE,
                    &"it does not name a model file",
                )
            })?;
            let graph = api_repo.get(&name).map_err(|e| hub_err(&name, &e))?;
            let dir = spec
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| self.cache_dir.clone());
            return Ok(Snapshot {
                dir,
                files: vec![spec, graph],
            });
        }
        let weights = WEIGHTS.iter().find(|f| listed(f)).ok_or_else(|| {
            hub_err(
                "weights",
                &"the repository has neither model.safetensors nor pytorch_model.bin",
            )
        })?;
        let mut files = Vec::new();
        for f in REQUIRED.iter().chain([weights]) {
            files.push(api_repo.get(f).map_err(|e| hub_err(f, &e))?);
        }
        for f in OPTIONAL.iter().filter(|f| listed(f)) {
            files.push(api_repo.get(f).map_err(|e| hub_err(f, &e))?);
        }
        let dir = files[0]
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| self.cache_dir.clone());
        Ok(Snapshot { dir, files })
    }
}

/// The graph file an audio classifier's `sluice-model.toml` names (`model.onnx` by default).
fn classifier_graph(spec: &Path) -> Option<String> {
    let text = std::fs::read_to_string(spec).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    Some(match table.get("model") {
        Some(toml::Value::String(m)) => m.clone(),
        Some(_) => return None,
        None => "model.onnx".to_owned(),
    })
}

/// A resolved set of model files.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Directory holding the files (a hub cache snapshot).
    pub dir: PathBuf,
    /// The files Sluice needs.
    pub files: Vec<PathBuf>,
}

/// Downloads a hub model and copies its files into `to` (for init containers), each written to a
/// temporary name and renamed, so an interrupted fetch never leaves a partial file under its name.
pub fn fetch_model(
    repo: &str,
    revision: &str,
    to: &Path,
    hub: &HubSettings,
) -> Result<Vec<PathBuf>> {
    let snap = hub.snapshot(repo, revision)?;
    std::fs::create_dir_all(to).map_err(|e| ModelError::io(to, e))?;
    let mut written = Vec::new();
    for src in &snap.files {
        let name = src.file_name().ok_or_else(|| ModelError::InvalidFile {
            path: src.clone(),
            reason: "not a file".into(),
        })?;
        let dst = to.join(name);
        sluice_core::fs::write_atomic(&dst, |out| {
            std::io::copy(&mut std::fs::File::open(src)?, out).map(|_| ())
        })
        .map_err(|e| ModelError::io(&dst, e))?;
        written.push(dst);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tells_directories_from_hub_ids() {
        assert_eq!(
            ModelSource::parse("facebook/m2m100_418M"),
            ModelSource::Hub {
                repo: "facebook/m2m100_418M".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            ModelSource::parse("org/name@v2"),
            ModelSource::Hub {
                repo: "org/name".into(),
                revision: "v2".into()
            }
        );
        assert_eq!(
            ModelSource::parse("./models/m2m"),
            ModelSource::Dir("./models/m2m".into())
        );
        assert_eq!(
            ModelSource::parse("/abs/dir"),
            ModelSource::Dir("/abs/dir".into())
        );
        assert_eq!(
            ModelSource::parse("a/b/c"),
            ModelSource::Dir("a/b/c".into())
        );
    }
}
