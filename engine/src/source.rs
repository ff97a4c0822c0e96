//! Where model files come from: a local path, or `hf:org/name[@rev]:file`
//! resolved from the local Hugging Face cache layout
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
//!
//! Nothing here downloads: offline is the normal case on a GPU host, and a
//! missing file is reported with the exact cache path that was tried.

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

    /// The local path of the source, looking Hub sources up in the cache.
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            Self::Local(path) if path.exists() => Ok(path.clone()),
            Self::Local(path) => Err(EngineError::Missing(path.display().to_string())),
            Self::Hub {
                repo,
                revision,
                file,
            } => resolve_in_cache(&hub_cache_dir(), repo, revision, file),
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
                    "hf:{repo}@{revision}: no {} in the Hugging Face cache (offline; fetch it with `huggingface-cli download {repo}`)",
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
