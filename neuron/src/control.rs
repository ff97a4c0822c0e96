//! The control plane: a NATS micro service `cortex-neuron` (so `nats micro
//! ls/info/stats` list every neuron) with endpoints `load`, `unload`,
//! `drain` and `status` on `<prefix>.v1.neuron.<id>.<op>`. Requests and
//! replies are JSON; every reply is a `Reply` envelope, and an error reply
//! also carries the micro protocol's `Nats-Service-Error` headers.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::service::{Service, ServiceExt};
use cortex_bus::NeuronOp;
use cortex_schemas::Reply;
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::lifecycle::{drain, load, unload};
use crate::shared::Shared;

/// Name every neuron registers under.
pub const SERVICE_NAME: &str = "cortex-neuron";

/// Why the control service did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {SERVICE_NAME} service: {0}")]
pub struct ControlError(String);

/// The running service and its endpoint tasks.
#[derive(Debug)]
pub struct Control {
    service: Service,
    tasks: Vec<JoinHandle<()>>,
}

impl Control {
    pub async fn start(shared: &Arc<Shared>) -> Result<Self, ControlError> {
        let metadata = HashMap::from([
            ("neuron".to_string(), shared.id.clone()),
            (
                "engine".to_string(),
                shared.config.engine.as_str().to_string(),
            ),
        ]);
        let service = shared
            .client
            .service_builder()
            .description("Cortex neuron: loads models and serves them on the mesh")
            .metadata(metadata)
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| ControlError(e.to_string()))?;
        let mut tasks = Vec::new();
        for op in [
            NeuronOp::Load,
            NeuronOp::Unload,
            NeuronOp::Drain,
            NeuronOp::Status,
        ] {
            let endpoint = service
                .endpoint_builder()
                .name(op.as_str())
                .add(shared.subjects.neuron(&shared.id, op))
                .await
                .map_err(|e| ControlError(e.to_string()))?;
            tasks.push(tokio::spawn(serve_endpoint(shared.clone(), op, endpoint)));
        }
        cortex_bus::sync_with_server(&shared.client)
            .await
            .map_err(|e| ControlError(e.to_string()))?;
        Ok(Self { service, tasks })
    }

    /// Unsubscribes every endpoint.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(error) = self.service.stop().await {
            tracing::debug!(%error, "control service stop");
        }
    }
}

/// Each request runs in its own task: a load can take minutes and must not
/// hold up `status` or `drain`.
async fn serve_endpoint(
    shared: Arc<Shared>,
    op: NeuronOp,
    mut endpoint: async_nats::service::endpoint::Endpoint,
) {
    while let Some(request) = endpoint.next().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            match op {
                NeuronOp::Load => {
                    cortex_bus::control::answer(&request, |r| load::load(&shared, r)).await
                }
                NeuronOp::Unload => {
                    cortex_bus::control::answer(&request, |r| unload::unload(&shared, r)).await
                }
                NeuronOp::Drain => {
                    cortex_bus::control::answer(&request, |r| drain::drain(&shared, r)).await
                }
                NeuronOp::Status => {
                    let status = shared.status();
                    cortex_bus::control::respond(&request, &Reply::Ok(status)).await
                }
                NeuronOp::Infer | NeuronOp::Cancel => {}
            }
        });
    }
}
