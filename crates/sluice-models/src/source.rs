//! Where a model comes from: a local directory or a Hugging Face hub id resolved through the hub
//! cache (`hf-hub`), with `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_HUB_OFFLINE` and the token
//! (`HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, `HF_TOKEN_PATH`, `$HF_HOME/token`) honoured as the
//! Python `huggingface_hub` honours them. Weights come whole (`model.safetensors`) or sharded
//! (`model.safetensors.index.json` and the shards it names).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{ModelError, Result};
pub use crate::objects::ObjectSettings;

/// Whether the hub refused the request (401, 403): a token is missing or has no access.
fn is_refusal(e: &ApiError) -> bool {
    match e {
        ApiError::RequestError(e) => matches!(**e, ureq::Error::Status(401 | 403, _)),
        ApiError::TooManyRetries(inner) => is_refusal(inner),
        _ => false,
    }
}

/// The model Sluice serves when none is named.
pub const DEFAULT_MODEL: &str = "facebook/m2m100_418M";

/// The config file every translation model directory needs.
const CONFIG: &str = "config.json";
/// The tokenizer files of each translation family, in order of preference: M2M100's, then
/// NLLB-200's (whose repositories have no vocab.json).
const TOKENIZERS: [&[&str]; 2] = [
    &["vocab.json", "sentencepiece.bpe.model"],
    &["tokenizer.json"],
];
/// Files read when present.
const OPTIONAL: [&str; 3] = [
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
/// Weight files in order of preference.
const WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];
/// The index of sharded safetensors weights, naming the shards in its `weight_map`.
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// A model given on the command line: a directory, an object-storage prefix, or a hub id
/// (`org/name[@revision]`).
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
    /// A prefix in object storage (`s3://bucket/models/m2m100/`, `gs://`, `az://`) holding the
    /// model's files, copied into the model cache.
    Object(String),
}

impl ModelSource {
    /// Reads `--model`: an object-storage URL, an existing path or anything path-like is a
    /// directory, else a hub id.
    pub fn parse(s: &str) -> Self {
        if let Some(path) = s.strip_prefix("file://") {
            return Self::Dir(PathBuf::from(path));
        }
        if crate::objects::is_object_url(s) {
            return Self::Object(s.to_owned());
        }
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

    /// A local directory holding the model, downloading into the hub cache when needed (an
    /// object-storage model into the model cache the environment names).
    pub fn resolve(&self, hub: &HubSettings) -> Result<PathBuf> {
        self.resolve_with(hub, &ObjectSettings::from_env())
    }

    /// As [`ModelSource::resolve`], with explicit object-storage settings.
    pub fn resolve_with(&self, hub: &HubSettings, objects: &ObjectSettings) -> Result<PathBuf> {
        match self {
            Self::Dir(d) if d.is_dir() => Ok(d.clone()),
            Self::Dir(d) => Err(ModelError::NoSuchDirectory(d.clone())),
            Self::Hub { repo, revision } => hub.snapshot(repo, revision).map(|s| s.dir),
            Self::Object(url) => objects.fetch(url),
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(d) => write!(f, "{}", d.display()),
            Self::Object(url) => f.write_str(url),
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
    /// The hub token, for gated and private repositories.
    pub token: Option<Token>,
}

/// A hub access token; its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The token as `huggingface_hub` finds it: `HF_TOKEN`, then `HUGGING_FACE_HUB_TOKEN`, then
    /// the file at `HF_TOKEN_PATH`, then `token` in the hub home (`$HF_HOME`, by default
    /// `~/.cache/huggingface`, where `huggingface-cli login` writes it). `var` reads the
    /// environment.
    pub fn find(var: impl Fn(&str) -> Option<String>, home_token: &Path) -> Option<Token> {
        let set = |v: Option<String>| v.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        set(var("HF_TOKEN"))
            .or_else(|| set(var("HUGGING_FACE_HUB_TOKEN")))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| home_token.to_owned());
                set(std::fs::read_to_string(path).ok())
            })
            .map(Token)
    }
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
        let var = |k: &str| std::env::var(k).ok();
        Self {
            cache_dir,
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
            offline,
            progress: false,
            token: Token::find(var, &Cache::from_env().token_path()),
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
        let mut files = vec![cache.get(CONFIG)?];
        files.extend(
            TOKENIZERS
                .iter()
                .find_map(|set| set.iter().map(|f| cache.get(f)).collect::<Option<Vec<_>>>())?,
        );
        match WEIGHTS.iter().find_map(|f| cache.get(f)) {
            Some(weights) => files.push(weights),
            None => {
                let index = cache.get(WEIGHTS_INDEX)?;
                for shard in shards(&index)? {
                    files.push(cache.get(&shard)?);
                }
                files.push(index);
            }
        }
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
        let hub_err = |file: &str, reason: String, refused: bool| {
            let hint = if refused && self.token.is_none() {
                format!("a gated or private repository needs a token: set HF_TOKEN. {hint_fetch}")
            } else if refused {
                format!("the token (HF_TOKEN or the token file) has no access to {repo}")
            } else {
                format!(
                    "{hint_fetch}, or set HF_HUB_OFFLINE=1 to use only the cache at {}",
                    self.cache_dir.display()
                )
            };
            ModelError::Hub {
                repo: repo.to_owned(),
                file: file.to_owned(),
                reason,
                hint,
            }
        };
        // A refusal (401, 403) is told by the answer's status, not by its message's text.
        let api_err = |file: &str, e: &ApiError| hub_err(file, e.to_string(), is_refusal(e));
        let mut builder = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_progress(self.progress)
            .with_token(self.token.as_ref().map(|t| t.0.clone()))
            .with_retries(0);
        if let Some(e) = &self.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        let api = builder.build().map_err(|e| api_err("(client)", &e))?;
        let api_repo = api.repo(Self::repo(repo, revision));
        let info = api_repo.info().map_err(|e| api_err("the file list", &e))?;
        let listed = |f: &str| info.siblings.iter().any(|s| s.rfilename == f);
        if listed(crate::classifier::SPEC_FILE) {
            let spec = api_repo
                .get(crate::classifier::SPEC_FILE)
                .map_err(|e| api_err(crate::classifier::SPEC_FILE, &e))?;
            let name = classifier_graph(&spec).ok_or_else(|| {
                hub_err(
                    crate::classifier::SPEC_FILE,
                    "it does not name a model file".into(),
                    false,
                )
            })?;
            let graph = api_repo.get(&name).map_err(|e| api_err(&name, &e))?;
            let dir = spec
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| self.cache_dir.clone());
            return Ok(Snapshot {
                dir,
                files: vec![spec, graph],
            });
        }
        let mut files = vec![api_repo.get(CONFIG).map_err(|e| api_err(CONFIG, &e))?];
        // A set the repository lists, else the first (its download error names the file).
        let tokenizer = TOKENIZERS
            .iter()
            .find(|set| set.iter().all(|f| listed(f)))
            .unwrap_or(&TOKENIZERS[0]);
        for f in tokenizer.iter() {
            files.push(api_repo.get(f).map_err(|e| api_err(f, &e))?);
        }
        match WEIGHTS.iter().find(|f| listed(f)) {
            Some(weights) => files.push(api_repo.get(weights).map_err(|e| api_err(weights, &e))?),
            None if listed(WEIGHTS_INDEX) => {
                let index = api_repo
                    .get(WEIGHTS_INDEX)
                    .map_err(|e| api_err(WEIGHTS_INDEX, &e))?;
                let names = shards(&index).ok_or_else(|| {
                    hub_err(WEIGHTS_INDEX, "its weight_map names no shard".into(), false)
                })?;
                for shard in names {
                    files.push(api_repo.get(&shard).map_err(|e| api_err(&shard, &e))?);
                }
                files.push(index);
            }
            None => {
                return Err(hub_err(
                    "weights",
                    "the repository has none of model.safetensors, model.safetensors.index.json \
                     or pytorch_model.bin"
                        .into(),
                    false,
                ))
            }
        }
        for f in OPTIONAL.iter().filter(|f| listed(f)) {
            files.push(api_repo.get(f).map_err(|e| api_err(f, &e))?);
        }
        let dir = files[0]
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| self.cache_dir.clone());
        Ok(Snapshot { dir, files })
    }
}

/// The shard files a `model.safetensors.index.json` names, each once, in order; `None` when it
/// cannot be read or names none.
fn shards(index: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(index).ok()?;
    let index: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mut names: Vec<String> = index
        .get("weight_map")?
        .as_object()?
        .values()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    (!names.is_empty()).then_some(names)
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
    fn the_token_is_found_where_huggingface_hub_looks() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("token");
        let other = dir.path().join("other");
        std::fs::write(&home, "from-home\n").unwrap();
        std::fs::write(&other, "from-path").unwrap();
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let find = |e| Token::find(e, &home).map(|t| t.0);
        assert_eq!(
            find(env(&[("HF_TOKEN", "a"), ("HUGGING_FACE_HUB_TOKEN", "b")])).as_deref(),
            Some("a")
        );
        assert_eq!(
            find(env(&[("HF_TOKEN", " "), ("HUGGING_FACE_HUB_TOKEN", "b")])).as_deref(),
            Some("b")
        );
        let path: &'static str = Box::leak(other.to_str().unwrap().to_owned().into_boxed_str());
        let with_path: &'static [(&str, &str)] = Box::leak(Box::new([("HF_TOKEN_PATH", path)]));
        assert_eq!(find(env(with_path)).as_deref(), Some("from-path"));
        assert_eq!(find(env(&[])).as_deref(), Some("from-home"));
        std::fs::remove_file(&home).unwrap();
        assert_eq!(find(env(&[])), None);
        assert_eq!(format!("{:?}", Token("secret".into())), "Token(<redacted>)");
    }

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
