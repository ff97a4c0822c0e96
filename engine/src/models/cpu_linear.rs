//! Linear layers of the CPU decoder: matrices that read the same input
//! (q, k and v; gate and up) are fused into one matmul, so each layer makes
//! four calls into candle's kernels instead of seven, with bigger work per
//! call for the thread pool. Q4_1 weights take the lossless split described
//! in [`super::linear`]; its per-block offsets are applied here in plain
//! loops (1/32 of the work), with exact f32 block sums.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::linear::split_q4_1_bytes;
use super::simd;
use crate::error::{EngineError, Result};

const BLOCK: usize = 32;

/// One matmul over rows of the same GGML type.
struct Group {
    mm: QMatMul,
    rows: usize,
    /// How the kernel rounds this group's activations.
    rounding: Rounding,
    /// Q4_1 offsets, stored transposed (`cols/32 × rows`) so applying them
    /// is a few contiguous `y += s·column` sweeps.
    offsets: Option<Vec<f32>>,
    /// Width of the stored rows: more than the input's when rows were
    /// zero-padded to reach a faster kernel; the input is padded to match.
    width: usize,
}

/// How a kernel rounds activations before its integer dot products; the
/// precise pass needs to know to correct it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rounding {
    /// f32 weights: nothing is rounded.
    Exact,
    /// Q8_0/Q8_1: blocks of 32, scale `amax/127` stored as f16.
    Q8Blocks,
    /// Q8_K: blocks of 256, scale `−max/127` in f32 (K-quants, and Q8_0 on
    /// the repacked VNNI kernels).
    Q8K,
}

impl Rounding {
    fn of(dtype: GgmlDType, rows: usize, cols: usize) -> Self {
        use GgmlDType as D;
        match dtype {
            D::F32 | D::F16 | D::BF16 => Self::Exact,
            D::Q8_0 if q8_repack_applies(rows, cols) => Self::Q8K,
            D::Q4_0 | D::Q4_1 | D::Q5_0 | D::Q5_1 | D::Q8_0 | D::Q8_1 => Self::Q8Blocks,
            _ => Self::Q8K,
        }
    }

    /// What this rounding loses of `x`: `x − dequant(quant(x))`.
    fn residual(self, x: &[f32]) -> Vec<f32> {
        match self {
            Self::Exact => vec![0.0; x.len()],
            Self::Q8Blocks => q8_residual(x),
            Self::Q8K => q8k_residual(x),
        }
    }
}

/// Memory the loader may spend widening 4-bit codes to Q8_0 for speed
/// (Q8_0 takes 34 bytes per 32 weights against Q4_0's 18). Groups are
/// widened while the budget lasts, so a model never grows by more than it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WidenBudget {
    pub left: u64,
    pub spent: u64,
}

impl WidenBudget {
    pub fn new(bytes: u64) -> Self {
        Self {
            left: bytes,
            spent: 0,
        }
    }

    fn take(&mut self, bytes: u64) -> bool {
        if bytes <= self.left {
            self.left -= bytes;
            self.spent += bytes;
            true
        } else {
            false
        }
    }
}

/// `y = x·Wᵀ + b` with W the rows of its parts, stacked.
pub struct CpuLinear {
    groups: Vec<Group>,
    bias: Option<Vec<f32>>,
    rows: usize,
    cols: usize,
}

impl std::fmt::Debug for CpuLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuLinear")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl CpuLinear {
    /// Stacks `parts` (weight `[rows_i, cols]`, optional bias `[rows_i]`).
    pub fn fuse(parts: Vec<(QTensor, Option<Tensor>)>, budget: &mut WidenBudget) -> Result<Self> {
        let cols = match parts.first() {
            Some((w, _)) => w.shape().dims2()?.1,
            None => {
                return Err(EngineError::InvalidModel(
                    "a linear layer with no weights".into(),
                ))
            }
        };
        let any_bias = parts.iter().any(|(_, b)| b.is_some());
        let mut bias = Vec::new();
        let mut groups: Vec<Group> = Vec::new();
        let mut pending: Vec<QTensor> = Vec::new();
        let mut rows = 0;
        for (w, b) in parts {
            let (r, c) = w.shape().dims2()?;
            if c != cols {
                return Err(EngineError::InvalidModel(format!(
                    "fused weights of different widths ({c} and {cols})"
                )));
            }
            rows += r;
            if any_bias {
                match b {
                    Some(b) => bias.extend(b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?),
                    None => bias.extend(std::iter::repeat_n(0.0, r)),
                }
            }
            if pending.first().is_some_and(|p| p.dtype() != w.dtype()) {
                groups.push(group(std::mem::take(&mut pending), cols, budget)?);
            }
            pending.push(w);
        }
        groups.push(group(pending, cols, budget)?);
        Ok(Self {
            groups,
            bias: any_bias.then_some(bias),
            rows,
            cols,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x` holds `n` rows of `cols`; returns `n` rows of `rows`.
    pub fn forward(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.forward_with(x, n, false)
    }

    /// With `precise`, the activations' 8-bit rounding error is itself run
    /// through the kernel and added: twice the kernel time, error ~1/127.
    pub fn forward_with(&self, x: &[f32], n: usize, precise: bool) -> Result<Vec<f32>> {
        self.forward_rows(x, n, if precise { 0 } else { n })
    }

    /// As [`Self::forward_with`], with the precision pass on rows
    /// `precise_from..n` only (the prompt rows of a batch whose first rows
    /// are decode steps).
    pub fn forward_rows(&self, x: &[f32], n: usize, precise_from: usize) -> Result<Vec<f32>> {
        let input = Tensor::from_slice(x, (n, self.cols), &Device::Cpu)?;
        let padded: Option<Vec<f32>> = self
            .groups
            .iter()
            .find(|g| g.width != self.cols)
            .map(|g| pad_rows(x, self.cols, g.width));
        let padded_input = match &padded {
            Some(p) => Some(Tensor::from_slice(p, (n, p.len() / n), &Device::Cpu)?),
            None => None,
        };
        let run = |g: &Group| -> Result<Vec<f32>> {
            let (xs, input) = match (&padded, &padded_input) {
                (Some(p), Some(t)) if g.width != self.cols => (p.as_slice(), t),
                _ => (x, &input),
            };
            let mut y = g.mm.forward(input)?.flatten_all()?.to_vec1::<f32>()?;
            if precise_from < n && g.rounding != Rounding::Exact {
                let rows = n - precise_from;
                let residual = g.rounding.residual(&xs[precise_from * g.width..]);
                let r = Tensor::from_vec(residual, (rows, g.width), &Device::Cpu)?;
                let fix = g.mm.forward(&r)?.flatten_all()?.to_vec1::<f32>()?;
                add_in_place(&mut y[precise_from * g.rows..], &fix);
            }
            Ok(y)
        };
        let mut out = if self.groups.len() == 1 {
            let g = &self.groups[0];
            let mut y = run(g)?;
            if let Some(offsets) = &g.offsets {
                add_offsets(&mut y, 0, self.rows, offsets, g.rows, x, n, self.cols);
            }
            y
        } else {
            let mut y = vec![0f32; n * self.rows];
            let mut start = 0;
            for g in &self.groups {
                let part = run(g)?;
                for i in 0..n {
                    y[i * self.rows + start..i * self.rows + start + g.rows]
                        .copy_from_slice(&part[i * g.rows..(i + 1) * g.rows]);
                }
                if let Some(offsets) = &g.offsets {
                    add_offsets(&mut y, start, self.rows, offsets, g.rows, x, n, self.cols);
                }
                start += g.rows;
            }
            y
        };
        if let Some(bias) = &self.bias {
            for row in out.chunks_exact_mut(self.rows) {
                for (y, b) in row.iter_mut().zip(bias) {
                    *y += b;
                }
            }
        }
        Ok(out)
    }
}

fn add_in_place(y: &mut [f32], d: &[f32]) {
    for (a, b) in y.iter_mut().zip(d) {
        *a += b;
    }
}

/// Q8_0 rounding's loss, computed as candle's `BlockQ8_0::from_float` rounds.
fn q8_residual(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for block in x.chunks(BLOCK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let d16 = half::f16::from_f32(d).to_f32();
        out.extend(block.iter().map(|&v| v - (v * id).round() * d16));
    }
    out
}

/// Q8_K rounding's loss, computed as candle's `BlockQ8K::from_float` rounds.
fn q8k_residual(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for block in x.chunks(256) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in block {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            out.extend_from_slice(block);
            continue;
        }
        let iscale = -127.0 / max;
        let d = 1.0 / iscale;
        out.extend(
            block
                .iter()
                .map(|&v| v - (iscale * v).round().clamp(-128.0, 127.0) * d),
        );
    }
    out
}

/// `y[i, start + o] += Σ_b offsets[b, o] · Σ_{j in block b} x[i, j]`.
#[allow(clippy::too_many_arguments)]
fn add_offsets(
    y: &mut [f32],
    start: usize,
    stride: usize,
    offsets: &[f32],
    rows: usize,
    x: &[f32],
    n: usize,
    cols: usize,
) {
    for i in 0..n {
        let out = &mut y[i * stride + start..i * stride + start + rows];
        for (b, block) in x[i * cols..(i + 1) * cols].chunks_exact(BLOCK).enumerate() {
            let s = simd::sum(block);
            let column = &offsets[b * rows..(b + 1) * rows];
            for (y, c) in out.iter_mut().zip(column) {
                *y += s * c;
            }
        }
    }
}

/// Whether candle 0.11's repacked x86 kernels run a Q8_0 matmul of this
/// shape (mirrors its `repack_x86::select`): VNNI (plain AVX2 is excluded),
/// a width that is a multiple of 256, rows in tiles of 16. They are several
/// times faster than the Q4_0 kernel on such shapes (measured: 576×1536,
/// 18 µs against 83 µs).
fn q8_repack_applies(rows: usize, cols: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let forced_avx2 = std::env::var("MISTRALRS_FORCE_AVX2").as_deref() == Ok("1");
        let forced_vnni = std::env::var("MISTRALRS_FORCE_AVXVNNI").as_deref() == Ok("1");
        let avx512_vnni =
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni");
        let avx_vnni = (forced_vnni || is_x86_feature_detected!("avxvnni"))
            && is_x86_feature_detected!("avx2");
        let vnni = (!forced_avx2 && !forced_vnni && avx512_vnni) || (!forced_avx2 && avx_vnni);
        cols % 256 == 0 && rows % 16 == 0 && vnni
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, cols);
        false
    }
}

/// Q4_0 codes as a tensor; where the repacked Q8_0 kernel applies, widened
/// to Q8_0 first. That is lossless: a Q4_0 value is `d·(q−8)` with
/// `q−8` in −8..7, which Q8_0 stores as the same scale and an i8.
fn codes_tensor(
    q4_0: &[u8],
    rows: usize,
    cols: usize,
    budget: &mut WidenBudget,
) -> Result<QTensor> {
    let extra = (q4_0.len() / 18 * 16) as u64;
    if !q8_repack_applies(rows, cols) || !budget.take(extra) {
        return Ok(qtensor_from_ggml(
            GgmlDType::Q4_0,
            q4_0,
            vec![rows, cols],
            &Device::Cpu,
        )?);
    }
    let mut q8 = Vec::with_capacity(q4_0.len() / 18 * 34);
    for block in q4_0.chunks_exact(18) {
        q8.extend_from_slice(&block[0..2]);
        q8.extend(block[2..].iter().map(|b| ((b & 0x0F) as i8 - 8) as u8));
        q8.extend(block[2..].iter().map(|b| ((b >> 4) as i8 - 8) as u8));
    }
    Ok(qtensor_from_ggml(
        GgmlDType::Q8_0,
        &q8,
        vec![rows, cols],
        &Device::Cpu,
    )?)
}

/// Zero blocks that widen each Q8_0 row to a multiple of 256.
fn q8_padding(cols: usize) -> usize {
    cols.next_multiple_of(256) - cols
}

/// Q8_0 rows as a tensor; where the repacked kernel would apply to rows
/// zero-padded to a multiple of 256 and the budget allows, padded. Zero
/// weights times the zero-padded input add nothing: the product is the same.
fn q8_0_tensor(q8: &[u8], rows: usize, cols: usize, budget: &mut WidenBudget) -> Result<QTensor> {
    let pad = q8_padding(cols);
    let extra = (rows * pad / BLOCK * 34) as u64;
    if pad == 0 || !q8_repack_applies(rows, cols + pad) || !budget.take(extra) {
        return Ok(qtensor_from_ggml(
            GgmlDType::Q8_0,
            q8,
            vec![rows, cols],
            &Device::Cpu,
        )?);
    }
    let row_bytes = cols / BLOCK * 34;
    let mut out = Vec::with_capacity(q8.len() + extra as usize);
    for row in q8.chunks_exact(row_bytes) {
        out.extend_from_slice(row);
        out.resize(out.len() + pad / BLOCK * 34, 0);
    }
    Ok(qtensor_from_ggml(
        GgmlDType::Q8_0,
        &out,
        vec![rows, cols + pad],
        &Device::Cpu,
    )?)
}

/// `n` rows of `cols` values, each followed by zeros up to `width`.
fn pad_rows(x: &[f32], cols: usize, width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() / cols * width);
    for row in x.chunks_exact(cols) {
        out.extend_from_slice(row);
        out.resize(out.len() + width - cols, 0.0);
    }
    out
}

/// Stacks same-typed tensors into one matmul.
fn group(parts: Vec<QTensor>, cols: usize, budget: &mut WidenBudget) -> Result<Group> {
    let dtype = parts[0].dtype();
    let rows: usize = parts.iter().map(|p| p.shape().dims()[0]).sum();
    let make = |q: QTensor, offsets: Option<Vec<f32>>| -> Result<Group> {
        let width = q.shape().dims2()?.1;
        let rounding = Rounding::of(q.dtype(), rows, width);
        Ok(Group {
            mm: QMatMul::from_qtensor(q)?,
            rows,
            rounding,
            offsets,
            width,
        })
    };
    let mut bytes = Vec::new();
    match dtype {
        GgmlDType::Q4_1 => {
            let mut offsets = Vec::new();
            for p in &parts {
                let (c, o) = split_q4_1_bytes(&p.data()?)?;
                bytes.extend(c);
                offsets.extend(o);
            }
            let blocks = cols / BLOCK;
            let mut transposed = vec![0f32; offsets.len()];
            for (o, row) in offsets.chunks_exact(blocks).enumerate() {
                for (b, &v) in row.iter().enumerate() {
                    transposed[b * rows + o] = v;
                }
            }
            make(codes_tensor(&bytes, rows, cols, budget)?, Some(transposed))
        }
        GgmlDType::Q4_0 => {
            for p in &parts {
                bytes.extend_from_slice(&p.data()?);
            }
            make(codes_tensor(&bytes, rows, cols, budget)?, None)
        }
        GgmlDType::Q8_0 => {
            for p in &parts {
                bytes.extend_from_slice(&p.data()?);
            }
            make(q8_0_tensor(&bytes, rows, cols, budget)?, None)
        }
        _ if parts.len() == 1 => make(parts.into_iter().next().expect("one part"), None),
        _ => {
            for p in &parts {
                bytes.extend_from_slice(&p.data()?);
            }
            make(
                qtensor_from_ggml(dtype, &bytes, vec![rows, cols], &Device::Cpu)?,
                None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Stacked rows of mixed types give what separate matmuls give, and the
    /// precise pass lands much closer to the exact product.
    #[test]
    fn fused_equals_separate_and_precise_is_closer() {
        let dev = Device::Cpu;
        let (n, cols) = (3, 256);
        let x = Tensor::randn(0f32, 1.0, (n, cols), &dev).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let weights: Vec<(Tensor, GgmlDType)> = [
            (64, GgmlDType::Q4_1),
            (32, GgmlDType::Q4_1),
            (32, GgmlDType::Q8_0),
        ]
        .iter()
        .map(|&(rows, dtype)| (Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap(), dtype))
        .collect();
        let bias = Tensor::randn(0f32, 1.0, 32, &dev).unwrap();
        let parts = weights
            .iter()
            .enumerate()
            .map(|(i, (w, dtype))| {
                (
                    QTensor::quantize(w, *dtype).unwrap(),
                    (i == 1).then(|| bias.clone()),
                )
            })
            .collect();
        let fused = CpuLinear::fuse(parts, &mut WidenBudget::new(u64::MAX)).unwrap();
        assert_eq!(fused.rows(), 128);
        assert_eq!(fused.groups.len(), 2, "the two Q4_1 parts share a matmul");

        // Exact: dequantized weights in f32.
        let mut exact = vec![0f32; n * 128];
        let mut start = 0;
        for (i, (w, dtype)) in weights.iter().enumerate() {
            let dq = QTensor::quantize(w, *dtype)
                .unwrap()
                .dequantize(&dev)
                .unwrap();
            let mut y = x.matmul(&dq.t().unwrap()).unwrap();
            if i == 1 {
                y = y.broadcast_add(&bias).unwrap();
            }
            let rows = w.dim(0).unwrap();
            for (r, row) in y.to_vec2::<f32>().unwrap().iter().enumerate() {
                exact[r * 128 + start..r * 128 + start + rows].copy_from_slice(row);
            }
            start += rows;
        }
        let fast = fused.forward(&xs, n).unwrap();
        let precise = fused.forward_with(&xs, n, true).unwrap();
        let cols_of = |v: &[f32], range: std::ops::Range<usize>| -> Vec<f32> {
            v.chunks(128)
                .flat_map(|row| row[range.clone()].to_vec())
                .collect()
        };
        // Each group's activation rounding is corrected, whichever kernel
        // (Q4_0, or Q8_0/Q8_K where candle repacks) ran it.
        for range in [0..96, 96..128] {
            let exact = cols_of(&exact, range.clone());
            let e_fast = max_diff(&cols_of(&fast, range.clone()), &exact);
            let e_precise = max_diff(&cols_of(&precise, range.clone()), &exact);
            assert!(e_fast < 1.0, "{range:?}: 8-bit activations off by {e_fast}");
            assert!(
                e_precise < e_fast / 10.0,
                "{range:?}: precise {e_precise} vs fast {e_fast}"
            );
        }
    }

    /// Q8_0 rows padded to a multiple of 256 (where that reaches the faster
    /// kernel) compute the same product, at 8-bit precision or corrected.
    #[test]
    fn padded_q8_rows_compute_the_same_product() {
        let dev = Device::Cpu;
        let (n, rows, cols) = (2, 64, 576);
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (n, cols), &dev).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let q = || QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let exact = x
            .matmul(&q().dequantize(&dev).unwrap().t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut budget = WidenBudget::new(u64::MAX);
        let padded = CpuLinear::fuse(vec![(q(), None)], &mut budget).unwrap();
        let plain = CpuLinear::fuse(vec![(q(), None)], &mut WidenBudget::new(0)).unwrap();
        assert_eq!(plain.groups[0].width, cols);
        if q8_repack_applies(rows, 768) {
            assert_eq!(padded.groups[0].width, 768);
            assert_eq!(budget.spent, (rows * 192 / 32 * 34) as u64);
        }
        for linear in [&padded, &plain] {
            let fast = linear.forward(&xs, n).unwrap();
            let precise = linear.forward_with(&xs, n, true).unwrap();
            let (e_fast, e_precise) = (max_diff(&fast, &exact), max_diff(&precise, &exact));
            assert!(e_fast < 1.0, "off by {e_fast}");
            assert!(
                e_precise < e_fast / 10.0,
                "precise {e_precise} vs fast {e_fast}"
            );
        }
    }
}
