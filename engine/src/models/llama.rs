//! Our decoder for the Llama family: Llama 2/3, SmolLM, Mistral, and the
//! Qwen 2 (biases on q/k/v) and Qwen 3 (RMS norm on q and k) variants.
//!
//! One implementation serves GGUF and safetensors weights ([`super::weights`]
//! names them); the weights are shared and each sequence owns only its KV
//! cache ([`LlamaSequence`]), so N concurrent sequences cost one copy of
//! the model.

use std::any::Any;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::kv_cache::KvCache;
use candle_nn::{Embedding, Module, RmsNorm};

use super::linear::Linear;
use super::weights::{Slot, WeightSource};
use super::{CausalLm, Sequence, Step};
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
    /// What activations, and so the KV cache, are held in.
    kv_dtype: DType,
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
        let kv_dtype = source.dtype();
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
                kv_dtype,
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

    fn kv_bytes_per_token(&self) -> usize {
        let cfg = &self.inner.cfg;
        2 * cfg.layers * cfg.kv_heads * cfg.head_dim * self.inner.kv_dtype.size_in_bytes()
    }

    fn forward_batch(&self, steps: &mut [Step<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        self.batched(steps)
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

    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let model = self.model.clone();
        super::forward_alone(&model, self, tokens)
    }

    fn fork(&self, len: usize) -> Option<Box<dyn Sequence>> {
        let len = len.min(self.position);
        let mut caches = Vec::with_capacity(self.caches.len());
        for cache in &self.caches {
            let mut copy = KvCache::new(2, 256);
            if len > 0 {
                let (k, v) = (cache.k().ok()??, cache.v().ok()??);
                let k = k.narrow(2, 0, len).ok()?.contiguous().ok()?;
                let v = v.narrow(2, 0, len).ok()?.contiguous().ok()?;
                copy.append(&k, &v).ok()?;
            }
            caches.push(copy);
        }
        Some(Box::new(LlamaSequence {
            model: self.model.clone(),
            caches,
            position: len,
        }))
    }

    fn kv_bytes(&self) -> usize {
        let bytes = |c: &candle_nn::kv_cache::Cache| {
            c.all_data()
                .as_ref()
                .map_or(0, |t| t.elem_count() * t.dtype().size_in_bytes())
        };
        self.caches
            .iter()
            .map(|c| bytes(c.k_cache()) + bytes(c.v_cache()))
            .sum()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// One sequence's rows in a batch, with what its attention needs.
struct Part<'s> {
    seq: &'s mut LlamaSequence,
    step: usize,
    start: usize,
    len: usize,
    logits: bool,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
}

impl Llama {
    fn batched(&self, steps: &mut [Step<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        let m = &*self.inner;
        let cfg = &m.cfg;
        super::check_window(steps, cfg.context_length)?;
        let mut out = vec![None; steps.len()];
        let mut tokens = Vec::new();
        let mut parts = Vec::with_capacity(steps.len());
        for (i, s) in steps.iter_mut().enumerate() {
            let (len, logits) = (s.tokens.len(), s.logits);
            let pos = s.seq.position();
            let start = tokens.len();
            tokens.extend_from_slice(s.tokens);
            let seq = s
                .seq
                .as_any_mut()
                .downcast_mut::<LlamaSequence>()
                .ok_or_else(|| {
                    crate::error::EngineError::Internal("a foreign sequence in a batch".into())
                })?;
            parts.push(Part {
                seq,
                step: i,
                start,
                len,
                logits,
                cos: m.cos.narrow(0, pos, len)?,
                sin: m.sin.narrow(0, pos, len)?,
                mask: causal_mask(len, pos, &m.device)?,
            });
        }
        if parts.is_empty() {
            return Ok(out);
        }
        let ids = Tensor::new(tokens.as_slice(), &m.device)?.unsqueeze(0)?;
        let mut x = m.embed.forward(&ids)?;
        for (l, block) in m.blocks.iter().enumerate() {
            let h = block.attn_norm.forward(&x)?;
            let (q, k, v) = (
                block.q.forward(&h)?,
                block.k.forward(&h)?,
                block.v.forward(&h)?,
            );
            let mut outs = Vec::with_capacity(parts.len());
            for p in parts.iter_mut() {
                let rows = |t: &Tensor| t.narrow(1, p.start, p.len);
                outs.push(attend(
                    cfg,
                    block,
                    &mut p.seq.caches[l],
                    (&rows(&q)?, &rows(&k)?, &rows(&v)?),
                    &p.cos,
                    &p.sin,
                    p.mask.as_ref(),
                )?);
            }
            let attn = if outs.len() == 1 {
                outs.pop().expect("one part")
            } else {
                Tensor::cat(&outs, 1)?
            };
            x = (x + block.o.forward(&attn)?)?;
            let h = block.ffn_norm.forward(&x)?;
            let gate = candle_nn::ops::silu(&block.gate.forward(&h)?)?;
            let h = block.down.forward(&(gate * block.up.forward(&h)?)?)?;
            x = (x + h)?;
        }
        for p in parts.iter_mut() {
            p.seq.position += p.len;
        }
        let wanted: Vec<&Part<'_>> = parts.iter().filter(|p| p.logits).collect();
        if !wanted.is_empty() {
            let last = wanted
                .iter()
                .map(|p| x.narrow(1, p.start + p.len - 1, 1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let last = Tensor::cat(&last, 1)?;
            let logits = m.lm_head.forward(&m.norm.forward(&last)?)?;
            let logits = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (p, row) in wanted.iter().zip(logits) {
                out[p.step] = Some(row);
            }
        }
        Ok(out)
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

/// Attention of one sequence's rows (`q`, `k`, `v` already projected,
/// `1 × len × …`) over its KV cache; returns `1 × len × heads·head_dim`.
fn attend(
    cfg: &LlamaConfig,
    block: &Block,
    cache: &mut KvCache,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, len, _) = q.dims3()?;
    let (hd, nh, nkv) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
    let q = q.reshape((b, len, nh, hd))?;
    let k = k.reshape((b, len, nkv, hd))?;
    let v = v.reshape((b, len, nkv, hd))?;
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
    Ok(out.transpose(1, 2)?.reshape((b, len, nh * hd))?)
}
