//! The fleet as heartbeats show it (`cortex_bus::fleet`, the view ingress
//! shares). Every replica follows `<prefix>.v1.heartbeat.*`; a neuron
//! silent for 3 of its own heartbeat intervals is lost (the leader sweeps
//! it, announces `neuron.lost` and repairs), and one whose last heartbeat
//! says `stopped` has left. Waiters (an `ensure` waiting for a load someone
//! else started) watch [`FleetView::changes`] instead of polling.

use cortex_schemas::{ModelState, NeuronState};

pub use cortex_bus::fleet::{FleetView as Fleet, LOST_AFTER_INTERVALS};

/// Placement's questions about one model.
pub trait Holders {
    /// Live, accepting neurons where `model` is ready.
    fn ready_on(&self, model: &str) -> Vec<String>;
    /// Live, accepting neurons where `model` is loading or ready.
    fn holders(&self, model: &str) -> std::collections::BTreeSet<String>;
}

impl Holders for Fleet {
    fn ready_on(&self, model: &str) -> Vec<String> {
        with_model(self, model, &[ModelState::Ready])
    }

    fn holders(&self, model: &str) -> std::collections::BTreeSet<String> {
        with_model(self, model, &[ModelState::Loading, ModelState::Ready])
            .into_iter()
            .collect()
    }
}

fn with_model(fleet: &Fleet, model: &str, states: &[ModelState]) -> Vec<String> {
    fleet.with_model(model, |(neuron, m)| {
        let wanted = neuron.state == NeuronState::Ready && states.contains(&m.state);
        wanted.then(|| neuron.neuron_id.clone())
    })
}
