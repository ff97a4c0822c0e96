//! The Responses API's answer: streamed as its semantic events, in the
//! real API's order, each with a `sequence_number`:
//!
//! `response.created`, `response.in_progress`; then per output item
//! `response.output_item.added`, for a message `response.content_part.added`
//! / `response.output_text.delta`s / `response.output_text.done` /
//! `response.content_part.done`, for reasoning the same with
//! `response.reasoning_text.*`, for a function call
//! `response.function_call_arguments.delta`s / `.done`; then
//! `response.output_item.done`; last `response.completed` (or
//! `response.incomplete` at `max_output_tokens`, `response.failed` on a
//! failure). No `[DONE]`: the terminal event ends the stream.
//!
//! Or the whole `response` object.

use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cortex_schemas::{Accepted, Delta, Done, FinishReason};
use serde::Serialize;
use serde_json::Value;

use super::answer::{
    Echo, Failure, Incomplete, Item, ItemOut, Part, ResponseBody, Status, UsageOut,
};
use crate::error::{ApiError, Kind};
use crate::generation::{only_reasoning, Collected};
use crate::ids::{new_id, unix_seconds};
use crate::pipeline::Answer;
use crate::sse::{json_event, Encoder};

/// Which item is being streamed (always the last one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Reasoning,
    Message,
    /// A function call and its index among the generation's calls.
    Call(u32),
}

/// Writes one response, streamed or whole.
#[derive(Debug)]
pub struct ResponseEncoder {
    id: String,
    created_at: u64,
    echo: Echo,
    items: Vec<Item>,
    open: Option<Open>,
    sequence: u64,
    reasoning_tokens: u32,
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize)]
struct Lifecycle<'a> {
    response: ResponseBody<'a>,
}

#[derive(Serialize)]
struct ItemEvent<'a> {
    output_index: usize,
    item: ItemOut<'a>,
}

#[derive(Serialize)]
struct PartEvent<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: u32,
    part: Part<'a>,
}

#[derive(Serialize)]
struct TextEvent<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<&'static [Value]>,
}

#[derive(Serialize)]
struct ArgumentsEvent<'a> {
    item_id: &'a str,
    output_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a str>,
}

fn event<T: Serialize>(kind: &'static str, sequence_number: u64, body: &T) -> Event {
    let envelope = Envelope {
        kind,
        sequence_number,
        body,
    };
    json_event(Some(kind), &envelope)
}

/// The `code` of a failed response.
fn failure_code(error: &ApiError) -> &'static str {
    match error.kind {
        Kind::Overloaded => "rate_limit_exceeded",
        Kind::InvalidRequest => "invalid_prompt",
        _ => "server_error",
    }
}

impl ResponseEncoder {
    pub fn new(id: String, echo: Echo) -> Self {
        Self {
            id,
            created_at: unix_seconds(),
            echo,
            items: Vec::new(),
            open: None,
            sequence: 0,
            reasoning_tokens: 0,
        }
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence - 1
    }

    /// The response with its items so far (the open one in progress).
    fn body(&self, status: Status) -> ResponseBody<'_> {
        let last = self.items.len().saturating_sub(1);
        let output = self
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| item.out(!(i == last && self.open.is_some())))
            .collect();
        ResponseBody {
            id: &self.id,
            object: "response",
            created_at: self.created_at,
            status,
            error: None,
            incomplete_details: None,
            output,
            previous_response_id: None,
            store: false,
            truncation: "disabled",
            usage: None,
            user: None,
            echo: &self.echo,
        }
    }

    fn lifecycle(&mut self, kind: &'static str, status: Status) -> Event {
        let sequence = self.next_sequence();
        let body = Lifecycle {
            response: self.body(status),
        };
        event(kind, sequence, &body)
    }

    /// Makes `want` the open item, closing another one first.
    fn open(&mut self, want: Open, events: &mut Vec<Event>) {
        if self.open == Some(want) {
            return;
        }
        self.close(events);
        let item = match want {
            Open::Reasoning => Item::Reasoning {
                id: format!("rs_{}", new_id()),
                text: String::new(),
            },
            Open::Message => Item::Message {
                id: format!("msg_{}", new_id()),
                text: String::new(),
            },
            Open::Call(_) => Item::FunctionCall {
                id: format!("fc_{}", new_id()),
                call_id: String::new(),
                name: String::new(),
                arguments: String::new(),
            },
        };
        self.items.push(item);
        self.open = Some(want);
        let index = self.items.len() - 1;
        // A call's id and name arrive with its first fragment (set by the caller).
        if let Open::Call(_) = want {
            return;
        }
        let sequence = self.next_sequence();
        let item = &self.items[index];
        let added = ItemEvent {
            output_index: index,
            item: item.out(false),
        };
        events.push(event("response.output_item.added", sequence, &added));
        let part = match item {
            Item::Reasoning { .. } => Part::ReasoningText { text: "" },
            _ => Part::output_text(""),
        };
        let sequence = self.next_sequence();
        let item = &self.items[index];
        let added = PartEvent {
            item_id: item.id(),
            output_index: index,
            content_index: 0,
            part,
        };
        events.push(event("response.content_part.added", sequence, &added));
    }

    /// Ends the open item: its `.done` events.
    fn close(&mut self, events: &mut Vec<Event>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let index = self.items.len() - 1;
        // Text items close with two events before the item's, calls with one.
        let first = self.sequence;
        self.sequence += if let Open::Call(_) = open { 1 } else { 2 };
        let second = first + 1;
        let item = &self.items[index];
        match (open, item) {
            (Open::Reasoning, Item::Reasoning { id, text })
            | (Open::Message, Item::Message { id, text }) => {
                let reasoning = open == Open::Reasoning;
                let done = TextEvent {
                    item_id: id,
                    output_index: index,
                    content_index: 0,
                    delta: None,
                    text: Some(text),
                    logprobs: (!reasoning).then_some(&[]),
                };
                let (kind, part) = if reasoning {
                    ("response.reasoning_text.done", Part::ReasoningText { text })
                } else {
                    ("response.output_text.done", Part::output_text(text))
                };
                events.push(event(kind, first, &done));
                let part = PartEvent {
                    item_id: id,
                    output_index: index,
                    content_index: 0,
                    part,
                };
                events.push(event("response.content_part.done", second, &part));
            }
            (
                Open::Call(_),
                Item::FunctionCall {
                    id,
                    name,
                    arguments,
                    ..
                },
            ) => {
                let done = ArgumentsEvent {
                    item_id: id,
                    output_index: index,
                    delta: None,
                    name: Some(name),
                    arguments: Some(arguments),
                };
                events.push(event("response.function_call_arguments.done", first, &done));
            }
            _ => {}
        }
        let sequence = self.next_sequence();
        let done = ItemEvent {
            output_index: index,
            item: self.items[index].out(true),
        };
        events.push(event("response.output_item.done", sequence, &done));
    }

    /// Appends `more` to the open item's text or arguments and writes its delta.
    fn append(&mut self, more: &str, events: &mut Vec<Event>) {
        let index = self.items.len() - 1;
        let sequence = self.next_sequence();
        match &mut self.items[index] {
            Item::Reasoning { id, text } | Item::Message { id, text } => {
                text.push_str(more);
                let reasoning = self.open == Some(Open::Reasoning);
                let delta = TextEvent {
                    item_id: id,
                    output_index: index,
                    content_index: 0,
                    delta: Some(more),
                    text: None,
                    logprobs: (!reasoning).then_some(&[]),
                };
                let kind = if reasoning {
                    "response.reasoning_text.delta"
                } else {
                    "response.output_text.delta"
                };
                events.push(event(kind, sequence, &delta));
            }
            Item::FunctionCall { id, arguments, .. } => {
                arguments.push_str(more);
                let delta = ArgumentsEvent {
                    item_id: id,
                    output_index: index,
                    delta: Some(more),
                    name: None,
                    arguments: None,
                };
                events.push(event(
                    "response.function_call_arguments.delta",
                    sequence,
                    &delta,
                ));
            }
        }
    }

    fn terminal(done: &Done) -> (&'static str, Status) {
        match done.finish_reason {
            FinishReason::Length => ("response.incomplete", Status::Incomplete),
            _ => ("response.completed", Status::Completed),
        }
    }

    fn finished<'a>(&'a self, done: &Done, status: Status) -> ResponseBody<'a> {
        let mut body = self.body(status);
        body.usage = Some(UsageOut::of(done, self.reasoning_tokens));
        if status == Status::Incomplete {
            body.incomplete_details = Some(Incomplete {
                reason: "max_output_tokens",
            });
        }
        body
    }
}

impl Encoder for ResponseEncoder {
    fn start(&mut self, _accepted: &Accepted) -> Vec<Event> {
        vec![
            self.lifecycle("response.created", Status::InProgress),
            self.lifecycle("response.in_progress", Status::InProgress),
        ]
    }

    fn delta(&mut self, delta: &Delta) -> Vec<Event> {
        let mut events = Vec::new();
        if only_reasoning(delta) {
            self.reasoning_tokens += delta.tokens;
        }
        if !delta.reasoning.is_empty() {
            self.open(Open::Reasoning, &mut events);
            self.append(&delta.reasoning, &mut events);
        }
        if !delta.text.is_empty() {
            self.open(Open::Message, &mut events);
            self.append(&delta.text, &mut events);
        }
        for fragment in &delta.tool_calls {
            if self.open != Some(Open::Call(fragment.index)) {
                self.open(Open::Call(fragment.index), &mut events);
                let index = self.items.len() - 1;
                if let Item::FunctionCall { call_id, name, .. } = &mut self.items[index] {
                    *call_id = fragment
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("call_{}", new_id()));
                    name.clone_from(fragment.name.as_ref().unwrap_or(&String::new()));
                }
                let sequence = self.next_sequence();
                let added = ItemEvent {
                    output_index: index,
                    item: self.items[index].out(false),
                };
                events.push(event("response.output_item.added", sequence, &added));
            }
            if !fragment.arguments.is_empty() {
                self.append(&fragment.arguments, &mut events);
            }
        }
        events
    }

    fn done(&mut self, done: &Done) -> Vec<Event> {
        let mut events = Vec::new();
        self.close(&mut events);
        let (kind, status) = Self::terminal(done);
        let sequence = self.next_sequence();
        let body = Lifecycle {
            response: self.finished(done, status),
        };
        events.push(event(kind, sequence, &body));
        events
    }

    fn error(&mut self, error: &ApiError) -> Vec<Event> {
        // A cold load that failed comes before `start`: the stream still
        // opens with `response.created`, as clients' accumulators expect.
        let mut events = Vec::new();
        if self.sequence == 0 {
            events.push(self.lifecycle("response.created", Status::InProgress));
        }
        let sequence = self.next_sequence();
        let message = error.message_for(crate::error::Dialect::OpenAi);
        let mut response = self.body(Status::Failed);
        response.error = Some(Failure {
            code: failure_code(error),
            message: &message,
        });
        events.push(event("response.failed", sequence, &Lifecycle { response }));
        events
    }
}

impl Answer for ResponseEncoder {
    fn whole(mut self, collected: Collected) -> Response {
        if !collected.reasoning.is_empty() {
            self.items.push(Item::Reasoning {
                id: format!("rs_{}", new_id()),
                text: collected.reasoning,
            });
        }
        if !collected.text.is_empty() || collected.tool_calls.is_empty() {
            self.items.push(Item::Message {
                id: format!("msg_{}", new_id()),
                text: collected.text,
            });
        }
        for call in collected.tool_calls {
            self.items.push(Item::FunctionCall {
                id: format!("fc_{}", new_id()),
                call_id: call.id,
                name: call.name,
                arguments: call.arguments,
            });
        }
        self.reasoning_tokens = collected.reasoning_tokens;
        let (_, status) = Self::terminal(&collected.done);
        Json(self.finished(&collected.done, status)).into_response()
    }
}
