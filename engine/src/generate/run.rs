//! One generation in a slot: prefill in chunks, then one token per step,
//! with output batched into a pending delta while the reader is behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cortex_schemas::frame::{Delta, Done, FinishReason, Timings, TokenLogprob, TopLogprob, Usage};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

use super::constraint::Constraint;
use super::sampler::Sampler;
use super::stop::{StopMatcher, StopStep};
use super::think::ThinkParser;
use super::tools::{ToolParser, ToolStep};
use super::Event;
use crate::chat_model::ChatModel;
use crate::error::{EngineError, Result};
use crate::models::{Sequence, Step};
use crate::tokenizer::DecodeStream;

/// Tokens one engine step runs at most (decode tokens of every running
/// sequence first, then prompt chunks), so that a long prompt is read in
/// chunks while other sequences keep decoding.
pub const STEP_TOKENS: usize = 256;

/// A request after validation, waiting for or holding a slot.
#[derive(Debug)]
pub struct Job {
    pub request_id: String,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: Sampler,
    pub stops: Vec<String>,
    pub tools: bool,
    /// For reasoning models: whether the prompt left a think block open
    /// (`None`: the model does not reason; output is all content).
    pub think: Option<bool>,
    pub logprobs: Option<usize>,
    /// The grammar the output must follow (JSON mode, a schema, a forced
    /// tool call).
    pub constraint: Option<Constraint>,
    pub deadline: Option<Instant>,
    pub events: Sender<Event>,
    pub cancel: Arc<AtomicBool>,
    pub queued_at: Instant,
}

/// Whether the run goes on.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Running,
    Finished,
}

/// A job in a slot.
pub struct Run {
    job: Job,
    seq: Box<dyn Sequence>,
    prefilled: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    cached: usize,
    /// Tokens the KV cache holds, in order (for the prefix cache).
    fed: Vec<u32>,
    /// A forward pass failed: the KV cache is not to be kept.
    failed: bool,
    last: Option<u32>,
    generated: usize,
    decode: DecodeStream,
    stop: StopMatcher,
    think: Option<ThinkParser>,
    tools: Option<ToolParser>,
    pending: Delta,
    terminal: Option<Event>,
    /// The slot was given back (just before the terminal event went out).
    released: bool,
    started: Instant,
    prefill_ms: u64,
    queue_ms: u64,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("request_id", &self.job.request_id)
            .finish()
    }
}

impl Run {
    /// `seq` already holds the KV of the prompt's first `cached` tokens.
    pub fn new(job: Job, seq: Box<dyn Sequence>, cached: usize) -> Self {
        let queue_ms = job.queued_at.elapsed().as_millis() as u64;
        let _ = job.events.try_send(Event::Started {
            prompt_tokens: job.prompt.len() as u32,
        });
        Self {
            stop: StopMatcher::new(&job.stops),
            tools: job.tools.then(|| ToolParser::new(&job.request_id)),
            think: job.think.map(ThinkParser::new),
            fed: job.prompt[..cached].to_vec(),
            job,
            seq,
            prefilled: cached,
            cached,
            failed: false,
            last: None,
            generated: 0,
            decode: DecodeStream::new(),
            pending: Delta::default(),
            terminal: None,
            released: false,
            started: Instant::now(),
            prefill_ms: 0,
            queue_ms,
        }
    }

    pub fn request_id(&self) -> &str {
        &self.job.request_id
    }

    /// Whether the caller gave up (cancelled, or stopped listening).
    pub fn abandoned(&self) -> bool {
        self.job.cancel.load(Ordering::Relaxed) || self.job.events.is_closed()
    }

    /// Ends the run if its caller gave up or its deadline passed; returns
    /// whether it still needs compute.
    pub fn check(&mut self) -> bool {
        if self.terminal.is_none() {
            if self.abandoned() {
                self.terminal = Some(Event::Error(EngineError::Cancelled));
            } else if self.job.deadline.is_some_and(|d| Instant::now() >= d) {
                self.terminal = Some(Event::Error(EngineError::DeadlineExceeded));
            }
        }
        self.terminal.is_none()
    }

    /// Prompt tokens still to run (0 once decoding).
    pub fn prompt_left(&self) -> usize {
        self.job.prompt.len() - self.prefilled
    }

    /// This run's share of the next forward pass: up to `budget` prompt
    /// tokens, or the token sampled last.
    pub fn input(&mut self, budget: usize) -> Option<Step<'_>> {
        let total = self.job.prompt.len();
        if self.prefilled < total {
            let end = (self.prefilled + budget.max(1)).min(total);
            return Some(Step {
                seq: &mut *self.seq,
                tokens: &self.job.prompt[self.prefilled..end],
                logits: end == total,
                prompt: true,
            });
        }
        let last = self.last.as_ref()?;
        Some(Step {
            seq: &mut *self.seq,
            tokens: std::slice::from_ref(last),
            logits: true,
            prompt: false,
        })
    }

    /// Takes the outcome of the forward pass that ran `ran` of this run's
    /// tokens ([`Self::input`]).
    pub fn accept(&mut self, model: &ChatModel, ran: usize, logits: Option<Vec<f32>>) {
        let total = self.job.prompt.len();
        if self.prefilled < total {
            self.fed
                .extend_from_slice(&self.job.prompt[self.prefilled..self.prefilled + ran]);
            self.prefilled += ran;
            if self.prefilled < total {
                let _ = self.job.events.try_send(Event::Prefill {
                    done: self.prefilled as u32,
                    total: total as u32,
                });
                return;
            }
            self.prefill_ms = self.started.elapsed().as_millis() as u64;
        } else if let Some(last) = self.last {
            self.fed.push(last);
        }
        let result = match logits {
            Some(mut logits) => self.sampled(model, &mut logits),
            None => Err(EngineError::Internal(
                "no logits for a finished prompt".into(),
            )),
        };
        if let Err(e) = result {
            self.fail(e);
        }
    }

    /// The forward pass failed.
    pub fn fail(&mut self, error: EngineError) {
        self.failed = true;
        if self.terminal.is_none() {
            self.terminal = Some(Event::Error(error));
        }
    }

    /// The run's KV cache and the tokens it holds, for the prefix cache
    /// (not after a failed pass).
    pub fn into_kv(self) -> Option<(Vec<u32>, Box<dyn Sequence>)> {
        (!self.failed && self.seq.position() == self.fed.len()).then_some((self.fed, self.seq))
    }

    /// Whether the run gave its slot back (it only delivers from now on).
    pub fn released(&self) -> bool {
        self.released
    }

    fn sampled(&mut self, model: &ChatModel, logits: &mut [f32]) -> Result<()> {
        // A reasoning model thinks freely; the answer after it is constrained.
        let thinking = self.think.as_ref().is_some_and(ThinkParser::thinking);
        let constraint = self.job.constraint.as_mut().filter(|_| !thinking);
        let constrained = constraint.is_some();
        if let Some(constraint) = constraint {
            constraint.mask(logits)?;
        }
        let choice = self.job.sampler.sample(logits, self.job.logprobs);
        if let (true, Some(constraint)) = (constrained, self.job.constraint.as_mut()) {
            constraint.commit(choice.token)?;
        }
        self.last = Some(choice.token);
        self.generated += 1;
        if model.stop_ids.contains(&choice.token) {
            self.generated -= 1;
            return self.finish(model, FinishReason::Stop, None);
        }
        if let Some(lp) = choice.logprob {
            let text = |id: u32| model.tokenizer.decode(&[id]).unwrap_or_default();
            self.pending.logprobs.push(TokenLogprob {
                token: text(choice.token),
                logprob: f64::from(lp),
                top: choice
                    .top
                    .iter()
                    .map(|&(id, lp)| TopLogprob {
                        token: text(id),
                        logprob: f64::from(lp),
                    })
                    .collect(),
            });
        }
        self.pending.tokens += 1;
        if let Some(text) = self.decode.push(&model.tokenizer, choice.token)? {
            match self.stop.push(&text) {
                StopStep::Stop { text, stop } => {
                    self.emit_text(&text);
                    return self.finish(model, FinishReason::Stop, Some(stop));
                }
                StopStep::Emit(text) => self.emit_text(&text),
            }
        }
        let at_window = self.seq.position() + 1 >= model.context_length();
        if self.generated >= self.job.max_tokens || at_window {
            return self.finish(model, FinishReason::Length, None);
        }
        Ok(())
    }

    fn emit_text(&mut self, text: &str) {
        match &mut self.think {
            Some(think) => {
                let step = think.push(text);
                self.pending.reasoning.push_str(&step.reasoning);
                self.emit_content(&step.text);
            }
            None => self.emit_content(text),
        }
    }

    fn emit_content(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match &mut self.tools {
            Some(parser) => add_tool_step(&mut self.pending, parser.push(text)),
            None => self.pending.text.push_str(text),
        }
    }

    fn finish(
        &mut self,
        model: &ChatModel,
        reason: FinishReason,
        stop: Option<String>,
    ) -> Result<()> {
        if stop.is_none() {
            if let Some(text) = self.decode.flush(&model.tokenizer)? {
                match self.stop.push(&text) {
                    StopStep::Stop { text, stop } => {
                        self.emit_text(&text);
                        return self.finish_with(reason, Some(stop));
                    }
                    StopStep::Emit(text) => self.emit_text(&text),
                }
            }
            let held = self.stop.finish();
            self.emit_text(&held);
        }
        self.finish_with(reason, stop)
    }

    fn finish_with(&mut self, reason: FinishReason, stop: Option<String>) -> Result<()> {
        let mut reason = reason;
        if let Some(think) = &mut self.think {
            let step = think.finish();
            self.pending.reasoning.push_str(&step.reasoning);
            self.emit_content(&step.text);
        }
        if let Some(parser) = &mut self.tools {
            add_tool_step(&mut self.pending, parser.finish());
            if parser.calls() > 0 && reason == FinishReason::Stop {
                reason = FinishReason::ToolCalls;
            }
        }
        let decode_ms = (self.started.elapsed().as_millis() as u64).saturating_sub(self.prefill_ms);
        self.terminal = Some(Event::Done(Done {
            finish_reason: reason,
            stop_sequence: stop,
            usage: Usage {
                prompt_tokens: self.job.prompt.len() as u32,
                completion_tokens: self.generated as u32,
                cached_tokens: self.cached as u32,
            },
            timings: Timings {
                queue_ms: self.queue_ms,
                prefill_ms: self.prefill_ms,
                decode_ms,
            },
        }));
        Ok(())
    }

    /// Sends the pending delta, then the terminal event, as far as the
    /// channel takes them. A full channel keeps them for the next step (the
    /// delta keeps growing); a closed one ends the run.
    pub fn deliver(&mut self, release: &mut dyn FnMut()) -> Progress {
        // A delta goes out when it has something to show; tokens held back
        // (half a character, a possible stop string) ride with the next one.
        if !self.pending.text.is_empty()
            || !self.pending.reasoning.is_empty()
            || !self.pending.tool_calls.is_empty()
        {
            let delta = std::mem::take(&mut self.pending);
            match self.job.events.try_send(Event::Delta(delta)) {
                Ok(()) => {}
                Err(TrySendError::Full(Event::Delta(delta))) => {
                    self.pending = delta;
                    return Progress::Running;
                }
                Err(_) => return Progress::Finished,
            }
        }
        match self.terminal.take() {
            None => Progress::Running,
            Some(event) => {
                if !self.released {
                    self.released = true;
                    release();
                }
                match self.job.events.try_send(event) {
                    Ok(()) => Progress::Finished,
                    Err(TrySendError::Full(event)) => {
                        self.terminal = Some(event);
                        Progress::Running
                    }
                    Err(TrySendError::Closed(_)) => Progress::Finished,
                }
            }
        }
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// The engine is stopping: tell the caller, best effort.
    pub fn abort(&mut self) {
        let _ = self.job.events.try_send(Event::Error(EngineError::Stopped));
    }

    /// Whether only delivery is left (no more compute needed).
    pub fn finishing(&self) -> bool {
        self.terminal.is_some()
    }
}

/// Appends what the tool parser let through: text, and whole calls.
fn add_tool_step(pending: &mut Delta, step: ToolStep) {
    pending.text.push_str(&step.text);
    pending.tool_calls.extend(step.calls);
}
