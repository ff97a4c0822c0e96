//! The reconciler lease, `cortex-leases/placement-leader`: one replica at a
//! time runs the reconciler. Every replica tries each third of the TTL:
//! the holder renews (same term), anyone takes an expired or absent lease
//! (term + 1), all by compare-and-swap, so two replicas never both win.
//! A replica leads only while its own lease is unexpired by its clock; one
//! that cannot reach KV stops leading when its lease runs out. On a clean
//! shutdown the holder releases the lease so another takes over at once.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use cortex_bus::kv::{update_cas, CasOutcome};
use cortex_schemas::Lease;
use tokio_util::sync::CancellationToken;

/// KV key of the lease.
pub const LEASE_KEY: &str = "placement-leader";

/// This replica's view of the lease.
#[derive(Debug, Clone)]
pub struct Leadership {
    me: String,
    current: Arc<RwLock<Option<Lease>>>,
}

impl Leadership {
    pub fn new(me: &str) -> Self {
        Self {
            me: me.to_string(),
            current: Arc::default(),
        }
    }

    /// Whether this replica holds an unexpired lease.
    pub fn is_leader(&self) -> bool {
        let now = cortex_bus::headers::unix_ms();
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|l| l.holder == self.me && l.expires_ms > now)
    }

    /// The holder of the lease as last read, if unexpired.
    pub fn holder(&self) -> Option<String> {
        let now = cortex_bus::headers::unix_ms();
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|l| l.expires_ms > now)
            .map(|l| l.holder.clone())
    }

    /// One attempt to take or renew the lease.
    pub async fn try_hold(&self, store: &Store, ttl: Duration) {
        let now = cortex_bus::headers::unix_ms();
        let expires_ms = now + ttl.as_millis() as u64;
        let me = self.me.clone();
        let outcome = update_cas::<Lease, _>(store, LEASE_KEY, |current| match current {
            Some(lease) if lease.holder == me => Some(Lease {
                holder: me.clone(),
                expires_ms,
                term: lease.term,
            }),
            Some(lease) if lease.expires_ms > now => None,
            Some(lease) => Some(Lease {
                holder: me.clone(),
                expires_ms,
                term: lease.term + 1,
            }),
            None => Some(Lease {
                holder: me.clone(),
                expires_ms,
                term: 1,
            }),
        })
        .await;
        let seen = match outcome {
            Ok(CasOutcome::Written(v)) => {
                let was = self.is_leader();
                if !was {
                    tracing::info!(replica = %self.me, term = v.value.term, "took the placement lease");
                }
                Some(v.value)
            }
            Ok(CasOutcome::Unchanged(v)) => v.map(|v| v.value),
            Err(error) => {
                tracing::warn!(%error, "lease not renewed");
                return;
            }
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = seen;
    }

    /// Gives the lease up if this replica holds it.
    pub async fn release(&self, store: &Store) {
        let me = self.me.clone();
        let released = update_cas::<Lease, _>(store, LEASE_KEY, |current| match current {
            Some(lease) if lease.holder == me && lease.expires_ms > 0 => Some(Lease {
                expires_ms: 0,
                ..lease.clone()
            }),
            _ => None,
        })
        .await;
        if let Err(error) = released {
            tracing::warn!(%error, "lease not released; it expires by itself");
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Holds (or waits for) the lease until `stop` fires, then releases it.
    pub async fn run(self, store: Store, ttl: Duration, stop: CancellationToken) {
        let period = ttl / 3;
        loop {
            self.try_hold(&store, ttl).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
            }
        }
        self.release(&store).await;
    }
}
