//! A stream that outlives its neuron: when the neuron serving a generation
//! goes silent, drops the stream, or gives up on it (stopping, draining,
//! unloading) after the first token, the call is sent again to another
//! replica with the ids of every token already streamed
//! (`GenerateRequest::resume`). That neuron takes them as its own output
//! so far (KV cache, sampler position, parsers) and goes on: the client's
//! stream continues where it stopped, with nothing repeated or missing,
//! greedy and seeded output as if nothing had happened, and one `Done`
//! whose usage counts every token once.
//!
//! Never resumed: a client that went away (its call is dropped), a passed
//! deadline, a request the neuron refused, and any call past
//! `--attempts` resumes. When no replica takes it, the stream ends with
//! the dialect's error as before.

use std::time::{Duration, Instant};

use cortex_bus::{NeuronOp, StreamError};
use cortex_schemas::{ErrorClass, GenerateRequest, InferRequest, WireError};

use crate::call::{open_avoiding, Opened};
use crate::error::ApiError;
use crate::state::AppState;

/// What a generation needs to go on elsewhere.
#[derive(Debug)]
pub struct Resume {
    state: AppState,
    request: GenerateRequest,
    /// Ids of the tokens streamed so far.
    pub(crate) ids: Vec<u32>,
    resumes: u32,
    /// The status subject of the neuron serving the stream (worked out
    /// once per neuron, not per frame); `None` when no neuron is named.
    probe: Option<String>,
}

/// Silence after which the neuron serving a stream is asked whether it is
/// still there (its status subject): a killed neuron's subscriptions go
/// with its connection, so "no responders" comes back at once, and the
/// stream moves without waiting out the bus's idle limit (2.5 s).
const PROBE_AFTER: Duration = Duration::from_millis(400);
/// How long a probe waits; no answer in time proves nothing.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Resolves once the neuron serving the stream is known to be gone;
/// never while it answers.
pub(crate) async fn gone(resume: &Resume) {
    let Some(subject) = &resume.probe else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PROBE_AFTER).await;
        let probe = resume.state.client.request(subject.clone(), "{}".into());
        if let Ok(Err(error)) = tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            if error.kind() == async_nats::RequestErrorKind::NoResponders {
                tracing::debug!(%subject, "the neuron serving a stream is gone");
                return;
            }
        }
    }
}

fn probe_subject(state: &AppState, neuron: &str) -> Option<String> {
    (!neuron.is_empty()).then(|| state.subjects.neuron(neuron, NeuronOp::Status))
}

/// A bus failure that means the neuron stopped answering.
pub(crate) fn after_silence(error: &StreamError) -> bool {
    matches!(
        error,
        StreamError::Idle { .. } | StreamError::SequenceGap { .. } | StreamError::Closed
    )
}

/// An `Error` frame from a neuron that gave up on a healthy request.
pub(crate) fn after_error(error: &WireError) -> bool {
    matches!(error.class, ErrorClass::Unavailable | ErrorClass::Cancelled)
}

impl Opened {
    /// Makes this generation resumable (`request` is what was sent).
    pub fn resumable(mut self, state: &AppState, request: GenerateRequest) -> Self {
        self.resume = Some(Resume {
            probe: probe_subject(state, &self.accepted.neuron),
            state: state.clone(),
            request,
            ids: Vec::new(),
            resumes: 0,
        });
        self
    }

    /// Tries to carry the generation over to another replica after
    /// `failure`; true when the stream goes on.
    pub(crate) async fn resume(&mut self, failure: &ApiError) -> bool {
        let Some(resume) = self.resume.as_mut() else {
            return false;
        };
        let state = resume.state.clone();
        // Every streamed token must be known by id, or text would repeat.
        let known = !resume.ids.is_empty() && resume.ids.len() == self.generated as usize;
        let in_time = cortex_bus::headers::unix_ms() < self.deadline_ms;
        if !known || !in_time || resume.resumes >= state.config.attempts {
            state.metrics.resumed(&self.model, "refused");
            return false;
        }
        resume.resumes += 1;
        let mut request = resume.request.clone();
        request.resume = resume.ids.clone();
        let tokens = request.resume.len();
        let from = self.accepted.neuron.clone();
        let started = Instant::now();
        let call = InferRequest::Generate(Box::new(request));
        match open_avoiding(&state, &call, self.deadline_ms, vec![from.clone()], None).await {
            Ok(next) => {
                tracing::warn!(
                    request_id = %self.accepted.request_id,
                    model = %self.model,
                    from = %from,
                    to = %next.accepted.neuron,
                    tokens,
                    pause_ms = started.elapsed().as_millis() as u64,
                    cause = %failure,
                    "stream resumed on another replica"
                );
                state.metrics.resumed(&self.model, "resumed");
                resume.probe = probe_subject(&state, &next.accepted.neuron);
                // The old guard cancels on the old neuron, should it still run.
                self.stream = next.stream;
                self.cancel = next.cancel;
                self.first = next.first;
                self.routed = next.routed;
                self.accepted.neuron = next.accepted.neuron;
                true
            }
            Err(error) => {
                tracing::warn!(
                    request_id = %self.accepted.request_id,
                    model = %self.model,
                    from = %from,
                    tokens,
                    %error,
                    cause = %failure,
                    "stream could not be resumed"
                );
                state.metrics.resumed(&self.model, "failed");
                false
            }
        }
    }
}
