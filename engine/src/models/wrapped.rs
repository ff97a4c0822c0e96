//! candle's own GGUF decoders for the architectures we do not implement
//! ourselves (phi3, gemma3). They keep the KV cache inside the model struct,
//! so each sequence holds a clone: the weights inside are reference-counted
//! and shared, only the cache is per sequence.

use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_gemma3, quantized_phi3};

use super::{CausalLm, Sequence};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// A candle GGUF model.
#[derive(Debug, Clone)]
pub enum Wrapped {
    Phi3(quantized_phi3::ModelWeights),
    Gemma3(quantized_gemma3::ModelWeights),
}

/// A wrapped model with its context length and device.
#[derive(Debug)]
pub struct WrappedLm {
    model: Wrapped,
    context_length: usize,
    device: Device,
}

impl WrappedLm {
    /// Loads `arch` from an open GGUF file.
    pub fn load(arch: &str, file: GgufFile, device: &Device) -> Result<Self> {
        let context_length = file.u32(&format!("{arch}.context_length"))? as usize;
        let GgufFile {
            content,
            mut reader,
            ..
        } = file;
        let model = match arch {
            "phi3" => Wrapped::Phi3(quantized_phi3::ModelWeights::from_gguf(
                false,
                content,
                &mut reader,
                device,
            )?),
            "gemma3" => Wrapped::Gemma3(quantized_gemma3::ModelWeights::from_gguf(
                content,
                &mut reader,
                device,
            )?),
            other => {
                return Err(EngineError::Unsupported(format!(
                    "GGUF architecture {other:?}"
                )))
            }
        };
        Ok(Self {
            model,
            context_length,
            device: device.clone(),
        })
    }
}

impl CausalLm for WrappedLm {
    fn start(&self) -> Box<dyn Sequence> {
        Box::new(WrappedSequence {
            model: self.model.clone(),
            position: 0,
            device: self.device.clone(),
        })
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

struct WrappedSequence {
    model: Wrapped,
    position: usize,
    device: Device,
}

impl Sequence for WrappedSequence {
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.model {
            Wrapped::Phi3(m) => m.forward(&ids, self.position)?,
            Wrapped::Gemma3(m) => m.forward(&ids, self.position)?,
        };
        self.position += tokens.len();
        Ok(logits
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?)
    }

    fn position(&self) -> usize {
        self.position
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
