//! The data plane's streamed request/reply (ARCHITECTURE.md, "A chat
//! request, end to end", steps 4 to 7).
//!
//! A requester subscribes to a fresh inbox, then publishes the request with
//! that inbox as reply subject; the responder answers with ordered frames,
//! each carrying `Cortex-Seq`. The requester side is [`stream_request`] →
//! [`FrameStream`]; the responder side is [`serve`] → [`Incoming`] →
//! [`Responder`]; cancels travel through [`CancelRegistry`].

mod cancel;
mod incoming;
mod request;
mod responder;

use std::time::Duration;

pub use cancel::{send_cancel, serve_cancels, CancelGuard, CancelRegistry};
pub use incoming::{serve, Incoming, RequestStream};
pub use request::{stream_request, FrameStream, StreamOptions};
pub use responder::Responder;

use crate::codec::CodecError;

/// Default keepalive period; a stream silent for 2.5 periods has failed.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(1);

/// Shortest keepalive period either side uses (a requester cannot make a
/// responder flood it with keepalives).
pub const MIN_KEEPALIVE: Duration = Duration::from_millis(50);

/// Longest keepalive period either side uses.
pub const MAX_KEEPALIVE: Duration = Duration::from_secs(60);

/// Default upper bound on a whole stream when the caller sets no deadline:
/// nothing waits forever, even on a responder stuck in a loop.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(600);

/// The keepalive period both sides agree on for a requested `period`.
pub fn clamp_keepalive(period: Duration) -> Duration {
    period.clamp(MIN_KEEPALIVE, MAX_KEEPALIVE)
}

/// How much silence ends a stream: 2.5 keepalive periods (2.5 s at the
/// default period). A live responder is never silent for much more than one
/// period (its keepalive timer runs apart from the model), so this leaves
/// 1.5 periods for scheduling and network delay, and a requester notices a
/// dead responder in under 3 s: 3 full periods would put detection at
/// 3 s plus timer lateness, never within it.
pub fn idle_limit(keepalive: Duration) -> Duration {
    keepalive * 5 / 2
}

/// Why a streamed request failed. Callers match variants, never messages.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Nobody listens on the subject (NATS status 503): no neuron has the model.
    #[error("no responders on {subject}")]
    NoResponders { subject: String },
    /// The request would exceed the server's `max_payload`; nothing was published.
    #[error("request is {size} bytes; the NATS server accepts at most {max}")]
    PayloadTooLarge { size: usize, max: usize },
    /// A frame was lost: the stream cannot be trusted past this point.
    #[error("frame sequence gap: expected {expected}, got {got}")]
    SequenceGap { expected: u64, got: u64 },
    /// A frame arrived without a usable `Cortex-Seq` header.
    #[error("frame without a valid Cortex-Seq header")]
    MissingSeq,
    /// Nothing (not even a keepalive) arrived for this long: the responder is gone.
    #[error("responder silent for {silent:?}")]
    Idle { silent: Duration },
    /// The request's deadline passed before the terminal frame.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The NATS connection closed the subscription.
    #[error("subscription closed by the NATS connection")]
    Closed,
    /// An unexpected NATS status on the inbox.
    #[error("unexpected NATS status {status} on the reply inbox")]
    Status { status: u16 },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("cannot subscribe to the reply inbox: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The server did not confirm a new subscription.
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    #[error("cannot publish: {0}")]
    Publish(#[source] async_nats::PublishError),
    /// The responder already sent its terminal frame.
    #[error("stream already finished")]
    Finished,
    /// A header value (request id, traceparent) contains a line break.
    #[error("invalid {header} header value: {reason}")]
    InvalidHeader {
        header: &'static str,
        reason: String,
    },
    /// The message has no reply subject to answer on.
    #[error("request has no reply subject")]
    NoReplySubject,
}
