//! Our decoder for the Llama family: Llama 2/3, SmolLM, Mistral, and the
//! Qwen 2 (biases on q/k/v) and Qwen 3 (RMS norm on q and k) variants.
//!
//! One implementation serves GGUF and safetensors weights ([`super::weights`]
//! names them); the weights are shared and each sequence owns only its KV
//! cache ([`LlamaSequence`]), so N concurrent sequences cost one copy of
//! the model.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::kv_cache::KvCache;
use candle_nn::{Embedding, Module, RmsNorm};

use super::linear::Linear;
use super::weights::{Slot, WeightSource};
use super::{CausalLm, Sequence};
use crate::error::Result;

/// Shape and numerics of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
    pub context_length: usize,
    /// GGUF llama files store q/k permuted for interleaved rotary pairs;
    /// Hugging Face weights (and GGUF qwen) rotate the two halves.
    pub rope_interleaved: bool,
    /// Qwen 3: RMS norm over each head of q and k before rotation.
    pub qk_norm: bool,
}

struct Block {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Inner {
    cfg: LlamaConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// A loaded Llama-family model; cheap to clone.
#[derive(Clone)]
pub struct Llama {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

fn rms_norm(source: &mut dyn WeightSource, slot: Slot, eps: f64) -> Result<RmsNorm> {
    Ok(RmsNorm::new(source.vector(slot)?, eps))
}

impl Llama {
    /// Loads every weight the config needs from `source`.
    pub fn load(cfg: LlamaConfig, source: &mut dyn WeightSource) -> Result<Self> {
        let device = source.device().clone();
        let embed_weight = source.dense(Slot::Embed)?;
        let embed = Embedding::new(embed_weight, cfg.hidden);
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(rms_norm(source, Slot::QNorm(i), cfg.rms_eps)?),
                    Some(rms_norm(source, Slot::KNorm(i), cfg.rms_eps)?),
                )
            } else {
                (None, None)
            };
            blocks.push(Block {
                attn_norm: rms_norm(source, Slot::AttnNorm(i), cfg.rms_eps)?,
                q: source.linear(Slot::Q(i))?,
                k: source.linear(Slot::K(i))?,
                v: source.linear(Slot::V(i))?,
                o: source.linear(Slot::O(i))?,
                q_norm,
                k_norm,
                ffn_norm: rms_norm(source, Slot::FfnNorm(i), cfg.rms_eps)?,
                gate: source.linear(Slot::Gate(i))?,
                up: source.linear(Slot::Up(i))?,
                down: source.linear(Slot::Down(i))?,
            });
        }
        let norm = rms_norm(source, Slot::FinalNorm, cfg.rms_eps)?;
        let lm_head = if source.has(Slot::LmHead) {
            source.linear(Slot::LmHead)?
        } else {
            source.linear(Slot::Embed)?
        };
        let (cos, sin) = rope_tables(&cfg, &device)?;
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                embed,
                blocks,
                norm,
                lm_head,
                cos,
                sin,
                device,
            }),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.inner.cfg
    }
}

fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let (cos, sin) = rope_angles(cfg);
    let shape = (cfg.context_length, cfg.head_dim / 2);
    Ok((
        Tensor::from_vec(cos, shape, device)?,
        Tensor::from_vec(sin, shape, device)?,
    ))
}

/// Cosines and sines of the rotary angles, `context_length × head_dim/2`,
/// row-major; computed in f64 so late positions keep their precision.
pub(super) fn rope_angles(cfg: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.head_dim / 2;
    let inv: Vec<f64> = (0..half)
        .map(|i| 1.0 / f64::from(cfg.rope_theta).powf(2.0 * i as f64 / cfg.head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(cfg.context_length * half);
    let mut sin = Vec::with_capacity(cfg.context_length * half);
    for pos in 0..cfg.context_length {
        for f in &inv {
            let angle = pos as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

impl CausalLm for Llama {
    fn start(&self) -> Box<dyn Sequence> {
        let caches = (0..self.inner.cfg.layers)
            .map(|_| KvCache::new(2, 256))
            .collect();
        Box::new(LlamaSequence {
            model: self.clone(),
            caches,
            position: 0,
        })
    }

    fn context_length(&self) -> usize {
        self.inner.cfg.context_length
    }

    fn device(&self) -> &Device {
        &self.inner.device
    }
}

/// One sequence: its position and per-layer KV caches.
#[derive(Debug)]
pub struct LlamaSequence {
    model: Llama,
    caches: Vec<KvCache>,
    position: usize,
}

impl Sequence for LlamaSequence {
    fn position(&self) -> usize {
        self.position
    }

    fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let m = &*self.model.inner;
        let cfg = &m.cfg;
        let len = tokens.len();
        let pos = self.position;
        let ids = Tensor::new(tokens, &m.device)?.unsqueeze(0)?;
        let mut x = m.embed.forward(&ids)?;
        let cos = m.cos.narrow(0, pos, len)?;
        let sin = m.sin.narrow(0, pos, len)?;
        let mask = causal_mask(len, pos, &m.device)?;
        for (block, cache) in m.blocks.iter().zip(self.caches.iter_mut()) {
            let h = block.attn_norm.forward(&x)?;
            let h = attention(cfg, block, cache, &h, &cos, &sin, mask.as_ref())?;
            x = (x + h)?;
            let h = block.ffn_norm.forward(&x)?;
            let gate = candle_nn::ops::silu(&block.gate.forward(&h)?)?;
            let h = block.down.forward(&(gate * block.up.forward(&h)?)?)?;
            x = (x + h)?;
        }
        let last = x.narrow(1, len - 1, 1)?;
        let logits = m.lm_head.forward(&m.norm.forward(&last)?)?;
        self.position += len;
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }
}

/// Additive mask: 0 where a query may attend, −∞ above the diagonal.
pub(super) fn causal_mask(len: usize, pos: usize, device: &Device) -> Result<Option<Tensor>> {
    if len == 1 {
        return Ok(None);
    }
    let total = pos + len;
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Some(Tensor::from_vec(mask, (len, total), device)?))
}

fn attention(
    cfg: &LlamaConfig,
    block: &Block,
    cache: &mut KvCache,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, len, _) = x.dims3()?;
    let (hd, nh, nkv) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
    let q = block.q.forward(x)?.reshape((b, len, nh, hd))?;
    let k = block.k.forward(x)?.reshape((b, len, nkv, hd))?;
    let v = block.v.forward(x)?.reshape((b, len, nkv, hd))?;
    let (q, k) = match (&block.q_norm, &block.k_norm) {
        (Some(qn), Some(kn)) => (qn.forward(&q)?, kn.forward(&k)?),
        _ => (q, k),
    };
    let q = q.transpose(1, 2)?.contiguous()?;
    let k = k.transpose(1, 2)?.contiguous()?;
    let v = v.transpose(1, 2)?.contiguous()?;
    let (q, k) = if cfg.rope_interleaved {
        (
            candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
            candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
        )
    } else {
        (
            candle_nn::rotary_emb::rope(&q, cos, sin)?,
            candle_nn::rotary_emb::rope(&k, cos, sin)?,
        )
    };
    let (k, v) = cache.append(&k, &v)?;
    let kv_len = k.dim(2)?;
    // Grouped-query attention without copying K/V: the `rep` query heads
    // that share a KV head become extra rows of one matmul.
    let rep = nh / nkv;
    let q = q.reshape((b, nkv, rep * len, hd))?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let scores = match mask {
        Some(mask) => scores
            .reshape((b, nkv, rep, len, kv_len))?
            .broadcast_add(mask)?
            .reshape((b, nkv, rep * len, kv_len))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v)?.reshape((b, nh, len, hd))?;
    let out = out.transpose(1, 2)?.reshape((b, len, nh * hd))?;
    block.o.forward(&out)
}
