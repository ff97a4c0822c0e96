//! A daemon's operations endpoints (feature `http`): `/metrics` in
//! Prometheus' OpenMetrics text and `/healthz` (200 while healthy, else
//! 503, with a JSON body that says why), served on their own listener
//! until a token fires. The neuron and placement serve theirs with it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a daemon answers on its operations endpoints.
pub trait Probe: Send + Sync + 'static {
    /// The metrics, rendered as OpenMetrics text.
    fn metrics(&self) -> String;
    /// Whether the daemon is healthy, and the body that says so.
    fn health(&self) -> (bool, serde_json::Value);
}

/// Serves `probe` on `listener` (bound before the daemon connects, so a
/// busy port is a configuration error) until `stop` fires; returns the
/// bound address and the server's task.
pub fn serve<P: Probe>(
    probe: Arc<P>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> (SocketAddr, JoinHandle<()>) {
    let bound = listener
        .local_addr()
        .expect("a bound listener has an address");
    let router = Router::new()
        .route("/metrics", get(metrics::<P>))
        .route("/healthz", get(healthz::<P>))
        .with_state(probe);
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

async fn metrics<P: Probe>(State(probe): State<Arc<P>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        probe.metrics(),
    )
}

async fn healthz<P: Probe>(State(probe): State<Arc<P>>) -> impl IntoResponse {
    let (healthy, body) = probe.health();
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
