//! Which replica a request goes to. Every pod follows the neurons' prefix
//! summaries (`<prefix>.v1.prefix.*`, see `cortex_bus::prefix`) beside
//! their heartbeats, hashes each request's prompt the same way, and
//! scores the model's ready replicas by the prefix each holds against its
//! load ([`score`]). The pick goes to that neuron's directed subject; with
//! no fresh view (no ready replica known, or routing turned off) the
//! request goes to the model's queue group as before, and NATS picks.
//!
//! Load is a replica's last heartbeat (running and queued sequences, all
//! pods' requests) corrected by how this pod's own calls to it changed
//! since, which it knows at once, scaled by the pods' share: if this pod's
//! calls were a third of the load the heartbeats counted, two other pods
//! like it are taken to send as it does. So between two heartbeats (2 s
//! by default, hundreds of requests at load) the pods do not all pile
//! onto the replica that looked idle in the last one (`load.rs`).
//!
//! - [`score`]: the decision as a pure function.
//! - `load`: each replica's load as this pod can tell between heartbeats.

mod load;
pub mod score;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::Client;
use cortex_bus::codec::decode_message;
use cortex_bus::prefix::{matched, request_blocks, BLOCK_BYTES};
use cortex_bus::Subjects;
use cortex_schemas::{InferRequest, PrefixSummary};
use futures::StreamExt;
use rand::Rng;
use tokio::task::JoinHandle;

use crate::fleet::{Fleet, ReplicaLoad};
use load::{estimate, Mine};
pub use score::Reason;
use score::{pick, Candidate};

/// Summaries not refreshed for this long are dropped (their neuron is
/// gone; longer than any neuron's staleness, at most 3 minutes).
const FORGET_AFTER: Duration = Duration::from_secs(300);
/// How often forgotten summaries and idle call counters are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// Half-life of a replica's count of this pod's recent requests.
const RECENT_HALF_LIFE: Duration = Duration::from_secs(5);

/// How requests pick a replica (`--routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Routing {
    // (Plain comments: doc comments here would switch clap's help to its
    // long form for every flag.)
    // By the prompt prefix each replica holds, against its load.
    #[default]
    Cache,
    // The model's NATS queue group picks (random among replicas).
    Queue,
}

/// This pod's routing view (cheap to clone).
#[derive(Debug, Clone)]
pub struct RouteView {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    routing: Routing,
    /// neuron → model → the blocks it holds.
    held: RwLock<HashMap<String, HashMap<String, Held>>>,
    /// neuron → this pod's calls to it.
    calls: Mutex<HashMap<String, Calls>>,
}

#[derive(Debug)]
struct Held {
    blocks: HashSet<u64>,
    seen: Instant,
}

#[derive(Debug)]
struct Calls {
    in_flight: u32,
    recent: f64,
    at: Instant,
    /// The replica's last heartbeat seen (`at_ms`) and this pod's calls
    /// in flight when it was first seen: the heartbeat counted those.
    baseline: (u64, u32),
}

impl Calls {
    /// What this pod has in flight to the replica whose last heartbeat
    /// is `replica`, against what it had when that heartbeat came.
    fn mine(&mut self, replica: &ReplicaLoad, now: Instant) -> Mine {
        if self.baseline.0 != replica.at_ms {
            self.baseline = (replica.at_ms, self.in_flight);
        }
        Mine {
            now: self.in_flight,
            then: self.baseline.1,
            recent: self.decayed(now),
        }
    }

    fn decayed(&self, now: Instant) -> f64 {
        let halvings = now.duration_since(self.at).as_secs_f64() / RECENT_HALF_LIFE.as_secs_f64();
        self.recent * 0.5f64.powf(halvings)
    }
}

/// Where one request goes.
#[derive(Debug)]
pub struct Decision {
    /// The replica picked; `None`: the queue group.
    pub neuron: Option<String>,
    pub reason: Reason,
    /// Leading prompt blocks the pick holds.
    pub matched_blocks: usize,
    /// Counts the call against the pick while it lasts.
    pub call: Option<InFlight>,
}

/// One call of this pod to a neuron, counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    view: RouteView,
    neuron: String,
}

impl InFlight {
    pub fn neuron(&self) -> &str {
        &self.neuron
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut calls = self
            .view
            .inner
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = calls.get_mut(&self.neuron) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

impl RouteView {
    pub fn new(routing: Routing) -> Self {
        Self {
            inner: Arc::new(Inner {
                routing,
                held: RwLock::default(),
                calls: Mutex::default(),
            }),
        }
    }

    /// Follows `<prefix>.v1.prefix.*` in a task (not when routing is left
    /// to the queue group), which also prunes what is no longer needed.
    pub async fn follow(
        client: &Client,
        subjects: &Subjects,
        routing: Routing,
    ) -> Result<(Self, JoinHandle<()>), async_nats::SubscribeError> {
        let view = Self::new(routing);
        let mut summaries = match routing {
            Routing::Cache => Some(client.subscribe(subjects.prefixes()).await?),
            Routing::Queue => None,
        };
        let writer = view.clone();
        let task = tokio::spawn(async move {
            let mut prune = tokio::time::interval(PRUNE_EVERY);
            loop {
                let next = async {
                    match summaries.as_mut() {
                        Some(summaries) => summaries.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    message = next => match message {
                        Some(message) => writer.take(&message),
                        None => return,
                    },
                    _ = prune.tick() => writer.forget_old(),
                }
            }
        });
        Ok((view, task))
    }

    fn take(&self, message: &async_nats::Message) {
        match decode_message::<PrefixSummary>(message.headers.as_ref(), &message.payload) {
            Ok(summary)
                if cortex_bus::heartbeat::speaks_for(&message.subject, &summary.neuron_id) =>
            {
                self.record(summary);
            }
            Ok(_) => {
                tracing::debug!(subject = %message.subject, "prefix summary for another subject ignored")
            }
            Err(error) => tracing::debug!(%error, "undecodable prefix summary ignored"),
        }
    }

    /// Takes a neuron's summary for one model, replacing the one before.
    pub fn record(&self, summary: PrefixSummary) {
        if summary.block_bytes as usize != BLOCK_BYTES {
            tracing::debug!(neuron = %summary.neuron_id, "prefix summary with another block size ignored");
            return;
        }
        let mut held = self.inner.held.write().unwrap_or_else(|e| e.into_inner());
        let models = held.entry(summary.neuron_id).or_default();
        if summary.blocks.is_empty() {
            models.remove(&summary.model_id);
        } else {
            let blocks = summary.blocks.into_iter().collect();
            let seen = Instant::now();
            models.insert(summary.model_id, Held { blocks, seen });
        }
    }

    fn forget_old(&self) {
        let mut held = self.inner.held.write().unwrap_or_else(|e| e.into_inner());
        for models in held.values_mut() {
            models.retain(|_, h| h.seen.elapsed() < FORGET_AFTER);
        }
        held.retain(|_, models| !models.is_empty());
        drop(held);
        let now = Instant::now();
        let mut calls = self.inner.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.retain(|_, c| c.in_flight > 0 || c.decayed(now) > 0.01);
    }

    /// Picks the replica for `request` from `fleet`'s ready replicas.
    pub fn choose(&self, fleet: &Fleet, request: &InferRequest) -> Decision {
        let fallback = Decision {
            neuron: None,
            reason: Reason::Fallback,
            matched_blocks: 0,
            call: None,
        };
        if self.inner.routing == Routing::Queue {
            return fallback;
        }
        let model = request.model();
        let replicas = fleet.replicas(model);
        if replicas.is_empty() {
            return fallback;
        }
        let blocks = match request {
            InferRequest::Generate(generate) => request_blocks(generate),
            InferRequest::CountTokens(_) | InferRequest::Embed(_) => Vec::new(),
        };
        let now = Instant::now();
        let candidates: Vec<Candidate> = {
            let held = self.inner.held.read().unwrap_or_else(|e| e.into_inner());
            let mut calls = self.inner.calls.lock().unwrap_or_else(|e| e.into_inner());
            let mine: Vec<Mine> = replicas
                .iter()
                .map(|replica| {
                    calls
                        .get_mut(&replica.neuron)
                        .map_or_else(Mine::default, |c| c.mine(replica, now))
                })
                .collect();
            let loads = estimate(&replicas, &mine);
            replicas
                .iter()
                .zip(&mine)
                .zip(loads)
                .map(|((replica, mine), load)| {
                    let holds = held
                        .get(&replica.neuron)
                        .and_then(|models| models.get(model))
                        .filter(|h| h.seen.elapsed() < replica.stale_after);
                    let matched = holds.map_or(0, |h| matched(&blocks, |b| h.blocks.contains(&b)));
                    Candidate {
                        matched,
                        load,
                        capacity: replica.capacity,
                        recent: mine.recent,
                    }
                })
                .collect()
        };
        let mut rng = rand::rng();
        let Some((index, reason)) = pick(&candidates, |n| rng.random_range(0..n.max(1))) else {
            return fallback;
        };
        let neuron = replicas[index].neuron.clone();
        Decision {
            call: Some(self.count(&neuron)),
            neuron: Some(neuron),
            reason,
            matched_blocks: candidates[index].matched,
        }
    }

    /// Counts a call to `neuron` (in flight, and among the recent ones)
    /// until the guard is dropped.
    pub fn count(&self, neuron: &str) -> InFlight {
        let now = Instant::now();
        let mut calls = self.inner.calls.lock().unwrap_or_else(|e| e.into_inner());
        let c = calls.entry(neuron.to_string()).or_insert(Calls {
            in_flight: 0,
            recent: 0.0,
            at: now,
            baseline: (0, 0),
        });
        c.recent = c.decayed(now) + 1.0;
        c.at = now;
        c.in_flight += 1;
        InFlight {
            view: self.clone(),
            neuron: neuron.to_string(),
        }
    }
}

#[cfg(test)]
mod tests;
