//! The responder side: ordered frames with `Cortex-Seq`, keepalives on a
//! timer while nothing else is sent, the request's deadline enforced (an
//! `Error{deadline_exceeded}` ends the stream when it passes, even if the
//! handler is stuck), and an `Error` frame if it is dropped before finishing,
//! so a requester never waits on a handler that is gone.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subject};
use cortex_schemas::{ErrorClass, Frame, Keepalive, WireError};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::cancel::CancelGuard;
use super::{clamp_keepalive, StreamError};
use crate::codec::Encoding;
use crate::headers;

/// `queue_position` value meaning "not queued".
const NOT_QUEUED: u32 = u32::MAX;

/// Publishes the frames of one streamed reply.
#[derive(Debug)]
pub struct Responder {
    shared: Arc<Shared>,
    keepalive: JoinHandle<()>,
    deadline: Option<Instant>,
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
    /// whenever nothing was sent for `keepalive` (clamped to 50 ms..=60 s),
    /// and ending the stream with `deadline_exceeded` at `deadline`.
    pub fn new(
        client: Client,
        reply: Subject,
        encoding: Encoding,
        keepalive: Duration,
        deadline: Option<Instant>,
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
        let keepalive = tokio::spawn(keepalive_loop(
            Arc::downgrade(&shared),
            clamp_keepalive(keepalive),
            deadline,
        ));
        Self {
            shared,
            keepalive,
            deadline,
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

    /// Whether the request's deadline has passed (the stream is then already
    /// ended with `deadline_exceeded`, or about to be).
    pub fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
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
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.keepalive.abort();
        // A handler that ends without a terminal frame (early return, panic)
        // must not leave the requester waiting for the idle timeout.
        let shared = Arc::clone(&self.shared);
        let error = if self.is_cancelled() {
            WireError::new(ErrorClass::Cancelled, "cancelled")
        } else {
            WireError::new(
                ErrorClass::Internal,
                "the responder ended without finishing the stream",
            )
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let frame = Frame::Error(error);
                match shared.send(&frame).await {
                    Ok(()) => tracing::warn!("responder dropped before its terminal frame"),
                    Err(StreamError::Finished) => {}
                    Err(error) => tracing::debug!(%error, "final error frame not sent"),
                }
            });
        }
    }
}

/// Sends keepalives while the stream is quiet; at the deadline, ends the
/// stream with `deadline_exceeded` (later sends by the handler then fail
/// with [`StreamError::Finished`], which tells it to stop).
async fn keepalive_loop(
    shared: std::sync::Weak<Shared>,
    period: Duration,
    deadline: Option<Instant>,
) {
    let mut due = Instant::now() + period;
    loop {
        let wake = deadline.map_or(due, |d| d.min(due));
        tokio::time::sleep_until(wake).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let frame = Frame::Error(WireError::new(
                ErrorClass::DeadlineExceeded,
                "the request's deadline passed",
            ));
            if let Err(error) = shared.send(&frame).await {
                tracing::debug!(%error, "deadline frame not sent");
            }
            return;
        }
        match shared.keepalive_due(period).await {
            Some(next) => due = next,
            None => return,
        }
    }
}
