//! The one generation pipeline every text API goes through: admit → read
//! the body → resolve the alias → translate to the wire `GenerateRequest`
//! → open the bus call → stream it or read it whole. An API (OpenAI chat,
//! legacy completions, Responses, Anthropic Messages) is an [`Api`]: its
//! request type, its translation, and an [`Answer`] that writes the
//! result in its shape. Failures become the dialect's error response in
//! one place ([`fail`]).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cortex_schemas::{GenerateRequest, InferRequest};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::auth::Caller;
use crate::error::{ApiError, Dialect, DialectError};
use crate::generation::{collect, Collected};
use crate::metrics::Label;
use crate::recent::Finished;
use crate::sse::{Encoder, Start};
use crate::state::AppState;

/// An HTTP API that generates text.
pub trait Api: Send + Sync + 'static {
    /// The request body as clients send it.
    type Request: DeserializeOwned + Send + 'static;
    /// Writes the answer, streamed or whole.
    type Answer: Answer;
    /// How its errors are written.
    const DIALECT: Dialect;

    /// The model the request names (an alias is resolved in place).
    fn model(request: &mut Self::Request) -> &mut String;

    /// The wire request and the answer's writer, or the field at fault.
    fn translate(
        request: Self::Request,
        deadline_ms: u64,
    ) -> Result<Translated<Self::Answer>, ApiError>;
}

/// What [`Api::translate`] makes of a request.
#[derive(Debug)]
pub struct Translated<A> {
    pub generate: GenerateRequest,
    /// Server-sent events rather than one JSON body.
    pub stream: bool,
    pub answer: A,
}

/// An API's answer: a stream encoder that can also write the whole
/// generation as one body.
pub trait Answer: Encoder {
    fn whole(self, collected: Collected) -> Response;
}

/// The axum handler of any [`Api`].
pub async fn handle<A: Api>(
    State(state): State<AppState>,
    caller_ext: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut model = String::new();
    let result = serve::<A>(
        &state,
        caller(caller_ext),
        &headers,
        body,
        started,
        &mut model,
    )
    .await;
    match result {
        Ok(response) => response,
        Err(error) => fail(&state, A::DIALECT, &model, started, error),
    }
}

/// `model` is filled in as soon as the body names it, for the metrics of
/// a failure.
async fn serve<A: Api>(
    state: &AppState,
    caller: Caller,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
    model: &mut String,
) -> Result<Response, ApiError> {
    let permit = state.admit()?;
    let mut request: A::Request =
        crate::body::read_json(body, state.config.body_limit, state.config.body_timeout).await?;
    // Aliases become catalogue ids before anything is sent.
    let named = A::model(&mut request);
    *named = state.catalog.resolve(named);
    model.clone_from(named);
    let deadline = state.deadline_ms(headers);
    let Translated {
        mut generate,
        stream,
        answer,
    } = A::translate(request, deadline)?;
    generate.tenant = state.keys.tenant(caller);
    generate.priority = priority(headers)?;
    if generate.priority > 0 && !state.keys.is_operator(caller) {
        // A raised priority jumps every key's queue: operators only.
        return Err(ApiError::new(
            crate::error::Kind::Forbidden,
            "a cortex-priority above 0 needs an operator key (--admin-keys); lower ones anyone may ask",
        ));
    }
    let context = Context::new(state, caller, A::DIALECT, started, model, stream);
    let (cold_tx, cold_rx) = oneshot::channel();
    let mut opening = Box::pin(open_generation(state.clone(), generate, deadline, cold_tx));
    if stream {
        // A stream that waits for a cold load of a model the catalogue
        // knows begins at once, its keepalives telling the load's progress;
        // an error in the first moments (no room, a failed load) still
        // gets its HTTP status.
        let loading = async {
            if cold_rx.await.is_ok() {
                tokio::time::sleep(COLD_GRACE).await;
                if state.catalog.knows(model) {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            opened = &mut opening => {
                context.first_token(state);
                let opened = opened?;
                let neuron = opened.accepted.neuron.clone();
                let start = Start::Opened(Box::new(opened));
                let response = crate::sse::respond(state, start, answer, context, permit, deadline);
                return Ok(served_by(response, &neuron));
            }
            () = loading => {
                tracing::debug!(model = %model, "streaming while the model loads");
                let start = Start::Loading { model: model.clone(), opening };
                return Ok(crate::sse::respond(state, start, answer, context, permit, deadline));
            }
        }
    }
    let opened = opening.await?;
    context.first_token(state);
    let neuron = opened.accepted.neuron.clone();
    let collected = collect_whole(state, opened, &context).await?;
    Ok(served_by(answer.whole(collected), &neuron))
}

/// Names the neuron that took the request in a `cortex-neuron` header
/// (for operators and routing tests; a resumed stream's later replica is
/// not in it).
fn served_by(mut response: Response, neuron: &str) -> Response {
    if let Ok(value) = axum::http::HeaderValue::from_str(neuron) {
        if !neuron.is_empty() {
            response.headers_mut().insert("cortex-neuron", value);
        }
    }
    response
}

/// The `cortex-priority` header: an integer from -128 to 127 (default 0);
/// higher goes first in a neuron's queue. Above 0 needs an operator key
/// (or a mesh without keys), since it goes ahead of every tenant.
fn priority(headers: &HeaderMap) -> Result<i8, ApiError> {
    let Some(value) = headers.get("cortex-priority") else {
        return Ok(0);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i8>().ok())
        .ok_or_else(|| {
            ApiError::invalid(
                "cortex-priority",
                "the cortex-priority header must be an integer from -128 to 127",
            )
        })
}

/// How long a cold-loading stream waits before it begins: placement's
/// quick refusals (no neuron has room, unknown file) come back first.
const COLD_GRACE: Duration = Duration::from_millis(250);

/// Opens a resumable generation; `cold` is told when it waits for a load.
async fn open_generation(
    state: AppState,
    generate: GenerateRequest,
    deadline_ms: u64,
    cold: oneshot::Sender<()>,
) -> Result<crate::call::Opened, ApiError> {
    let request = InferRequest::Generate(Box::new(generate));
    let opened = crate::call::open_announcing(&state, &request, deadline_ms, cold).await?;
    Ok(match request {
        InferRequest::Generate(generate) => opened.resumable(&state, *generate),
        _ => opened,
    })
}

/// What the end of a request needs to account for it.
#[derive(Debug)]
pub struct Context {
    pub caller: Caller,
    pub dialect: Dialect,
    pub started: Instant,
    pub label: Label,
    /// The catalogue id the request named.
    pub model: String,
    pub stream: bool,
    /// Milliseconds to the first token, once it came.
    first_token: OnceLock<u64>,
}

impl Context {
    pub fn new(
        state: &AppState,
        caller: Caller,
        dialect: Dialect,
        started: Instant,
        model: &str,
        stream: bool,
    ) -> Self {
        Self {
            caller,
            dialect,
            started,
            label: state.metrics.label(model),
            model: model.to_string(),
            stream,
            first_token: OnceLock::new(),
        }
    }

    /// The first token came now: its latency in metrics and for `recent`.
    pub fn first_token(&self, state: &AppState) {
        let after = self.started.elapsed();
        state.metrics.first_token(&self.label, after);
        let _ = self.first_token.set(after.as_millis() as u64);
    }

    /// The request ended with `status` having spent `tokens` (prompt,
    /// generated): counted in metrics and kept among the pod's recent ones.
    pub fn finish(&self, state: &AppState, status: u16, tokens: (u32, u32)) {
        let elapsed = self.started.elapsed();
        let api = self.dialect.as_str();
        state.metrics.finished(&self.label, api, status, elapsed);
        state.recent.push(Finished {
            at_ms: cortex_bus::headers::unix_ms(),
            model: self.model.clone(),
            api,
            stream: self.stream,
            status,
            ttft_ms: self.first_token.get().copied(),
            prompt_tokens: tokens.0,
            completion_tokens: tokens.1,
            duration_ms: elapsed.as_millis() as u64,
        });
    }
}

/// Reads a non-streamed generation whole, with its metrics and token charge.
async fn collect_whole(
    state: &AppState,
    mut opened: crate::call::Opened,
    context: &Context,
) -> Result<Collected, ApiError> {
    match collect(&mut opened).await {
        Ok(collected) => {
            state.record_done(context.caller, &context.label, &collected.done);
            let usage = &collected.done.usage;
            let tokens = (usage.prompt_tokens, usage.completion_tokens);
            context.finish(state, 200, tokens);
            Ok(collected)
        }
        Err(error) => {
            let (prompt, generated) = opened.spent();
            state.record_tokens(context.caller, &context.label, prompt, generated);
            Err(error)
        }
    }
}

/// The caller the auth middleware put in the request (0 without keys).
pub fn caller(extension: Option<Extension<Caller>>) -> Caller {
    extension.map_or(Caller(0), |Extension(caller)| caller)
}

/// A failed request: counted in metrics (with the model it named, if
/// any) and written in the dialect.
pub fn fail(
    state: &AppState,
    dialect: Dialect,
    model: &str,
    started: Instant,
    error: ApiError,
) -> Response {
    // Whether it asked for a stream is not known here (nor does it matter:
    // the answer is a plain HTTP error either way).
    let context = Context::new(state, Caller(0), dialect, started, model, false);
    context.finish(state, error.status().as_u16(), (0, 0));
    DialectError(dialect, error).into_response()
}
