//! The `cortex-models` object store: how model files reach neurons without
//! a shared disk or Hugging Face access. `cortex models push` uploads a
//! file (one object, named as given) or a folder in Hugging Face layout
//! (one object per file, `<name>/<file>`); a neuron resolving the source
//! `store:<name>` downloads it into its cache. The object store keeps a
//! SHA-256 digest of each object and the reader checks it at the end of the
//! download; a file only takes its final name once the digest matched, and
//! a file whose digest sidecar still matches is not fetched again.

use std::path::{Path, PathBuf};

use async_nats::jetstream::{self, object_store};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

/// Why an object-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("cannot open the object store {bucket}: {message}")]
    Open { bucket: String, message: String },
    #[error("object name {0:?} is not usable: use letters, digits, '-', '_', '.', and '/' between parts")]
    BadName(String),
    #[error("no object {name:?} (nor a folder {name}/) in the model store")]
    NotFound { name: String },
    #[error("cannot read {path}: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("transfer of {name:?} failed: {message}")]
    Transfer { name: String, message: String },
}

/// One object pushed or fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub name: String,
    pub size: u64,
    pub digest: String,
}

/// Opens the object store `bucket`, creating it when absent.
pub async fn open_or_create(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<object_store::ObjectStore, ObjectError> {
    if let Ok(store) = js.get_object_store(bucket).await {
        return Ok(store);
    }
    let config = object_store::Config {
        bucket: bucket.to_string(),
        description: Some("Cortex model files".to_string()),
        num_replicas: replicas,
        ..Default::default()
    };
    match js.create_object_store(config).await {
        Ok(store) => Ok(store),
        Err(create) => js
            .get_object_store(bucket)
            .await
            .map_err(|_| ObjectError::Open {
                bucket: bucket.to_string(),
                message: create.to_string(),
            }),
    }
}

/// Checks an object name: relative, no `..`, a safe alphabet.
pub fn validate_name(name: &str) -> Result<(), ObjectError> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && !name.ends_with('/')
        && name.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(ObjectError::BadName(name.to_string()))
    }
}

/// Uploads `path` as `name`: a file as one object, a folder's files as
/// `<name>/<file>` (sub-folders are not descended into).
pub async fn push(
    store: &object_store::ObjectStore,
    path: &Path,
    name: &str,
) -> Result<Vec<Pushed>, ObjectError> {
    validate_name(name)?;
    let local = |source| ObjectError::Local {
        path: path.to_path_buf(),
        source,
    };
    let files: Vec<(PathBuf, String)> = if path.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(local)? {
            let entry = entry.map_err(local)?;
            if entry.file_type().map_err(local)?.is_file() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let object = format!("{name}/{file}");
                validate_name(&object)?;
                files.push((entry.path(), object));
            }
        }
        files.sort();
        files
    } else {
        vec![(path.to_path_buf(), name.to_string())]
    };
    let mut pushed = Vec::new();
    for (file, object) in files {
        let mut reader =
            tokio::fs::File::open(&file)
                .await
                .map_err(|source| ObjectError::Local {
                    path: file.clone(),
                    source,
                })?;
        let info =
            store
                .put(object.as_str(), &mut reader)
                .await
                .map_err(|e| ObjectError::Transfer {
                    name: object.clone(),
                    message: e.to_string(),
                })?;
        pushed.push(Pushed {
            name: object,
            size: info.size as u64,
            digest: info.digest.unwrap_or_default(),
        });
    }
    Ok(pushed)
}

/// Makes `store:<name>` available under `cache`: the file `cache/<name>`,
/// or the folder `cache/<name>/` for a pushed folder. Returns its path.
pub async fn fetch(
    store: &object_store::ObjectStore,
    name: &str,
    cache: &Path,
) -> Result<PathBuf, ObjectError> {
    validate_name(name)?;
    let target = cache.join(name);
    if let Ok(info) = store.info(name).await {
        fetch_one(store, &info, &target).await?;
        return Ok(target);
    }
    let prefix = format!("{name}/");
    let mut list = store.list().await.map_err(|e| ObjectError::Transfer {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    let mut found = 0;
    while let Some(info) = list.next().await {
        let info = info.map_err(|e| ObjectError::Transfer {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        if info.deleted {
            continue;
        }
        if let Some(file) = info.name.strip_prefix(&prefix) {
            if validate_name(file).is_ok() && !file.contains('/') {
                fetch_one(store, &info, &target.join(file)).await?;
                found += 1;
            }
        }
    }
    if found == 0 {
        return Err(ObjectError::NotFound {
            name: name.to_string(),
        });
    }
    Ok(target)
}

/// Downloads one object to `target` unless the cached copy's digest matches.
async fn fetch_one(
    store: &object_store::ObjectStore,
    info: &object_store::ObjectInfo,
    target: &Path,
) -> Result<(), ObjectError> {
    let digest = info.digest.clone().unwrap_or_default();
    let sidecar = with_suffix(target, ".digest");
    let cached = tokio::fs::read_to_string(&sidecar).await.ok();
    let size = tokio::fs::metadata(target).await.ok().map(|m| m.len());
    if !digest.is_empty() && cached.as_deref() == Some(&digest) && size == Some(info.size as u64) {
        tracing::debug!(object = %info.name, "cached copy is current");
        return Ok(());
    }
    let local = |path: &Path, source| ObjectError::Local {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| local(parent, e))?;
    }
    let partial = with_suffix(target, ".partial");
    let transfer = |message: String| ObjectError::Transfer {
        name: info.name.clone(),
        message,
    };
    let mut object = store
        .get(&info.name)
        .await
        .map_err(|e| transfer(e.to_string()))?;
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| local(&partial, e))?;
    // The reader checks the SHA-256 digest at the end and fails on a mismatch.
    let copied = tokio::io::copy(&mut object, &mut file).await;
    if let Err(error) = copied {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(transfer(format!("{error} (checksum or transfer)")));
    }
    file.sync_all().await.map_err(|e| local(&partial, e))?;
    drop(file);
    tokio::fs::rename(&partial, target)
        .await
        .map_err(|e| local(target, e))?;
    if let Ok(mut side) = tokio::fs::File::create(&sidecar).await {
        let _ = side.write_all(digest.as_bytes()).await;
    }
    tracing::info!(object = %info.name, bytes = info.size, "fetched from the object store");
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_relative_and_plain() {
        for good in ["smollm2.gguf", "minilm/config.json", "a-b_c.1"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/abs", "a/../b", "..", "a/", "a b", "a//b", "x*"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
