//! `POST /v1/completions` (legacy): a raw prompt, used verbatim; answered
//! as `text_completion` objects, whole or streamed.

use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cortex_schemas::{Accepted, Delta, Done, GenerateInput, GenerateRequest, SamplingParams};

use super::answer::{finish_reason, TextChoice, TextCompletion, Usage};
use super::types::{CompletionRequest, Prompt};
use crate::error::{ApiError, Dialect};
use crate::generation::Collected;
use crate::ids::{new_id, unix_seconds};
use crate::pipeline::{Answer, Api, Translated};
use crate::sse::{json_event, Encoder};
use crate::validate;

const DIALECT: Dialect = Dialect::OpenAi;

/// `POST /v1/completions`.
#[derive(Debug)]
pub struct Completions;

impl Api for Completions {
    type Request = CompletionRequest;
    type Answer = TextEncoder;
    const DIALECT: Dialect = DIALECT;

    fn model(request: &mut CompletionRequest) -> &mut String {
        &mut request.model
    }

    fn translate(
        request: CompletionRequest,
        deadline_ms: u64,
    ) -> Result<Translated<TextEncoder>, ApiError> {
        let stream = request.stream;
        let include_usage = request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let id = format!("cmpl-{}", new_id());
        let model = request.model.clone();
        Ok(Translated {
            generate: translate(request, &id, deadline_ms)?,
            stream,
            answer: TextEncoder {
                id,
                model,
                created: unix_seconds(),
                include_usage,
            },
        })
    }
}

fn translate(
    request: CompletionRequest,
    id: &str,
    deadline_ms: u64,
) -> Result<GenerateRequest, ApiError> {
    validate::model(&request.model)?;
    let prompt = match request.prompt {
        Prompt::One(prompt) => prompt,
        Prompt::Many(mut prompts) if prompts.len() == 1 => prompts.remove(0),
        Prompt::Many(prompts) => {
            return Err(ApiError::invalid(
                "prompt",
                format!("prompt: one prompt per request, got {}", prompts.len()),
            ))
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt: must not be empty"));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "n: only 1 choice is supported"));
    }
    if request.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo: not supported"));
    }
    Ok(GenerateRequest {
        request_id: id.to_string(),
        model: request.model,
        input: GenerateInput::Text { prompt },
        tools: Vec::new(),
        tool_choice: None,
        sampling: SamplingParams {
            temperature: validate::range("temperature", request.temperature, 0.0, 2.0)?,
            top_p: validate::top_p(request.top_p)?,
            seed: request.seed.map(|s| s as u64),
            presence_penalty: validate::range(
                "presence_penalty",
                request.presence_penalty,
                -2.0,
                2.0,
            )?,
            frequency_penalty: validate::range(
                "frequency_penalty",
                request.frequency_penalty,
                -2.0,
                2.0,
            )?,
            ..SamplingParams::default()
        },
        // The legacy API's default is 16 tokens.
        max_tokens: Some(validate::max_tokens("max_tokens", request.max_tokens)?.unwrap_or(16)),
        stop: validate::stops(
            "stop",
            request.stop.map(|s| s.into_vec()).unwrap_or_default(),
        )?,
        response_format: None,
        logprobs: None,
        deadline_ms: Some(deadline_ms),
        thinking: None,
        resume: Vec::new(),
        // Set from the caller and headers by the pipeline.
        tenant: None,
        priority: 0,
    })
}

/// Streamed `text_completion` chunks, then `[DONE]`; or the whole one.
#[derive(Debug)]
pub struct TextEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
}

impl TextEncoder {
    fn body<'a>(
        &'a self,
        choices: Vec<TextChoice<'a>>,
        usage: Option<Usage>,
    ) -> TextCompletion<'a> {
        TextCompletion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        }
    }

    fn choice<'a>(text: &'a str, finish: Option<&'static str>) -> TextChoice<'a> {
        TextChoice {
            text,
            index: 0,
            logprobs: None,
            finish_reason: finish,
        }
    }
}

impl Encoder for TextEncoder {
    fn start(&mut self, _accepted: &Accepted) -> Vec<Event> {
        Vec::new()
    }

    fn delta(&mut self, delta: &Delta) -> Vec<Event> {
        let chunk = self.body(vec![Self::choice(&delta.text, None)], None);
        vec![json_event(None, &chunk)]
    }

    fn done(&mut self, done: &Done) -> Vec<Event> {
        let finish = Some(finish_reason(done.finish_reason));
        let last = self.body(vec![Self::choice("", finish)], None);
        let mut events = vec![json_event(None, &last)];
        if self.include_usage {
            let usage = self.body(Vec::new(), Some(Usage::of(done)));
            events.push(json_event(None, &usage));
        }
        events.push(Event::default().data("[DONE]"));
        events
    }

    fn error(&mut self, error: &ApiError) -> Vec<Event> {
        vec![json_event(None, &error.body(DIALECT))]
    }
}

impl Answer for TextEncoder {
    fn whole(mut self, collected: Collected) -> Response {
        self.created = unix_seconds();
        let finish = Some(finish_reason(collected.done.finish_reason));
        let choices = vec![Self::choice(&collected.text, finish)];
        Json(self.body(choices, Some(Usage::of(&collected.done)))).into_response()
    }
}
