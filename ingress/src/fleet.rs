//! What the mesh holds, from neuron heartbeats (`cortex_bus::fleet`, the
//! view placement shares): which neurons are alive and which models each
//! serves. It feeds `/v1/models`, the routing choice ([`Fleet::replicas`])
//! and the choice of another replica for a retry. Questions about one
//! model read only the neurons that hold it.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::Client;
use cortex_bus::fleet::FleetView;
use cortex_bus::Subjects;
use cortex_schemas::{ModelState, NeuronState, NeuronStatus};
use tokio::task::JoinHandle;

/// How often departed neurons are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The latest heartbeat of every live neuron (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    view: FleetView,
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
    /// When the heartbeat these figures come from was taken (Unix ms).
    pub at_ms: u64,
}

impl Fleet {
    /// Follows `<prefix>.v1.heartbeat.*` in a task, which also forgets
    /// departed neurons now and then.
    pub async fn follow(
        client: &Client,
        subjects: &Subjects,
    ) -> Result<(Self, JoinHandle<()>), async_nats::SubscribeError> {
        let (view, follower) = FleetView::follow(client, subjects).await?;
        let sweeper = view.clone();
        let task = tokio::spawn(async move {
            // Aborting this task (shutdown) stops the follower too.
            let _follower = AbortOnDrop(follower.abort_handle());
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            // Ends with the follower (its subscription closed), or is aborted with it.
            let sweeping = async {
                loop {
                    tick.tick().await;
                    sweeper.sweep();
                }
            };
            tokio::select! {
                _ = follower => {}
                () = sweeping => {}
            }
        });
        Ok((Self { view }, task))
    }

    /// Takes in one heartbeat (tests build views by hand).
    pub fn record(&self, status: NeuronStatus) {
        self.view.record(status);
    }

    /// Live neurons' statuses.
    pub fn neurons(&self) -> Vec<NeuronStatus> {
        self.view.live()
    }

    /// Models ready somewhere, by id.
    pub fn models(&self) -> Vec<ServedModel> {
        let mut models: BTreeMap<String, ServedModel> = BTreeMap::new();
        for neuron in self.view.live() {
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
        self.view.holds(model)
    }

    /// How far the furthest load of `model` has come (0..=1), when some
    /// live neuron is loading it and says how far.
    pub fn load_progress(&self, model: &str) -> Option<f64> {
        self.view
            .with_model(model, |(_, m)| {
                (m.state == ModelState::Loading).then_some(m.load_progress)?
            })
            .into_iter()
            .reduce(f64::max)
    }

    /// The ready replicas of `model` on ready neurons, with their load as
    /// their last heartbeat told it.
    pub fn replicas(&self, model: &str) -> Vec<ReplicaLoad> {
        self.view.with_model(model, |(neuron, m)| {
            let serving = neuron.state == NeuronState::Ready && m.state == ModelState::Ready;
            serving.then(|| ReplicaLoad {
                neuron: neuron.neuron_id.clone(),
                load: m.slots_busy + m.queue_depth,
                capacity: m.slots_total,
                stale_after: cortex_bus::fleet::stale_after(neuron),
                at_ms: neuron.at_ms,
            })
        })
    }

    /// Live neurons with `model` ready, other than those in `tried`.
    pub fn other_replicas(&self, model: &str, tried: &[String]) -> Vec<String> {
        self.view.with_model(model, |(neuron, m)| {
            let other = m.state == ModelState::Ready && !tried.contains(&neuron.neuron_id);
            other.then(|| neuron.neuron_id.clone())
        })
    }
}
