//! Serving side: a subscription (optionally in a queue group) whose messages
//! become [`Incoming`] requests that know their encoding, id and deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, Message, Subscriber};
use futures::{Stream, StreamExt};
use serde::{de::DeserializeOwned, Serialize};

use super::cancel::CancelRegistry;
use super::responder::Responder;
use super::{clamp_keepalive, StreamError, DEFAULT_KEEPALIVE};
use crate::codec::{CodecError, Encoding};
use crate::headers;

/// Subscribes to `subject`, in `queue_group` when given (the design's
/// `neurons` group spreads requests over replicas). Returns once the server
/// has the subscription, so a request published afterwards is delivered.
pub async fn serve(
    client: &Client,
    subject: impl Into<String>,
    queue_group: Option<&str>,
) -> Result<RequestStream, StreamError> {
    let subject = subject.into();
    let subscriber = match queue_group {
        Some(group) => client.queue_subscribe(subject, group.to_string()).await,
        None => client.subscribe(subject).await,
    }
    .map_err(StreamError::Subscribe)?;
    crate::sync_with_server(client).await?;
    Ok(RequestStream {
        subscriber,
        client: client.clone(),
        cut_off: false,
    })
}

/// Requests arriving on a served subject.
#[derive(Debug)]
pub struct RequestStream {
    subscriber: Subscriber,
    client: Client,
    /// Drained without a connection: the stream ends once what was
    /// delivered is taken.
    cut_off: bool,
}

impl RequestStream {
    /// Stops receiving; requests already delivered stay with the caller.
    pub async fn unsubscribe(mut self) {
        let _ = self.subscriber.unsubscribe().await;
    }

    /// Stops taking new requests without losing any the server already
    /// routed here: unsubscribes, and the stream goes on yielding what was
    /// delivered before the server processed that, then ends. A plain
    /// unsubscribe would drop requests still on the wire, leaving their
    /// requesters to time out.
    ///
    /// Without a connection the server cannot confirm the drain, and no
    /// more requests can arrive: the stream then yields what it already
    /// holds and ends, rather than wait for a round trip that never comes.
    pub async fn drain(&mut self) {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            tracing::debug!("served subject drained without a connection");
            self.cut_off = true;
            return;
        }
        if let Err(error) = self.subscriber.drain().await {
            tracing::debug!(%error, "drain of a served subject failed");
        }
    }
}

impl Stream for RequestStream {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        if !self.cut_off {
            return self
                .subscriber
                .poll_next_unpin(cx)
                .map(|message| message.map(Incoming::new));
        }
        // Cut off, Pending must mean "nothing left", never "this task's
        // budget is spent" (tokio's channels yield Pending then, with
        // messages still waiting): poll without the budget.
        let next = std::pin::pin!(tokio::task::unconstrained(self.subscriber.next()));
        match next.poll(cx) {
            Poll::Pending => Poll::Ready(None),
            Poll::Ready(message) => Poll::Ready(message.map(Incoming::new)),
        }
    }
}

/// One received request.
#[derive(Debug)]
pub struct Incoming {
    pub message: Message,
    /// Encoding of the request, and so of every frame of the answer. A
    /// request with an unknown `Content-Type` is answered in JSON.
    pub encoding: Encoding,
    content_type_error: Option<String>,
}

impl Incoming {
    pub fn new(message: Message) -> Self {
        let (encoding, content_type_error) = match Encoding::of_message(message.headers.as_ref()) {
            Ok(encoding) => (encoding, None),
            Err(CodecError::UnsupportedContentType(value)) => (Encoding::Json, Some(value)),
            Err(_) => (Encoding::Json, None),
        };
        Self {
            message,
            encoding,
            content_type_error,
        }
    }

    /// Decodes the payload; fails on an unsupported `Content-Type` too.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        if let Some(value) = &self.content_type_error {
            return Err(CodecError::UnsupportedContentType(value.clone()));
        }
        self.encoding.decode(&self.message.payload)
    }

    /// `Cortex-Request-Id`, when sent.
    pub fn request_id(&self) -> Option<&str> {
        headers::get_str(self.message.headers.as_ref(), headers::REQUEST_ID)
    }

    /// `Cortex-Deadline` (unix ms), when sent.
    pub fn deadline_ms(&self) -> Option<u64> {
        headers::get_u64(self.message.headers.as_ref(), headers::DEADLINE)
    }

    /// Keepalive period the requester asked for (default 1 s, clamped to 50 ms..=60 s).
    pub fn keepalive(&self) -> Duration {
        headers::get_u64(self.message.headers.as_ref(), headers::KEEPALIVE_MS)
            .map_or(DEFAULT_KEEPALIVE, |ms| {
                clamp_keepalive(Duration::from_millis(ms))
            })
    }

    /// The deadline as a point on this process's monotonic clock.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        let deadline_ms = self.deadline_ms()?;
        let left = deadline_ms.saturating_sub(headers::unix_ms());
        Some(tokio::time::Instant::now() + Duration::from_millis(left))
    }

    /// A responder for a streamed answer, registered for cancels under
    /// `request_id` when a registry is given.
    pub fn responder(
        &self,
        client: &Client,
        cancels: Option<(&CancelRegistry, &str)>,
    ) -> Result<Responder, StreamError> {
        let reply = self
            .message
            .reply
            .clone()
            .ok_or(StreamError::NoReplySubject)?;
        let guard = cancels.map(|(registry, id)| registry.register(id));
        Ok(Responder::new(
            client.clone(),
            reply,
            self.encoding,
            self.keepalive(),
            self.deadline(),
            guard,
        ))
    }

    /// Answers with a single message (control plane) in the request's encoding.
    pub async fn respond<T: Serialize + ?Sized>(
        &self,
        client: &Client,
        value: &T,
    ) -> Result<(), StreamError> {
        let reply = self
            .message
            .reply
            .clone()
            .ok_or(StreamError::NoReplySubject)?;
        let payload = self.encoding.encode(value)?;
        client
            .publish_with_headers(reply, self.encoding.headers(), payload)
            .await
            .map_err(StreamError::Publish)
    }
}
