//! What the mesh holds, from neuron heartbeats: which neurons are alive and
//! which models each serves. It feeds `/v1/models` and the choice of
//! another replica for a retry. A neuron silent for 3 heartbeat intervals,
//! or saying `stopped`, is forgotten.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::Client;
use cortex_bus::Subjects;
use cortex_schemas::{ModelState, NeuronState, NeuronStatus};
use futures::StreamExt;
use tokio::task::JoinHandle;

/// The latest heartbeat of every live neuron.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    neurons: Arc<RwLock<HashMap<String, (NeuronStatus, Instant)>>>,
}

/// One ready replica and its load, from its neuron's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLoad {
    pub neuron: String,
    /// Sequences running and queued.
    pub load: u32,
    /// Slots: sequences its batch runs at once.
    pub capacity: u32,
    /// How old what the neuron publishes may be before it counts as stale.
    pub stale_after: Duration,
}

/// A model as the fleet serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModel {
    pub id: String,
    /// Neurons where it is ready.
    pub neurons: Vec<String>,
    /// Unix ms it was first seen ready (for `created`).
    pub since_ms: u64,
}

impl Fleet {
    /// Follows `<prefix>.v1.heartbeat.*` in a task.
    pub async fn follow(
        client: &Client,
        subjects: &Subjects,
    ) -> Result<(Self, JoinHandle<()>), async_nats::SubscribeError> {
        let fleet = Self::default();
        let mut beats = client.subscribe(subjects.heartbeats()).await?;
        let writer = fleet.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = beats.next().await {
                if let Some(status) = cortex_bus::heartbeat::accept(&message) {
                    writer.record(status);
                }
            }
        });
        Ok((fleet, task))
    }

    fn record(&self, status: NeuronStatus) {
        let mut neurons = self.neurons.write().unwrap_or_else(|e| e.into_inner());
        if status.state == NeuronState::Stopped {
            neurons.remove(&status.neuron_id);
        } else {
            neurons.insert(status.neuron_id.clone(), (status, Instant::now()));
        }
    }

    /// Live neurons' statuses.
    pub fn neurons(&self) -> Vec<NeuronStatus> {
        let neurons = self.neurons.read().unwrap_or_else(|e| e.into_inner());
        neurons
            .values()
            .filter(|(status, seen)| alive(status, *seen))
            .map(|(status, _)| status.clone())
            .collect()
    }

    /// Models ready somewhere, by id.
    pub fn models(&self) -> Vec<ServedModel> {
        let mut models: BTreeMap<String, ServedModel> = BTreeMap::new();
        for neuron in self.neurons() {
            for model in &neuron.models {
                if model.state != ModelState::Ready {
                    continue;
                }
                let entry = models
                    .entry(model.model_id.clone())
                    .or_insert_with(|| ServedModel {
                        id: model.model_id.clone(),
                        neurons: Vec::new(),
                        since_ms: neuron.at_ms,
                    });
                entry.neurons.push(neuron.neuron_id.clone());
                entry.since_ms = entry.since_ms.min(neuron.at_ms);
            }
        }
        models.into_values().collect()
    }

    /// Whether some live neuron holds `model` (in any state).
    pub fn holds(&self, model: &str) -> bool {
        let neurons = self.neurons.read().unwrap_or_else(|e| e.into_inner());
        neurons.values().any(|(status, seen)| {
            alive(status, *seen) && status.models.iter().any(|m| m.model_id == model)
        })
    }

    /// How far the furthest load of `model` has come (0..=1), when some
    /// live neuron is loading it and says how far.
    pub fn load_progress(&self, model: &str) -> Option<f64> {
        self.neurons()
            .iter()
            .flat_map(|neuron| &neuron.models)
            .filter(|m| m.model_id == model && m.state == ModelState::Loading)
            .filter_map(|m| m.load_progress)
            .reduce(f64::max)
    }

    /// The ready replicas of `model` on live, ready neurons, with their
    /// load as their last heartbeat told it (read in place: no status is
    /// copied).
    pub fn replicas(&self, model: &str) -> Vec<ReplicaLoad> {
        let neurons = self.neurons.read().unwrap_or_else(|e| e.into_inner());
        neurons
            .values()
            .filter(|(status, seen)| alive(status, *seen) && status.state == NeuronState::Ready)
            .filter_map(|(status, _)| {
                let m = status
                    .models
                    .iter()
                    .find(|m| m.model_id == model && m.state == ModelState::Ready)?;
                Some(ReplicaLoad {
                    neuron: status.neuron_id.clone(),
                    load: m.slots_busy + m.queue_depth,
                    capacity: m.slots_total,
                    stale_after: Duration::from_millis(status.interval_ms.max(100)) * 3,
                })
            })
            .collect()
    }

    /// Live neurons with `model` ready, other than those in `tried`.
    pub fn other_replicas(&self, model: &str, tried: &[String]) -> Vec<String> {
        self.models()
            .into_iter()
            .find(|m| m.id == model)
            .map(|m| {
                m.neurons
                    .into_iter()
                    .filter(|n| !tried.contains(n))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn alive(status: &NeuronStatus, seen: Instant) -> bool {
    let interval = Duration::from_millis(status.interval_ms.max(100));
    seen.elapsed() < interval * 3
}
