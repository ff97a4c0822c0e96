//! `/metrics` (Prometheus text) and `/healthz` on the neuron's metrics
//! address (default port 13131).
//!
//! `/healthz` answers 200 while the neuron is connected to NATS and not
//! stopped, else 503; the body says which, as JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use cortex_schemas::NeuronState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::serde_name;
use crate::shared::Shared;

/// Binds `addr` and serves until `stop` fires; returns the bound address.
pub async fn start(
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(shared);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "metrics server ended");
        }
    });
    Ok((bound, task))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let text = shared.metrics.render(&shared.status());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let connected = shared.client.connection_state() == async_nats::connection::State::Connected;
    let state = shared.state();
    let healthy = connected && state != NeuronState::Stopped;
    let body = serde_json::json!({
        "neuron": shared.id,
        "state": serde_name(&state),
        "nats": if connected { "connected" } else { "disconnected" },
        "models": shared.all_models().len(),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
