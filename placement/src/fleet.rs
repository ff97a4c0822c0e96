//! The fleet as heartbeats show it. Every replica follows
//! `<prefix>.v1.heartbeat.*`; a neuron silent for 3 of its own heartbeat
//! intervals is lost (the leader announces `neuron.lost` and repairs), and
//! one whose last heartbeat says `stopped` has left. Each heartbeat bumps a
//! counter that waiters (an `ensure` waiting for a load someone else
//! started) watch instead of polling.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::Client;
use cortex_bus::Subjects;
use cortex_schemas::{ModelState, NeuronState, NeuronStatus};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Heartbeat intervals of silence after which a neuron is lost.
pub const LOST_AFTER_INTERVALS: u32 = 3;

#[derive(Debug, Clone)]
struct Seen {
    status: NeuronStatus,
    at: Instant,
}

/// The latest heartbeat of every neuron seen.
#[derive(Debug, Clone)]
pub struct Fleet {
    neurons: Arc<RwLock<BTreeMap<String, Seen>>>,
    beats: watch::Sender<u64>,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            neurons: Arc::default(),
            beats: watch::channel(0).0,
        }
    }
}

impl Fleet {
    /// Follows heartbeats in a task.
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

    /// Takes in one heartbeat.
    pub fn record(&self, status: NeuronStatus) {
        {
            let mut neurons = self.neurons.write().unwrap_or_else(|e| e.into_inner());
            neurons.insert(
                status.neuron_id.clone(),
                Seen {
                    status,
                    at: Instant::now(),
                },
            );
        }
        self.beats.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes on every heartbeat.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.beats.subscribe()
    }

    /// The longest heartbeat interval among live neurons, if any.
    pub fn longest_interval(&self) -> Option<Duration> {
        let neurons = self.neurons.read().unwrap_or_else(|e| e.into_inner());
        neurons
            .values()
            .filter(|seen| alive(seen))
            .map(|seen| Duration::from_millis(seen.status.interval_ms).min(MAX_INTERVAL))
            .max()
    }

    /// Statuses of the live neurons (heard from recently, not stopped).
    pub fn live(&self) -> Vec<NeuronStatus> {
        let neurons = self.neurons.read().unwrap_or_else(|e| e.into_inner());
        neurons
            .values()
            .filter(|seen| alive(seen))
            .map(|seen| seen.status.clone())
            .collect()
    }

    /// Removes the neurons that went silent or stopped; returns them with
    /// the unix ms of their last heartbeat and whether they were lost
    /// (silent) rather than stopped.
    pub fn sweep(&self) -> Vec<(String, u64, bool)> {
        let mut neurons = self.neurons.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<_> = neurons
            .values()
            .filter(|seen| !alive(seen))
            .map(|seen| {
                (
                    seen.status.neuron_id.clone(),
                    seen.status.at_ms,
                    seen.status.state != NeuronState::Stopped,
                )
            })
            .collect();
        for (id, _, _) in &gone {
            neurons.remove(id);
        }
        gone
    }

    /// Live, accepting neurons where `model` is in one of `states`.
    fn with_model(&self, model: &str, states: &[ModelState]) -> Vec<String> {
        let neurons = self.neurons.read().unwrap_or_else(|e| e.into_inner());
        neurons
            .values()
            .filter(|seen| alive(seen) && seen.status.state == NeuronState::Ready)
            .filter(|seen| {
                seen.status
                    .models
                    .iter()
                    .any(|m| m.model_id == model && states.contains(&m.state))
            })
            .map(|seen| seen.status.neuron_id.clone())
            .collect()
    }

    /// Live neurons where `model` is ready.
    pub fn ready_on(&self, model: &str) -> Vec<String> {
        self.with_model(model, &[ModelState::Ready])
    }

    /// Live neurons where `model` is loading or ready.
    pub fn holders(&self, model: &str) -> std::collections::BTreeSet<String> {
        self.with_model(model, &[ModelState::Loading, ModelState::Ready])
            .into_iter()
            .collect()
    }

    /// Whether `neuron` is live.
    pub fn is_live(&self, neuron: &str) -> bool {
        let neurons = self.neurons.read().unwrap_or_else(|e| e.into_inner());
        neurons.get(neuron).is_some_and(alive)
    }
}

/// Longest heartbeat interval believed: a neuron claiming more is still
/// lost after 3 minutes of silence.
const MAX_INTERVAL: Duration = Duration::from_secs(60);

fn alive(seen: &Seen) -> bool {
    let interval = Duration::from_millis(seen.status.interval_ms.max(100)).min(MAX_INTERVAL);
    seen.status.state != NeuronState::Stopped && seen.at.elapsed() < interval * LOST_AFTER_INTERVALS
}
