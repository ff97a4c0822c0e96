//! A generation: the engine's events become frames. `Accepted` first (with
//! the queue position), keepalives from the responder's timer while queued
//! or pre-filling, `Delta`s (every delta already waiting is merged into one
//! frame, so a neuron ahead of its publisher sends fewer, larger frames),
//! then `Done` or `Error`. A cancel (from the requester, or a forced
//! unload) reaches the engine, which frees the slot before its next step.
//! Rendering the template and tokenising (the engine's `submit`, and a
//! token count) run on a blocking thread, never on the runtime's, unless
//! the prompt is small enough that the trip costs more (`renders_inline`).

use std::sync::Arc;

use cortex_bus::Responder;
use cortex_engine::{ChatEngine, Event};
use cortex_schemas::{Accepted, Delta, ErrorClass, Frame, GenerateRequest, WireError};
use tokio::sync::mpsc::error::TryRecvError;

use super::request::{fail, Outcome};
use crate::held::HeldModel;
use crate::shared::Shared;

/// Runs `request` on `engine`, streaming frames through `responder`.
pub async fn run(
    shared: &Shared,
    held: &HeldModel,
    engine: Arc<ChatEngine>,
    mut request: GenerateRequest,
    responder: &Responder,
) -> Outcome {
    apply_profile_defaults(held, &mut request);
    // What the prefix cache will hold: this prompt now, with its answer at the end.
    let caching = engine.stats().prefix_cache.budget > 0;
    let engine_tokens = engine.prefix_cache_tokens();
    let inline = renders_inline(&request);
    let submit = move || {
        let submitted = engine.submit(&request);
        let blocks = caching.then(|| cortex_bus::prefix::request_blocks(&request));
        (request, submitted, blocks)
    };
    let (request, submitted, blocks) = if inline {
        submit()
    } else {
        let Ok(render) = shared.renders.acquire().await else {
            return fail(responder, stopped()).await;
        };
        let submitted = tokio::task::spawn_blocking(submit).await;
        drop(render);
        let Ok(submitted) = submitted else {
            return fail(responder, stopped()).await;
        };
        submitted
    };
    let mut generation = match submitted {
        Ok(generation) => generation,
        // Refused before any work: bad parameters, prompt too long, or
        // every slot and the queue full (overloaded, answered at once).
        Err(error) => return fail(responder, error.to_wire()).await,
    };
    let capacity = crate::prefixes::capacity_for(engine_tokens);
    if let Some(blocks) = blocks {
        held.prefixes.record(&blocks, capacity);
        shared.prefixes_changed.notify_one();
    }
    let mut answer = (caching && request.resume.is_empty()).then(String::new);
    let mut pending = None;
    let mut queue_position = 0;
    match generation.events.try_recv() {
        Ok(Event::Queued { position }) => {
            queue_position = position;
            responder.set_queue_position(Some(position));
        }
        Ok(event) => pending = Some(event),
        Err(_) => {}
    }
    let accepted = Frame::Accepted(Accepted {
        neuron: shared.id.clone(),
        request_id: request.request_id.clone(),
        queue_position,
        prompt_tokens: Some(generation.prompt_tokens),
    });
    if responder.send(&accepted).await.is_err() {
        generation.cancel();
        return Some(ErrorClass::Internal);
    }
    let mut cancelled = false;
    loop {
        let event = match pending.take() {
            Some(event) => event,
            None if cancelled => match generation.events.recv().await {
                Some(event) => event,
                None => return fail(responder, stopped()).await,
            },
            None => tokio::select! {
                event = generation.events.recv() => match event {
                    Some(event) => event,
                    None => return fail(responder, stopped()).await,
                },
                _ = responder.cancelled() => {
                    generation.cancel();
                    cancelled = true;
                    continue;
                }
                _ = held.abort.cancelled() => {
                    generation.cancel();
                    cancelled = true;
                    continue;
                }
            },
        };
        match event {
            Event::Queued { position } => responder.set_queue_position(Some(position)),
            Event::Started { .. } => responder.set_queue_position(None),
            Event::Prefill { .. } => {}
            Event::Delta(mut delta) => {
                pending = merge_waiting(&mut generation.events, &mut delta);
                shared.metrics.tokens(held.id(), delta.tokens);
                if let Some(text) = &mut answer {
                    // A next turn sends back text only: tool calls and
                    // reasoning render differently from what was generated.
                    if delta.tool_calls.is_empty() && delta.reasoning.is_empty() {
                        text.push_str(&delta.text);
                    } else {
                        answer = None;
                    }
                }
                if responder.send(&Frame::Delta(delta)).await.is_err() {
                    // The stream is over (its deadline passed): stop computing.
                    generation.cancel();
                    return Some(ErrorClass::DeadlineExceeded);
                }
            }
            Event::Done(done) => {
                // Known before the client can send its next turn.
                if let Some(text) = answer {
                    let blocks = cortex_bus::prefix::answered_blocks(&request, &text);
                    held.prefixes.record(&blocks, capacity);
                    shared.prefixes_changed.notify_one();
                }
                let _ = responder.send(&Frame::Done(done)).await;
                return None;
            }
            Event::Error(error) => return fail(responder, error.to_wire()).await,
        }
    }
}

/// Prompts this small (a few hundred tokens, no tools) render and
/// tokenise in tens of microseconds: cheaper in place than a trip to a
/// blocking thread and back. Longer ones would hold a runtime thread for
/// milliseconds, so they go to one.
const INLINE_RENDER_BYTES: usize = 2048;

fn renders_inline(request: &GenerateRequest) -> bool {
    if !request.tools.is_empty() || request.response_format.is_some() {
        return false;
    }
    let bytes = match &request.input {
        cortex_schemas::GenerateInput::Chat { messages } => messages
            .iter()
            .flat_map(|m| &m.content)
            .map(|cortex_schemas::ContentPart::Text { text }| text.len())
            .sum(),
        cortex_schemas::GenerateInput::Text { prompt } => prompt.len(),
    };
    bytes <= INLINE_RENDER_BYTES
}

/// Counts the prompt's tokens as the model's template and tokenizer make
/// them; answers with a `Done` carrying the count.
pub async fn count(
    shared: &Shared,
    model: Arc<cortex_engine::chat_model::ChatModel>,
    request: GenerateRequest,
    responder: &Responder,
) -> Outcome {
    let Ok(render) = shared.renders.acquire().await else {
        return fail(responder, stopped()).await;
    };
    let prompt = tokio::task::spawn_blocking(move || model.prompt(&request)).await;
    drop(render);
    let Ok(prompt) = prompt else {
        return fail(responder, stopped()).await;
    };
    match prompt {
        Ok((_, tokens)) => {
            let done = cortex_schemas::Done {
                finish_reason: cortex_schemas::FinishReason::Stop,
                stop_sequence: None,
                usage: cortex_schemas::Usage {
                    prompt_tokens: tokens.len() as u32,
                    completion_tokens: 0,
                    cached_tokens: 0,
                },
                timings: cortex_schemas::Timings::default(),
            };
            let _ = responder.send(&Frame::Done(done)).await;
            None
        }
        Err(error) => fail(responder, error.to_wire()).await,
    }
}

/// Appends every delta already waiting to `delta`; returns the first other event.
fn merge_waiting(
    events: &mut tokio::sync::mpsc::Receiver<Event>,
    delta: &mut Delta,
) -> Option<Event> {
    loop {
        match events.try_recv() {
            Ok(Event::Delta(more)) => delta.append(more),
            Ok(other) => return Some(other),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
        }
    }
}

/// Fills what the request leaves out from the model's profile.
fn apply_profile_defaults(held: &HeldModel, request: &mut GenerateRequest) {
    let defaults = &held.profile.sampling;
    let sampling = &mut request.sampling;
    sampling.temperature = sampling.temperature.or(defaults.temperature);
    sampling.top_p = sampling.top_p.or(defaults.top_p);
    sampling.top_k = sampling.top_k.or(defaults.top_k);
    sampling.min_p = sampling.min_p.or(defaults.min_p);
    sampling.seed = sampling.seed.or(defaults.seed);
    sampling.repetition_penalty = sampling.repetition_penalty.or(defaults.repetition_penalty);
    sampling.presence_penalty = sampling.presence_penalty.or(defaults.presence_penalty);
    sampling.frequency_penalty = sampling.frequency_penalty.or(defaults.frequency_penalty);
    if request.max_tokens.is_none() {
        request.max_tokens = held.profile.default_max_tokens;
    }
}

fn stopped() -> WireError {
    WireError::new(ErrorClass::Unavailable, "the model's engine stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(text: &str) -> Event {
        Event::Delta(Delta {
            text: text.into(),
            tokens: 1,
            ..Delta::default()
        })
    }

    #[test]
    fn waiting_deltas_merge_into_one_frame_and_the_next_event_is_kept() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        for text in ["b", "c"] {
            tx.try_send(delta(text)).unwrap();
        }
        tx.try_send(Event::Started { prompt_tokens: 1 }).unwrap();
        tx.try_send(delta("d")).unwrap();
        let mut first = Delta {
            text: "a".into(),
            tokens: 1,
            ..Delta::default()
        };
        let next = merge_waiting(&mut rx, &mut first);
        assert_eq!((first.text.as_str(), first.tokens), ("abc", 3));
        assert!(matches!(next, Some(Event::Started { .. })));
        let mut second = Delta::default();
        assert!(merge_waiting(&mut rx, &mut second).is_none());
        assert_eq!(second.text, "d");
    }
}
