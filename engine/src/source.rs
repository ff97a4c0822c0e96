//! Where model files come from: a local path, or `hf:org/name[@rev]:file`
//! resolved from the local Hugging Face cache layout
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
//!
//! A file missing from the cache is downloaded into it (the same layout
//! `huggingface_hub` writes) unless `HF_HUB_OFFLINE` is set; offline, the
//! error names the exact cache path that was tried. See [`download`].

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// A parsed model source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A file (GGUF) or directory (Hugging Face layout) on disk.
    Local(PathBuf),
    /// A file (or, with an empty `file`, the whole snapshot) of a Hub repository.
    Hub {
        repo: String,
        revision: String,
        file: String,
    },
}

impl ModelSource {
    /// Parses `hf:org/name[@rev][:file]` or a plain path.
    pub fn parse(text: &str) -> Result<Self> {
        let Some(rest) = text.strip_prefix("hf:") else {
            return Ok(Self::Local(PathBuf::from(text)));
        };
        let (repo_rev, file) = rest.split_once(':').unwrap_or((rest, ""));
        let (repo, revision) = repo_rev.split_once('@').unwrap_or((repo_rev, "main"));
        let valid = repo.split('/').count() == 2
            && repo.split('/').all(|part| !part.is_empty())
            && !revision.is_empty()
            && !file.split('/').any(|part| part == "..");
        if !valid {
            return Err(EngineError::InvalidRequest(format!(
                "model source {text:?}: expected hf:org/name[@revision][:file]"
            )));
        }
        Ok(Self::Hub {
            repo: repo.to_string(),
            revision: revision.to_string(),
            file: file.to_string(),
        })
    }

    /// The local path of the source: Hub files from the cache, downloaded
    /// first when missing and online (settings from the environment).
    pub fn resolve(&self) -> Result<PathBuf> {
        self.resolve_with(&HubSettings::from_env())
    }

    /// As [`resolve`](Self::resolve), with explicit Hub settings.
    pub fn resolve_with(&self, hub: &HubSettings) -> Result<PathBuf> {
        match self {
            Self::Local(path) if path.exists() => Ok(path.clone()),
            Self::Local(path) => Err(EngineError::Missing(path.display().to_string())),
            Self::Hub {
                repo,
                revision,
                file,
            } => match resolve_in_cache(&hub.cache, repo, revision, file) {
                Ok(path) => Ok(path),
                Err(missing) if hub.offline || file.is_empty() => Err(missing),
                Err(_) => crate::download::download(hub, repo, revision, file),
            },
        }
    }
}

/// Where and how Hub files are fetched.
#[derive(Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache directory ([`hub_cache_dir`]).
    pub cache: PathBuf,
    /// `HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_HUB_OFFLINE`: never touch the network.
    pub offline: bool,
    /// `HF_TOKEN`, for gated repositories.
    pub token: Option<String>,
}

impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("cache", &self.cache)
            .field("endpoint", &self.endpoint)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HubSettings {
    /// From `HF_HUB_CACHE`/`HF_HOME`, `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_TOKEN`.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            cache: hub_cache_dir(),
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".to_string())
                .trim_end_matches('/')
                .to_string(),
            offline,
            token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
        }
    }
}

/// The Hugging Face hub cache directory, as the `huggingface_hub` library
/// chooses it.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

/// Finds `file` of `repo` at `revision` (a branch, tag or commit) in a hub cache.
pub fn resolve_in_cache(cache: &Path, repo: &str, revision: &str, file: &str) -> Result<PathBuf> {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        revision.to_string()
    } else {
        let reference = repo_dir.join("refs").join(revision);
        std::fs::read_to_string(&reference)
            .map(|s| s.trim().to_string())
            .map_err(|_| {
                EngineError::Missing(format!(
                    "hf:{repo}@{revision}:{file}: no {} in the Hugging Face cache (offline; fetch it with `huggingface-cli download {repo} {file}`)",
                    reference.display()
                ))
            })?
    };
    let path = repo_dir.join("snapshots").join(commit).join(file);
    if path.exists() {
        Ok(path)
    } else {
        Err(EngineError::Missing(format!(
            "hf:{repo}@{revision}:{file}: {} is not in the Hugging Face cache (offline; fetch it with `huggingface-cli download {repo} {file}`)",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            ModelSource::parse("hf:org/name@v1:dir/model.gguf").unwrap(),
            ModelSource::Hub {
                repo: "org/name".into(),
                revision: "v1".into(),
                file: "dir/model.gguf".into()
            }
        );
        assert_eq!(
            ModelSource::parse("hf:org/name").unwrap(),
            ModelSource::Hub {
                repo: "org/name".into(),
                revision: "main".into(),
                file: String::new()
            }
        );
        assert_eq!(
            ModelSource::parse("/m/x.gguf").unwrap(),
            ModelSource::Local("/m/x.gguf".into())
        );
        for bad in ["hf:name", "hf:/x", "hf:a/b@:f", "hf:a/b:../../etc/passwd"] {
            assert!(ModelSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolves_the_cache_layout_and_names_what_is_missing() {
        let cache = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = cache.path().join("models--org--name");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        std::fs::write(repo.join("snapshots").join(commit).join("m.gguf"), b"x").unwrap();

        let by_branch = resolve_in_cache(cache.path(), "org/name", "main", "m.gguf").unwrap();
        let by_commit = resolve_in_cache(cache.path(), "org/name", commit, "m.gguf").unwrap();
        assert_eq!(by_branch, by_commit);

        let err = resolve_in_cache(cache.path(), "org/name", "main", "other.gguf")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("other.gguf") && err.contains("huggingface-cli download"),
            "{err}"
        );
        let err = resolve_in_cache(cache.path(), "org/name", "dev", "m.gguf")
            .unwrap_err()
            .to_string();
        assert!(err.contains("refs/dev"), "{err}");
    }
}
