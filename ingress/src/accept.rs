//! Accepting HTTP connections with limits a slow or greedy client cannot
//! get around: request heads must arrive within `--header-timeout` (which
//! also closes idle keep-alive connections), are at most
//! `--max-header-bytes` and `--max-headers` (else 431), and at most
//! `--max-connections` are open at once (further ones wait in the kernel's
//! listen backlog), and a connection whose writes stall for
//! `--write-timeout` (a client that stopped reading) is closed
//! ([`crate::stall`]). Bodies have their own deadline in [`crate::body`].
//! HTTP/1.1 only: a client that connects and sends nothing is cut off by
//! the same header timeout, which the HTTP/1-or-2 sniffing of an "auto"
//! server would wait on forever; HTTP/2 belongs at the load balancer.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::IngressConfig;
use crate::stall::StallGuard;

/// Pause after a failed `accept` (out of file descriptors, say), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The limits of [`serve`], from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub write_timeout: Duration,
}

impl Limits {
    pub fn from_config(config: &IngressConfig) -> Self {
        Self {
            header_timeout: config.header_timeout,
            max_header_bytes: config.max_header_bytes,
            max_headers: config.max_headers,
            max_connections: config.max_connections,
            write_timeout: config.write_timeout,
        }
    }
}

fn builder(limits: Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
}

/// Serves `app` on `listener` until `stop`, then stops accepting and lets
/// open connections finish their requests (the caller bounds that wait by
/// aborting the task).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, stop: CancellationToken) {
    let builder = builder(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, _peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let stream = StallGuard::new(stream, limits.write_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
