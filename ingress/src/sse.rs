//! Streaming answers: a task reads the call's frames and turns them into
//! SSE events through a dialect's [`Encoder`]; the response body reads them
//! from a bounded channel. When the client goes away the body is dropped,
//! the task's next send fails, and the call's `CancelOnDrop` cancels the
//! generation on the neuron.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use cortex_schemas::{Accepted, Delta, Done};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::call::{Opened, Output};
use crate::error::{ApiError, Kind};
use crate::pipeline::Context;
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
    /// A failure after the stream began (perhaps before [`Encoder::start`],
    /// when a cold load failed).
    fn error(&mut self, error: &ApiError) -> Vec<Event>;
    /// Keeps a silent stream alive: by default an SSE comment saying what
    /// it waits for (clients skip comments; `curl` shows them).
    fn keepalive(&mut self, waiting: &Waiting<'_>) -> Vec<Event> {
        vec![Event::default().comment(waiting.to_string())]
    }
}

/// An SSE event whose data is `value` as JSON, named `name` when given.
/// The name is written first (`event:` then `data:`), as Anthropic's API
/// does: hand-written clients read the name before the data.
pub fn json_event(name: Option<&str>, value: &impl Serialize) -> Event {
    let event = match name {
        Some(name) => Event::default().event(name),
        None => Event::default(),
    };
    match serde_json::to_string(value) {
        Ok(data) => event.data(data),
        Err(error) => event.data(format!("{{\"error\":\"unencodable event: {error}\"}}")),
    }
}

/// How a stream begins: with its call open, or still waiting for a cold
/// load (the response has begun so that the client sees the progress).
pub enum Start {
    Opened(Box<Opened>),
    Loading {
        model: String,
        opening: Pin<Box<dyn Future<Output = Result<Opened, ApiError>> + Send>>,
    },
}

impl fmt::Debug for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Opened(opened) => f.debug_tuple("Opened").field(opened).finish(),
            Self::Loading { model, .. } => f.debug_struct("Loading").field("model", model).finish(),
        }
    }
}

/// What a silent stream waits for, told by [`Encoder::keepalive`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Waiting<'a> {
    /// A cold load of `model`; `progress` (0..=1) when a neuron reports it.
    Loading {
        model: &'a str,
        progress: Option<f64>,
    },
    /// The next output: queued, reading the prompt, or resuming elsewhere.
    Output,
}

impl fmt::Display for Waiting<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loading {
                model,
                progress: Some(progress),
            } => write!(f, "loading {model}: {:.0}%", progress * 100.0),
            Self::Loading { model, .. } => write!(f, "loading {model}"),
            Self::Output => f.write_str("waiting"),
        }
    }
}

/// A stream silent this long gets a keepalive (a comment, or the
/// dialect's `ping`), so clients and proxies see it alive and can show a
/// cold load's progress.
pub const KEEPALIVE: Duration = Duration::from_secs(1);

/// How often a cold-loading stream tells the load's progress.
const LOAD_NOTES: Duration = Duration::from_millis(500);

/// Streams a call to the client in `encoder`'s shape; `permit` (this pod's
/// in-flight place) is held until the stream ends.
pub fn respond(
    state: &AppState,
    start: Start,
    encoder: impl Encoder,
    context: Context,
    permit: OwnedSemaphorePermit,
    deadline_ms: u64,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Event>(EVENT_BUFFER);
    let state = state.clone();
    tokio::spawn(async move {
        let mut encoder = encoder;
        let deadline = instant_of(deadline_ms);
        let opened = match start {
            Start::Opened(opened) => Some(*opened),
            Start::Loading { model, opening } => {
                let waiting = || Waiting::Loading {
                    model: &model,
                    progress: state.fleet.load_progress(&model),
                };
                loaded(
                    &state,
                    opening,
                    waiting,
                    &mut encoder,
                    &tx,
                    &context,
                    deadline,
                )
                .await
            }
        };
        if let Some(opened) = opened {
            pump(&state, opened, encoder, &tx, &context, deadline).await;
        }
        drop(permit);
    });
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, Infallible>);
    Sse::new(body).into_response()
}

/// Waits for a cold-loading call to open, with progress keepalives; a
/// failure (or the client leaving) ends the stream and is accounted here.
async fn loaded<'w>(
    state: &AppState,
    opening: Pin<Box<dyn Future<Output = Result<Opened, ApiError>> + Send>>,
    waiting: impl Fn() -> Waiting<'w>,
    encoder: &mut impl Encoder,
    tx: &mpsc::Sender<Event>,
    context: &Context,
    deadline: tokio::time::Instant,
) -> Option<Opened> {
    // The first note goes out at once: the client learns why it waits.
    if !send_all(tx, encoder.keepalive(&waiting()).into_iter(), deadline).await {
        context.finish(state, cancelled(), (0, 0));
        return None;
    }
    let timer = std::pin::pin!(tokio::time::sleep(LOAD_NOTES));
    let notes = with_keepalives(opening, LOAD_NOTES, timer, encoder, waiting, tx, deadline);
    let status = match notes.await {
        Some(Ok(opened)) => {
            context.first_token(state);
            return Some(opened);
        }
        Some(Err(error)) => {
            send_all(tx, encoder.error(&error).into_iter(), deadline).await;
            error.status().as_u16()
        }
        None => cancelled(),
    };
    context.finish(state, status, (0, 0));
    None
}

/// Awaits `work`, sending `encoder`'s keepalive after each `every` of
/// silence; `None` when the client went away meanwhile. `timer` is the
/// stream's one keepalive timer, reset here rather than made anew for
/// every token.
async fn with_keepalives<'w, T>(
    work: impl Future<Output = T>,
    every: Duration,
    mut timer: Pin<&mut tokio::time::Sleep>,
    encoder: &mut impl Encoder,
    waiting: impl Fn() -> Waiting<'w>,
    tx: &mpsc::Sender<Event>,
    deadline: tokio::time::Instant,
) -> Option<T> {
    let mut work = std::pin::pin!(work);
    timer.as_mut().reset(tokio::time::Instant::now() + every);
    loop {
        tokio::select! {
            output = &mut work => return Some(output),
            () = timer.as_mut() => {
                if !send_all(tx, encoder.keepalive(&waiting()).into_iter(), deadline).await {
                    return None;
                }
                timer.as_mut().reset(tokio::time::Instant::now() + every);
            }
            () = tx.closed() => return None,
        }
    }
}

async fn pump(
    state: &AppState,
    mut opened: Opened,
    mut encoder: impl Encoder,
    tx: &mpsc::Sender<Event>,
    context: &Context,
    deadline: tokio::time::Instant,
) {
    let label = &context.label;
    let mut last: Option<Instant> = None;
    let mut status = 200;
    let mut done = None;
    let mut events = encoder.start(&opened.accepted);
    let mut timer = std::pin::pin!(tokio::time::sleep(KEEPALIVE));
    loop {
        if !send_all(tx, events.drain(..), deadline).await {
            // The client went away (or stopped reading): dropping `opened`
            // cancels the generation on the neuron.
            status = cancelled();
            break;
        }
        let next = with_keepalives(
            opened.next(),
            KEEPALIVE,
            timer.as_mut(),
            &mut encoder,
            || Waiting::Output,
            tx,
            deadline,
        );
        let Some(output) = next.await else {
            status = cancelled();
            break;
        };
        match output {
            Some(Output::Delta(delta)) => {
                if let Some(last) = last {
                    state.metrics.between_tokens(label, last.elapsed());
                }
                last = Some(Instant::now());
                events = encoder.delta(&delta);
            }
            Some(Output::Done(finished)) => {
                send_all(tx, encoder.done(&finished).into_iter(), deadline).await;
                done = Some(finished);
                break;
            }
            Some(Output::Failed(error)) => {
                status = error.status().as_u16();
                send_all(tx, encoder.error(&error).into_iter(), deadline).await;
                break;
            }
            None => break,
        }
    }
    // Whatever the ending, the tokens the neuron spent count against the caller.
    let tokens = match done {
        Some(done) => {
            state.record_done(context.caller, label, &done);
            (done.usage.prompt_tokens, done.usage.completion_tokens)
        }
        None => {
            let (prompt, generated) = opened.spent();
            state.record_tokens(context.caller, label, prompt, generated);
            (prompt, generated)
        }
    };
    context.finish(state, status, tokens);
}

/// The status a stream the client left is counted under (499).
fn cancelled() -> u16 {
    ApiError::new(Kind::Cancelled, "the client went away")
        .status()
        .as_u16()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::chat::ChunkEncoder;

    fn encoder() -> ChunkEncoder {
        ChunkEncoder {
            id: "chatcmpl-1".into(),
            model: "m".into(),
            created: 1,
            include_usage: false,
            logprobs: false,
        }
    }

    /// `work` behind keepalives each second, with a minute's deadline.
    async fn waited<T>(
        work: impl Future<Output = T>,
        encoder: &mut ChunkEncoder,
        tx: &mpsc::Sender<Event>,
    ) -> Option<T> {
        let timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let every = Duration::from_secs(1);
        with_keepalives(
            work,
            every,
            timer,
            encoder,
            || Waiting::Output,
            tx,
            deadline,
        )
        .await
    }

    /// On tokio's paused clock: 3.5 s of silence before the work ends get
    /// three keepalives, one a second, and then the work's output.
    #[tokio::test(start_paused = true)]
    async fn silence_gets_a_keepalive_each_period_until_the_work_ends() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut encoder = encoder();
        let started = tokio::time::Instant::now();
        let work = async {
            tokio::time::sleep(Duration::from_millis(3_500)).await;
            "done"
        };
        assert_eq!(waited(work, &mut encoder, &tx).await, Some("done"));
        assert_eq!(started.elapsed(), Duration::from_millis(3_500));
        drop(tx);
        let mut keepalives = Vec::new();
        while let Some(event) = rx.recv().await {
            keepalives.push(event);
        }
        assert_eq!(keepalives.len(), 3);
        let text = render(keepalives).await;
        assert!(
            text.lines().all(|l| l.is_empty() || l.starts_with(':')),
            "{text:?}"
        );
    }

    /// A client gone while the work waits ends the wait at once.
    #[tokio::test(start_paused = true)]
    async fn a_client_gone_ends_the_wait() {
        let (tx, rx) = mpsc::channel(16);
        drop(rx);
        let mut encoder = encoder();
        let work = std::future::pending::<()>();
        assert_eq!(waited(work, &mut encoder, &tx).await, None);
    }
}
