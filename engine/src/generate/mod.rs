//! Turning logits into a response: [`sampler`] picks tokens, [`stop`]
//! watches for stop strings, [`think`] splits a reasoning model's thinking
//! from its answer, [`tools`] recognises tool calls, [`constraint`] keeps
//! structured output to its grammar, and [`run`] drives one sequence from
//! prompt to its terminal event.

pub mod constraint;
pub mod run;
pub mod sampler;
pub mod stop;
pub mod think;
pub mod tools;

use cortex_schemas::frame::{Delta, Done};

use crate::error::EngineError;

/// What a generation reports to its caller, in order: `Queued` (when it
/// had to wait), `Started`, `Prefill` progress for long prompts, `Delta`s,
/// then exactly one of `Done` or `Error`.
#[derive(Debug)]
pub enum Event {
    /// Waiting for a slot; position 1 is next.
    Queued {
        position: u32,
    },
    /// A slot took the request.
    Started {
        prompt_tokens: u32,
    },
    /// Prompt tokens processed so far.
    Prefill {
        done: u32,
        total: u32,
    },
    Delta(Delta),
    Done(Done),
    Error(EngineError),
}

/// Bytes at the end of `held` that may be the start of `marker` (text to
/// hold back until the next piece shows whether the marker follows).
pub(crate) fn partial_suffix(held: &str, marker: &str) -> usize {
    (1..marker.len().min(held.len() + 1))
        .rev()
        .find(|&n| {
            held.is_char_boundary(held.len() - n) && marker.starts_with(&held[held.len() - n..])
        })
        .unwrap_or(0)
}

impl Event {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done(_) | Self::Error(_))
    }
}
