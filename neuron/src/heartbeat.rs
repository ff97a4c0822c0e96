//! Heartbeats: the neuron's `NeuronStatus` as JSON on
//! `<prefix>.v1.heartbeat.<id>`, every interval and at once after a state
//! change. Each beat re-reads the devices and turns the engines' token
//! counters into a tokens-per-second figure for the last interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::pace::Pace;
use crate::shared::Shared;

/// Publishes heartbeats until `stop` fires.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut counters: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut pace = Pace::new(shared.config.heartbeat_interval);
    while pace.turn(&stop, &shared.heartbeat_now).await {
        sample_rates(&shared, &mut counters);
        publish(&shared).await;
    }
}

/// Publishes one heartbeat now.
pub async fn publish(shared: &Shared) {
    let subject = shared.subjects.heartbeat(&shared.id);
    shared
        .publish_json(subject, &shared.status(), "heartbeat")
        .await;
}

/// Tokens per second of each model since the previous beat.
fn sample_rates(shared: &Shared, counters: &mut HashMap<String, (u64, Instant)>) {
    let now = Instant::now();
    let models = shared.all_models();
    counters.retain(|id, _| models.iter().any(|m| m.id() == id));
    for held in models {
        let Some(backend) = held.backend() else {
            continue;
        };
        let (_, _, _, tokens) = backend.load_figures();
        let previous = counters.insert(held.id().to_string(), (tokens, now));
        if let Some((before, at)) = previous {
            let seconds = now.duration_since(at).as_secs_f64();
            if seconds > 0.05 {
                held.set_tokens_per_second(tokens.saturating_sub(before) as f64 / seconds);
            } else {
                counters.insert(held.id().to_string(), (before, at));
            }
        }
    }
}
