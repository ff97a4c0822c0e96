//! Publishing the catalogue to `cortex-catalog` (model token → profile
//! JSON): new and changed entries are written, entries no longer in the
//! file are deleted, unchanged ones are left alone (so watchers see only
//! real changes). [`follow_file`] re-publishes when the file changes; a
//! file that no longer checks out is logged and the last good catalogue
//! stays.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv::Store;
use cortex_bus::ModelToken;
use cortex_schemas::ModelProfile;
use futures::StreamExt;

use super::file::{self, CatalogError};

/// How often [`follow_file`] looks at the file.
pub const FILE_POLL: Duration = Duration::from_secs(2);

/// Why a publication failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    File(#[from] CatalogError),
    #[error("cannot write the catalogue: {0}")]
    Kv(String),
}

/// What a publication changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub written: Vec<String>,
    pub deleted: Vec<String>,
    pub unchanged: usize,
}

/// Writes `profiles` to the bucket, removing keys not among them.
pub async fn publish(store: &Store, profiles: &[ModelProfile]) -> Result<Published, PublishError> {
    let kv = |e: &dyn std::fmt::Display| PublishError::Kv(e.to_string());
    let mut outcome = Published::default();
    let mut keep = std::collections::BTreeSet::new();
    for profile in profiles {
        let token = ModelToken::new(&profile.id).map_err(|e| kv(&e))?;
        keep.insert(token.as_str().to_string());
        let current = cortex_bus::kv::get::<ModelProfile>(store, token.as_str())
            .await
            .map_err(|e| kv(&e))?;
        if current.is_some_and(|c| &c.value == profile) {
            outcome.unchanged += 1;
            continue;
        }
        let bytes = serde_json::to_vec(profile).map_err(|e| kv(&e))?;
        store
            .put(token.as_str(), bytes.into())
            .await
            .map_err(|e| kv(&e))?;
        outcome.written.push(profile.id.clone());
    }
    let mut keys = store.keys().await.map_err(|e| kv(&e))?;
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| kv(&e))?;
        if !keep.contains(&key) {
            store.delete(&key).await.map_err(|e| kv(&e))?;
            outcome.deleted.push(key);
        }
    }
    Ok(outcome)
}

/// Reads the file at `path` and publishes it.
pub async fn publish_file(
    store: &Store,
    path: &std::path::Path,
) -> Result<Published, PublishError> {
    let profiles = file::read(path)?;
    let published = publish(store, &profiles).await?;
    tracing::info!(
        file = %path.display(),
        models = profiles.len(),
        written = published.written.len(),
        deleted = published.deleted.len(),
        "catalogue published"
    );
    Ok(published)
}

/// Re-publishes `path` whenever its modification time or size changes.
pub async fn follow_file(store: Store, path: PathBuf) {
    let stamp = |path: &PathBuf| -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    let mut last = stamp(&path);
    loop {
        tokio::time::sleep(FILE_POLL).await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        if let Err(error) = publish_file(&store, &path).await {
            tracing::error!(%error, "catalogue not reloaded; the last good one stays");
        }
    }
}
