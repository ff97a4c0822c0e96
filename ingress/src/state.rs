//! What every handler shares: the NATS connection, the fleet view, the
//! in-flight limit and the metrics. Nothing here is state that another pod
//! would need: any number of pods can run side by side.

use std::sync::Arc;

use async_nats::Client;
use cortex_bus::Subjects;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{Caller, Keys, Limits};
use crate::catalog::Catalog;
use crate::config::{IngressConfig, Settings};
use crate::error::{ApiError, Kind};
use crate::fleet::Fleet;
use crate::metrics::{Label, Metrics};
use crate::recent::Recent;
use crate::route::RouteView;

/// Shared by all handlers (cheap to clone).
#[derive(Debug, Clone)]
pub struct AppState {
    pub client: Client,
    pub subjects: Subjects,
    pub config: Arc<IngressConfig>,
    pub fleet: Fleet,
    /// Which replica each request goes to.
    pub routes: RouteView,
    pub catalog: Catalog,
    pub metrics: Arc<Metrics>,
    pub keys: Arc<Keys>,
    /// Cross-origin access (`--cors-origins`).
    pub cors: Arc<crate::cors::Cors>,
    pub limits: Arc<Limits>,
    /// The last requests this pod finished (for the console).
    pub recent: Arc<Recent>,
    limiter: Arc<Semaphore>,
}

impl AppState {
    /// A pod's state from the settings its flags were validated into (so
    /// authentication cannot be silently off: the keys come parsed).
    pub fn new(
        client: Client,
        settings: Settings,
        config: IngressConfig,
        fleet: Fleet,
        routes: RouteView,
        catalog: Catalog,
    ) -> Self {
        let Settings {
            subjects,
            keys,
            cors,
        } = settings;
        let limits = Limits::new(
            keys_count(&keys),
            config.rate_limit_rpm,
            config.rate_limit_tpm,
        );
        let metrics = Arc::new(Metrics::new(fleet.clone(), catalog.clone()));
        Self {
            keys: Arc::new(keys),
            cors: Arc::new(cors),
            limits: Arc::new(limits),
            recent: Arc::default(),
            limiter: Arc::new(Semaphore::new(config.max_in_flight)),
            client,
            subjects,
            config: Arc::new(config),
            fleet,
            routes,
            catalog,
            metrics,
        }
    }

    /// A place among this pod's in-flight requests, or 429 at once.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.limiter
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    Kind::Overloaded,
                    format!(
                        "this ingress is serving its limit of {} requests; retry shortly",
                        self.config.max_in_flight
                    ),
                )
            })
    }

    /// Records a finished generation: queue time and tokens in metrics,
    /// tokens against the caller's budget.
    pub fn record_done(&self, caller: Caller, label: &Label, done: &cortex_schemas::Done) {
        self.metrics.queued(label, done.timings.queue_ms);
        self.record_tokens(
            caller,
            label,
            done.usage.prompt_tokens,
            done.usage.completion_tokens,
        );
    }

    /// Counts a finished request's tokens in metrics and against its caller's budget.
    pub fn record_tokens(&self, caller: Caller, label: &Label, prompt: u32, completion: u32) {
        self.metrics.tokens(label, prompt, completion);
        self.limits.spend(caller, prompt + completion);
    }

    /// Requests in flight on this pod.
    pub fn in_flight(&self) -> usize {
        self.config.max_in_flight - self.limiter.available_permits()
    }

    /// The deadline of a request: `cortex-timeout-ms` if the client sent
    /// one (capped by the configured timeout), else the configured timeout.
    pub fn deadline_ms(&self, headers: &axum::http::HeaderMap) -> u64 {
        let default = self.config.request_timeout.as_millis() as u64;
        let asked = headers
            .get("cortex-timeout-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        cortex_bus::headers::unix_ms() + asked.map_or(default, |ms| ms.min(default))
    }
}

fn keys_count(keys: &Keys) -> usize {
    keys.len().max(1)
}
