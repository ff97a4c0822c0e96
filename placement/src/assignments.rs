//! Assignments in `cortex-placements` (model token → `Assignment` JSON).
//! Every replica follows the bucket into an [`AssignmentsView`]; every
//! change is a compare-and-swap on the key's revision ([`modify`]), so
//! concurrent writers (ensures on several replicas, the reconciler) never
//! lose each other's updates, and a claim ([`claim`]) is won by exactly one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv::Store};
use cortex_bus::kv::{self, CasOutcome, KvError};
use cortex_bus::{buckets, ModelToken};
use cortex_schemas::{Assignment, Pinned, Replica, ReplicaState};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The assignments as this replica last saw them, by model id.
#[derive(Debug, Clone)]
pub struct AssignmentsView {
    by_model: Arc<RwLock<BTreeMap<String, Assignment>>>,
    changes: watch::Sender<u64>,
}

impl AssignmentsView {
    /// Follows the bucket in a task.
    pub fn follow(js: jetstream::Context) -> (Self, JoinHandle<()>) {
        let view = Self {
            by_model: Arc::default(),
            changes: watch::channel(0).0,
        };
        let mut events = Box::pin(kv::watch::<Assignment>(
            js,
            buckets::PLACEMENTS.to_string(),
            ">".to_string(),
        ));
        let writer = view.clone();
        let task = tokio::spawn(async move {
            // Keys are tokens; values carry the model id.
            let mut ids: BTreeMap<String, String> = BTreeMap::new();
            while let Some(event) = events.next().await {
                {
                    let mut map = writer.by_model.write().unwrap_or_else(|e| e.into_inner());
                    match event.value {
                        Some(assignment) => {
                            ids.insert(event.key.clone(), assignment.model_id.clone());
                            map.insert(assignment.model_id.clone(), assignment);
                        }
                        None => {
                            if let Some(id) = ids.remove(&event.key) {
                                map.remove(&id);
                            }
                        }
                    }
                }
                writer.changes.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        (view, task)
    }

    pub fn all(&self) -> BTreeMap<String, Assignment> {
        self.by_model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn get(&self, model: &str) -> Option<Assignment> {
        self.by_model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .cloned()
    }

    /// Records a value this replica just wrote (the watch confirms it later).
    pub fn note(&self, assignment: &Assignment) {
        self.by_model
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(assignment.model_id.clone(), assignment.clone());
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes with every assignment change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// An empty assignment for `model`.
pub fn fresh(model: &str) -> Assignment {
    Assignment {
        model_id: model.to_string(),
        replicas: Vec::new(),
        desired_replicas: 0,
        pinned: Pinned::default(),
        last_used_ms: None,
    }
}

/// Read-modify-write of `model`'s assignment; `change` edits it in place
/// and says whether it changed anything. Returns the value afterwards.
pub async fn modify<F>(
    store: &Store,
    view: &AssignmentsView,
    model: &str,
    mut change: F,
) -> Result<Assignment, KvError>
where
    F: FnMut(&mut Assignment) -> bool,
{
    let key = ModelToken::new(model)
        .map_err(|e| KvError::Contended {
            key: format!("{model:?}: {e}"),
            attempts: 0,
        })?
        .to_string();
    let outcome = kv::update_cas::<Assignment, _>(store, &key, |current| {
        let mut next = current.cloned().unwrap_or_else(|| fresh(model));
        change(&mut next).then_some(next)
    })
    .await?;
    let value = match outcome {
        CasOutcome::Written(written) => {
            view.note(&written.value);
            written.value
        }
        CasOutcome::Unchanged(current) => current.map_or_else(|| fresh(model), |c| c.value),
    };
    Ok(value)
}

/// Outcome of [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Our load is recorded; go ahead.
    Won,
    /// Another load of the model is in progress (or a copy exists).
    Taken,
}

/// Records a load of `model` on `neuron` as `loading`. With `exclusive`
/// (a cold start), the claim is refused when a copy exists or a fresh
/// load is recorded on a live neuron, so concurrent ensures from any
/// number of replicas cause one load. `holders` are the neurons whose
/// heartbeats show the model loading or ready; `live` the live neurons.
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    store: &Store,
    view: &AssignmentsView,
    model: &str,
    neuron: &str,
    device: u32,
    exclusive: bool,
    holders: &BTreeSet<String>,
    live: &BTreeSet<String>,
    stale_before_ms: u64,
    now_ms: u64,
) -> Result<Claim, KvError> {
    let mut taken = false;
    modify(store, view, model, |a| {
        taken = false;
        let busy = a.replicas.iter().any(|r| {
            holders.contains(&r.neuron)
                || (r.state == ReplicaState::Loading
                    && live.contains(&r.neuron)
                    && r.since_ms >= stale_before_ms)
        }) || !holders.is_empty();
        if exclusive && busy {
            taken = true;
            return false;
        }
        if a.replicas.iter().any(|r| {
            r.neuron == neuron && r.state == ReplicaState::Loading && r.since_ms >= stale_before_ms
        }) {
            taken = true;
            return false;
        }
        a.replicas.retain(|r| r.neuron != neuron);
        a.replicas.push(Replica {
            neuron: neuron.to_string(),
            device: Some(device),
            state: ReplicaState::Loading,
            since_ms: now_ms,
        });
        true
    })
    .await?;
    Ok(if taken { Claim::Taken } else { Claim::Won })
}

/// Sets the state of the copy on `neuron` (adding it when absent).
pub async fn set_state(
    store: &Store,
    view: &AssignmentsView,
    model: &str,
    neuron: &str,
    device: Option<u32>,
    state: ReplicaState,
    now_ms: u64,
) -> Result<Assignment, KvError> {
    modify(store, view, model, |a| {
        if let Some(r) = a.replicas.iter_mut().find(|r| r.neuron == neuron) {
            if r.state == state && (device.is_none() || r.device == device) {
                return false;
            }
            r.state = state;
            r.device = device.or(r.device);
            r.since_ms = now_ms;
        } else {
            a.replicas.push(Replica {
                neuron: neuron.to_string(),
                device,
                state,
                since_ms: now_ms,
            });
        }
        true
    })
    .await
}

/// Forgets the copy on `neuron`.
pub async fn remove(
    store: &Store,
    view: &AssignmentsView,
    model: &str,
    neuron: &str,
) -> Result<Assignment, KvError> {
    modify(store, view, model, |a| {
        let before = a.replicas.len();
        a.replicas.retain(|r| r.neuron != neuron);
        a.replicas.len() != before
    })
    .await
}
