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
//! Attention runs row by row, each query over the positions up to its
//! own, so a row's result does not depend on how its prompt was cut into
//! chunks or what the prefix cache supplied.
//!
//! Batching: [`CausalLm::forward_batch`] stacks the rows of every running
//! sequence (decode tokens first, prompt chunks after) into one activation
//! matrix, so each weight matrix streams from memory once per step for all
//! of them; the quantized kernels compute a row exactly as they would
//! alone.
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

use std::any::Any;
use std::sync::Arc;

use candle_core::Device;

use super::cpu_linear::CpuLinear;
use super::llama::{rope_angles, LlamaConfig};
use super::simd;
use super::weights::{Slot, WeightSource};
use super::{CausalLm, Sequence, Step};
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
    /// Memory beyond the file's weights (tile padding).
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

fn fused(source: &mut dyn WeightSource, slots: &[Slot]) -> Result<CpuLinear> {
    let mut parts = Vec::with_capacity(slots.len());
    for &slot in slots {
        parts.push((source.qtensor(slot)?, source.bias(slot)?));
    }
    CpuLinear::fuse(parts)
}

impl CpuLlama {
    pub fn load(
        cfg: LlamaConfig,
        source: &mut dyn WeightSource,
        precise_prompt: bool,
    ) -> Result<Self> {
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
                qkv: fused(source, &[Slot::Q(i), Slot::K(i), Slot::V(i)])?,
                o: fused(source, &[Slot::O(i)])?,
                q_norm,
                k_norm,
                ffn_norm: vector(source, Slot::FfnNorm(i))?,
                gate_up: fused(source, &[Slot::Gate(i), Slot::Up(i)])?,
                down: fused(source, &[Slot::Down(i)])?,
            });
        }
        let norm = vector(source, Slot::FinalNorm)?;
        let tied = !source.has(Slot::LmHead);
        let lm_head = if tied {
            CpuLinear::fuse(vec![(embed_q, None)])?
        } else {
            fused(source, &[Slot::LmHead])?
        };
        let (cos, sin) = rope_angles(&cfg);
        let extra_bytes = lm_head.extra_bytes()
            + blocks
                .iter()
                .flat_map(|b| [&b.qkv, &b.o, &b.gate_up, &b.down])
                .map(|l| l.extra_bytes())
                .sum::<u64>();
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
                extra_bytes,
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

    fn kv_bytes_per_token(&self) -> usize {
        let cfg = &self.inner.cfg;
        2 * cfg.layers * cfg.kv_heads * cfg.head_dim * std::mem::size_of::<f32>()
    }

    fn forward_batch(&self, steps: &mut [Step<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        self.check(steps)?;
        let mut out = vec![None; steps.len()];
        if steps.is_empty() {
            return Ok(out);
        }
        let mut tokens = Vec::new();
        let mut rows = batch_rows(steps, &mut tokens)?;
        let precise_from = if self.inner.precise_prompt {
            rows.iter().filter(|r| !r.prompt).map(|r| r.len).sum()
        } else {
            tokens.len()
        };
        let x = self.layers(&mut rows, &tokens, precise_from)?;
        for r in rows.iter_mut() {
            r.seq.position += r.len;
        }
        self.head(&rows, &x, &mut out)?;
        Ok(out)
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

    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let model = self.model.clone();
        super::forward_alone(&model, self, tokens)
    }

    fn fork(&self, len: usize) -> Option<Box<dyn Sequence>> {
        let len = len.min(self.position);
        let kv_dim = self.model.inner.cfg.kv_heads * self.model.inner.cfg.head_dim;
        let copy = |caches: &[Vec<f32>]| -> Vec<Vec<f32>> {
            caches
                .iter()
                .map(|c| {
                    // Room for a typical answer, so the first steps do not
                    // reallocate the whole prefix.
                    let mut v = Vec::with_capacity((len + 256) * kv_dim);
                    v.extend_from_slice(&c[..len * kv_dim]);
                    v
                })
                .collect()
        };
        Some(Box::new(CpuSequence {
            model: self.model.clone(),
            keys: copy(&self.keys),
            values: copy(&self.values),
            position: len,
        }))
    }

    fn shrink(&mut self) {
        for cache in self.keys.iter_mut().chain(&mut self.values) {
            cache.shrink_to_fit();
        }
    }

    fn kv_bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|c| c.capacity() * std::mem::size_of::<f32>())
            .sum()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Where one step's rows sit in the batch's activation matrix.
struct Rows<'s> {
    seq: &'s mut CpuSequence,
    /// Index of the step in the caller's slice.
    step: usize,
    start: usize,
    len: usize,
    logits: bool,
    prompt: bool,
}

impl CpuLlama {
    /// The layers over a batch's rows: embeddings in, the final hidden
    /// states out; every sequence's KV cache grows by its rows.
    fn layers(
        &self,
        rows: &mut [Rows<'_>],
        tokens: &[u32],
        precise_from: usize,
    ) -> Result<Vec<f32>> {
        let m = &*self.inner;
        let cfg = &m.cfg;
        let (n, h, hd) = (tokens.len(), cfg.hidden, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.heads * hd, cfg.kv_heads * hd);
        let width = q_dim + 2 * kv_dim;
        let eps = cfg.rms_eps as f32;
        let vocab = m.embed.len() / h;
        let mut x = Vec::with_capacity(n * h);
        for &t in tokens {
            let t = (t as usize).min(vocab - 1);
            x.extend_from_slice(&m.embed[t * h..(t + 1) * h]);
        }
        let mut xn = vec![0f32; n * h];
        let mut attn = vec![0f32; n * q_dim];
        for (l, block) in m.blocks.iter().enumerate() {
            rms_norm_rows(&x, &block.attn_norm, eps, &mut xn);
            let mut qkv = block.qkv.forward_rows(&xn, n, precise_from)?;
            for r in rows.iter_mut() {
                let pos = r.seq.position;
                let part = &mut qkv[r.start * width..(r.start + r.len) * width];
                for (i, row) in part.chunks_exact_mut(width).enumerate() {
                    let (qr, rest) = row.split_at_mut(q_dim);
                    let (kr, vr) = rest.split_at_mut(kv_dim);
                    if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
                        for head in qr.chunks_exact_mut(hd) {
                            rms_norm_in_place(head, qn, eps);
                        }
                        for head in kr.chunks_exact_mut(hd) {
                            rms_norm_in_place(head, kn, eps);
                        }
                    }
                    rope(qr, hd, pos + i, &m.cos, &m.sin, cfg.rope_interleaved);
                    rope(kr, hd, pos + i, &m.cos, &m.sin, cfg.rope_interleaved);
                    r.seq.keys[l].extend_from_slice(kr);
                    r.seq.values[l].extend_from_slice(vr);
                }
            }
            attend_rows(cfg, l, rows, &qkv, &mut attn);
            let o = block.o.forward_rows(&attn, n, precise_from)?;
            add_in_place(&mut x, &o);
            rms_norm_rows(&x, &block.ffn_norm, eps, &mut xn);
            let gu = block.gate_up.forward_rows(&xn, n, precise_from)?;
            let ffn = block.gate_up.rows() / 2;
            let mut act = Vec::with_capacity(n * ffn);
            for row in gu.chunks_exact(2 * ffn) {
                let (g, u) = row.split_at(ffn);
                act.extend(g.iter().zip(u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u));
            }
            let d = block.down.forward_rows(&act, n, precise_from)?;
            add_in_place(&mut x, &d);
        }
        Ok(x)
    }

    /// The output head over the last row of each step that wants logits:
    /// decode rows together through the quantized head; a prompt's last
    /// row, with the precision pass on, in f32 against the dequantized
    /// embeddings (tied) or through the head's precise pass.
    fn head(&self, rows: &[Rows<'_>], x: &[f32], out: &mut [Option<Vec<f32>>]) -> Result<()> {
        let m = &*self.inner;
        let h = m.cfg.hidden;
        let eps = m.cfg.rms_eps as f32;
        let wanted: Vec<&Rows<'_>> = rows.iter().filter(|r| r.logits).collect();
        let mut last = vec![0f32; wanted.len() * h];
        for (dst, r) in last.chunks_exact_mut(h).zip(&wanted) {
            let end = (r.start + r.len) * h;
            dst.copy_from_slice(&x[end - h..end]);
            rms_norm_in_place(dst, &m.norm, eps);
        }
        let precise = |r: &Rows<'_>| r.prompt && m.precise_prompt;
        let fast: Vec<usize> = (0..wanted.len()).filter(|&i| !precise(wanted[i])).collect();
        if !fast.is_empty() {
            let input: Vec<f32> = fast
                .iter()
                .flat_map(|&i| &last[i * h..(i + 1) * h])
                .copied()
                .collect();
            let logits = m.lm_head.forward_rows(&input, fast.len(), fast.len())?;
            let vocab = logits.len() / fast.len();
            for (&i, row) in fast.iter().zip(logits.chunks_exact(vocab)) {
                out[wanted[i].step] = Some(row.to_vec());
            }
        }
        for (i, r) in wanted.iter().enumerate().filter(|(_, r)| precise(r)) {
            let row = &last[i * h..(i + 1) * h];
            out[r.step] = Some(if m.tied {
                // Once per prompt: the first token is chosen from exact logits.
                m.embed.chunks_exact(h).map(|e| simd::dot(e, row)).collect()
            } else {
                m.lm_head.forward_with(row, 1, true)?
            });
        }
        Ok(())
    }
}

impl CpuLlama {
    fn check(&self, steps: &[Step<'_>]) -> Result<()> {
        super::check_window(steps, self.inner.cfg.context_length)
    }
}

fn batch_rows<'s>(steps: &'s mut [Step<'_>], tokens: &mut Vec<u32>) -> Result<Vec<Rows<'s>>> {
    // Decode rows first, prompt rows after: the precision pass then runs
    // over one block of rows at the end.
    let mut order: Vec<(usize, &'s mut Step<'_>)> = steps.iter_mut().enumerate().collect();
    order.sort_by_key(|(_, s)| s.prompt);
    let mut rows = Vec::with_capacity(order.len());
    for (i, s) in order {
        let start = tokens.len();
        tokens.extend_from_slice(s.tokens);
        let (len, logits, prompt) = (s.tokens.len(), s.logits, s.prompt);
        let seq = s
            .seq
            .as_any_mut()
            .downcast_mut::<CpuSequence>()
            .ok_or_else(|| {
                crate::error::EngineError::Internal("a foreign sequence in a CPU batch".into())
            })?;
        rows.push(Rows {
            seq,
            step: i,
            start,
            len,
            logits,
            prompt,
        });
    }
    Ok(rows)
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

/// `out` = each row of `x` normalised (same length as `x`).
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    for row in out.chunks_exact_mut(weight.len()) {
        rms_norm_in_place(row, weight, eps);
    }
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

/// Attention for every row of the batch, spread over the matmul pool's
/// threads one head of one row per work item (so a single decode row is
/// spread too). Row by row, each over the positions up to its own: a row's
/// result does not depend on how the prompt was cut into chunks, or on
/// what the prefix cache supplied.
fn attend_rows(cfg: &LlamaConfig, layer: usize, rows: &[Rows<'_>], qkv: &[f32], attn: &mut [f32]) {
    let (hd, heads) = (cfg.head_dim, cfg.heads);
    let q_dim = heads * hd;
    let kv_dim = cfg.kv_heads * hd;
    let width = q_dim + 2 * kv_dim;
    // (keys, values, positions seen) per batch row, in row order.
    let mut work = Vec::with_capacity(attn.len() / q_dim);
    for r in rows {
        let (keys, values) = (&r.seq.keys[layer][..], &r.seq.values[layer][..]);
        let pos = r.seq.position;
        work.extend((0..r.len).map(|i| (keys, values, pos + i + 1)));
    }
    let outs: Vec<std::sync::Mutex<&mut [f32]>> = attn
        .chunks_exact_mut(hd)
        .map(std::sync::Mutex::new)
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(outs.len(), |range| {
        let mut scores = Vec::new();
        for item in range {
            let (row, head) = (item / heads, item % heads);
            let (keys, values, seen) = work[row];
            let q = &qkv[row * width + head * hd..row * width + (head + 1) * hd];
            let mut out = outs[item].lock().unwrap_or_else(|e| e.into_inner());
            attend_head(cfg, head, q, keys, values, seen, &mut scores, &mut out);
        }
    });
}

/// One head of one query row against the first `seen` positions.
#[allow(clippy::too_many_arguments)]
fn attend_head(
    cfg: &LlamaConfig,
    head: usize,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    seen: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = cfg.head_dim;
    let kv_dim = cfg.kv_heads * hd;
    let g = head / (cfg.heads / cfg.kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for t in 0..seen {
        let k = &keys[t * kv_dim + g * hd..t * kv_dim + (g + 1) * hd];
        let s = simd::dot(q, k) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut total = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    out.fill(0.0);
    for (t, s) in scores.iter().enumerate() {
        let w = s / total;
        let v = &values[t * kv_dim + g * hd..t * kv_dim + (g + 1) * hd];
        for (o, v) in out.iter_mut().zip(v) {
            *o += w * v;
        }
    }
}
