//! The Llama-family decoder on the CPU, with as little framework between
//! the kernels as we can manage.
//!
//! Decoding one token through candle's tensor ops costs about fifty
//! allocations and dispatches per layer; for a small model that overhead,
//! not the matmuls, dominated (profile: the matmul thread pool idled 40 %
//! of each step waiting for the next matmul). Here the matmuls still run in
//! candle's SIMD kernels (q/k/v and gate/up fused, see [`super::cpu_linear`]),
//! and everything between them — RMS norm, rotary embedding, attention over
//! the KV cache, SwiGLU, residuals — is plain loops over `f32` slices.
//! Prompts of more than one token attend through candle's matmul (gemm),
//! which wins once the work is large.
//!
//! Precision: the quantized kernels round activations to 8 bits (blocks of
//! 32 or 256), as llama.cpp does. For prompt passes we also run that
//! rounding error through the kernel and add it back
//! (`CpuLinear::forward_with(.., precise)`, which knows how each kernel
//! rounds), which brings the prompt's logits to those of the weights
//! applied exactly; a tied output head is applied in f32 to the prompt's
//! last position.
//! It matters: greedy SmolLM2 Q4_1 asked for the capital of France answers
//! "L'Étoile, la Marseillaise…" with 8-bit activations (llama.cpp says the
//! same) and "The capital of France is Paris." with exact ones. Prompts are
//! processed in batches, where the second pass costs little; single-token
//! decode steps keep the fast path.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::cpu_linear::{CpuLinear, WidenBudget};
use super::llama::{causal_mask, rope_angles, LlamaConfig};
use super::simd;
use super::weights::{Slot, WeightSource};
use super::{CausalLm, Sequence};
use crate::error::Result;

struct Block {
    attn_norm: Vec<f32>,
    qkv: CpuLinear,
    o: CpuLinear,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate_up: CpuLinear,
    down: CpuLinear,
}

struct Inner {
    cfg: LlamaConfig,
    embed: Vec<f32>,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    lm_head: CpuLinear,
    /// The output head is the embedding matrix (tied weights).
    tied: bool,
    /// `context_length × head_dim/2` rotation tables.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Correct the activations' rounding on prompt passes.
    precise_prompt: bool,
    /// Memory beyond the file's weights (widened codes).
    extra_bytes: u64,
    device: Device,
}

/// A Llama-family model on the CPU; cheap to clone.
#[derive(Clone)]
pub struct CpuLlama {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CpuLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuLlama")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

fn vector(source: &mut dyn WeightSource, slot: Slot) -> Result<Vec<f32>> {
    Ok(source
        .vector(slot)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?)
}

fn fused(
    source: &mut dyn WeightSource,
    slots: &[Slot],
    budget: &mut WidenBudget,
) -> Result<CpuLinear> {
    let mut parts = Vec::with_capacity(slots.len());
    for &slot in slots {
        parts.push((source.qtensor(slot)?, source.bias(slot)?));
    }
    CpuLinear::fuse(parts, budget)
}

impl CpuLlama {
    /// `widen_bytes`: memory the loader may add to run 4-bit matrices on
    /// faster kernels ([`WidenBudget`]).
    pub fn load(
        cfg: LlamaConfig,
        source: &mut dyn WeightSource,
        precise_prompt: bool,
        widen_bytes: u64,
    ) -> Result<Self> {
        let mut budget = WidenBudget::new(widen_bytes);
        // Read once: a tied output head reuses the embedding matrix as stored.
        let embed_q = source.qtensor(Slot::Embed)?;
        let embed = embed_q
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(vector(source, Slot::QNorm(i))?),
                    Some(vector(source, Slot::KNorm(i))?),
                )
            } else {
                (None, None)
            };
            blocks.push(Block {
                attn_norm: vector(source, Slot::AttnNorm(i))?,
                qkv: fused(source, &[Slot::Q(i), Slot::K(i), Slot::V(i)], &mut budget)?,
                o: fused(source, &[Slot::O(i)], &mut budget)?,
                q_norm,
                k_norm,
                ffn_norm: vector(source, Slot::FfnNorm(i))?,
                gate_up: fused(source, &[Slot::Gate(i), Slot::Up(i)], &mut budget)?,
                down: fused(source, &[Slot::Down(i)], &mut budget)?,
            });
        }
        let norm = vector(source, Slot::FinalNorm)?;
        let tied = !source.has(Slot::LmHead);
        let lm_head = if tied {
            CpuLinear::fuse(vec![(embed_q, None)], &mut budget)?
        } else {
            fused(source, &[Slot::LmHead], &mut budget)?
        };
        let (cos, sin) = rope_angles(&cfg);
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                embed,
                blocks,
                norm,
                lm_head,
                tied,
                cos,
                sin,
                precise_prompt,
                extra_bytes: budget.spent,
                device: Device::Cpu,
            }),
        })
    }
}

impl CausalLm for CpuLlama {
    fn start(&self) -> Box<dyn Sequence> {
        let layers = self.inner.cfg.layers;
        Box::new(CpuSequence {
            model: self.clone(),
            keys: vec![Vec::new(); layers],
            values: vec![Vec::new(); layers],
            position: 0,
        })
    }

    fn context_length(&self) -> usize {
        self.inner.cfg.context_length
    }

    fn device(&self) -> &Device {
        &self.inner.device
    }

    fn extra_bytes(&self) -> u64 {
        self.inner.extra_bytes
    }
}

/// A sequence: per layer, keys and values of every position so far
/// (`position × kv_heads·head_dim`).
pub struct CpuSequence {
    model: CpuLlama,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    position: usize,
}

impl std::fmt::Debug for CpuSequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuSequence")
            .field("position", &self.position)
            .finish()
    }
}

impl Sequence for CpuSequence {
    fn position(&self) -> usize {
        self.position
    }

    fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let m = &*self.model.inner;
        let cfg = &m.cfg;
        let (n, h, hd) = (tokens.len(), cfg.hidden, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.heads * hd, cfg.kv_heads * hd);
        let pos = self.position;
        let precise = n > 1 && m.precise_prompt;
        if pos + n > cfg.context_length {
            return Err(crate::error::EngineError::ContextTooLong {
                prompt: pos + n,
                reserve: 0,
                window: cfg.context_length,
            });
        }
        let vocab = m.embed.len() / h;
        let mut x = Vec::with_capacity(n * h);
        for &t in tokens {
            let t = (t as usize).min(vocab - 1);
            x.extend_from_slice(&m.embed[t * h..(t + 1) * h]);
        }
        for (l, block) in m.blocks.iter().enumerate() {
            let xn = rms_norm_rows(&x, &block.attn_norm, cfg.rms_eps as f32);
            let qkv = block.qkv.forward_with(&xn, n, precise)?;
            let width = q_dim + 2 * kv_dim;
            let mut q = Vec::with_capacity(n * q_dim);
            for (i, row) in qkv.chunks_exact(width).enumerate() {
                let (qr, rest) = row.split_at(q_dim);
                let (kr, vr) = rest.split_at(kv_dim);
                let mut qr = qr.to_vec();
                let mut kr = kr.to_vec();
                if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
                    for head in qr.chunks_exact_mut(hd) {
                        rms_norm_in_place(head, qn, cfg.rms_eps as f32);
                    }
                    for head in kr.chunks_exact_mut(hd) {
                        rms_norm_in_place(head, kn, cfg.rms_eps as f32);
                    }
                }
                rope(&mut qr, hd, pos + i, &m.cos, &m.sin, cfg.rope_interleaved);
                rope(&mut kr, hd, pos + i, &m.cos, &m.sin, cfg.rope_interleaved);
                q.extend_from_slice(&qr);
                self.keys[l].extend_from_slice(&kr);
                self.values[l].extend_from_slice(vr);
            }
            let attn = if n == 1 {
                attend_one(cfg, &q, &self.keys[l], &self.values[l])
            } else {
                attend_many(cfg, &q, &self.keys[l], &self.values[l], n, pos)?
            };
            let o = block.o.forward_with(&attn, n, precise)?;
            add_in_place(&mut x, &o);
            let xn = rms_norm_rows(&x, &block.ffn_norm, cfg.rms_eps as f32);
            let gu = block.gate_up.forward_with(&xn, n, precise)?;
            let ffn = block.gate_up.rows() / 2;
            let mut act = Vec::with_capacity(n * ffn);
            for row in gu.chunks_exact(2 * ffn) {
                let (g, u) = row.split_at(ffn);
                act.extend(g.iter().zip(u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u));
            }
            let d = block.down.forward_with(&act, n, precise)?;
            add_in_place(&mut x, &d);
        }
        self.position += n;
        let last = rms_norm_rows(&x[(n - 1) * h..], &m.norm, cfg.rms_eps as f32);
        let logits = if precise && m.tied {
            // Once per prompt, the head in f32 against the dequantized
            // embeddings: the first token is chosen from exact logits.
            m.embed
                .chunks_exact(h)
                .map(|row| simd::dot(row, &last))
                .collect()
        } else {
            m.lm_head.forward_with(&last, 1, precise)?
        };
        let len = logits.len();
        Ok(Tensor::from_vec(logits, len, &m.device)?)
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let mean = simd::sum_squares(x) / x.len() as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v *= scale * w;
    }
}

fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(weight.len()) {
        rms_norm_in_place(row, weight, eps);
    }
    out
}

/// Rotates each head of `row` by the angles of position `pos`: pairs
/// `(2i, 2i+1)` when interleaved (GGUF llama), `(i, i + d/2)` otherwise.
fn rope(row: &mut [f32], hd: usize, pos: usize, cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = hd / 2;
    let (c, s) = (
        &cos[pos * half..(pos + 1) * half],
        &sin[pos * half..(pos + 1) * half],
    );
    for head in row.chunks_exact_mut(hd) {
        for i in 0..half {
            let (a, b) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c[i] - x1 * s[i];
            head[b] = x0 * s[i] + x1 * c[i];
        }
    }
}

/// One query row against every cached position.
fn attend_one(cfg: &LlamaConfig, q: &[f32], keys: &[f32], values: &[f32]) -> Vec<f32> {
    let hd = cfg.head_dim;
    let kv_dim = cfg.kv_heads * hd;
    let len = keys.len() / kv_dim;
    let rep = cfg.heads / cfg.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; cfg.heads * hd];
    let mut scores = vec![0f32; len];
    for head in 0..cfg.heads {
        let g = head / rep;
        let qh = &q[head * hd..(head + 1) * hd];
        let mut max = f32::NEG_INFINITY;
        for (t, s) in scores.iter_mut().enumerate() {
            let k = &keys[t * kv_dim + g * hd..t * kv_dim + (g + 1) * hd];
            *s = simd::dot(qh, k) * scale;
            max = max.max(*s);
        }
        let mut total = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let oh = &mut out[head * hd..(head + 1) * hd];
        for (t, s) in scores.iter().enumerate() {
            let w = s / total;
            let v = &values[t * kv_dim + g * hd..t * kv_dim + (g + 1) * hd];
            for (o, v) in oh.iter_mut().zip(v) {
                *o += w * v;
            }
        }
    }
    out
}

/// `n` query rows (positions `pos..pos+n`) through candle's matmul.
fn attend_many(
    cfg: &LlamaConfig,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n: usize,
    pos: usize,
) -> Result<Vec<f32>> {
    let dev = Device::Cpu;
    let (hd, nh, nkv) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
    let rep = nh / nkv;
    let len = pos + n;
    let q = Tensor::from_slice(q, (n, nh, hd), &dev)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((nkv, rep * n, hd))?;
    let k = Tensor::from_slice(keys, (len, nkv, hd), &dev)?
        .transpose(0, 1)?
        .contiguous()?;
    let v = Tensor::from_slice(values, (len, nkv, hd), &dev)?
        .transpose(0, 1)?
        .contiguous()?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    // One query row (n = 1) sees every position: no mask.
    let scores = match causal_mask(n, pos, &dev)? {
        Some(mask) => scores
            .reshape((nkv, rep, n, len))?
            .broadcast_add(&mask)?
            .reshape((nkv, rep * n, len))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs
        .matmul(&v)?
        .reshape((nh, n, hd))?
        .transpose(0, 1)?
        .contiguous()?;
    Ok(out.flatten_all()?.to_vec1::<f32>()?)
}
