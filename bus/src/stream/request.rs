//! The requester side: publish once, read ordered frames until a terminal one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, HeaderMap, HeaderValue, Subscriber};
use bytes::Bytes;
use cortex_schemas::Frame;
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::time::{Instant, Sleep};

use super::{clamp_keepalive, idle_limit, StreamError, DEFAULT_KEEPALIVE, DEFAULT_MAX_DURATION};
use crate::codec::{decode_message, Encoding};
use crate::headers::{self, unix_ms};

/// How a streamed request is sent and watched.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Encoding of the request; the responder answers in the same one.
    pub encoding: Encoding,
    /// Keepalive period asked of the responder (clamped to 50 ms..=60 s);
    /// silence for 2.5 periods fails the stream.
    pub keepalive: Duration,
    /// Unix ms after which the stream fails with `DeadlineExceeded`; also
    /// sent as `Cortex-Deadline`, which the responder enforces.
    pub deadline_ms: Option<u64>,
    /// Upper bound on the stream counted from when it is sent; the effective
    /// deadline is the earlier of this and `deadline_ms`.
    pub max_duration: Duration,
    /// Sent as `Cortex-Request-Id`.
    pub request_id: Option<String>,
    /// Sent as W3C `traceparent`.
    pub traceparent: Option<String>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            encoding: Encoding::MsgPack,
            keepalive: DEFAULT_KEEPALIVE,
            deadline_ms: None,
            max_duration: DEFAULT_MAX_DURATION,
            request_id: None,
            traceparent: None,
        }
    }
}

/// Publishes `request` on `subject` and returns the stream of its frames.
///
/// Refuses a request larger than the server's `max_payload` before
/// publishing. The inbox subscription exists before the request is sent, so
/// no frame can be missed; a "no responders" status surfaces as the stream's
/// first item within a round trip.
pub async fn stream_request<T: Serialize + ?Sized>(
    client: &Client,
    subject: impl Into<String>,
    request: &T,
    options: &StreamOptions,
) -> Result<FrameStream, StreamError> {
    let subject = subject.into();
    let payload = options.encoding.encode(request)?;
    let keepalive = clamp_keepalive(options.keepalive);
    let max_ms = u64::try_from(options.max_duration.as_millis()).unwrap_or(u64::MAX);
    let deadline_ms = unix_ms().saturating_add(max_ms);
    let deadline_ms = options
        .deadline_ms
        .map_or(deadline_ms, |d| d.min(deadline_ms));
    let headers = request_headers(options, keepalive, deadline_ms)?;
    let size = headers_wire_len(&headers) + payload.len();
    let max = client.server_info().max_payload;
    if size > max {
        return Err(StreamError::PayloadTooLarge { size, max });
    }
    let inbox = client.new_inbox();
    let subscriber = client
        .subscribe(inbox.clone())
        .await
        .map_err(StreamError::Subscribe)?;
    publish(client, &subject, inbox, headers, payload).await?;
    Ok(FrameStream::new(
        subscriber,
        subject,
        keepalive,
        deadline_ms,
    ))
}

async fn publish(
    client: &Client,
    subject: &str,
    inbox: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<(), StreamError> {
    client
        .publish_with_reply_and_headers(subject.to_string(), inbox, headers, payload)
        .await
        .map_err(StreamError::Publish)
}

fn request_headers(
    options: &StreamOptions,
    keepalive: Duration,
    deadline_ms: u64,
) -> Result<HeaderMap, StreamError> {
    let mut headers = options.encoding.headers();
    headers.insert(
        headers::KEEPALIVE_MS,
        keepalive.as_millis().to_string().as_str(),
    );
    headers.insert(headers::DEADLINE, deadline_ms.to_string().as_str());
    for (name, value) in [
        (headers::REQUEST_ID, &options.request_id),
        (headers::TRACEPARENT, &options.traceparent),
    ] {
        if let Some(value) = value {
            // Caller-supplied text: a line break would break the protocol
            // (async-nats panics on it), so refuse it as an error.
            let value: HeaderValue =
                value
                    .parse()
                    .map_err(|e: async_nats::header::ParseHeaderValueError| {
                        StreamError::InvalidHeader {
                            header: name,
                            reason: e.to_string(),
                        }
                    })?;
            headers.insert(name, value);
        }
    }
    Ok(headers)
}

/// Size of a header block on the wire (`NATS/1.0\r\n`, `k: v\r\n`..., `\r\n`).
pub(crate) fn headers_wire_len(headers: &HeaderMap) -> usize {
    let mut len = b"NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        for value in values {
            len += AsRef::<str>::as_ref(name).len() + 2 + value.as_str().len() + 2;
        }
    }
    len
}

/// The frames of one streamed request, in order, ending after the terminal
/// frame or the first error. Dropping it unsubscribes from the inbox.
#[derive(Debug)]
pub struct FrameStream {
    subscriber: Subscriber,
    subject: String,
    expected_seq: u64,
    idle_limit: Duration,
    /// When the last message arrived; the idle timer is only re-armed when it
    /// fires, not on every frame (a timer-wheel update per frame is costly).
    last_message: Instant,
    idle: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    responder: Option<String>,
    finished: bool,
}

impl FrameStream {
    fn new(subscriber: Subscriber, subject: String, keepalive: Duration, deadline_ms: u64) -> Self {
        let idle_limit = idle_limit(keepalive);
        let left = Duration::from_millis(deadline_ms.saturating_sub(unix_ms()));
        let deadline = Box::pin(tokio::time::sleep(left));
        Self {
            subscriber,
            subject,
            expected_seq: 0,
            idle_limit,
            last_message: Instant::now(),
            idle: Box::pin(tokio::time::sleep(idle_limit)),
            deadline,
            responder: None,
            finished: false,
        }
    }

    /// The neuron that accepted the request, once its `Accepted` frame arrived.
    pub fn responder(&self) -> Option<&str> {
        self.responder.as_deref()
    }

    fn fail(&mut self, error: StreamError) -> Poll<Option<Result<Frame, StreamError>>> {
        self.finished = true;
        Poll::Ready(Some(Err(error)))
    }

    fn on_message(&mut self, message: async_nats::Message) -> Result<Frame, StreamError> {
        if let Some(status) = message.status {
            return Err(if status == async_nats::StatusCode::NO_RESPONDERS {
                StreamError::NoResponders {
                    subject: self.subject.clone(),
                }
            } else {
                StreamError::Status {
                    status: status.as_u16(),
                }
            });
        }
        let seq = headers::get_u64(message.headers.as_ref(), headers::SEQ)
            .ok_or(StreamError::MissingSeq)?;
        if seq != self.expected_seq {
            return Err(StreamError::SequenceGap {
                expected: self.expected_seq,
                got: seq,
            });
        }
        self.expected_seq += 1;
        let frame: Frame = decode_message(message.headers.as_ref(), &message.payload)?;
        if let Frame::Accepted(accepted) = &frame {
            self.responder = Some(accepted.neuron.clone());
        }
        Ok(frame)
    }
}

impl Stream for FrameStream {
    type Item = Result<Frame, StreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        // Checked first: a reader slower than its responder always finds a
        // frame waiting, and must still stop at the deadline.
        if self.deadline.is_elapsed() {
            return self.fail(StreamError::DeadlineExceeded);
        }
        match self.subscriber.poll_next_unpin(cx) {
            Poll::Ready(Some(message)) => {
                self.last_message = Instant::now();
                match self.on_message(message) {
                    Ok(frame) => {
                        self.finished = frame.is_terminal();
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Err(error) => self.fail(error),
                }
            }
            Poll::Ready(None) => self.fail(StreamError::Closed),
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    return self.fail(StreamError::DeadlineExceeded);
                }
                while self.idle.as_mut().poll(cx).is_ready() {
                    let due = self.last_message + self.idle_limit;
                    if due <= Instant::now() {
                        let silent = self.last_message.elapsed();
                        return self.fail(StreamError::Idle { silent });
                    }
                    // Messages arrived since the timer was armed: re-arm from the last one.
                    self.idle.as_mut().reset(due);
                }
                Poll::Pending
            }
        }
    }
}
