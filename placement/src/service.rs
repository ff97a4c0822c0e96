//! The NATS micro service `cortex-placement`: every replica registers the
//! same endpoints (`ensure`, `status`, `pin`, `unpin`, `load`, `unload`,
//! `reload` on `<prefix>.v1.placement.<op>`) in the micro protocol's queue
//! group, so each request goes to one replica and `nats micro ls/info/stats`
//! show them all. Requests and replies are JSON `Reply` envelopes; an error
//! reply also carries the `Nats-Service-Error` headers.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::service::{Service, ServiceExt};
use cortex_bus::PlacementOp;
use cortex_schemas::{ErrorClass, WireError};
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::shared::Shared;
use crate::{ensure, verbs};

/// Name every replica registers under.
pub const SERVICE_NAME: &str = "cortex-placement";

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {SERVICE_NAME} service: {0}")]
pub struct ServiceError(String);

/// Requests a replica works on at once; beyond it, `overloaded` at once.
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long [`PlacementService::stop`] waits for requests in flight.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The running service and its endpoint tasks.
#[derive(Debug)]
pub struct PlacementService {
    service: Service,
    tasks: Vec<JoinHandle<()>>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl PlacementService {
    pub async fn start(shared: &Arc<Shared>) -> Result<Self, ServiceError> {
        let service = shared
            .client
            .service_builder()
            .description("Cortex placement: which neuron holds which model")
            .metadata(HashMap::from([("replica".to_string(), shared.id.clone())]))
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| ServiceError(e.to_string()))?;
        let mut tasks = Vec::new();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        for op in PlacementOp::ALL {
            let endpoint = service
                .endpoint_builder()
                .name(op.as_str())
                .add(shared.subjects.placement(op))
                .await
                .map_err(|e| ServiceError(e.to_string()))?;
            tasks.push(tokio::spawn(serve_endpoint(
                shared.clone(),
                op,
                endpoint,
                in_flight.clone(),
            )));
        }
        cortex_bus::sync_with_server(&shared.client)
            .await
            .map_err(|e| ServiceError(e.to_string()))?;
        Ok(Self {
            service,
            tasks,
            in_flight,
        })
    }

    /// Unsubscribes every endpoint (new requests go to the other
    /// replicas), then waits a bounded time for the requests in flight.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(error) = self.service.stop().await {
            tracing::debug!(%error, "placement service stop");
        }
        let all = self.in_flight.acquire_many(MAX_IN_FLIGHT as u32);
        if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
            tracing::warn!("placement requests still in flight at shutdown");
        }
    }
}

/// Each request runs in its own task: an `ensure` may wait minutes for a load.
async fn serve_endpoint(
    shared: Arc<Shared>,
    op: PlacementOp,
    mut endpoint: async_nats::service::endpoint::Endpoint,
    in_flight: Arc<tokio::sync::Semaphore>,
) {
    while let Some(request) = endpoint.next().await {
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let busy = WireError::new(
                ErrorClass::Overloaded,
                format!(
                    "placement replica {} is at {MAX_IN_FLIGHT} requests",
                    shared.id
                ),
            );
            cortex_bus::control::answer(&request, |_: serde_json::Value| async move {
                Err::<(), _>(busy)
            })
            .await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let s = &shared;
            match op {
                PlacementOp::Ensure => {
                    cortex_bus::control::answer(&request, |r| ensure::ensure(s, r)).await
                }
                PlacementOp::Status => {
                    cortex_bus::control::answer(&request, |r| verbs::status(s, r)).await
                }
                PlacementOp::Pin => {
                    cortex_bus::control::answer(&request, |r| verbs::pin(s, r)).await
                }
                PlacementOp::Unpin => {
                    cortex_bus::control::answer(&request, |r| verbs::unpin(s, r)).await
                }
                PlacementOp::Load => {
                    cortex_bus::control::answer(&request, |r| verbs::load(s, r)).await
                }
                PlacementOp::Unload => {
                    cortex_bus::control::answer(&request, |r| verbs::unload(s, r)).await
                }
                PlacementOp::Reload => {
                    cortex_bus::control::answer(&request, |r| verbs::reload(s, r)).await
                }
            }
        });
    }
}
