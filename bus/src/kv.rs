//! JetStream KV helpers: open-or-create a bucket, a compare-and-swap update
//! loop, and a watch that re-creates itself when the server goes away.
//! Values are JSON so that `nats kv get` shows them as they are.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, Operation, Store};
use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use futures::{Stream, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

/// How many times [`update_cas`] retries on a wrong revision before giving up.
pub const MAX_CAS_ATTEMPTS: u32 = 1000;
/// Events a [`watch`] buffers for a slow reader; when full the watcher
/// waits (JetStream keeps the history, so nothing is lost).
const WATCH_BUFFER: usize = 256;
/// Longest pause between attempts to re-create a lost watch.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(1);

/// Names and sizing of a bucket.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    pub name: String,
    pub description: String,
    /// Values kept per key (1 = latest only).
    pub history: i64,
    /// 1 on a single server, 3 on a NATS cluster.
    pub replicas: usize,
    /// Zero keeps values forever.
    pub max_age: Duration,
}

impl BucketSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            history: 1,
            replicas: 1,
            max_age: Duration::ZERO,
        }
    }

    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    pub fn history(mut self, history: i64) -> Self {
        self.history = history;
        self
    }
}

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("cannot create bucket {bucket}: {source}")]
    Create {
        bucket: String,
        #[source]
        source: jetstream::context::CreateKeyValueError,
    },
    #[error("cannot open bucket {bucket}: {source}")]
    Open {
        bucket: String,
        #[source]
        source: jetstream::context::KeyValueError,
    },
    #[error("cannot read key {key}: {source}")]
    Get {
        key: String,
        #[source]
        source: kv::EntryError,
    },
    #[error("cannot write key {key}: {source}")]
    Write {
        key: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("value of key {key} is not valid JSON for its type: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode value of key {key}: {source}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("key {key} still contended after {attempts} compare-and-swap attempts")]
    Contended { key: String, attempts: u32 },
}

/// Opens `spec.name`, creating it when it does not exist yet. Safe to call
/// from many processes at once.
pub async fn open_or_create(js: &jetstream::Context, spec: &BucketSpec) -> Result<Store, KvError> {
    if let Ok(store) = js.get_key_value(&spec.name).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: spec.name.clone(),
        description: spec.description.clone(),
        history: spec.history,
        num_replicas: spec.replicas,
        max_age: spec.max_age,
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another process may have created it in between.
        Err(create) => js
            .get_key_value(&spec.name)
            .await
            .map_err(|_| KvError::Create {
                bucket: spec.name.clone(),
                source: create,
            }),
    }
}

/// A decoded value and its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: u64,
}

/// Reads and decodes `key`; `None` when absent or deleted.
pub async fn get<T: DeserializeOwned>(
    store: &Store,
    key: &str,
) -> Result<Option<Versioned<T>>, KvError> {
    let entry = store.entry(key).await.map_err(|source| KvError::Get {
        key: key.to_string(),
        source,
    })?;
    match entry {
        Some(entry) if entry.operation == Operation::Put => {
            let value = serde_json::from_slice(&entry.value).map_err(|source| KvError::Decode {
                key: key.to_string(),
                source,
            })?;
            Ok(Some(Versioned {
                value,
                revision: entry.revision,
            }))
        }
        _ => Ok(None),
    }
}

/// Result of [`update_cas`].
#[derive(Debug, Clone, PartialEq)]
pub enum CasOutcome<T> {
    /// The new value was written at this revision.
    Written(Versioned<T>),
    /// The closure chose not to change the current value.
    Unchanged(Option<Versioned<T>>),
}

/// Read-modify-write of `key` by compare-and-swap on its revision.
///
/// `change` sees the current value (`None` when absent) and returns the new
/// one, or `None` to leave it. When another writer got in between, the write
/// fails on the revision and `change` runs again on the fresh value, so no
/// update is ever lost. `change` may run several times: keep it pure, and
/// make it express the target state ("replica on n1 is ready") rather than a
/// delta ("add a replica"): a write error such as an ack timeout may hide a
/// write that did land, and the caller's retry then sees that value.
pub async fn update_cas<T, F>(
    store: &Store,
    key: &str,
    mut change: F,
) -> Result<CasOutcome<T>, KvError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<&T>) -> Option<T>,
{
    for attempt in 0..MAX_CAS_ATTEMPTS {
        if attempt >= 3 {
            // Heavy contention: back off a little so the writers spread out.
            tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt.min(50)))).await;
        }
        let current = get::<T>(store, key).await?;
        let Some(next) = change(current.as_ref().map(|v| &v.value)) else {
            return Ok(CasOutcome::Unchanged(current));
        };
        let bytes = serde_json::to_vec(&next).map_err(|source| KvError::Encode {
            key: key.to_string(),
            source,
        })?;
        // Err(None): another writer won the race; read again and retry.
        let written: Result<u64, Option<async_nats::Error>> = match &current {
            Some(current) => match store.update(key, bytes.into(), current.revision).await {
                Ok(revision) => Ok(revision),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(None),
                Err(e) => Err(Some(e.into())),
            },
            None => match store.create(key, bytes.into()).await {
                Ok(revision) => Ok(revision),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Err(None),
                Err(e) => Err(Some(e.into())),
            },
        };
        match written {
            Ok(revision) => {
                return Ok(CasOutcome::Written(Versioned {
                    value: next,
                    revision,
                }))
            }
            Err(None) => continue,
            Err(Some(source)) => {
                return Err(KvError::Write {
                    key: key.to_string(),
                    source,
                })
            }
        }
    }
    Err(KvError::Contended {
        key: key.to_string(),
        attempts: MAX_CAS_ATTEMPTS,
    })
}

/// A change seen by [`watch`].
#[derive(Debug, Clone, PartialEq)]
pub struct KvEvent<T> {
    pub key: String,
    pub revision: u64,
    /// `None` when the key was deleted or purged.
    pub value: Option<T>,
}

/// Follows `bucket` (keys matching `filter`, `>` for all): first the latest
/// value of every key, then each change. When the watch breaks (server
/// restart, lost consumer) it is re-created from the last revision seen, so
/// no change is missed or repeated. Values that do not decode are logged and
/// skipped. The stream ends only when it is dropped.
pub fn watch<T>(
    js: jetstream::Context,
    bucket: String,
    filter: String,
) -> impl Stream<Item = KvEvent<T>>
where
    T: DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(async move {
        let mut next_revision: Option<u64> = None;
        let mut backoff = Duration::from_millis(20);
        loop {
            let watching = tokio::select! {
                _ = tx.closed() => return,
                watching = open_watch(&js, &bucket, &filter, next_revision) => watching,
            };
            match watching {
                Ok(mut entries) => loop {
                    let item = tokio::select! {
                        _ = tx.closed() => return,
                        item = entries.next() => item,
                    };
                    match item {
                        Some(Ok(entry)) => {
                            backoff = Duration::from_millis(20);
                            next_revision = Some(entry.revision + 1);
                            let Some(event) = decode_event(entry) else {
                                continue;
                            };
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%bucket, %error, "KV watch broke; re-creating");
                            break;
                        }
                        None => {
                            tracing::warn!(%bucket, "KV watch ended; re-creating");
                            break;
                        }
                    }
                },
                Err(error) => tracing::debug!(%bucket, %error, "KV watch not available yet"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    })
}

async fn open_watch(
    js: &jetstream::Context,
    bucket: &str,
    filter: &str,
    from_revision: Option<u64>,
) -> Result<kv::Watch, async_nats::Error> {
    let store = js.get_key_value(bucket).await?;
    Ok(match from_revision {
        Some(revision) => store.watch_from_revision(filter, revision).await?,
        None => store.watch_with_history(filter).await?,
    })
}

fn decode_event<T: DeserializeOwned>(entry: kv::Entry) -> Option<KvEvent<T>> {
    let value = match entry.operation {
        Operation::Put => match serde_json::from_slice(&entry.value) {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::warn!(key = %entry.key, %error, "KV value does not decode; skipped");
                return None;
            }
        },
        Operation::Delete | Operation::Purge => None,
    };
    Some(KvEvent {
        key: entry.key,
        revision: entry.revision,
        value,
    })
}
