//! The responder side: ordered frames with `Cortex-Seq`, keepalives on a
//! timer while nothing else is sent, and an `Error` frame if it is dropped
//! before finishing, so a requester never waits on a handler that is gone.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subject};
use cortex_schemas::{ErrorClass, Frame, Keepalive, WireError};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::cancel::CancelGuard;
use super::StreamError;
use crate::codec::Encoding;
use crate::headers;

/// `queue_position` value meaning "not queued".
const NOT_QUEUED: u32 = u32::MAX;

/// Publishes the frames of one streamed reply.
#[derive(Debug)]
pub struct Responder {
    shared: Arc<Shared>,
    keepalive: JoinHandle<()>,
    cancel: Option<CancelGuard>,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    reply: Subject,
    encoding: Encoding,
    /// Held across publish so that frames leave in `seq` order.
    state: Mutex<SendState>,
    queue_position: AtomicU32,
}

#[derive(Debug)]
struct SendState {
    next_seq: u64,
    last_sent: Instant,
    finished: bool,
}

impl Shared {
    async fn send(&self, frame: &Frame) -> Result<(), StreamError> {
        let mut state = self.state.lock().await;
        if state.finished {
            return Err(StreamError::Finished);
        }
        let payload = self.encoding.encode(frame)?;
        let mut headers = self.encoding.headers();
        headers.insert(headers::SEQ, state.next_seq.to_string().as_str());
        self.client
            .publish_with_headers(self.reply.clone(), headers, payload)
            .await
            .map_err(StreamError::Publish)?;
        state.next_seq += 1;
        state.last_sent = Instant::now();
        state.finished = frame.is_terminal();
        Ok(())
    }

    /// Sends a keepalive if nothing went out for `period`; returns when the next one is due.
    async fn keepalive_due(&self, period: Duration) -> Option<Instant> {
        let last_sent = {
            let state = self.state.lock().await;
            if state.finished {
                return None;
            }
            state.last_sent
        };
        if last_sent.elapsed() < period {
            return Some(last_sent + period);
        }
        let position = self.queue_position.load(Ordering::Relaxed);
        let frame = Frame::Keepalive(Keepalive {
            queue_position: (position != NOT_QUEUED).then_some(position),
        });
        match self.send(&frame).await {
            Ok(()) => Some(Instant::now() + period),
            Err(StreamError::Finished) => None,
            Err(error) => {
                tracing::debug!(%error, "keepalive not sent");
                Some(Instant::now() + period)
            }
        }
    }
}

impl Responder {
    /// A responder answering on `reply` in `encoding`, sending a keepalive
    /// whenever nothing was sent for `keepalive`.
    pub fn new(
        client: Client,
        reply: Subject,
        encoding: Encoding,
        keepalive: Duration,
        cancel: Option<CancelGuard>,
    ) -> Self {
        let shared = Arc::new(Shared {
            client,
            reply,
            encoding,
            state: Mutex::new(SendState {
                next_seq: 0,
                last_sent: Instant::now(),
                finished: false,
            }),
            queue_position: AtomicU32::new(NOT_QUEUED),
        });
        let keepalive = tokio::spawn(keepalive_loop(Arc::downgrade(&shared), keepalive));
        Self {
            shared,
            keepalive,
            cancel,
        }
    }

    /// Sends the next frame. After a terminal frame every send fails with
    /// [`StreamError::Finished`].
    pub async fn send(&self, frame: &Frame) -> Result<(), StreamError> {
        self.shared.send(frame).await
    }

    /// Sends a terminal `Error` frame.
    pub async fn fail(
        &self,
        class: ErrorClass,
        message: impl Into<String>,
    ) -> Result<(), StreamError> {
        self.send(&Frame::Error(WireError::new(class, message)))
            .await
    }

    /// Reports the request's queue position in keepalives (`None`: no longer queued).
    pub fn set_queue_position(&self, position: Option<u32>) {
        self.shared
            .queue_position
            .store(position.unwrap_or(NOT_QUEUED), Ordering::Relaxed);
    }

    /// Whether a cancel for this request has arrived.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    /// Resolves when a cancel arrives (never, without a cancel registry).
    pub async fn cancelled(&self) {
        match &self.cancel {
            Some(guard) => guard.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// Frames sent so far.
    pub async fn frames_sent(&self) -> u64 {
        self.shared.state.lock().await.next_seq
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.keepalive.abort();
        // A handler that ends without a terminal frame (early return, panic)
        // must not leave the requester waiting for the idle timeout.
        let shared = Arc::clone(&self.shared);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let frame = Frame::Error(WireError::new(
                    ErrorClass::Internal,
                    "the responder ended without finishing the stream",
                ));
                match shared.send(&frame).await {
                    Ok(()) => tracing::warn!("responder dropped before its terminal frame"),
                    Err(StreamError::Finished) => {}
                    Err(error) => tracing::debug!(%error, "final error frame not sent"),
                }
            });
        }
    }
}

async fn keepalive_loop(shared: std::sync::Weak<Shared>, period: Duration) {
    let mut due = Instant::now() + period;
    loop {
        tokio::time::sleep_until(due).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match shared.keepalive_due(period).await {
            Some(next) => due = next,
            None => return,
        }
    }
}
