//! One inference call over the bus, as the stream protocol asks
//! (`cortex_bus::stream`):
//! publish on the model's queue subject; before the first output, retry an
//! overloaded, cancelled or vanished replica on another one (directed
//! subject) within the attempts and the deadline. "No responders" means no
//! neuron holds the model: the call asks placement to `ensure` it (a cold
//! load, single-flight across the mesh) once, within the deadline, and
//! tries again. From the moment a neuron accepts, the call
//! carries a [`CancelOnDrop`]: if the client goes away (or the call moves
//! to another replica) before the end, that neuron is told to cancel.

use std::time::Duration;

use async_nats::Client;
use cortex_bus::{
    send_cancel, stream_request, FrameStream, ModelToken, NeuronOp, StreamError, StreamOptions,
    Subjects,
};
use cortex_schemas::{Accepted, Delta, Done, ErrorClass, Frame, InferRequest};
use futures::StreamExt;

use crate::error::{ApiError, Kind};
use crate::state::AppState;

/// A call that has produced its first output. Read it with
/// [`Opened::next`] (generations) or [`Opened::into_first`] (one-frame
/// answers: embeddings, counts).
#[derive(Debug)]
pub struct Opened {
    /// The model id the call named.
    pub model: String,
    pub accepted: Accepted,
    /// The first `Delta`, `Done` or `Embeddings` frame, until read.
    pub(crate) first: Option<Frame>,
    pub(crate) stream: FrameStream,
    pub(crate) cancel: CancelOnDrop,
    /// Unix ms after which the call is over.
    pub deadline_ms: u64,
    /// Tokens generated so far (from the deltas read).
    pub(crate) generated: u32,
    /// A terminal output was returned: [`Opened::next`] gives `None`.
    pub(crate) ended: bool,
    /// What it takes to go on elsewhere if the neuron fails mid-stream
    /// ([`crate::resume`]); `None` for calls that cannot be resumed.
    pub(crate) resume: Option<crate::resume::Resume>,
    /// Counts the call against its neuron in this pod's routing view.
    pub(crate) routed: Option<crate::route::InFlight>,
}

/// One output of a generation, as [`Opened::next`] reads it.
#[derive(Debug)]
pub enum Output {
    Delta(Delta),
    /// The end: nothing follows.
    Done(Done),
    /// The end, failed: an `Error` frame, or the bus lost the stream.
    Failed(ApiError),
}

impl Opened {
    /// The next output, keepalives skipped; `None` once the end was read.
    /// Cancel-safe: dropping the future loses no frame. A neuron that
    /// ends the stream (done or error) is not cancelled afterwards; one
    /// that went silent stays armed for cancel, as it may still generate.
    pub async fn next(&mut self) -> Option<Output> {
        if self.ended {
            return None;
        }
        loop {
            let frame = match self.first.take() {
                Some(frame) => frame,
                None => match self.next_frame().await {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => {
                        let failed = stream_failure(&error, &self.model);
                        if crate::resume::after_silence(&error) && self.resume(&failed).await {
                            continue;
                        }
                        self.ended = true;
                        return Some(Output::Failed(failed));
                    }
                    None => {
                        let failed = stream_failure(&StreamError::Closed, &self.model);
                        if self.resume(&failed).await {
                            continue;
                        }
                        self.ended = true;
                        return Some(Output::Failed(failed));
                    }
                },
            };
            match frame {
                Frame::Delta(delta) => {
                    self.generated += delta.tokens;
                    if let Some(resume) = &mut self.resume {
                        resume.ids.extend_from_slice(&delta.ids);
                    }
                    return Some(Output::Delta(delta));
                }
                Frame::Done(done) => {
                    self.ended = true;
                    self.cancel.disarm();
                    return Some(Output::Done(done));
                }
                Frame::Error(error) => {
                    self.cancel.disarm();
                    let failed = ApiError::from_wire(&error);
                    if crate::resume::after_error(&error) && self.resume(&failed).await {
                        continue;
                    }
                    self.ended = true;
                    return Some(Output::Failed(failed));
                }
                Frame::Accepted(_) | Frame::Keepalive(_) | Frame::Embeddings(_) => {}
            }
        }
    }

    /// The next frame; for a resumable generation, a neuron found gone
    /// (see [`crate::resume::gone`]) ends the stream at once rather than
    /// after the bus's idle limit.
    async fn next_frame(&mut self) -> Option<Result<Frame, StreamError>> {
        let Some(resume) = &self.resume else {
            return self.stream.next().await;
        };
        let watch = crate::resume::gone(resume);
        tokio::select! {
            frame = self.stream.next() => frame,
            () = watch => Some(Err(StreamError::Closed)),
        }
    }

    /// `(prompt, generated)` tokens so far: what a generation that ends
    /// without its `Done` still cost the caller.
    pub fn spent(&self) -> (u32, u32) {
        (self.accepted.prompt_tokens.unwrap_or(0), self.generated)
    }

    /// The one frame of a single-answer call (embeddings, token counts).
    pub fn into_first(mut self) -> Option<Frame> {
        self.cancel.disarm();
        self.first.take()
    }
}

/// Sends a cancel to the accepting neuron when dropped, unless disarmed.
#[derive(Debug)]
pub struct CancelOnDrop {
    client: Client,
    subjects: Subjects,
    neuron: String,
    request_id: String,
    armed: bool,
}

impl CancelOnDrop {
    fn new(state: &AppState, neuron: &str, request_id: &str) -> Self {
        Self {
            client: state.client.clone(),
            subjects: state.subjects.clone(),
            neuron: neuron.to_string(),
            request_id: request_id.to_string(),
            armed: !neuron.is_empty(),
        }
    }

    /// The call ended on the neuron's side: nothing to cancel.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (client, subjects) = (self.client.clone(), self.subjects.clone());
        let (neuron, request_id) = (self.neuron.clone(), self.request_id.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tracing::debug!(%neuron, %request_id, "call abandoned: cancelling");
                if let Err(error) = send_cancel(&client, &subjects, &neuron, &request_id).await {
                    tracing::warn!(%error, "cancel not sent");
                }
            });
        }
    }
}

/// Longest pause between attempts when no other replica is known.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Sends `request` and waits for its first output, retrying before it.
pub async fn open(
    state: &AppState,
    request: &InferRequest,
    deadline_ms: u64,
) -> Result<Opened, ApiError> {
    open_avoiding(state, request, deadline_ms, Vec::new(), None).await
}

/// As [`open`], telling `cold` when the call starts to wait for a cold
/// load (a stream then begins at once, with progress, rather than after it).
pub async fn open_announcing(
    state: &AppState,
    request: &InferRequest,
    deadline_ms: u64,
    cold: tokio::sync::oneshot::Sender<()>,
) -> Result<Opened, ApiError> {
    open_avoiding(state, request, deadline_ms, Vec::new(), Some(cold)).await
}

/// As [`open`], but away from the neurons in `avoid` (a resume leaves the
/// one that failed): the first attempt goes to another replica's directed
/// subject when the fleet knows one, else to the queue group.
pub(crate) async fn open_avoiding(
    state: &AppState,
    request: &InferRequest,
    deadline_ms: u64,
    avoid: Vec<String>,
    mut cold: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<Opened, ApiError> {
    let model = request.model().to_string();
    let token = ModelToken::new(&model).map_err(|e| ApiError::invalid("model", e.to_string()))?;
    let options = StreamOptions {
        request_id: Some(request.request_id().to_string()),
        deadline_ms: Some(deadline_ms),
        keepalive: state.config.keepalive,
        max_duration: state.config.request_timeout,
        ..StreamOptions::default()
    };
    let avoiding = !avoid.is_empty();
    let mut tried: Vec<String> = avoid;
    let mut last = None;
    let attempts = state.config.attempts;
    let mut ensured = false;
    let mut decided = false;
    let mut attempt = 0;
    while attempt < attempts {
        let (directed, routed) = if attempt == 0 && !avoiding {
            // The first attempt goes where the routing view says.
            let decision = state.routes.choose(&state.fleet, request);
            if !decided {
                state
                    .metrics
                    .routed(decision.reason, decision.matched_blocks);
                decided = true;
            }
            (decision.neuron, decision.call)
        } else {
            // Rotate over the replicas not tried yet.
            let others = state.fleet.other_replicas(&model, &tried);
            let neuron =
                (!others.is_empty()).then(|| others[attempt as usize % others.len()].clone());
            let routed = neuron.as_deref().map(|n| state.routes.count(n));
            (neuron, routed)
        };
        let subject = match &directed {
            Some(neuron) => state.subjects.neuron(neuron, NeuronOp::Infer),
            None => state.subjects.infer(&token),
        };
        let opened = match stream_request(&state.client, subject, request, &options).await {
            Ok(stream) => Ok(stream),
            Err(StreamError::NoResponders { .. }) if directed.is_none() => Err(()),
            Err(error) => return Err(stream_failure(&error, &model)),
        };
        let stream = match opened {
            Ok(stream) => stream,
            Err(()) if !ensured => {
                if let Some(cold) = cold.take() {
                    let _ = cold.send(());
                }
                crate::cold::ensure(state, &model, deadline_ms).await?;
                ensured = true;
                continue;
            }
            Err(()) => return Err(not_loaded(&model)),
        };
        let outcome = first_output(
            state,
            stream,
            request,
            &model,
            directed.is_some(),
            deadline_ms,
        )
        .await;
        match outcome {
            Ok(mut opened) => {
                // A pick of the queue group is counted once it is known.
                let neuron = &opened.accepted.neuron;
                opened.routed = match routed {
                    Some(call) if call.neuron() == neuron => Some(call),
                    _ if neuron.is_empty() => None,
                    _ => Some(state.routes.count(neuron)),
                };
                return Ok(opened);
            }
            Err(Attempt::NotLoaded) if !ensured => {
                if let Some(cold) = cold.take() {
                    let _ = cold.send(());
                }
                crate::cold::ensure(state, &model, deadline_ms).await?;
                ensured = true;
                continue;
            }
            Err(Attempt::NotLoaded) => return Err(not_loaded(&model)),
            Err(Attempt::Final(error)) => return Err(error),
            Err(Attempt::Retry { error, neuron }) => {
                tracing::debug!(attempt, %model, %error, "retrying on another replica");
                if let Some(neuron) = neuron.or(directed) {
                    tried.push(neuron);
                }
                let last_attempt = attempt + 1 == attempts;
                if !last_attempt && state.fleet.other_replicas(&model, &tried).is_empty() {
                    let hint = error.retry_after_s.map_or(MAX_BACKOFF, Duration::from_secs);
                    tokio::time::sleep(hint.min(MAX_BACKOFF) * (attempt + 1)).await;
                }
                last = Some(error);
            }
        }
        attempt += 1;
        if cortex_bus::headers::unix_ms() >= deadline_ms {
            return Err(ApiError::new(
                Kind::Timeout,
                "the request's deadline passed",
            ));
        }
    }
    Err(last.unwrap_or_else(|| ApiError::new(Kind::Unavailable, "no attempt was made")))
}

enum Attempt {
    Retry {
        error: ApiError,
        neuron: Option<String>,
    },
    /// Nobody listens on the model's subject.
    NotLoaded,
    Final(ApiError),
}

/// Reads frames up to the first output; decides whether a failure is worth
/// another replica. A neuron that accepted and is left behind (retry, or
/// the caller dropped this future) is cancelled by the guard.
async fn first_output(
    state: &AppState,
    mut stream: FrameStream,
    request: &InferRequest,
    model: &str,
    directed: bool,
    deadline_ms: u64,
) -> Result<Opened, Attempt> {
    let mut accepted: Option<(Accepted, CancelOnDrop)> = None;
    loop {
        let neuron = accepted.as_ref().map(|(a, _)| a.neuron.clone());
        match stream.next().await {
            Some(Ok(Frame::Accepted(a))) => {
                let guard = CancelOnDrop::new(state, &a.neuron, request.request_id());
                accepted = Some((a, guard));
            }
            Some(Ok(Frame::Keepalive(_))) => {}
            Some(Ok(frame @ (Frame::Delta(_) | Frame::Done(_) | Frame::Embeddings(_)))) => {
                let (accepted, mut cancel) = accepted.unwrap_or_else(|| {
                    let accepted = Accepted {
                        neuron: String::new(),
                        request_id: request.request_id().to_string(),
                        queue_position: 0,
                        prompt_tokens: None,
                    };
                    let guard = CancelOnDrop::new(state, "", request.request_id());
                    (accepted, guard)
                });
                if frame.is_terminal() {
                    cancel.disarm();
                }
                return Ok(Opened {
                    model: model.to_string(),
                    accepted,
                    first: Some(frame),
                    stream,
                    cancel,
                    deadline_ms,
                    generated: 0,
                    ended: false,
                    resume: None,
                    routed: None,
                });
            }
            Some(Ok(Frame::Error(error))) => {
                if let Some((_, guard)) = accepted.as_mut() {
                    guard.disarm();
                }
                let api = ApiError::from_wire(&error);
                let retry = match error.class {
                    ErrorClass::Overloaded | ErrorClass::Unavailable | ErrorClass::Cancelled => {
                        true
                    }
                    // A directed replica chosen from heartbeats may have unloaded the model since.
                    ErrorClass::ModelNotFound => directed,
                    _ => false,
                };
                return Err(if retry {
                    Attempt::Retry { error: api, neuron }
                } else {
                    Attempt::Final(api)
                });
            }
            Some(Err(StreamError::NoResponders { .. })) if directed => {
                // A directed subject without a listener: that neuron is gone.
                return Err(Attempt::Retry {
                    error: not_loaded(model),
                    neuron: None,
                });
            }
            Some(Err(StreamError::NoResponders { .. })) => return Err(Attempt::NotLoaded),
            Some(Err(
                StreamError::Idle { .. } | StreamError::SequenceGap { .. } | StreamError::Closed,
            )) => {
                return Err(Attempt::Retry {
                    error: ApiError::new(
                        Kind::Unavailable,
                        format!("the neuron serving {model:?} stopped answering"),
                    ),
                    neuron,
                })
            }
            Some(Err(error)) => return Err(Attempt::Final(stream_failure(&error, model))),
            None => {
                return Err(Attempt::Retry {
                    error: ApiError::new(Kind::Unavailable, "the stream ended without an answer"),
                    neuron,
                })
            }
        }
    }
}

pub(crate) fn not_loaded(model: &str) -> ApiError {
    ApiError::new(
        Kind::Unavailable,
        format!("model {model:?} is not loaded on any neuron"),
    )
}

/// A bus failure as the client sees it.
pub fn stream_failure(error: &StreamError, model: &str) -> ApiError {
    match error {
        StreamError::NoResponders { .. } => not_loaded(model),
        StreamError::PayloadTooLarge { size, max } => ApiError::new(
            Kind::TooLarge,
            format!("the request is {size} bytes on the bus; the limit is {max}"),
        ),
        StreamError::DeadlineExceeded => {
            ApiError::new(Kind::Timeout, "the request's deadline passed")
        }
        StreamError::Idle { .. }
        | StreamError::SequenceGap { .. }
        | StreamError::MissingSeq
        | StreamError::Closed => ApiError::new(
            Kind::Unavailable,
            format!("the neuron serving {model:?} stopped answering"),
        ),
        StreamError::InvalidHeader { header, reason } => {
            ApiError::invalid(*header, format!("invalid {header}: {reason}"))
        }
        // NATS itself is unreachable or refused: the mesh, not the request.
        StreamError::Subscribe(_) | StreamError::Publish(_) | StreamError::Sync(_) => {
            ApiError::new(
                Kind::Unavailable,
                format!("the message bus failed: {error}"),
            )
        }
        other => ApiError::new(Kind::Internal, format!("bus failure: {other}")),
    }
}
