//! Linear layers over quantized or dense weights.
//!
//! Q4_1 weights get a fast path of our own. candle's x86 kernels have SIMD
//! dot products for Q4_0 and Q8_0 but fall back to scalar code for Q4_1,
//! which made the shipped SmolLM2 Q4_1 file decode at about half of
//! llama.cpp's speed. A Q4_1 value is `d·q + m` (q in 0..16); the same
//! value is `d·(q − 8) + (m + 8d)`, that is, a Q4_0 value with the same
//! scale and codes plus a constant per 32-wide block. So
//! `W·x = W_q4_0·x + Σ_blocks (m + 8d)·(sum of x over the block)`:
//! candle's vectorised Q4_0 kernel does the first term and a small dense
//! matmul (1/32 of the width) the second. No precision is lost: the codes
//! and scales are copied bit for bit and the offsets are exact in f32.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use half::f16;

use crate::error::{EngineError, Result};

const BLOCK: usize = 32;
const Q4_1_BYTES: usize = 20;
const Q4_0_BYTES: usize = 18;

/// `y = x·Wᵀ (+ b)`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum Weight {
    /// candle's quantized matmul, or a dense tensor inside `QMatMul`.
    Quantized(QMatMul),
    /// Q4_1 split into Q4_0 codes and per-block offsets `[out, in/32]`.
    SplitQ4_1 { codes: QMatMul, offsets: Tensor },
    /// A dense `[out, in]` weight.
    Dense(Tensor),
}

impl Linear {
    /// From a GGUF tensor; Q4_1 on the CPU takes the split path.
    pub fn from_qtensor(tensor: QTensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = if tensor.dtype() == GgmlDType::Q4_1 && tensor.device().is_cpu() {
            split_q4_1(&tensor)?
        } else {
            Weight::Quantized(QMatMul::from_qtensor(tensor)?)
        };
        Ok(Self { weight, bias })
    }

    /// From a dense `[out, in]` weight.
    pub fn from_dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Dense(weight),
            bias,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Quantized(w) => w.forward(x)?,
            Weight::Dense(w) => x.broadcast_matmul(&w.t()?)?,
            Weight::SplitQ4_1 { codes, offsets } => {
                let y = codes.forward(x)?;
                let dims = x.dims();
                let width = dims[dims.len() - 1];
                let mut block_dims = dims[..dims.len() - 1].to_vec();
                block_dims.extend([width / BLOCK, BLOCK]);
                let sums = x.reshape(block_dims)?.sum(D::Minus1)?;
                (y + sums.broadcast_matmul(&offsets.t()?)?)?
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

fn split_q4_1(tensor: &QTensor) -> Result<Weight> {
    let dims = tensor.shape().dims().to_vec();
    let (&width, rows) = dims
        .split_last()
        .ok_or_else(|| bad("a scalar Q4_1 tensor"))?;
    if width % BLOCK != 0 {
        return Err(bad("a Q4_1 row not a multiple of 32 wide"));
    }
    let (codes, offsets) = split_q4_1_bytes(&tensor.data()?)?;
    if offsets.len() * BLOCK != tensor.shape().elem_count() {
        return Err(bad("Q4_1 data of the wrong size"));
    }
    let codes = qtensor_from_ggml(GgmlDType::Q4_0, &codes, dims.clone(), &Device::Cpu)?;
    let out: usize = rows.iter().product();
    let offsets = Tensor::from_vec(offsets, (out, width / BLOCK), &Device::Cpu)?;
    Ok(Weight::SplitQ4_1 {
        codes: QMatMul::from_qtensor(codes)?,
        offsets: offsets.to_dtype(DType::F32)?,
    })
}

/// Q4_1 blocks `(d, m, 16 bytes of nibbles)` → Q4_0 blocks `(d, the same
/// nibbles)` and the per-block offsets `m + 8d`.
pub(crate) fn split_q4_1_bytes(raw: &[u8]) -> Result<(Vec<u8>, Vec<f32>)> {
    if !raw.len().is_multiple_of(Q4_1_BYTES) {
        return Err(bad("Q4_1 data of the wrong size"));
    }
    let blocks = raw.len() / Q4_1_BYTES;
    let mut codes = Vec::with_capacity(blocks * Q4_0_BYTES);
    let mut offsets = Vec::with_capacity(blocks);
    for block in raw.chunks_exact(Q4_1_BYTES) {
        let d = f16::from_le_bytes([block[0], block[1]]);
        let m = f16::from_le_bytes([block[2], block[3]]);
        codes.extend_from_slice(&block[0..2]);
        codes.extend_from_slice(&block[4..]);
        offsets.push(m.to_f32() + 8.0 * d.to_f32());
    }
    Ok((codes, offsets))
}

fn bad(what: &str) -> EngineError {
    EngineError::InvalidModel(format!("cannot use {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn split_q4_1_matches_the_dequantized_weights() {
        let device = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 256), &device).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 256), &device).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let exact = x
            .matmul(&q.dequantize(&device).unwrap().t().unwrap())
            .unwrap();

        let candle = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap())
            .unwrap()
            .forward(&x)
            .unwrap();
        let ours = Linear::from_qtensor(q, None).unwrap();
        assert!(matches!(ours.weight, Weight::SplitQ4_1 { .. }));
        let ours = ours.forward(&x).unwrap();
        // Both quantise the activations to 8 bits; ours is at least as close
        // to the exact product as candle's own Q4_1 kernel.
        let (e_ours, e_candle) = (max_abs_diff(&ours, &exact), max_abs_diff(&candle, &exact));
        assert!(e_ours < 0.5, "ours off by {e_ours}");
        assert!(
            e_ours <= e_candle * 1.5 + 1e-3,
            "ours {e_ours} vs candle {e_candle}"
        );
    }

    #[test]
    fn dense_with_bias() {
        let device = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &device).unwrap();
        let b = Tensor::new(&[10f32, 20.0], &device).unwrap();
        let x = Tensor::new(&[[1f32, 1.0]], &device).unwrap();
        let y = Linear::from_dense(w, Some(b)).forward(&x).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![13.0, 27.0]]);
    }
}
