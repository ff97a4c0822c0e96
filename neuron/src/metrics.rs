//! Prometheus metrics of one neuron, each labelled with its id. Counters
//! (requests by outcome, generated tokens) count as requests finish;
//! gauges (device memory, slots, queue, tokens/s, model state) are read
//! from the neuron's state at each scrape. Each neuron has its own
//! registry, so several can run in one process.

use std::sync::Mutex;

use cortex_schemas::{ErrorClass, NeuronStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    model: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Model {
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelInState {
    model: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Device {
    device: String,
    name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The neuron's registry and its metric families.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Outcome, Counter>,
    tokens: Family<Model, Counter>,
    vram_total: Family<Device, Gauge>,
    vram_used: Family<Device, Gauge>,
    vram_free: Family<Device, Gauge>,
    slots_busy: Family<Model, Gauge>,
    slots_total: Family<Model, Gauge>,
    queue_depth: Family<Model, Gauge>,
    tokens_per_second: Family<Model, FloatGauge>,
    model_memory: Family<Model, Gauge>,
    model_state: Family<ModelInState, Gauge>,
    neuron_state: Family<State, Gauge>,
    cache_hits: Family<Model, Counter>,
    cache_misses: Family<Model, Counter>,
    cache_hit_tokens: Family<Model, Counter>,
    cache_bytes: Family<Model, Gauge>,
    cache_budget: Family<Model, Gauge>,
    batch_kv: Family<Model, Gauge>,
    batch_kv_budget: Family<Model, Gauge>,
    suspensions: Family<Model, Counter>,
}

impl Metrics {
    pub fn new(neuron: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "cortex",
            [("neuron".into(), neuron.to_string().into())].into_iter(),
        );
        let metrics = Self {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            tokens: Family::default(),
            vram_total: Family::default(),
            vram_used: Family::default(),
            vram_free: Family::default(),
            slots_busy: Family::default(),
            slots_total: Family::default(),
            queue_depth: Family::default(),
            tokens_per_second: Family::default(),
            model_memory: Family::default(),
            model_state: Family::default(),
            neuron_state: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_hit_tokens: Family::default(),
            cache_bytes: Family::default(),
            cache_budget: Family::default(),
            batch_kv: Family::default(),
            batch_kv_budget: Family::default(),
            suspensions: Family::default(),
        };
        let m = &metrics;
        registry.register(
            "neuron_requests",
            "Inference requests finished, by model and outcome (ok or the error class)",
            m.requests.clone(),
        );
        registry.register(
            "neuron_generated_tokens",
            "Tokens generated",
            m.tokens.clone(),
        );
        registry.register(
            "vram_total_bytes",
            "Memory budget of each device",
            m.vram_total.clone(),
        );
        registry.register(
            "vram_used_bytes",
            "Memory used on each device",
            m.vram_used.clone(),
        );
        registry.register(
            "vram_free_bytes",
            "Memory free on each device",
            m.vram_free.clone(),
        );
        registry.register(
            "slots_busy",
            "Sequences being decoded, per model",
            m.slots_busy.clone(),
        );
        registry.register(
            "slots_total",
            "Concurrent sequences a model serves",
            m.slots_total.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a slot, per model",
            m.queue_depth.clone(),
        );
        registry.register(
            "tokens_per_second",
            "Tokens generated per second over the last heartbeat interval, per model",
            m.tokens_per_second.clone(),
        );
        registry.register(
            "model_memory_bytes",
            "Memory each model takes",
            m.model_memory.clone(),
        );
        registry.register(
            "model_state",
            "1 for the state each model is in",
            m.model_state.clone(),
        );
        registry.register(
            "neuron_state",
            "1 for the neuron's state",
            m.neuron_state.clone(),
        );
        registry.register(
            "prefix_cache_hits",
            "Requests that started from a cached prompt prefix, per model",
            m.cache_hits.clone(),
        );
        registry.register(
            "prefix_cache_misses",
            "Requests that found no cached prefix, per model",
            m.cache_misses.clone(),
        );
        registry.register(
            "prefix_cache_hit_tokens",
            "Prompt tokens served from the prefix cache, per model",
            m.cache_hit_tokens.clone(),
        );
        registry.register(
            "prefix_cache_bytes",
            "KV bytes the prefix cache keeps, per model",
            m.cache_bytes.clone(),
        );
        registry.register(
            "prefix_cache_budget_bytes",
            "KV bytes the prefix cache may keep, per model",
            m.cache_budget.clone(),
        );
        registry.register(
            "batch_kv_tokens",
            "Tokens of KV the running sequences hold, per model",
            m.batch_kv.clone(),
        );
        registry.register(
            "batch_kv_budget_tokens",
            "Tokens of KV the running sequences may hold together, per model",
            m.batch_kv_budget.clone(),
        );
        registry.register(
            "batch_kv_suspensions",
            "Sequences held out of the batch to keep its KV within budget (given up mid-way or waiting from the start), per model",
            m.suspensions.clone(),
        );
        *metrics.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        metrics
    }

    /// Counts a finished request; `failure` is `None` on success.
    pub fn request_finished(&self, model: &str, failure: Option<ErrorClass>) {
        let outcome = match failure {
            None => "ok".to_string(),
            Some(class) => serde_name(&class),
        };
        self.requests
            .get_or_create(&Outcome {
                model: model.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn tokens(&self, model: &str, tokens: u32) {
        self.tokens
            .get_or_create(&Model {
                model: model.to_string(),
            })
            .inc_by(u64::from(tokens));
    }

    /// The exposition text, with gauges taken from `status`.
    pub fn render(&self, status: &NeuronStatus) -> String {
        // One scrape at a time: the gauges are cleared and refilled below.
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        for family in [
            &self.slots_busy,
            &self.slots_total,
            &self.queue_depth,
            &self.model_memory,
            &self.cache_bytes,
            &self.cache_budget,
            &self.batch_kv,
            &self.batch_kv_budget,
        ] {
            family.clear();
        }
        // Counters rebuilt from the engines' totals in the status.
        for family in [
            &self.cache_hits,
            &self.cache_misses,
            &self.cache_hit_tokens,
            &self.suspensions,
        ] {
            family.clear();
        }
        self.tokens_per_second.clear();
        self.model_state.clear();
        self.neuron_state.clear();
        for family in [&self.vram_total, &self.vram_used, &self.vram_free] {
            family.clear();
        }
        for device in &status.devices {
            let labels = Device {
                device: format!("{}:{}", serde_name(&device.kind), device.index),
                name: device.name.clone(),
            };
            self.vram_total
                .get_or_create(&labels)
                .set(device.memory_total_bytes as i64);
            self.vram_used
                .get_or_create(&labels)
                .set(device.memory_used_bytes as i64);
            self.vram_free
                .get_or_create(&labels)
                .set(device.memory_free_bytes as i64);
        }
        for model in &status.models {
            let labels = Model {
                model: model.model_id.clone(),
            };
            self.slots_busy
                .get_or_create(&labels)
                .set(i64::from(model.slots_busy));
            self.slots_total
                .get_or_create(&labels)
                .set(i64::from(model.slots_total));
            self.queue_depth
                .get_or_create(&labels)
                .set(i64::from(model.queue_depth));
            self.model_memory
                .get_or_create(&labels)
                .set(model.memory_bytes as i64);
            self.tokens_per_second
                .get_or_create(&labels)
                .set(model.tokens_per_second);
            if let Some(cache) = &model.prefix_cache {
                self.cache_hits.get_or_create(&labels).inc_by(cache.hits);
                self.cache_misses
                    .get_or_create(&labels)
                    .inc_by(cache.misses);
                self.cache_hit_tokens
                    .get_or_create(&labels)
                    .inc_by(cache.hit_tokens);
                self.cache_bytes
                    .get_or_create(&labels)
                    .set(cache.bytes as i64);
                self.cache_budget
                    .get_or_create(&labels)
                    .set(cache.budget_bytes as i64);
            }
            if let Some(kv) = &model.batch_kv {
                self.batch_kv.get_or_create(&labels).set(kv.tokens as i64);
                self.batch_kv_budget
                    .get_or_create(&labels)
                    .set(kv.budget_tokens as i64);
                self.suspensions
                    .get_or_create(&labels)
                    .inc_by(kv.suspensions);
            }
            self.model_state
                .get_or_create(&ModelInState {
                    model: model.model_id.clone(),
                    state: serde_name(&model.state),
                })
                .set(1);
        }
        self.neuron_state
            .get_or_create(&State {
                state: serde_name(&status.state),
            })
            .set(1);
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::error!(%error, "metrics not encodable");
        }
        text
    }
}

/// The serde name of a unit enum value (`cuda`, `ready`, `overloaded`).
pub fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
