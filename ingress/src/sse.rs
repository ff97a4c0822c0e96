//! Streaming answers: a task reads the call's frames and turns them into
//! SSE events through a dialect's [`Encoder`]; the response body reads them
//! from a bounded channel. When the client goes away the body is dropped,
//! the task's next send fails, and the call's `CancelOnDrop` cancels the
//! generation on the neuron.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use cortex_schemas::{Accepted, Delta, Done, Frame};
use futures::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::auth::Caller;
use crate::call::{stream_failure, Opened};
use crate::error::{ApiError, Dialect};
use crate::state::AppState;

/// Events buffered toward a client before the pump waits for it.
const EVENT_BUFFER: usize = 64;

/// A dialect's stream shape.
pub trait Encoder: Send + 'static {
    /// Events before any output (role chunk, `message_start`, ...).
    fn start(&mut self, accepted: &Accepted) -> Vec<Event>;
    fn delta(&mut self, delta: &Delta) -> Vec<Event>;
    /// The closing events, after which the stream ends.
    fn done(&mut self, done: &Done) -> Vec<Event>;
    /// A failure after the stream began.
    fn error(&mut self, error: &ApiError) -> Vec<Event>;
}

/// An SSE event whose data is `value` as JSON, named `name` when given.
/// The name is written first (`event:` then `data:`), as Anthropic's API
/// does: hand-written clients read the name before the data.
pub fn json_event(name: Option<&str>, value: &serde_json::Value) -> Event {
    let event = match name {
        Some(name) => Event::default().event(name),
        None => Event::default(),
    };
    event.data(value.to_string())
}

/// What a stream carries along besides its frames.
#[derive(Debug)]
pub struct Context {
    /// This pod's in-flight place, held until the stream ends.
    pub permit: OwnedSemaphorePermit,
    pub caller: Caller,
    pub dialect: Dialect,
    pub started: Instant,
}

/// Streams `opened` to the client in `encoder`'s shape.
pub fn respond(
    state: &AppState,
    opened: Opened,
    encoder: impl Encoder,
    context: Context,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Event>(EVENT_BUFFER);
    tokio::spawn(pump(state.clone(), opened, encoder, tx, context));
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, Infallible>);
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn pump(
    state: AppState,
    mut opened: Opened,
    mut encoder: impl Encoder,
    tx: mpsc::Sender<Event>,
    context: Context,
) {
    let Context {
        permit: _permit,
        caller,
        dialect,
        started,
    } = context;
    let model = opened.model.clone();
    let deadline = instant_of(opened.deadline_ms);
    state.metrics.first_token(&model, started.elapsed());
    let prompt_tokens = opened.accepted.prompt_tokens.unwrap_or(0);
    let mut generated = 0u32;
    let mut last: Option<Instant> = None;
    let mut status = 200;
    let mut done = None;
    let mut events = encoder.start(&opened.accepted);
    let first = std::mem::replace(&mut opened.first, Frame::Keepalive(Default::default()));
    let mut frame = Some(first);
    'stream: loop {
        if !send_all(&tx, events.drain(..), deadline).await {
            // The client went away (or stopped reading): dropping `opened`
            // cancels the generation on the neuron.
            status = 499;
            break 'stream;
        }
        let current = match frame.take() {
            Some(frame) => frame,
            None => tokio::select! {
                next = opened.stream.next() => match next {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => {
                        // The neuron may still be generating: the cancel stays armed.
                        let error = stream_failure(&error, &model);
                        status = error.status().as_u16();
                        send_all(&tx, encoder.error(&error).into_iter(), deadline).await;
                        break;
                    }
                    None => break,
                },
                _ = tx.closed() => {
                    status = 499;
                    break;
                }
            },
        };
        match current {
            Frame::Delta(delta) => {
                if let Some(last) = last {
                    state.metrics.between_tokens(&model, last.elapsed());
                }
                last = Some(Instant::now());
                generated += delta.tokens;
                events = encoder.delta(&delta);
            }
            Frame::Done(finished) => {
                opened.cancel.disarm();
                send_all(&tx, encoder.done(&finished).into_iter(), deadline).await;
                done = Some(finished);
                break;
            }
            Frame::Error(error) => {
                opened.cancel.disarm();
                let error = ApiError::from_wire(&error);
                status = error.status().as_u16();
                send_all(&tx, encoder.error(&error).into_iter(), deadline).await;
                break;
            }
            Frame::Accepted(_) | Frame::Keepalive(_) | Frame::Embeddings(_) => {}
        }
    }
    // Whatever the ending, the tokens the neuron spent count against the caller.
    match done {
        Some(done) => state.record_done(caller, &model, &done),
        None => state.record_tokens(caller, &model, prompt_tokens, generated),
    }
    state
        .metrics
        .finished(&model, dialect.as_str(), status, started.elapsed());
}

/// Sends `events` in order; false when the client is gone or has not read
/// for so long that the request's deadline passed.
async fn send_all(
    tx: &mpsc::Sender<Event>,
    events: impl Iterator<Item = Event>,
    deadline: tokio::time::Instant,
) -> bool {
    for event in events {
        match tokio::time::timeout_at(deadline, tx.send(event)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return false,
        }
    }
    true
}

/// A unix-ms deadline as a point on the monotonic clock.
fn instant_of(deadline_ms: u64) -> tokio::time::Instant {
    let left = deadline_ms.saturating_sub(cortex_bus::headers::unix_ms());
    tokio::time::Instant::now() + Duration::from_millis(left)
}

/// The wire text of `events`, as a client receives it (tests).
#[cfg(test)]
pub async fn render(events: Vec<Event>) -> String {
    let body = futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
    let response = Sse::new(body).into_response();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("an SSE body");
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}

/// `(event name, data as JSON or the raw text)` of each event in `text`.
#[cfg(test)]
pub fn parse(text: &str) -> Vec<(Option<String>, serde_json::Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = Some(value.to_string());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push_str(value);
                }
            }
            let value = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
            (name, value)
        })
        .collect()
}
