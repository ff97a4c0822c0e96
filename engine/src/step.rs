//! One engine step of continuous batching: who gets which tokens this
//! pass (a decode token for every running sequence, prompt chunks within
//! the step's prompt budget, oldest first), the batched forward pass, and
//! each sequence's outcome.

use crate::chat_model::ChatModel;
use crate::error::EngineError;
use crate::generate::run::Run;

/// One engine step: a single forward pass over the decode token of every
/// running sequence and, within `budget` prompt tokens, prompt chunks of
/// those still reading their prompt (oldest first). Returns the tokens
/// generated.
pub(crate) fn step(model: &ChatModel, runs: &mut [Run], mut budget: usize) -> u64 {
    let mut share = vec![0usize; runs.len()];
    for (i, run) in runs.iter_mut().enumerate() {
        if run.check() && !run.suspended() && run.prompt_left() == 0 {
            share[i] = 1;
        }
    }
    for (i, run) in runs.iter_mut().enumerate() {
        let left = run.prompt_left();
        if budget > 0 && left > 0 && !run.finishing() && !run.suspended() {
            share[i] = left.min(budget);
            budget -= share[i];
        }
    }
    let mut steps = Vec::new();
    let mut who = Vec::new();
    for (i, run) in runs.iter_mut().enumerate() {
        if share[i] == 0 {
            continue;
        }
        if let Some(step) = run.input(share[i]) {
            share[i] = step.tokens.len();
            steps.push(step);
            who.push(i);
        }
    }
    if steps.is_empty() {
        return 0;
    }
    let result = model.lm.forward_batch(&mut steps);
    drop(steps);
    let mut generated = 0;
    match result {
        Ok(logits) => {
            for (&i, logits) in who.iter().zip(logits) {
                let before = runs[i].generated();
                runs[i].accept(model, share[i], logits);
                generated += runs[i].generated().saturating_sub(before) as u64;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, sequences = who.len(), "forward pass failed");
            let mut error = Some(e);
            for &i in &who {
                let e = if who.len() == 1 {
                    error.take().unwrap_or(EngineError::Stopped)
                } else {
                    EngineError::Internal(format!(
                        "forward pass: {}",
                        error.as_ref().map_or(String::new(), |e| e.to_string())
                    ))
                };
                runs[i].fail(e);
            }
        }
    }
    generated
}
