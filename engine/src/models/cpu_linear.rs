//! Linear layers of the CPU decoder: matrices that read the same input
//! (q, k and v; gate and up) are fused into one matmul, so each layer makes
//! four matmul calls instead of seven, with bigger work per call for the
//! thread pool.
//!
//! Q4_0, Q4_1 and Q8_0 weights run on our own tiles ([`super::tiles`]),
//! which serve every row of a batch per pass over the weights, wherever the
//! CPU has AVX2 or better. Every other type (and those three on CPUs
//! without, or with `CORTEX_KERNELS=candle`) runs on candle's kernels;
//! there Q4_1 takes the lossless split described in [`super::linear`],
//! its per-block offsets applied here with exact f32 block sums.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::linear::split_q4_1_bytes;
use super::simd;
use super::tiles::{self, Activations, Level, Tiles};
use crate::error::{EngineError, Result};

const BLOCK: usize = 32;

/// One matmul over rows of the same GGML type.
struct Group {
    kernel: Kernel,
    rows: usize,
}

enum Kernel {
    Tiles(Tiles),
    Candle {
        mm: QMatMul,
        /// How the kernel rounds this group's activations.
        rounding: Rounding,
        /// Q4_1 offsets, stored transposed (`cols/32 × rows`) so applying
        /// them is a few contiguous `y += s·column` sweeps.
        offsets: Option<Vec<f32>>,
    },
}

/// How a candle kernel rounds activations before its integer dot
/// products; the precise pass needs to know to correct it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rounding {
    /// f32 weights: nothing is rounded.
    Exact,
    /// Q8_0/Q8_1: blocks of 32, scale `amax/127` stored as f16.
    Q8Blocks,
    /// Q8_K: blocks of 256, scale `−max/127` in f32 (K-quants, and Q8_0 on
    /// candle's repacked VNNI kernels).
    Q8K,
}

impl Rounding {
    fn of(dtype: GgmlDType, rows: usize, cols: usize) -> Self {
        use GgmlDType as D;
        match dtype {
            D::F32 | D::F16 | D::BF16 => Self::Exact,
            D::Q8_0 if candle_repacks_q8(rows, cols) => Self::Q8K,
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

/// `y = x·Wᵀ + b` with W the rows of its parts, stacked.
pub struct CpuLinear {
    groups: Vec<Group>,
    bias: Option<Vec<f32>>,
    rows: usize,
    cols: usize,
    /// The tiles' instructions, or `None` where candle runs everything.
    level: Option<Level>,
    /// Bytes the packed weights take beyond the file's.
    extra_bytes: u64,
}

impl std::fmt::Debug for CpuLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuLinear")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("groups", &self.groups.len())
            .field("level", &self.level)
            .finish()
    }
}

impl CpuLinear {
    /// Stacks `parts` (weight `[rows_i, cols]`, optional bias `[rows_i]`),
    /// on the best kernels this CPU has.
    pub fn fuse(parts: Vec<(QTensor, Option<Tensor>)>) -> Result<Self> {
        Self::fuse_on(parts, Level::detect())
    }

    /// As [`Self::fuse`] on the given tile level (`None`: candle only).
    pub fn fuse_on(parts: Vec<(QTensor, Option<Tensor>)>, level: Option<Level>) -> Result<Self> {
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
        let mut extra_bytes = 0;
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
                let parts = std::mem::take(&mut pending);
                groups.push(group(parts, cols, level, &mut extra_bytes)?);
            }
            pending.push(w);
        }
        groups.push(group(pending, cols, level, &mut extra_bytes)?);
        Ok(Self {
            groups,
            bias: any_bias.then_some(bias),
            rows,
            cols,
            level,
            extra_bytes,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Memory the packed weights take beyond the file's (row padding, and
    /// the offsets Q4_0 tiles store).
    pub fn extra_bytes(&self) -> u64 {
        self.extra_bytes
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
        let mut y = match &self.bias {
            Some(bias) => bias.repeat(n),
            None => vec![0f32; n * self.rows],
        };
        // Rounded once for every tile group (they read the same input).
        let mut rounded: Option<(Activations, Option<Activations>)> = None;
        let mut start = 0;
        for g in &self.groups {
            match &g.kernel {
                Kernel::Tiles(t) => {
                    let level = self.level.unwrap_or(Level::Scalar);
                    let (a, fix) = rounded.get_or_insert_with(|| {
                        let a = Activations::quantize(x, n, self.cols);
                        let fix = (precise_from < n).then(|| {
                            let r = a.residual(x, precise_from);
                            Activations::quantize(&r, n - precise_from, self.cols)
                        });
                        (a, fix)
                    });
                    t.matmul(level, a, true, &mut y, self.rows, start);
                    if let Some(fix) = fix {
                        let tail = &mut y[precise_from * self.rows..];
                        t.matmul(level, fix, false, tail, self.rows, start);
                    }
                }
                Kernel::Candle {
                    mm,
                    rounding,
                    offsets,
                } => {
                    let part = candle_forward(mm, *rounding, x, n, self.cols, precise_from)?;
                    for (dst, src) in y.chunks_exact_mut(self.rows).zip(part.chunks_exact(g.rows)) {
                        add_in_place(&mut dst[start..start + g.rows], src);
                    }
                    if let Some(offsets) = offsets {
                        add_offsets(&mut y, start, self.rows, offsets, g.rows, x, n, self.cols);
                    }
                }
            }
            start += g.rows;
        }
        Ok(y)
    }
}

/// One candle matmul, with its precision pass over rows `precise_from..`.
fn candle_forward(
    mm: &QMatMul,
    rounding: Rounding,
    x: &[f32],
    n: usize,
    cols: usize,
    precise_from: usize,
) -> Result<Vec<f32>> {
    let input = Tensor::from_slice(x, (n, cols), &Device::Cpu)?;
    let mut y = mm.forward(&input)?.flatten_all()?.to_vec1::<f32>()?;
    if precise_from < n && rounding != Rounding::Exact {
        let rows = n - precise_from;
        let residual = rounding.residual(&x[precise_from * cols..]);
        let r = Tensor::from_vec(residual, (rows, cols), &Device::Cpu)?;
        let fix = mm.forward(&r)?.flatten_all()?.to_vec1::<f32>()?;
        let out = y.len() / n;
        add_in_place(&mut y[precise_from * out..], &fix);
    }
    Ok(y)
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
/// a width that is a multiple of 256, rows in tiles of 16. They round
/// activations to Q8_K, not Q8_0.
fn candle_repacks_q8(rows: usize, cols: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let forced_avx2 = std::env::var("MISTRALRS_FORCE_AVX2").as_deref() == Ok("1");
        let forced_vnni = std::env::var("MISTRALRS_FORCE_AVXVNNI").as_deref() == Ok("1");
        let avx512_vnni =
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni");
        let avx_vnni = (forced_vnni || is_x86_feature_detected!("avxvnni"))
            && is_x86_feature_detected!("avx2");
        let vnni = (!forced_avx2 && !forced_vnni && avx512_vnni) || (!forced_avx2 && avx_vnni);
        cols.is_multiple_of(256) && rows.is_multiple_of(16) && vnni
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, cols);
        false
    }
}

/// The tiles' source type for a GGML type they take.
fn tile_source(dtype: GgmlDType) -> Option<tiles::Source> {
    match dtype {
        GgmlDType::Q4_0 => Some(tiles::Source::Q4_0),
        GgmlDType::Q4_1 => Some(tiles::Source::Q4_1),
        GgmlDType::Q8_0 => Some(tiles::Source::Q8_0),
        _ => None,
    }
}

/// Stacks same-typed tensors into one matmul.
fn group(
    parts: Vec<QTensor>,
    cols: usize,
    level: Option<Level>,
    extra_bytes: &mut u64,
) -> Result<Group> {
    let dtype = parts[0].dtype();
    let rows: usize = parts.iter().map(|p| p.shape().dims()[0]).sum();
    let stacked = |parts: &[QTensor]| -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        for p in parts {
            bytes.extend_from_slice(&p.data()?);
        }
        Ok(bytes)
    };
    if let (Some(_), Some(source)) = (level, tile_source(dtype)) {
        let bytes = stacked(&parts)?;
        if let Some(t) = Tiles::pack(source, &bytes, rows, cols) {
            *extra_bytes += (t.bytes() as u64).saturating_sub(bytes.len() as u64);
            return Ok(Group {
                kernel: Kernel::Tiles(t),
                rows,
            });
        }
    }
    let candle = |q: QTensor, offsets: Option<Vec<f32>>| -> Result<Group> {
        Ok(Group {
            kernel: Kernel::Candle {
                rounding: Rounding::of(q.dtype(), rows, cols),
                mm: QMatMul::from_qtensor(q)?,
                offsets,
            },
            rows,
        })
    };
    match dtype {
        GgmlDType::Q4_1 => {
            let (codes, offsets) = split_q4_1_bytes(&stacked(&parts)?)?;
            let blocks = cols / BLOCK;
            let mut transposed = vec![0f32; offsets.len()];
            for (o, row) in offsets.chunks_exact(blocks).enumerate() {
                for (b, &v) in row.iter().enumerate() {
                    transposed[b * rows + o] = v;
                }
            }
            let q = qtensor_from_ggml(GgmlDType::Q4_0, &codes, vec![rows, cols], &Device::Cpu)?;
            candle(q, Some(transposed))
        }
        _ if parts.len() == 1 => candle(parts.into_iter().next().expect("one part"), None),
        _ => {
            let q = qtensor_from_ggml(dtype, &stacked(&parts)?, vec![rows, cols], &Device::Cpu)?;
            candle(q, None)
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
    /// precise pass lands much closer to the exact product, on our tiles at
    /// every level this CPU has and on candle's kernels.
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
            (32, GgmlDType::Q4K),
        ]
        .iter()
        .map(|&(rows, dtype)| (Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap(), dtype))
        .collect();
        let bias = Tensor::randn(0f32, 1.0, 32, &dev).unwrap();
        let total = 160;

        // Exact: dequantized weights in f32.
        let mut exact = vec![0f32; n * total];
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
                exact[r * total + start..r * total + start + rows].copy_from_slice(row);
            }
            start += rows;
        }
        let levels = Level::available().into_iter().map(Some).chain([None]);
        for level in levels {
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
            let fused = CpuLinear::fuse_on(parts, level).unwrap();
            assert_eq!(fused.rows(), total);
            assert_eq!(fused.groups.len(), 3, "the two Q4_1 parts share a matmul");
            assert_eq!(
                fused.extra_bytes(),
                0,
                "Q4_1 and Q8_0 tiles take the file's size"
            );
            let fast = fused.forward(&xs, n).unwrap();
            let precise = fused.forward_with(&xs, n, true).unwrap();
            let cols_of = |v: &[f32], range: std::ops::Range<usize>| -> Vec<f32> {
                v.chunks(total)
                    .flat_map(|row| row[range.clone()].to_vec())
                    .collect()
            };
            // Each group's activation rounding is corrected, whichever kernel
            // (our tiles, candle's Q4_0, Q8_0 or Q8_K) ran it.
            for range in [0..96, 96..128, 128..160] {
                let exact = cols_of(&exact, range.clone());
                let e_fast = max_diff(&cols_of(&fast, range.clone()), &exact);
                let e_precise = max_diff(&cols_of(&precise, range.clone()), &exact);
                assert!(e_fast < 1.0, "{level:?} {range:?}: 8-bit off by {e_fast}");
                assert!(
                    e_precise < e_fast / 10.0,
                    "{level:?} {range:?}: precise {e_precise} vs fast {e_fast}"
                );
            }
            // A batch computes each row as it would alone.
            let alone: Vec<f32> = xs
                .chunks_exact(cols)
                .flat_map(|row| fused.forward(row, 1).unwrap())
                .collect();
            assert_eq!(fast, alone, "{level:?}: rows depend on their batch");
            // The precision pass on the last rows only: the first row as
            // fast, the others as precise.
            let mixed = fused.forward_rows(&xs, n, 1).unwrap();
            assert_eq!(mixed[..total], fast[..total], "{level:?}: row 0 fast");
            let tail = fused.forward_with(&xs[cols..], n - 1, true).unwrap();
            assert_eq!(mixed[total..], tail[..], "{level:?}: rows 1.. precise");
        }
    }
}
