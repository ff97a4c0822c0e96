//! The one generation pipeline every text API goes through: admit → read
//! the body → resolve the alias → translate to the wire `GenerateRequest`
//! → open the bus call → stream it or read it whole. An API (OpenAI chat,
//! legacy completions, Responses, Anthropic Messages) is an [`Api`]: its
//! request type, its translation, and an [`Answer`] that writes the
//! result in its shape. Failures become the dialect's error response in
//! one place ([`fail`]).

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cortex_schemas::{GenerateRequest, InferRequest};
use serde::de::DeserializeOwned;

use crate::auth::Caller;
use crate::error::{ApiError, Dialect, DialectError};
use crate::generation::{collect, Collected};
use crate::metrics::Label;
use crate::sse::Encoder;
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
        generate,
        stream,
        answer,
    } = A::translate(request, deadline)?;
    let request = InferRequest::Generate(Box::new(generate));
    let opened = crate::call::open(state, &request, deadline).await?;
    let opened = match request {
        InferRequest::Generate(generate) => opened.resumable(state, *generate),
        _ => opened,
    };
    let label = state.metrics.label(model);
    state.metrics.first_token(&label, started.elapsed());
    let context = Context {
        caller,
        dialect: A::DIALECT,
        started,
        label,
    };
    if stream {
        return Ok(crate::sse::respond(state, opened, answer, context, permit));
    }
    let collected = collect_whole(state, opened, &context).await?;
    Ok(answer.whole(collected))
}

/// What the end of a request needs to account for it.
#[derive(Debug)]
pub struct Context {
    pub caller: Caller,
    pub dialect: Dialect,
    pub started: Instant,
    pub label: Label,
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
            let elapsed = context.started.elapsed();
            let dialect = context.dialect.as_str();
            state
                .metrics
                .finished(&context.label, dialect, 200, elapsed);
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
    let label = state.metrics.label(model);
    let status = error.status().as_u16();
    state
        .metrics
        .finished(&label, dialect.as_str(), status, started.elapsed());
    DialectError(dialect, error).into_response()
}
