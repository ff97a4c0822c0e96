//! Prometheus metrics of one ingress pod (`cortex_` prefix, each named
//! and described where it is registered below), in a registry of its own
//! so several pods can share a process.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::catalog::Catalog;
use crate::fleet::Fleet;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    model: String,
    dialect: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Resumed {
    model: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Model {
    model: String,
}

/// A request's model as its metrics name it (see [`Metrics::label`]).
#[derive(Debug, Clone)]
pub struct Label(Model);

type Histograms = Family<Model, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn fine_latency() -> Histogram {
    // 0.1 ms .. ~3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// The pod's metrics. Model labels are limited to models the fleet or the
/// catalogue knows (others count as `unknown`), so clients naming random
/// models cannot grow the series without bound.
#[derive(Debug)]
pub struct Metrics {
    fleet: Fleet,
    catalog: Catalog,
    registry: Mutex<Registry>,
    requests: Family<Request, Counter>,
    duration: Histograms,
    ttft: Histograms,
    inter_token: Histograms,
    queue_time: Histograms,
    prompt_tokens: Family<Model, Counter>,
    completion_tokens: Family<Model, Counter>,
    in_flight: Gauge,
    cold_starts: Family<Model, Counter>,
    resumes: Family<Resumed, Counter>,
    route_decisions: Family<Route, Counter>,
    route_prefix_hit: Histogram,
}

impl Metrics {
    pub fn new(fleet: Fleet, catalog: Catalog) -> Self {
        let metrics = Self {
            fleet,
            catalog,
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            duration: Family::new_with_constructor(latency),
            ttft: Family::new_with_constructor(latency),
            inter_token: Family::new_with_constructor(fine_latency),
            queue_time: Family::new_with_constructor(latency),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            in_flight: Gauge::default(),
            cold_starts: Family::default(),
            resumes: Family::default(),
            route_decisions: Family::default(),
            // 1 .. 4096 blocks (64 bytes .. 256 KiB of prompt)
            route_prefix_hit: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        };
        let mut registry = Registry::with_prefix("cortex");
        registry.register(
            "requests",
            "HTTP requests by model, dialect and status",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to last byte",
            metrics.duration.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to first output",
            metrics.ttft.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Time between output frames of a stream",
            metrics.inter_token.clone(),
        );
        registry.register(
            "queue_time_seconds",
            "Time requests waited for a slot on the neuron",
            metrics.queue_time.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            metrics.prompt_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Tokens generated",
            metrics.completion_tokens.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests this pod is serving",
            metrics.in_flight.clone(),
        );
        registry.register(
            "cold_starts",
            "Requests that waited for a model to load",
            metrics.cold_starts.clone(),
        );
        registry.register(
            "stream_resumes",
            "Streams whose neuron failed mid-way, by outcome (resumed, failed, refused)",
            metrics.resumes.clone(),
        );
        registry.register(
            "route_decisions",
            "Replica choices by what decided them: prefix (a replica held more of the prompt), load, or fallback (no view: the queue group picked)",
            metrics.route_decisions.clone(),
        );
        registry.register(
            "route_prefix_hit_blocks",
            "Leading prompt blocks (64 bytes of request text each) the chosen replica held, for choices the prefix decided",
            metrics.route_prefix_hit.clone(),
        );
        *metrics.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        metrics
    }

    /// The label of `model` in every series: worked out once per request
    /// (it looks the model up in the fleet and the catalogue).
    pub fn label(&self, model: &str) -> Label {
        let known = model.is_empty() || self.fleet.holds(model) || self.catalog.knows(model);
        Label(Model {
            model: if known { model } else { "unknown" }.to_string(),
        })
    }

    pub fn finished(&self, label: &Label, dialect: &str, status: u16, duration: Duration) {
        self.requests
            .get_or_create(&Request {
                model: label.0.model.clone(),
                dialect: dialect.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&label.0)
            .observe(duration.as_secs_f64());
    }

    pub fn first_token(&self, label: &Label, after: Duration) {
        self.ttft
            .get_or_create(&label.0)
            .observe(after.as_secs_f64());
    }

    pub fn between_tokens(&self, label: &Label, gap: Duration) {
        self.inter_token
            .get_or_create(&label.0)
            .observe(gap.as_secs_f64());
    }

    /// A stream whose neuron failed mid-way: `resumed` on another replica,
    /// `failed` (no replica took it) or `refused` (not resumable: tokens
    /// without ids, deadline, attempts spent).
    pub fn resumed(&self, model: &str, outcome: &str) {
        self.resumes
            .get_or_create(&Resumed {
                model: self.label(model).0.model,
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// A replica choice ([`crate::route`]) and the prefix it held.
    pub fn routed(&self, reason: crate::route::Reason, matched_blocks: usize) {
        self.route_decisions
            .get_or_create(&Route {
                reason: reason.as_str().to_string(),
            })
            .inc();
        if reason == crate::route::Reason::Prefix {
            self.route_prefix_hit.observe(matched_blocks as f64);
        }
    }

    /// A request that waited for its model to be loaded.
    pub fn cold_start(&self, model: &str) {
        self.cold_starts.get_or_create(&self.label(model).0).inc();
    }

    pub fn queued(&self, label: &Label, ms: u64) {
        self.queue_time
            .get_or_create(&label.0)
            .observe(ms as f64 / 1000.0);
    }

    pub fn tokens(&self, label: &Label, prompt: u32, completion: u32) {
        self.prompt_tokens
            .get_or_create(&label.0)
            .inc_by(u64::from(prompt));
        self.completion_tokens
            .get_or_create(&label.0)
            .inc_by(u64::from(completion));
    }

    /// The exposition text, with the in-flight gauge set to `in_flight`.
    pub fn render(&self, in_flight: usize) -> String {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        self.in_flight.set(in_flight as i64);
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::error!(%error, "metrics not encodable");
        }
        text
    }
}
