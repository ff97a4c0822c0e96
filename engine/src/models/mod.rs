//! Decoders and encoders: [`llama`] is ours (Llama, Mistral, SmolLM, Qwen 2
//! and 3, from GGUF or safetensors) on candle tensors, [`cpu`] the same
//! decoder with the framework overhead taken out, used on the CPU; [`wrapped`] runs candle's own GGUF
//! models (phi3, gemma3) one clone per sequence; [`bert`] embeds.

pub mod bert;
pub mod cpu;
pub mod cpu_linear;
pub mod linear;
pub mod llama;
pub mod simd;
pub mod weights;
pub mod wrapped;

use candle_core::{Device, Tensor};

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
}

/// One sequence being generated.
pub trait Sequence: Send {
    /// Runs `tokens` (the prompt, a chunk of it, or one new token) and
    /// returns the logits for the next token as a 1-D f32 tensor.
    fn forward(&mut self, tokens: &[u32]) -> Result<Tensor>;
    /// How many tokens the KV cache holds.
    fn position(&self) -> usize;
}
