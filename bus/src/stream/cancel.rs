//! Cancellation: the requester publishes `{request_id}` on the accepting
//! neuron's cancel subject; the neuron's [`CancelRegistry`] wakes the
//! request's handler, which frees its slot at its next step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::Client;
use cortex_schemas::CancelRequest;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::StreamError;
use crate::codec::{decode_message, Encoding};
use crate::subject::{NeuronOp, Subjects};

/// In-flight requests that can be cancelled, by request id. Its size is
/// bounded by the requests a neuron admits (slots plus bounded queue).
#[derive(Debug, Clone, Default)]
pub struct CancelRegistry {
    tokens: Arc<Mutex<HashMap<String, Entry>>>,
    next_registration: Arc<AtomicU64>,
}

/// A registered token and which registration put it there.
#[derive(Debug)]
struct Entry {
    registration: u64,
    token: CancellationToken,
}

impl CancelRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `request_id`; the entry lives as long as the guard.
    pub fn register(&self, request_id: &str) -> CancelGuard {
        let token = CancellationToken::new();
        let registration = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let replaced = self.lock().insert(
            request_id.to_string(),
            Entry {
                registration,
                token: token.clone(),
            },
        );
        // The same id again (a retry landed here while the first attempt
        // still runs): the caller has moved on, so the old one is cancelled
        // rather than left unreachable by cancels.
        if let Some(old) = replaced {
            old.token.cancel();
        }
        CancelGuard {
            registry: self.clone(),
            request_id: request_id.to_string(),
            registration,
            token,
        }
    }

    /// Cancels `request_id`; false when it is not (or no longer) in flight.
    pub fn cancel(&self, request_id: &str) -> bool {
        match self.lock().get(request_id) {
            Some(entry) => {
                entry.token.cancel();
                true
            }
            None => false,
        }
    }

    /// Requests currently registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned map is still a valid map: a panic elsewhere cannot corrupt it.
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A registered request; removes itself from the registry when dropped.
#[derive(Debug)]
pub struct CancelGuard {
    registry: CancelRegistry,
    request_id: String,
    registration: u64,
    token: CancellationToken,
}

impl CancelGuard {
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the request is cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// A token to hand to code that only needs to observe cancellation.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        // Only remove our own entry: a retried request may reuse the id.
        if map
            .get(&self.request_id)
            .is_some_and(|entry| entry.registration == self.registration)
        {
            map.remove(&self.request_id);
        }
    }
}

/// Listens on `<prefix>.v1.neuron.<neuron>.cancel` and cancels registered
/// requests until `shutdown` fires. Returns once the subscription is in
/// place at the server; the listener runs in the returned task.
pub async fn serve_cancels(
    client: Client,
    subjects: &Subjects,
    neuron: &str,
    registry: CancelRegistry,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, StreamError> {
    let subject = subjects.neuron(neuron, NeuronOp::Cancel);
    let mut subscriber = client
        .subscribe(subject)
        .await
        .map_err(StreamError::Subscribe)?;
    crate::sync_with_server(&client).await?;
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = subscriber.next() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            match decode_message::<CancelRequest>(message.headers.as_ref(), &message.payload) {
                Ok(cancel) => {
                    let found = registry.cancel(&cancel.request_id);
                    tracing::debug!(request_id = %cancel.request_id, found, "cancel received");
                }
                Err(error) => tracing::warn!(%error, "malformed cancel ignored"),
            }
        }
    }))
}

/// Asks `neuron` to cancel `request_id` (fire and forget: a cancel for a
/// request that already finished is harmless).
pub async fn send_cancel(
    client: &Client,
    subjects: &Subjects,
    neuron: &str,
    request_id: &str,
) -> Result<(), StreamError> {
    let encoding = Encoding::Json;
    let payload = encoding.encode(&CancelRequest {
        request_id: request_id.to_string(),
    })?;
    client
        .publish_with_headers(
            subjects.neuron(neuron, NeuronOp::Cancel),
            encoding.headers(),
            payload,
        )
        .await
        .map_err(StreamError::Publish)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_remove_their_entry_and_cancels_reach_the_token() {
        let registry = CancelRegistry::new();
        let guard = registry.register("a");
        assert_eq!(registry.len(), 1);
        assert!(!guard.is_cancelled());
        assert!(registry.cancel("a"));
        assert!(guard.is_cancelled());
        assert!(!registry.cancel("missing"));
        drop(guard);
        assert!(registry.is_empty());
    }

    #[test]
    fn a_reused_id_cancels_the_request_it_replaces() {
        let registry = CancelRegistry::new();
        let first = registry.register("r");
        let second = registry.register("r");
        assert!(first.is_cancelled(), "the replaced attempt is cancelled");
        assert!(!second.is_cancelled());
        drop(first);
        assert_eq!(
            registry.len(),
            1,
            "the old guard leaves the new entry alone"
        );
        assert!(registry.cancel("r"));
        assert!(second.is_cancelled());
    }
}
