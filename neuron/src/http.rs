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

/// Serves on `listener` (bound before the neuron connects, so a busy port
/// is a configuration error) until `stop` fires; returns the bound address.
pub fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> (SocketAddr, JoinHandle<()>) {
    let bound = listener
        .local_addr()
        .expect("a bound listener has an address");
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
    (bound, task)
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
