//! Prometheus metrics of one placement replica, labelled with its id:
//! `cortex_evictions_total`, `cortex_loads_total{result}`,
//! `cortex_ensure_total{outcome}`, and the gauges `cortex_neurons` (live
//! neurons seen) and `cortex_placement_leader` (1 on the lease holder),
//! served with `/healthz` on `--metrics-listen`.

use std::sync::Mutex;

use cortex_bus::ops::Probe;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::shared::Shared;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// The replica's registry and its metric families.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub evictions: Counter,
    pub loads: Family<ResultLabel, Counter>,
    pub ensures: Family<OutcomeLabel, Counter>,
    neurons: Gauge,
    leader: Gauge,
}

impl Metrics {
    pub fn new(replica: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "cortex",
            [("replica".into(), replica.to_string().into())].into_iter(),
        );
        let metrics = Self {
            registry: Mutex::new(Registry::default()),
            evictions: Counter::default(),
            loads: Family::default(),
            ensures: Family::default(),
            neurons: Gauge::default(),
            leader: Gauge::default(),
        };
        registry.register(
            "evictions",
            "Models evicted to make room",
            metrics.evictions.clone(),
        );
        registry.register(
            "loads",
            "Loads placement ordered, by result",
            metrics.loads.clone(),
        );
        registry.register(
            "ensure",
            "ensure calls, by outcome",
            metrics.ensures.clone(),
        );
        registry.register("neurons", "Live neurons", metrics.neurons.clone());
        registry.register(
            "placement_leader",
            "1 while this replica holds the reconciler lease",
            metrics.leader.clone(),
        );
        *metrics.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        metrics
    }

    pub fn load(&self, result: &str) {
        self.loads
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn ensure(&self, outcome: &str) {
        self.ensures
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    fn render(&self, neurons: usize, leader: bool) -> String {
        self.neurons.set(neurons as i64);
        self.leader.set(i64::from(leader));
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::error!(%error, "metrics not encodable");
        }
        text
    }
}

/// `/metrics` and `/healthz` (200 while connected to NATS), served by
/// [`cortex_bus::ops::serve`] on `--metrics-listen`.
impl Probe for Shared {
    fn metrics(&self) -> String {
        self.metrics
            .render(self.fleet.live().len(), self.leadership.is_leader())
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let body = serde_json::json!({
            "replica": self.id,
            "leader": self.leadership.is_leader(),
            "nats": if connected { "connected" } else { "disconnected" },
            "neurons": self.fleet.live().len(),
        });
        (connected, body)
    }
}
