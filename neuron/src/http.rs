//! `/metrics` (Prometheus text) and `/healthz` on the neuron's metrics
//! address (default port 13131), served by [`cortex_bus::ops::serve`].
//!
//! `/healthz` answers 200 while the neuron is connected to NATS and not
//! stopped, else 503; the body says which, as JSON.

use cortex_bus::ops::Probe;
use cortex_schemas::NeuronState;

use crate::metrics::serde_name;
use crate::shared::Shared;

impl Probe for Shared {
    fn metrics(&self) -> String {
        self.metrics.render(&self.status())
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let state = self.state();
        let body = serde_json::json!({
            "neuron": self.id,
            "state": serde_name(&state),
            "nats": if connected { "connected" } else { "disconnected" },
            "models": self.all_models().len(),
        });
        (connected && state != NeuronState::Stopped, body)
    }
}
