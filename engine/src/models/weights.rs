//! Where a decoder's weights come from. [`Slot`] names a weight the way the
//! model code thinks of it; GGUF and Hugging Face safetensors each map it to
//! their own tensor names.

use std::collections::HashMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::linear::Linear;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// A weight of a Llama-family decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Embed,
    LmHead,
    FinalNorm,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    QNorm(usize),
    KNorm(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

impl Slot {
    /// The GGUF tensor name (without `.weight`).
    pub fn gguf_name(self) -> String {
        let blk = |i: usize, name: &str| format!("blk.{i}.{name}");
        match self {
            Self::Embed => "token_embd".into(),
            Self::LmHead => "output".into(),
            Self::FinalNorm => "output_norm".into(),
            Self::AttnNorm(i) => blk(i, "attn_norm"),
            Self::Q(i) => blk(i, "attn_q"),
            Self::K(i) => blk(i, "attn_k"),
            Self::V(i) => blk(i, "attn_v"),
            Self::O(i) => blk(i, "attn_output"),
            Self::QNorm(i) => blk(i, "attn_q_norm"),
            Self::KNorm(i) => blk(i, "attn_k_norm"),
            Self::FfnNorm(i) => blk(i, "ffn_norm"),
            Self::Gate(i) => blk(i, "ffn_gate"),
            Self::Up(i) => blk(i, "ffn_up"),
            Self::Down(i) => blk(i, "ffn_down"),
        }
    }

    /// The Hugging Face tensor name (without `.weight`).
    pub fn hf_name(self) -> String {
        let layer = |i: usize, name: &str| format!("model.layers.{i}.{name}");
        match self {
            Self::Embed => "model.embed_tokens".into(),
            Self::LmHead => "lm_head".into(),
            Self::FinalNorm => "model.norm".into(),
            Self::AttnNorm(i) => layer(i, "input_layernorm"),
            Self::Q(i) => layer(i, "self_attn.q_proj"),
            Self::K(i) => layer(i, "self_attn.k_proj"),
            Self::V(i) => layer(i, "self_attn.v_proj"),
            Self::O(i) => layer(i, "self_attn.o_proj"),
            Self::QNorm(i) => layer(i, "self_attn.q_norm"),
            Self::KNorm(i) => layer(i, "self_attn.k_norm"),
            Self::FfnNorm(i) => layer(i, "post_attention_layernorm"),
            Self::Gate(i) => layer(i, "mlp.gate_proj"),
            Self::Up(i) => layer(i, "mlp.up_proj"),
            Self::Down(i) => layer(i, "mlp.down_proj"),
        }
    }
}

/// Gives a decoder its weights.
pub trait WeightSource {
    fn device(&self) -> &Device;
    /// The dtype activations run in.
    fn dtype(&self) -> DType;
    fn has(&self, slot: Slot) -> bool;
    /// A linear layer, with its bias when the file has one.
    fn linear(&mut self, slot: Slot) -> Result<Linear>;
    /// A dense matrix (embeddings).
    fn dense(&mut self, slot: Slot) -> Result<Tensor>;
    /// A vector (norm weights).
    fn vector(&mut self, slot: Slot) -> Result<Tensor>;
    /// A weight matrix as stored (quantized stays quantized).
    fn qtensor(&mut self, slot: Slot) -> Result<QTensor>;
    /// The bias of a linear layer, when the file has one.
    fn bias(&mut self, slot: Slot) -> Result<Option<Tensor>>;
}

/// Weights read from a GGUF file; quantized matrices stay quantized.
#[derive(Debug)]
pub struct GgufWeights<'a> {
    pub file: &'a mut GgufFile,
    pub device: Device,
}

impl WeightSource for GgufWeights<'_> {
    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        DType::F32
    }

    fn has(&self, slot: Slot) -> bool {
        self.file
            .has_tensor(&format!("{}.weight", slot.gguf_name()))
    }

    fn linear(&mut self, slot: Slot) -> Result<Linear> {
        let name = slot.gguf_name();
        let weight = self.file.tensor(&format!("{name}.weight"), &self.device)?;
        let bias_name = format!("{name}.bias");
        let bias = if self.file.has_tensor(&bias_name) {
            Some(
                self.file
                    .tensor(&bias_name, &self.device)?
                    .dequantize(&self.device)?,
            )
        } else {
            None
        };
        Linear::from_qtensor(weight, bias)
    }

    fn dense(&mut self, slot: Slot) -> Result<Tensor> {
        let name = format!("{}.weight", slot.gguf_name());
        Ok(self
            .file
            .tensor(&name, &self.device)?
            .dequantize(&self.device)?)
    }

    fn vector(&mut self, slot: Slot) -> Result<Tensor> {
        self.dense(slot)
    }

    fn qtensor(&mut self, slot: Slot) -> Result<QTensor> {
        self.file
            .tensor(&format!("{}.weight", slot.gguf_name()), &self.device)
    }

    fn bias(&mut self, slot: Slot) -> Result<Option<Tensor>> {
        let name = format!("{}.bias", slot.gguf_name());
        if self.file.has_tensor(&name) {
            Ok(Some(
                self.file
                    .tensor(&name, &self.device)?
                    .dequantize(&self.device)?,
            ))
        } else {
            Ok(None)
        }
    }
}

/// Weights read from Hugging Face safetensors files, converted to `dtype`.
#[derive(Debug)]
pub struct SafetensorsWeights {
    pub tensors: HashMap<String, Tensor>,
    pub device: Device,
    pub dtype: DType,
}

impl SafetensorsWeights {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        let tensor = self
            .tensors
            .remove(name)
            .ok_or_else(|| EngineError::InvalidModel(format!("tensor {name} is missing")))?;
        self.convert(name, &tensor)
    }

    /// Checks the file's dtype and converts to the compute dtype.
    fn convert(&self, name: &str, tensor: &Tensor) -> Result<Tensor> {
        match tensor.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => {}
            other => {
                return Err(EngineError::Unsupported(format!(
                    "tensor {name} has dtype {other:?} (supported: f32, f16, bf16)"
                )))
            }
        }
        Ok(tensor.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    fn peek(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

impl WeightSource for SafetensorsWeights {
    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn has(&self, slot: Slot) -> bool {
        self.peek(&format!("{}.weight", slot.hf_name()))
    }

    fn linear(&mut self, slot: Slot) -> Result<Linear> {
        let name = slot.hf_name();
        let weight = if slot == Slot::Embed {
            // Tied embeddings: the head reuses the embedding matrix, which
            // `dense` may already have taken.
            match self.tensors.get(&format!("{name}.weight")) {
                Some(t) => t.to_device(&self.device)?.to_dtype(self.dtype)?,
                None => {
                    return Err(EngineError::InvalidModel(format!(
                        "tensor {name}.weight is missing"
                    )))
                }
            }
        } else {
            self.take(&format!("{name}.weight"))?
        };
        let bias_name = format!("{name}.bias");
        let bias = if self.peek(&bias_name) {
            Some(self.take(&bias_name)?)
        } else {
            None
        };
        Ok(Linear::from_dense(weight, bias))
    }

    fn dense(&mut self, slot: Slot) -> Result<Tensor> {
        let name = format!("{}.weight", slot.hf_name());
        if slot == Slot::Embed {
            // Kept for a tied head; see `linear`.
            let t = self
                .tensors
                .get(&name)
                .ok_or_else(|| EngineError::InvalidModel(format!("tensor {name} is missing")))?;
            return self.convert(&name, t);
        }
        self.take(&name)
    }

    fn vector(&mut self, slot: Slot) -> Result<Tensor> {
        self.take(&format!("{}.weight", slot.hf_name()))
    }

    fn qtensor(&mut self, slot: Slot) -> Result<QTensor> {
        let dense = if slot == Slot::Embed {
            self.dense(slot)?
        } else {
            self.take(&format!("{}.weight", slot.hf_name()))?
        };
        Ok(QTensor::quantize(
            &dense.to_dtype(DType::F32)?,
            GgmlDType::F32,
        )?)
    }

    fn bias(&mut self, slot: Slot) -> Result<Option<Tensor>> {
        let name = format!("{}.bias", slot.hf_name());
        if self.peek(&name) {
            Ok(Some(self.take(&name)?))
        } else {
            Ok(None)
        }
    }
}
