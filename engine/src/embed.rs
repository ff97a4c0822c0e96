//! The embedding service: a loaded encoder behind a bounded number of
//! concurrent batches. A request beyond that is refused at once
//! ([`EngineError::Overloaded`]); callers run [`EmbedEngine::embed`] on a
//! blocking thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cortex_schemas::frame::{EmbedResponse, Usage};
use cortex_schemas::infer::EmbedRequest;

use crate::error::{EngineError, Result};
use crate::models::bert::BertEmbedder;

/// Most texts one request may carry (OpenAI allows 2048).
pub const MAX_INPUTS: usize = 2048;

/// An embedding model with admission control.
#[derive(Debug)]
pub struct EmbedEngine {
    model: Arc<BertEmbedder>,
    max_concurrency: usize,
    busy: Arc<AtomicUsize>,
}

/// A batch slot, held from admission until the batch ends (it can move to
/// the thread that runs the batch).
#[derive(Debug)]
pub struct EmbedPermit(Arc<AtomicUsize>);

impl Drop for EmbedPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EmbedEngine {
    pub fn new(model: Arc<BertEmbedder>, max_concurrency: usize) -> Self {
        Self {
            model,
            max_concurrency: max_concurrency.max(1),
            busy: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn model(&self) -> &Arc<BertEmbedder> {
        &self.model
    }

    /// Batches running now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    pub fn slots(&self) -> usize {
        self.max_concurrency
    }

    /// Takes a batch slot, or refuses at once with `Overloaded`.
    pub fn try_acquire(&self) -> Result<EmbedPermit> {
        let taken = self.busy.fetch_add(1, Ordering::AcqRel);
        let permit = EmbedPermit(Arc::clone(&self.busy));
        if taken >= self.max_concurrency {
            return Err(EngineError::Overloaded {
                busy: taken,
                queued: 0,
            });
        }
        Ok(permit)
    }

    /// Embeds the request's inputs, in order, taking a slot first.
    pub fn embed(&self, req: &EmbedRequest) -> Result<EmbedResponse> {
        Self::validate(req)?;
        let permit = self.try_acquire()?;
        self.embed_with(&permit, req)
    }

    /// Embeds with a slot already taken by [`Self::try_acquire`].
    pub fn embed_with(&self, _permit: &EmbedPermit, req: &EmbedRequest) -> Result<EmbedResponse> {
        Self::validate(req)?;
        let out = self.model.embed(&req.inputs, req.normalize, req.truncate)?;
        Ok(EmbedResponse {
            model: req.model.clone(),
            embeddings: out.vectors,
            usage: Usage {
                prompt_tokens: out.tokens as u32,
                completion_tokens: 0,
                cached_tokens: 0,
            },
        })
    }

    /// Refuses requests that cannot be served, before any slot is taken.
    pub fn validate(req: &EmbedRequest) -> Result<()> {
        if req.inputs.is_empty() {
            return Err(EngineError::InvalidRequest(
                "input must not be empty".into(),
            ));
        }
        if req.inputs.len() > MAX_INPUTS {
            return Err(EngineError::InvalidRequest(format!(
                "at most {MAX_INPUTS} inputs per request, got {}",
                req.inputs.len()
            )));
        }
        Ok(())
    }
}
