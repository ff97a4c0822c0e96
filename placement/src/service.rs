//! The NATS micro service `cortex-placement`: every replica registers the
//! same endpoints (`ensure`, `status`, `pin`, `unpin`, `load`, `unload`,
//! `reload` on `<prefix>.v1.placement.<op>`) in the micro protocol's queue
//! group, so each request goes to one replica and `nats micro ls/info/stats`
//! show them all. Requests and replies are JSON `Reply` envelopes; an error
//! reply also carries the `Nats-Service-Error` headers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_nats::service::{Request, Service, ServiceExt};
use cortex_bus::{Encoding, PlacementOp};
use cortex_schemas::{ErrorClass, Reply, WireError};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::shared::Shared;
use crate::{ensure, verbs};

/// Name every replica registers under.
pub const SERVICE_NAME: &str = "cortex-placement";

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {SERVICE_NAME} service: {0}")]
pub struct ServiceError(String);

/// The running service and its endpoint tasks.
#[derive(Debug)]
pub struct PlacementService {
    service: Service,
    tasks: Vec<JoinHandle<()>>,
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
        for op in PlacementOp::ALL {
            let endpoint = service
                .endpoint_builder()
                .name(op.as_str())
                .add(shared.subjects.placement(op))
                .await
                .map_err(|e| ServiceError(e.to_string()))?;
            tasks.push(tokio::spawn(serve_endpoint(shared.clone(), op, endpoint)));
        }
        cortex_bus::sync_with_server(&shared.client)
            .await
            .map_err(|e| ServiceError(e.to_string()))?;
        Ok(Self { service, tasks })
    }

    /// Unsubscribes every endpoint: requests go to the other replicas.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(error) = self.service.stop().await {
            tracing::debug!(%error, "placement service stop");
        }
    }
}

/// Each request runs in its own task: an `ensure` may wait minutes for a load.
async fn serve_endpoint(
    shared: Arc<Shared>,
    op: PlacementOp,
    mut endpoint: async_nats::service::endpoint::Endpoint,
) {
    while let Some(request) = endpoint.next().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let s = &shared;
            match op {
                PlacementOp::Ensure => answer(&request, |r| ensure::ensure(s, r)).await,
                PlacementOp::Status => answer(&request, |r| verbs::status(s, r)).await,
                PlacementOp::Pin => answer(&request, |r| verbs::pin(s, r)).await,
                PlacementOp::Unpin => answer(&request, |r| verbs::unpin(s, r)).await,
                PlacementOp::Load => answer(&request, |r| verbs::load(s, r)).await,
                PlacementOp::Unload => answer(&request, |r| verbs::unload(s, r)).await,
                PlacementOp::Reload => answer(&request, |r| verbs::reload(s, r)).await,
            }
        });
    }
}

/// Decodes the JSON body (an empty body is `{}`), runs `handler`, replies.
async fn answer<Req, Rep, F, Fut>(request: &Request, handler: F)
where
    Req: DeserializeOwned,
    Rep: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Rep, WireError>>,
{
    let body: &[u8] = if request.message.payload.is_empty() {
        b"{}"
    } else {
        &request.message.payload
    };
    let reply: Reply<Rep> = match serde_json::from_slice::<Req>(body) {
        Ok(decoded) => handler(decoded).await.into(),
        Err(error) => Reply::Error(WireError::new(
            ErrorClass::InvalidRequest,
            format!("malformed request: {error}"),
        )),
    };
    let encoding = Encoding::Json;
    let mut headers = encoding.headers();
    if let Reply::Error(error) = &reply {
        headers.insert(
            "Nats-Service-Error",
            error.message.replace(['\r', '\n'], " ").as_str(),
        );
        headers.insert(
            "Nats-Service-Error-Code",
            cortex_bus::control::status_code(error.class)
                .to_string()
                .as_str(),
        );
    }
    match encoding.encode(&reply) {
        Ok(payload) => {
            if let Err(error) = request.respond_with_headers(Ok(payload), headers).await {
                tracing::debug!(%error, "placement reply not sent");
            }
        }
        Err(error) => tracing::error!(%error, "placement reply not encodable"),
    }
}
