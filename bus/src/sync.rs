//! A barrier with the server: returns once the server has processed every
//! command this connection sent before it.
//!
//! `Client::flush` only pushes bytes onto the socket. A subscription made on
//! one connection is therefore not yet visible to a publisher on another
//! connection when `flush` returns. This barrier sends a request to a subject
//! nobody listens on: the server answers "no responders" only after it has
//! processed everything before it on this connection (it reads each
//! connection in order), subscriptions included.

use std::time::Duration;

use async_nats::{client::RequestErrorKind, Client};
use bytes::Bytes;

/// How long the barrier waits for the server's answer.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the barrier failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the NATS server did not answer the barrier within {0:?}")]
    TimedOut(Duration),
    #[error("barrier request failed: {0}")]
    Request(#[source] async_nats::RequestError),
}

/// Waits until the server has processed everything sent before on `client`.
pub async fn sync_with_server(client: &Client) -> Result<(), SyncError> {
    let subject = client.new_inbox();
    let request = client.request(subject, Bytes::new());
    match tokio::time::timeout(BARRIER_TIMEOUT, request).await {
        Err(_) => Err(SyncError::TimedOut(BARRIER_TIMEOUT)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => match error.kind() {
            RequestErrorKind::NoResponders => Ok(()),
            RequestErrorKind::TimedOut => Err(SyncError::TimedOut(BARRIER_TIMEOUT)),
            _ => Err(SyncError::Request(error)),
        },
    }
}

/// How long a daemon's last flush at shutdown may wait.
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Flushes `client` for at most `limit`: with the server gone, a plain
/// `flush` waits for a reconnection that may never come, and a shutdown must
/// end. Whether it got through is only logged.
pub async fn flush_within(client: &Client, limit: Duration) {
    match tokio::time::timeout(limit, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "final flush failed"),
        Err(_) => tracing::warn!(?limit, "NATS unreachable: last messages may be lost"),
    }
}
