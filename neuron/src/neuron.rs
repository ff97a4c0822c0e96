//! A running neuron: [`Neuron::start`] puts it on the bus, [`run`] is the
//! daemon (validate, find devices, bind the metrics port, connect, start,
//! wait for the shutdown signal, shut down gracefully).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use cortex_bus::{serve_cancels, NeuronOp, Subjects};
use cortex_schemas::{
    EventDetail, LoadReply, LoadRequest, ModelProfile, NeuronState, NeuronStatus, WireError,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, NeuronConfig, Validated};
use crate::control::{Control, ControlError};
use crate::discovery::{Discovery, DiscoveryError};
use crate::held::Intake;
use crate::lifecycle::{drain, load};
use crate::shared::Shared;

/// Why the neuron could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum NeuronError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Connect(#[from] cortex_bus::ConnectError),
    #[error("cannot subscribe: {0}")]
    Subscribe(#[from] cortex_bus::StreamError),
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Another neuron with this id answers on the bus: two neurons with
    /// one id would take each other's loads and models.
    #[error(
        "a neuron with id {0:?} is already running on this NATS server: give this one another --id"
    )]
    DuplicateId(String),
}

impl NeuronError {
    /// Whether the operator's configuration is at fault (exit code 64).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Config(_) | Self::Discovery(_) | Self::Metrics { .. } | Self::DuplicateId(_)
        )
    }
}

/// How long a neuron already holding our id has to answer its status
/// request. NATS answers at once when nobody listens there.
const ID_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Refuses an id another running neuron answers to (its directed status
/// subject has a responder). A slow answer is let through with a warning:
/// only a neuron that answers is known to hold the id.
async fn id_is_free(client: &Client, subjects: &Subjects, id: &str) -> Result<(), NeuronError> {
    let subject = subjects.neuron(id, NeuronOp::Status);
    match tokio::time::timeout(ID_CHECK_TIMEOUT, client.request(subject, "{}".into())).await {
        Ok(Ok(_)) => Err(NeuronError::DuplicateId(id.to_string())),
        Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(neuron = %id, %error, "could not check that the id is free");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(neuron = %id, "the id check got no answer in time; going on");
            Ok(())
        }
    }
}

/// The daemon: validates `config`, finds the devices and binds the metrics
/// port (all before connecting), connects, serves until `shutdown`
/// resolves, then drains and exits.
pub async fn run(
    config: NeuronConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NeuronError> {
    let prepared = Prepared::new(config).await?;
    let config = &prepared.config;
    tracing::info!(neuron = %prepared.valid.id, engine = config.engine.as_str(), nats = ?config.nats, "starting neuron");
    let client = config
        .nats
        .connect(&format!("cortex-neuron-{}", prepared.valid.id))
        .await?;
    let neuron = Neuron::launch(prepared, client).await?;
    shutdown.await;
    tracing::info!("shutting down: draining");
    neuron.shutdown().await;
    Ok(())
}

/// Everything that can fail without the network, done first.
#[derive(Debug)]
struct Prepared {
    config: NeuronConfig,
    valid: Validated,
    discovery: Discovery,
    listener: Option<TcpListener>,
}

impl Prepared {
    async fn new(config: NeuronConfig) -> Result<Self, NeuronError> {
        let valid = config.validate()?;
        let discovery = Discovery::open(
            &valid.devices,
            config.engine,
            config.memory_budget,
            &config.sim_gpus,
        )?;
        let listener = match valid.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| NeuronError::Metrics { addr, source })?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            valid,
            discovery,
            listener,
        })
    }
}

/// A neuron on the bus.
#[derive(Debug)]
pub struct Neuron {
    shared: Arc<Shared>,
    control: Control,
    directed: Intake,
    stop: CancellationToken,
    heartbeats: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    metrics_addr: Option<SocketAddr>,
}

impl Neuron {
    /// Validates `config`, finds the devices, subscribes (cancels, directed
    /// requests, control service), starts heartbeats and metrics, and
    /// preloads `--models` in the background.
    pub async fn start(config: NeuronConfig, client: Client) -> Result<Self, NeuronError> {
        Self::launch(Prepared::new(config).await?, client).await
    }

    async fn launch(prepared: Prepared, client: Client) -> Result<Self, NeuronError> {
        let Prepared {
            config,
            valid,
            discovery,
            listener,
        } = prepared;
        let preload = valid.preload.clone();
        id_is_free(&client, &valid.subjects, &valid.id).await?;
        let shared = Shared::new(config, valid, client, discovery);
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let started = Self::subscribe(&shared, &stop, &mut tasks).await;
        let (directed, control) = match started {
            Ok(parts) => parts,
            Err(error) => {
                // Leave nothing running behind a failed start.
                stop.cancel();
                for task in tasks {
                    task.abort();
                }
                return Err(error);
            }
        };
        let metrics_addr = match listener {
            Some(listener) => {
                let (bound, task) = cortex_bus::ops::serve(shared.clone(), listener, stop.clone());
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        let heartbeats = tokio::spawn(crate::heartbeat::run(shared.clone(), stop.clone()));
        shared
            .event(EventDetail::NeuronJoined {
                neuron: shared.id.clone(),
            })
            .await;
        tasks.push(tokio::spawn(crate::prefixes::run(
            shared.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(preload_models(shared.clone(), preload)));
        Ok(Self {
            shared,
            control,
            directed,
            stop,
            heartbeats,
            tasks,
            metrics_addr,
        })
    }

    /// Cancels, the directed subject and the control service.
    async fn subscribe(
        shared: &Arc<Shared>,
        stop: &CancellationToken,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Result<(Intake, Control), NeuronError> {
        tasks.push(
            serve_cancels(
                shared.client.clone(),
                &shared.subjects,
                &shared.id,
                shared.cancels.clone(),
                stop.clone(),
            )
            .await?,
        );
        let directed = crate::serve::start_directed(shared).await?;
        let control = match Control::start(shared).await {
            Ok(control) => control,
            Err(error) => {
                directed.stop.cancel();
                directed.task.abort();
                return Err(error.into());
            }
        };
        Ok((directed, control))
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The status a heartbeat would carry now.
    pub fn status(&self) -> NeuronStatus {
        self.shared.status()
    }

    /// Where `/metrics` and `/healthz` listen, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Loads a model as the `load` endpoint does.
    pub async fn load(&self, profile: ModelProfile) -> Result<LoadReply, WireError> {
        load::load(
            &self.shared,
            LoadRequest {
                profile,
                device: None,
            },
        )
        .await
    }

    /// Graceful shutdown: stop taking requests (heartbeat says `draining`),
    /// let those in flight finish (cancel what is left after the drain
    /// timeout), release the engines, publish a final `stopped` heartbeat,
    /// and leave the bus.
    pub async fn shutdown(self) {
        let shared = &self.shared;
        shared.set_state(NeuronState::Draining);
        crate::heartbeat::publish(shared).await;
        crate::serve::finish(self.directed).await;
        let models = shared.all_models();
        drain::drain_models(shared, &models, shared.config.drain_timeout).await;
        for held in &models {
            let cancelled = crate::lifecycle::settle(held, std::time::Duration::ZERO).await;
            if cancelled > 0 {
                tracing::warn!(
                    model = held.id(),
                    cancelled,
                    "cancelled after the drain timeout"
                );
            }
            if crate::lifecycle::release(held).await {
                shared
                    .event(EventDetail::ModelUnloaded {
                        model: held.id().to_string(),
                        neuron: shared.id.clone(),
                    })
                    .await;
            }
        }
        shared.set_state(NeuronState::Stopped);
        // The heartbeat task stops first, so no `draining` beat follows the last one.
        self.stop.cancel();
        let _ = self.heartbeats.await;
        crate::heartbeat::publish(shared).await;
        self.control.stop().await;
        for task in self.tasks {
            task.abort();
        }
        cortex_bus::sync::flush_within(&shared.client, cortex_bus::sync::FINAL_FLUSH_TIMEOUT).await;
        tracing::info!(neuron = %shared.id, "neuron stopped");
    }
}

/// Loads the configured models one after another; the neuron is `ready`
/// once all have loaded or failed (failures show in heartbeats).
async fn preload_models(shared: Arc<Shared>, profiles: Vec<ModelProfile>) {
    for profile in profiles {
        let id = profile.id.clone();
        let request = LoadRequest {
            profile,
            device: None,
        };
        if let Err(error) = load::load(&shared, request).await {
            tracing::error!(model = id, %error, "preload failed");
        }
    }
    if shared.transition_state(NeuronState::Starting, NeuronState::Ready) {
        shared.heartbeat_soon();
    }
}
