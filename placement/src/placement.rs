//! A placement replica: [`Placement::start`] opens the buckets, publishes
//! the catalogue (when given a file), follows catalogue, assignments and
//! heartbeats, takes part in the lease, runs the reconciler (acting only
//! while leading) and serves `cortex-placement`. [`Placement::shutdown`]
//! stops taking requests, lets those in flight finish (up to 10 s), stops
//! the reconciler and hands the lease over. Loads the reconciler started
//! finish on their neurons; the next leader's sync records them. [`run`] is the `cortex placement` subcommand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use cortex_bus::kv::{open_or_create, BucketSpec};
use cortex_bus::{buckets, ConnectError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::assignments::AssignmentsView;
use crate::catalog::{publish, CatalogView};
use crate::config::{ConfigError, PlacementConfig};
use crate::fleet::Fleet;
use crate::lease::Leadership;
use crate::service::PlacementService;
use crate::shared::Shared;

/// Why a replica did not start.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Start(String),
}

impl PlacementError {
    /// Configuration errors exit with 64.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_))
    }
}

/// A running replica.
#[derive(Debug)]
pub struct Placement {
    shared: Arc<Shared>,
    service: PlacementService,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    lease_task: JoinHandle<()>,
    metrics_addr: Option<SocketAddr>,
}

fn start_error(what: &str) -> impl Fn(String) -> PlacementError + '_ {
    move |e| PlacementError::Start(format!("{what}: {e}"))
}

impl Placement {
    pub async fn start(config: PlacementConfig, client: Client) -> Result<Self, PlacementError> {
        let valid = config.validate()?;
        let listener = match valid.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| ConfigError(format!("--metrics-listen {addr}: {e}")))?,
            ),
            None => None,
        };
        let js = async_nats::jetstream::new(client.clone());
        let spec = |name: &str, description: &str| {
            let mut spec = BucketSpec::new(name).replicas(config.bucket_replicas);
            spec.description = description.to_string();
            spec
        };
        let open_all = || async {
            let catalog = open_or_create(&js, &spec(buckets::CATALOG, "Cortex catalogue"))
                .await
                .map_err(|e| start_error("catalogue bucket")(e.to_string()))?;
            let placements = open_or_create(&js, &spec(buckets::PLACEMENTS, "Cortex assignments"))
                .await
                .map_err(|e| start_error("assignments bucket")(e.to_string()))?;
            let leases = open_or_create(&js, &spec(buckets::LEASES, "Cortex leases"))
                .await
                .map_err(|e| start_error("lease bucket")(e.to_string()))?;
            cortex_bus::objects::open_or_create(&js, buckets::MODELS, config.bucket_replicas)
                .await
                .map_err(|e| start_error("model store")(e.to_string()))?;
            Ok::<_, PlacementError>((catalog, placements, leases))
        };
        // The catalogue file, read (and refused) before any retry.
        let file = match &config.models {
            Some(path) => Some((
                path,
                crate::catalog::file::read(path).map_err(|e| ConfigError(e.to_string()))?,
            )),
            None => None,
        };
        // The buckets, then the catalogue file written into its bucket.
        let setup = || async {
            let stores = open_all().await?;
            if let Some((path, _)) = &file {
                publish::publish_file(&stores.0, path)
                    .await
                    .map_err(|e| start_error("catalogue")(e.to_string()))?;
            }
            Ok::<_, PlacementError>(stores)
        };
        // A JetStream cluster that is still forming (or electing a meta
        // leader after a restart) refuses replicated buckets for a moment,
        // and a new bucket's stream answers no reads until its replicas
        // have a leader: retry within the connect timeout, as the first
        // connect does.
        let deadline = tokio::time::Instant::now() + config.nats.connect_timeout;
        let mut pause = Duration::from_millis(100);
        let (catalog_store, placements, leases) = loop {
            match setup().await {
                Ok(stores) => break stores,
                Err(error) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!(%error, retry_in = ?pause, "JetStream not ready yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(error) => return Err(error),
            }
        };
        let catalog_view = CatalogView::default();
        let mut tasks = Vec::new();
        if let Some((path, profiles)) = &file {
            catalog_view.replace(profiles);
            tasks.push(tokio::spawn(publish::follow_file(
                catalog_store.clone(),
                path.to_path_buf(),
            )));
        }
        let (followed, task) = CatalogView::follow(js.clone());
        tasks.push(task);
        // Until the watch delivers, the file's view answers.
        for (_, profile) in catalog_view.all() {
            if let Ok(token) = cortex_bus::ModelToken::new(&profile.id) {
                followed.set(token.as_str(), Some(profile));
            }
        }
        let (assignments, task) = AssignmentsView::follow(js.clone());
        tasks.push(task);
        let (fleet, task) = Fleet::follow(&client, &valid.subjects)
            .await
            .map_err(|e| start_error("heartbeats")(e.to_string()))?;
        tasks.push(task);
        let leadership = Leadership::new(&valid.id);
        let shared = Arc::new(Shared::new(
            valid.id.clone(),
            client,
            valid.subjects.clone(),
            config.clone(),
            valid.settings.clone(),
            followed,
            catalog_store,
            assignments,
            placements,
            fleet,
            leadership.clone(),
        ));
        let stop = CancellationToken::new();
        // First attempt at the lease before serving, so a lone replica leads at once.
        leadership.try_hold(&leases, config.lease_ttl).await;
        let lease_task = tokio::spawn(leadership.run(leases, config.lease_ttl, stop.child_token()));
        tasks.push(tokio::spawn(crate::reconciler::run(
            shared.clone(),
            stop.child_token(),
        )));
        let metrics_addr = listener.map(|listener| {
            let (addr, task) = cortex_bus::ops::serve(shared.clone(), listener, stop.child_token());
            tasks.push(task);
            addr
        });
        let service = PlacementService::start(&shared)
            .await
            .map_err(|e| PlacementError::Start(e.to_string()))?;
        tracing::info!(replica = %shared.id, leader = shared.leadership.is_leader(), "placement ready");
        Ok(Self {
            shared,
            service,
            stop,
            tasks,
            lease_task,
            metrics_addr,
        })
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }

    pub fn is_leader(&self) -> bool {
        self.shared.leadership.is_leader()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The replica's shared state (for tests and the CLI).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops taking requests, stops the reconciler, hands the lease over.
    pub async fn shutdown(self) {
        self.service.stop().await;
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.lease_task)
            .await
            .is_err()
        {
            tracing::warn!("lease not released in time; it expires by itself");
        }
        for task in self.tasks {
            task.abort();
        }
        if let Err(error) = self.shared.client.drain().await {
            tracing::debug!(%error, "placement connection drain");
        }
    }
}

/// `cortex placement`: connects, starts, runs until SIGTERM or Ctrl-C.
pub async fn run(
    config: PlacementConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), PlacementError> {
    config.validate()?;
    let client = config.nats.connect("cortex-placement").await?;
    let placement = Placement::start(config, client).await?;
    shutdown.await;
    tracing::info!("shutting down");
    placement.shutdown().await;
    Ok(())
}
