//! Decoders and encoders: [`llama`] is ours (Llama, Mistral, SmolLM, Qwen 2
//! and 3, from GGUF or safetensors) on candle tensors; [`cpu`] the same
//! decoder with the framework overhead taken out, used on the CPU, its
//! matmuls in [`cpu_linear`] (fused projections) over [`tiles`] (our
//! quantized kernels, picked at run time) or candle's; [`linear`] candle's
//! quantized matmul for the tensor decoder; [`wrapped`] runs candle's own
//! GGUF models (phi3, gemma3) one clone per sequence; [`bert`] embeds.

pub mod bert;
pub mod cpu;
pub mod cpu_linear;
pub mod linear;
pub mod llama;
pub mod simd;
pub mod tiles;
pub mod weights;
pub mod wrapped;

use std::any::Any;

use candle_core::Device;

use crate::error::Result;

/// A causal language model whose weights are shared by its sequences.
pub trait CausalLm: Send + Sync + std::fmt::Debug {
    /// A new, empty sequence with its own KV cache.
    fn start(&self) -> Box<dyn Sequence>;
    /// The longest sequence the model can attend over.
    fn context_length(&self) -> usize;
    fn device(&self) -> &Device;
    /// Memory the loaded model takes beyond its weight files (repacking).
    fn extra_bytes(&self) -> u64 {
        0
    }
    /// Bytes of KV cache one position of one sequence takes (0 where the
    /// model keeps none we can see).
    fn kv_bytes_per_token(&self) -> usize {
        0
    }
    /// Prompt tokens one engine step may read, shared by the sequences
    /// still reading theirs (chunked prefill); decode tokens come on top,
    /// one per running sequence, so decoders never starve a new prompt nor
    /// a long prompt the decoders.
    fn prompt_tokens_per_step(&self) -> usize {
        crate::generate::run::STEP_TOKENS
    }
    /// One forward pass over the tokens of several sequences (continuous
    /// batching): every step's rows go through each weight matrix together,
    /// so the weights stream from memory once per pass, not once per
    /// sequence; attention stays per sequence. Returns, per step, the
    /// next-token logits where [`Step::logits`] asked for them.
    ///
    /// The default runs the steps one after another, for models that
    /// cannot batch (candle's own phi3 / gemma3, the simulator).
    fn forward_batch(&self, steps: &mut [Step<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        steps
            .iter_mut()
            .map(|s| {
                let logits = s.seq.forward(s.tokens)?;
                Ok(s.logits.then_some(logits))
            })
            .collect()
    }
}

/// One sequence's share of a batched forward pass.
pub struct Step<'a> {
    pub seq: &'a mut dyn Sequence,
    /// A prompt chunk, or the one token sampled last.
    pub tokens: &'a [u32],
    /// Whether the logits after the last token are wanted (a decode step,
    /// or a prompt's last chunk).
    pub logits: bool,
    /// Prompt tokens: the precision pass applies ([`cpu`]).
    pub prompt: bool,
}

impl std::fmt::Debug for Step<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("position", &self.seq.position())
            .field("tokens", &self.tokens.len())
            .field("logits", &self.logits)
            .field("prompt", &self.prompt)
            .finish()
    }
}

/// Runs one sequence's `tokens` as a batch of one through `model` (the
/// model it belongs to): `Sequence::forward` of the batching decoders.
pub(crate) fn forward_alone(
    model: &dyn CausalLm,
    seq: &mut dyn Sequence,
    tokens: &[u32],
) -> Result<Vec<f32>> {
    let mut steps = [Step {
        seq,
        tokens,
        logits: true,
        prompt: tokens.len() > 1,
    }];
    let mut out = model.forward_batch(&mut steps)?;
    Ok(out.pop().flatten().unwrap_or_default())
}

/// Every step brings tokens, and they fit in the context `window`.
pub(crate) fn check_window(steps: &[Step<'_>], window: usize) -> Result<()> {
    for s in steps {
        let end = s.seq.position() + s.tokens.len();
        if s.tokens.is_empty() || end > window {
            return Err(crate::error::EngineError::ContextTooLong {
                prompt: end,
                reserve: 0,
                window,
            });
        }
    }
    Ok(())
}

/// One sequence being generated.
pub trait Sequence: Send {
    /// Runs `tokens` (the prompt, a chunk of it, or one new token) and
    /// returns the logits for the next token; more than one token counts
    /// as prompt.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// How many tokens the KV cache holds.
    fn position(&self) -> usize;
    /// A new sequence holding a copy of the first `len` positions of this
    /// one's KV cache (the prefix cache); `None` where the model cannot.
    fn fork(&self, _len: usize) -> Option<Box<dyn Sequence>> {
        None
    }
    /// Gives back memory reserved past the positions held (an entry of
    /// the prefix cache keeps only what it holds).
    fn shrink(&mut self) {}
    /// Memory the KV cache holds.
    fn kv_bytes(&self) -> usize {
        0
    }
    /// For a model's [`CausalLm::forward_batch`] to reach its own type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
