//! The HTTP server: routes, health, metrics, and [`run`], the daemon.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, IngressConfig};
use crate::error::{ApiError, Dialect, Kind};
use crate::fleet::Fleet;
use crate::pipeline::handle;
use crate::state::AppState;
use crate::{anthropic, openai};

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Connect(#[from] cortex_bus::ConnectError),
    #[error("cannot follow heartbeats: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

impl IngressError {
    /// Whether the operator's configuration is at fault (exit code 64).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Listen { .. })
    }
}

/// Every route of the HTTP API.
pub fn router(state: AppState) -> Router {
    // The API routes sit behind authentication and per-key limits; health
    // and metrics do not.
    let api = Router::new()
        .route("/v1/chat/completions", post(handle::<openai::chat::Chat>))
        .route(
            "/v1/completions",
            post(handle::<openai::completions::Completions>),
        )
        .route(
            "/v1/responses",
            post(handle::<openai::responses::Responses>),
        )
        .route("/v1/embeddings", post(openai::embeddings::handle))
        .route("/v1/models", get(openai::models::list))
        .route("/v1/models/{*id}", get(openai::models::get))
        .route(
            "/v1/messages",
            post(handle::<anthropic::messages::Messages>),
        )
        .route(
            "/v1/messages/count_tokens",
            post(anthropic::count_tokens::handle),
        )
        .merge(if state.config.no_ui {
            Router::new()
        } else {
            crate::console::api()
        })
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ));
    let cors = (*state.cors).clone();
    let mut router = Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if !state.config.no_ui {
        router = router.route("/ui", get(crate::console::page));
    }
    let mut router = router.fallback(not_found);
    if cors.is_on() {
        // Outside authentication: a preflight carries no credentials.
        router = router.layer(axum::middleware::from_fn_with_state(
            cors,
            crate::cors::apply,
        ));
    }
    router
        .layer(axum::middleware::from_fn(crate::trace::log))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let connected = state.client.connection_state() == async_nats::connection::State::Connected;
    let code = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({"nats": if connected { "connected" } else { "disconnected" }})),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(state.in_flight()),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    let dialect = if uri.path().starts_with("/v1/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    ApiError::new(Kind::NotFound, format!("no route {}", uri.path())).into_response_for(dialect)
}

/// A running ingress.
#[derive(Debug)]
pub struct Ingress {
    pub addr: SocketAddr,
    stop: CancellationToken,
    server: JoinHandle<()>,
    followers: [JoinHandle<()>; 3],
    state: AppState,
}

impl Ingress {
    /// Binds, connects the fleet view and serves.
    pub async fn start(
        config: IngressConfig,
        client: async_nats::Client,
    ) -> Result<Self, IngressError> {
        let settings = config.validate()?;
        let listener = bind(&config).await?;
        Self::launch(config, settings, listener, client).await
    }

    async fn launch(
        config: IngressConfig,
        settings: crate::config::Settings,
        listener: TcpListener,
        client: async_nats::Client,
    ) -> Result<Self, IngressError> {
        let addr = listener
            .local_addr()
            .map_err(|source| IngressError::Listen {
                addr: config.listen,
                source,
            })?;
        let subjects = &settings.subjects;
        let (fleet, fleet_task) = Fleet::follow(&client, subjects).await?;
        let (routes, routes_task) =
            crate::route::RouteView::follow(&client, subjects, config.routing).await?;
        let (catalog, catalog_task) = crate::catalog::Catalog::follow(&client);
        let state = AppState::new(client, settings, config, fleet, routes, catalog);
        let stop = CancellationToken::new();
        let app = router(state.clone());
        let limits = crate::accept::Limits::from_config(&state.config);
        let server = tokio::spawn(crate::accept::serve(listener, app, limits, stop.clone()));
        tracing::info!(%addr, "ingress listening");
        Ok(Self {
            addr,
            stop,
            server,
            followers: [fleet_task, routes_task, catalog_task],
            state,
        })
    }

    /// What the pod's handlers share (its fleet and routing views).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting connections and waits (up to the configured timeout)
    /// for requests in flight to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let timeout = self.state.config.shutdown_timeout;
        // One deadline for everything, so a pod's grace period holds.
        let deadline = tokio::time::Instant::now() + timeout;
        if tokio::time::timeout_at(deadline, &mut self.server)
            .await
            .is_err()
        {
            tracing::warn!(?timeout, "connections still open at shutdown");
            self.server.abort();
        }
        while self.state.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for follower in &self.followers {
            follower.abort();
        }
        cortex_bus::sync::flush_within(&self.state.client, cortex_bus::sync::FINAL_FLUSH_TIMEOUT)
            .await;
    }
}

/// The daemon: validate, bind, connect, serve until `shutdown`, drain.
pub async fn run(
    config: IngressConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), IngressError> {
    let settings = config.validate()?;
    let listener = bind(&config).await?;
    tracing::info!(nats = ?config.nats, "starting ingress");
    let client = config.nats.connect("cortex-ingress").await?;
    let ingress = Ingress::launch(config, settings, listener, client).await?;
    shutdown.await;
    tracing::info!("shutting down: finishing open requests");
    ingress.shutdown().await;
    Ok(())
}

/// The client-facing listener, bound before anything connects, so that a
/// busy port is a configuration error.
async fn bind(config: &IngressConfig) -> Result<TcpListener, IngressError> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|source| IngressError::Listen {
            addr: config.listen,
            source,
        })
}
