//! Assignments in `cortex-placements` (model token → `Assignment` JSON).
//! Every replica follows the bucket into an [`AssignmentsView`]; every
//! change is a compare-and-swap on the key's revision ([`modify`]), so
//! concurrent writers (ensures on several replicas, the reconciler) never
//! lose each other's updates, and claims ([`claim`]) never make more copies
//! than asked, however many replicas claim at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv::Store};
use cortex_bus::kv::{self, CasOutcome, KvError};
use cortex_bus::{buckets, ModelToken};
use cortex_schemas::{Assignment, Pinned, Replica, ReplicaState};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a recorded load that no heartbeat shows yet keeps its claim
/// (and its memory): the loader refreshes it while it evicts, and once the
/// neuron has the load its heartbeats show it.
pub const CLAIM_TTL_MS: u64 = 30_000;

/// The assignments as this replica last saw them, by model id, each with
/// the KV revision it was read at (a view never goes back to an older one).
#[derive(Debug, Clone)]
pub struct AssignmentsView {
    by_model: Arc<RwLock<BTreeMap<String, (Assignment, u64)>>>,
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
                match event.value {
                    Some(assignment) => {
                        ids.insert(event.key.clone(), assignment.model_id.clone());
                        writer.note(&assignment, event.revision);
                    }
                    None => {
                        if let Some(id) = ids.remove(&event.key) {
                            writer
                                .by_model
                                .write()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&id);
                            writer.changes.send_modify(|n| *n = n.wrapping_add(1));
                        }
                    }
                }
            }
        });
        (view, task)
    }

    pub fn all(&self) -> BTreeMap<String, Assignment> {
        self.by_model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, (a, _))| (id.clone(), a.clone()))
            .collect()
    }

    pub fn get(&self, model: &str) -> Option<Assignment> {
        self.by_model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .map(|(a, _)| a.clone())
    }

    /// Takes in a value read or written at `revision`, unless the view
    /// already has a newer one.
    pub fn note(&self, assignment: &Assignment, revision: u64) {
        {
            let mut map = self.by_model.write().unwrap_or_else(|e| e.into_inner());
            if map
                .get(&assignment.model_id)
                .is_some_and(|(_, seen)| *seen >= revision)
            {
                return;
            }
            map.insert(assignment.model_id.clone(), (assignment.clone(), revision));
        }
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
            view.note(&written.value, written.revision);
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
    /// The neuron already has (or is getting) a copy, or the model has
    /// `max_copies` copies counting the loads in progress.
    Taken,
}

/// A load to record.
#[derive(Debug, Clone)]
pub struct ClaimSpec<'a> {
    pub model: &'a str,
    pub neuron: &'a str,
    pub device: u32,
    /// Refuse the claim when the model already has this many copies
    /// (ready or loading per heartbeats, or loads recorded less than
    /// [`CLAIM_TTL_MS`] ago): 1 for a cold start, the floor or
    /// `max_replicas` for the reconciler.
    pub max_copies: u32,
    /// Accepting neurons whose heartbeats show the model loading or ready.
    pub holders: &'a BTreeSet<String>,
    pub now_ms: u64,
}

/// Records a load as `loading` by compare-and-swap, so that however many
/// replicas try at once, the copies never exceed `max_copies`.
pub async fn claim(
    store: &Store,
    view: &AssignmentsView,
    spec: ClaimSpec<'_>,
) -> Result<Claim, KvError> {
    let mut taken = false;
    modify(store, view, spec.model, |a| {
        let mut copies: BTreeSet<&str> = spec.holders.iter().map(String::as_str).collect();
        copies.extend(
            a.replicas
                .iter()
                .filter(|r| {
                    r.state == ReplicaState::Loading
                        && spec.now_ms.saturating_sub(r.since_ms) < CLAIM_TTL_MS
                })
                .map(|r| r.neuron.as_str()),
        );
        taken = copies.contains(spec.neuron) || copies.len() as u32 >= spec.max_copies;
        if taken {
            return false;
        }
        a.replicas.retain(|r| r.neuron != spec.neuron);
        a.replicas.push(Replica {
            neuron: spec.neuron.to_string(),
            device: Some(spec.device),
            state: ReplicaState::Loading,
            since_ms: spec.now_ms,
        });
        true
    })
    .await?;
    Ok(if taken { Claim::Taken } else { Claim::Won })
}

/// Renews a recorded load's claim (while its evictions run).
pub async fn touch(
    store: &Store,
    view: &AssignmentsView,
    model: &str,
    neuron: &str,
    now_ms: u64,
) -> Result<Assignment, KvError> {
    modify(store, view, model, |a| {
        match a
            .replicas
            .iter_mut()
            .find(|r| r.neuron == neuron && r.state == ReplicaState::Loading)
        {
            Some(r) if r.since_ms < now_ms => {
                r.since_ms = now_ms;
                true
            }
            _ => false,
        }
    })
    .await
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
