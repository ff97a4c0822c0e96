//! The fleet as heartbeats show it, for every component that follows them
//! (placement, ingress): the latest `NeuronStatus` of each neuron and an
//! index from model id to the neurons whose last heartbeat names it, so a
//! per-request question ("where is this model ready, how loaded is it")
//! reads only those neurons and copies no status.
//!
//! One rule for who is alive: a neuron is live until it has been silent
//! for [`LOST_AFTER_INTERVALS`] of its own heartbeat intervals (taken as
//! at least 100 ms and at most [`MAX_INTERVAL`]) or its last heartbeat
//! says `stopped`. Dead entries stay until [`FleetView::sweep`] takes
//! them out (placement announces them as lost); readers never see them.
//! Each heartbeat bumps a counter that waiters can watch
//! ([`FleetView::changes`]) instead of polling.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::time::Instant;

use async_nats::Client;
use cortex_schemas::{ModelStatus, NeuronState, NeuronStatus};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Subjects;

/// Heartbeat intervals of silence after which a neuron is lost.
pub const LOST_AFTER_INTERVALS: u32 = 3;

/// Longest heartbeat interval believed: a neuron claiming more is still
/// lost after 3 minutes of silence.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Shortest heartbeat interval believed.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Seen {
    status: NeuronStatus,
    at: Instant,
}

impl Seen {
    fn alive(&self) -> bool {
        self.status.state != NeuronState::Stopped && self.at.elapsed() < stale_after(&self.status)
    }
}

/// How long after its last heartbeat `status`'s neuron counts as lost.
pub fn stale_after(status: &NeuronStatus) -> Duration {
    Duration::from_millis(status.interval_ms).clamp(MIN_INTERVAL, MAX_INTERVAL)
        * LOST_AFTER_INTERVALS
}

#[derive(Debug, Default)]
struct Inner {
    neurons: BTreeMap<String, Seen>,
    /// model id → neurons whose last heartbeat names it (in any state).
    by_model: HashMap<String, BTreeSet<String>>,
}

impl Inner {
    fn unindex(&mut self, neuron: &str) {
        let Some(seen) = self.neurons.get(neuron) else {
            return;
        };
        for model in &seen.status.models {
            if let Some(holders) = self.by_model.get_mut(&model.model_id) {
                holders.remove(neuron);
                if holders.is_empty() {
                    self.by_model.remove(&model.model_id);
                }
            }
        }
    }
}

/// The latest heartbeat of every neuron seen (cheap to clone).
#[derive(Debug, Clone)]
pub struct FleetView {
    inner: Arc<RwLock<Inner>>,
    beats: watch::Sender<u64>,
}

impl Default for FleetView {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            beats: watch::channel(0).0,
        }
    }
}

/// A live neuron's status and one of its models, as [`FleetView::with_model`] hands them.
pub type Holding<'a> = (&'a NeuronStatus, &'a ModelStatus);

impl FleetView {
    /// Follows `<prefix>.v1.heartbeat.*` in a task (heartbeats that do not
    /// speak for their subject's neuron are dropped, see
    /// [`crate::heartbeat::accept`]).
    pub async fn follow(
        client: &Client,
        subjects: &Subjects,
    ) -> Result<(Self, JoinHandle<()>), async_nats::SubscribeError> {
        let fleet = Self::default();
        let mut beats = client.subscribe(subjects.heartbeats()).await?;
        let writer = fleet.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = beats.next().await {
                if let Some(status) = crate::heartbeat::accept(&message) {
                    writer.record(status);
                }
            }
        });
        Ok((fleet, task))
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in one heartbeat.
    pub fn record(&self, status: NeuronStatus) {
        {
            let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
            let id = status.neuron_id.clone();
            inner.unindex(&id);
            for model in &status.models {
                inner
                    .by_model
                    .entry(model.model_id.clone())
                    .or_default()
                    .insert(id.clone());
            }
            let at = Instant::now();
            inner.neurons.insert(id, Seen { status, at });
        }
        self.beats.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes on every heartbeat.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.beats.subscribe()
    }

    /// Statuses of the live neurons, by id.
    pub fn live(&self) -> Vec<NeuronStatus> {
        self.read()
            .neurons
            .values()
            .filter(|seen| seen.alive())
            .map(|seen| seen.status.clone())
            .collect()
    }

    /// Whether `neuron` is live.
    pub fn is_live(&self, neuron: &str) -> bool {
        self.read().neurons.get(neuron).is_some_and(Seen::alive)
    }

    /// The longest heartbeat interval among live neurons, if any.
    pub fn longest_interval(&self) -> Option<Duration> {
        self.read()
            .neurons
            .values()
            .filter(|seen| seen.alive())
            .map(|seen| Duration::from_millis(seen.status.interval_ms).min(MAX_INTERVAL))
            .max()
    }

    /// `pick` applied to every live neuron whose last heartbeat names
    /// `model`, with that model's entry; the `Some` results, by neuron id.
    /// Only the model's holders are read, under one read lock.
    pub fn with_model<T>(
        &self,
        model: &str,
        mut pick: impl FnMut(Holding<'_>) -> Option<T>,
    ) -> Vec<T> {
        let inner = self.read();
        let Some(holders) = inner.by_model.get(model) else {
            return Vec::new();
        };
        holders
            .iter()
            .filter_map(|id| inner.neurons.get(id))
            .filter(|seen| seen.alive())
            .filter_map(|seen| {
                let entry = seen.status.models.iter().find(|m| m.model_id == model)?;
                pick((&seen.status, entry))
            })
            .collect()
    }

    /// Whether some live neuron names `model` (in any state).
    pub fn holds(&self, model: &str) -> bool {
        !self.with_model(model, |_| Some(())).is_empty()
    }

    /// Takes out the neurons that went silent or stopped; returns them
    /// with the unix ms of their last heartbeat and whether they were lost
    /// (silent) rather than stopped.
    pub fn sweep(&self) -> Vec<(String, u64, bool)> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<_> = inner
            .neurons
            .values()
            .filter(|seen| !seen.alive())
            .map(|seen| {
                let status = &seen.status;
                let lost = status.state != NeuronState::Stopped;
                (status.neuron_id.clone(), status.at_ms, lost)
            })
            .collect();
        for (id, _, _) in &gone {
            inner.unindex(id);
            inner.neurons.remove(id);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_schemas::ModelState;

    fn status(id: &str, state: NeuronState, models: &[(&str, ModelState)]) -> NeuronStatus {
        NeuronStatus {
            neuron_id: id.into(),
            version: "0".into(),
            state,
            engine: "sim".into(),
            at_ms: 1,
            interval_ms: 60_000,
            devices: Vec::new(),
            models: models
                .iter()
                .map(|(model, state)| ModelStatus {
                    model_id: (*model).into(),
                    state: *state,
                    load_progress: None,
                    error: None,
                    device: 0,
                    memory_bytes: 0,
                    slots_busy: 0,
                    slots_total: 4,
                    queue_depth: 0,
                    tokens_per_second: 0.0,
                    last_used_ms: None,
                    prefix_cache: None,
                    batch_kv: None,
                })
                .collect(),
        }
    }

    fn ready_on(fleet: &FleetView, model: &str) -> Vec<String> {
        fleet.with_model(model, |(n, m)| {
            (m.state == ModelState::Ready).then(|| n.neuron_id.clone())
        })
    }

    #[test]
    fn the_index_follows_each_neurons_latest_heartbeat() {
        let fleet = FleetView::default();
        fleet.record(status(
            "a",
            NeuronState::Ready,
            &[("m", ModelState::Ready), ("e", ModelState::Loading)],
        ));
        fleet.record(status("b", NeuronState::Ready, &[("m", ModelState::Ready)]));
        assert_eq!(ready_on(&fleet, "m"), ["a", "b"]);
        assert!(fleet.holds("e") && !fleet.holds("x"));
        // a unloads m: it leaves m's index, e stays.
        fleet.record(status("a", NeuronState::Ready, &[("e", ModelState::Ready)]));
        assert_eq!(ready_on(&fleet, "m"), ["b"]);
        assert_eq!(ready_on(&fleet, "e"), ["a"]);
        // b stops: gone for readers at once, swept as stopped, not lost.
        fleet.record(status(
            "b",
            NeuronState::Stopped,
            &[("m", ModelState::Ready)],
        ));
        assert!(!fleet.holds("m") && !fleet.is_live("b"));
        assert_eq!(fleet.sweep(), [("b".to_string(), 1, false)]);
        assert_eq!(fleet.live().len(), 1);
        assert!(!fleet.read().by_model.contains_key("m"));
    }

    /// On tokio's paused clock (the view keeps tokio's `Instant`).
    #[tokio::test(start_paused = true)]
    async fn a_neuron_silent_for_three_intervals_is_lost() {
        let fleet = FleetView::default();
        let mut beat = status("a", NeuronState::Ready, &[("m", ModelState::Ready)]);
        beat.interval_ms = 1;
        fleet.record(beat);
        assert!(fleet.is_live("a"));
        // Intervals under 100 ms count as 100 ms: lost after 300 ms.
        tokio::time::advance(Duration::from_millis(299)).await;
        assert!(fleet.is_live("a") && fleet.holds("m"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!fleet.is_live("a") && !fleet.holds("m"));
        assert_eq!(fleet.sweep(), [("a".to_string(), 1, true)]);
    }
}
