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
    /// Q4_1 offsets, stored transposed (`cols/32 × rows`) so applying them
    /// is a few contiguous `y += s·column` sweeps.
    offsets: Option<Vec<f32>>,
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
    pub fn fuse(parts: Vec<(QTensor, Option<Tensor>)>) -> Result<Self> {
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
                groups.push(group(std::mem::take(&mut pending), cols)?);
            }
            pending.push(w);
        }
        groups.push(group(pending, cols)?);
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
        let input = Tensor::from_slice(x, (n, self.cols), &Device::Cpu)?;
        let residual = if precise && self.groups.iter().any(|g| q4_0_kernel(&g.mm)) {
            Some(Tensor::from_vec(
                q8_residual(x),
                (n, self.cols),
                &Device::Cpu,
            )?)
        } else {
            None
        };
        let run = |g: &Group| -> Result<Vec<f32>> {
            let mut y = g.mm.forward(&input)?;
            if let (Some(r), true) = (&residual, q4_0_kernel(&g.mm)) {
                y = (y + g.mm.forward(r)?)?;
            }
            Ok(y.flatten_all()?.to_vec1::<f32>()?)
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

/// Whether `mm` runs candle's Q4_0 kernel, whose activations are rounded
/// exactly as [`q8_residual`] assumes (Q8_0, f16 scale). Other kernels may
/// repack and round differently (Q8_K on AVX-VNNI machines), where the
/// correction would not apply; they keep 8-bit activations.
fn q4_0_kernel(mm: &QMatMul) -> bool {
    matches!(mm, QMatMul::QTensor(t) if t.dtype() == GgmlDType::Q4_0)
}

/// What 8-bit block quantization (Q8_0, as the kernels apply it to
/// activations) loses of `x`: `x − dequant(quant(x))`.
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

/// Stacks same-typed tensors into one matmul.
fn group(parts: Vec<QTensor>, cols: usize) -> Result<Group> {
    let dtype = parts[0].dtype();
    let rows: usize = parts.iter().map(|p| p.shape().dims()[0]).sum();
    if parts.len() == 1 && dtype != GgmlDType::Q4_1 {
        let mm = QMatMul::from_qtensor(parts.into_iter().next().expect("one part"))?;
        return Ok(Group {
            mm,
            rows,
            offsets: None,
        });
    }
    match dtype {
        GgmlDType::Q4_1 => {
            let mut codes = Vec::new();
            let mut offsets = Vec::new();
            for p in &parts {
                let (c, o) = split_q4_1_bytes(&p.data()?)?;
                codes.extend(c);
                offsets.extend(o);
            }
            let q = qtensor_from_ggml(GgmlDType::Q4_0, &codes, vec![rows, cols], &Device::Cpu)?;
            let blocks = cols / BLOCK;
            let mut transposed = vec![0f32; offsets.len()];
            for (o, row) in offsets.chunks_exact(blocks).enumerate() {
                for (b, &v) in row.iter().enumerate() {
                    transposed[b * rows + o] = v;
                }
            }
            Ok(Group {
                mm: QMatMul::from_qtensor(q)?,
                rows,
                offsets: Some(transposed),
            })
        }
        _ => {
            let mut bytes = Vec::new();
            for p in &parts {
                bytes.extend_from_slice(&p.data()?);
            }
            let q = qtensor_from_ggml(dtype, &bytes, vec![rows, cols], &Device::Cpu)?;
            Ok(Group {
                mm: QMatMul::from_qtensor(q)?,
                rows,
                offsets: None,
            })
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
        let fused = CpuLinear::fuse(parts).unwrap();
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
        // The Q4_1 rows (split onto the Q4_0 kernel) get the correction…
        let (e_fast, e_precise) = (
            max_diff(&cols_of(&fast, 0..96), &cols_of(&exact, 0..96)),
            max_diff(&cols_of(&precise, 0..96), &cols_of(&exact, 0..96)),
        );
        assert!(e_fast < 1.0, "8-bit activations: off by {e_fast}");
        assert!(
            e_precise < e_fast / 10.0,
            "precise {e_precise} vs fast {e_fast}"
        );
        // …the Q8_0 rows keep their kernel's own rounding.
        assert_eq!(cols_of(&fast, 96..128), cols_of(&precise, 96..128));
        assert!(max_diff(&cols_of(&fast, 96..128), &cols_of(&exact, 96..128)) < 1.0);
    }
}
