//! Our own quantized matmul for the CPU decoder: 4-bit (Q4_0, Q4_1) and
//! 8-bit (Q8_0) weights against several activation rows at once.
//!
//! Why: candle's kernels for these types compute one activation row at a
//! time (its repacked ones four), so a batch of eight decode rows streamed
//! the weights from memory up to eight times per step and batching gained
//! little. Here weights are repacked into tiles of 16 output rows × 32
//! inputs, and each tile, once loaded and unpacked into registers, is
//! applied to up to [`MAX_ROWS`] activation rows before the next one is
//! read: at decode the weights stream once per step whatever the batch.
//!
//! Arithmetic (the same as llama.cpp's): activations are rounded per block
//! of 32 to `i8` with an `f32` scale ([`Activations`]); a block's integer
//! dot products run on VNNI (`vpdpbusd`, AVX-512) or AVX2 (`vpmaddubsw`),
//! picked at run time ([`Level`]), and a scalar path computes the same
//! integers everywhere else. A 4-bit value is `d·q + m` with `q` in 0..16
//! (Q4_0 is `m = −8d`), so its block is `d·Σq·x + m·Σx`, the offset term
//! from the exact `f32` block sum. The kernels compute it centred, as
//! `d·da·Σ(q−8)·a + (m+8d)·Σx` (`Σ(q−8)·a = Σq·a − 8·Σa`): centred codes
//! keep the activations' rounding error at that of signed weights (with
//! `0..16` codes it was twice candle's on a random net). An 8-bit weight
//! is stored `+128` as a byte, corrected by `128·Σa`. The precision pass
//! runs the rounding's residual through the same tiles ([`Tiles::matmul`] with `offsets` off),
//! bringing the product to within ~1/127² of the exact one.
//!
//! This is the one module with `unsafe`: the intrinsics in [`x86`] and the
//! disjoint writes of the thread pool's workers into one output.

#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use half::f16;

/// Output rows per tile: one 512-bit register of `f32`.
pub const TILE: usize = 16;
/// Inputs per block (GGML's block size for these types).
pub const BLOCK: usize = 32;
/// Activation rows one pass over a tile serves.
pub const MAX_ROWS: usize = 8;

/// The instructions the kernels use, chosen once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 F/BW with VNNI: 16 rows per instruction.
    Avx512Vnni,
    /// AVX2 with FMA and F16C: 8 rows per instruction.
    Avx2,
    /// Portable integer loops.
    Scalar,
}

impl Level {
    /// The best this CPU runs, or `None` where it has no SIMD level (then
    /// candle's kernels serve, as they do for other types).
    /// `CORTEX_KERNELS=avx2` asks for AVX2 on an AVX-512 CPU and
    /// `CORTEX_KERNELS=candle` for candle's kernels (benchmarks, tests).
    pub fn detect() -> Option<Self> {
        static LEVEL: OnceLock<Option<Level>> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let best = Some(Self::best()).filter(|l| *l != Self::Scalar);
            match std::env::var("CORTEX_KERNELS").as_deref() {
                Ok("candle") => None,
                Ok("avx2") => best.map(|_| Self::Avx2),
                _ => best,
            }
        })
    }

    fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_avx512_vnni() {
                return Self::Avx512Vnni;
            }
            if x86::has_avx2() {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }

    /// Every level this CPU can run, best first (for tests).
    pub fn available() -> Vec<Self> {
        let best = Self::best();
        [Self::Avx512Vnni, Self::Avx2, Self::Scalar]
            .into_iter()
            .skip_while(|l| *l != best)
            .collect()
    }
}

/// How the codes of a [`Tiles`] are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codes {
    /// Two 4-bit codes per byte: byte `j` of a row's group `g` holds input
    /// `4g + j` (low nibble) and `16 + 4g + j` (high), GGML's own order.
    Q4,
    /// One byte per weight, stored `+128`.
    Q8,
}

impl Codes {
    /// Bytes of codes per tile block (16 rows × 32 inputs).
    pub const fn tile_bytes(self) -> usize {
        match self {
            Self::Q4 => TILE * BLOCK / 2,
            Self::Q8 => TILE * BLOCK,
        }
    }
}

/// A weight matrix `[rows, cols]` in tiles: for each tile of 16 rows, for
/// each block of 32 inputs, 16 scales, (4-bit) 16 offsets, then the codes
/// in groups of 4 inputs × 16 rows (the layout `vpdpbusd` reads).
pub struct Tiles {
    codes: Codes,
    rows: usize,
    cols: usize,
    /// `tiles × blocks × 16` scales.
    d: Vec<f16>,
    /// Q4 only: `tiles × blocks × 16` offsets.
    m: Vec<f16>,
    qs: Vec<u8>,
}

impl std::fmt::Debug for Tiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiles")
            .field("codes", &self.codes)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// Bytes per GGML block of each type this module reads.
const Q4_0_BYTES: usize = 18;
const Q4_1_BYTES: usize = 20;
const Q8_0_BYTES: usize = 34;

/// Which GGML block type raw bytes hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Source {
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => Q4_0_BYTES,
            Self::Q4_1 => Q4_1_BYTES,
            Self::Q8_0 => Q8_0_BYTES,
        }
    }
}

impl Tiles {
    /// Repacks GGML blocks (`rows × cols/32` of them, row-major); `None`
    /// when `cols` is not a multiple of 32 or the bytes do not match.
    pub fn pack(source: Source, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || rows == 0 || !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let kb = cols / BLOCK;
        if bytes.len() != rows * kb * source.block_bytes() {
            return None;
        }
        let codes = match source {
            Source::Q8_0 => Codes::Q8,
            Source::Q4_0 | Source::Q4_1 => Codes::Q4,
        };
        let tiles = rows.div_ceil(TILE);
        let mut d = vec![f16::ZERO; tiles * kb * TILE];
        let mut m = match codes {
            Codes::Q4 => vec![f16::ZERO; tiles * kb * TILE],
            Codes::Q8 => Vec::new(),
        };
        let tb = codes.tile_bytes();
        // Padding rows: zero scale and offset, so they add nothing.
        let mut qs = vec![0u8; tiles * kb * tb];
        let bb = source.block_bytes();
        for r in 0..rows {
            let (t, lane) = (r / TILE, r % TILE);
            for b in 0..kb {
                let blk = &bytes[(r * kb + b) * bb..(r * kb + b + 1) * bb];
                let half = |i: usize| f16::from_le_bytes([blk[i], blk[i + 1]]);
                let at = (t * kb + b) * TILE + lane;
                let tile = &mut qs[(t * kb + b) * tb..(t * kb + b + 1) * tb];
                match source {
                    Source::Q4_0 | Source::Q4_1 => {
                        let (scale, offset, codes) = if source == Source::Q4_0 {
                            let s = half(0);
                            (s, f16::from_f32(-8.0 * s.to_f32()), &blk[2..])
                        } else {
                            (half(0), half(2), &blk[4..])
                        };
                        d[at] = scale;
                        m[at] = offset;
                        for g in 0..4 {
                            for j in 0..4 {
                                tile[(g * TILE + lane) * 4 + j] = codes[4 * g + j];
                            }
                        }
                    }
                    Source::Q8_0 => {
                        d[at] = half(0);
                        for g in 0..8 {
                            for j in 0..4 {
                                let w = blk[2 + 4 * g + j] as i8;
                                tile[(g * TILE + lane) * 4 + j] = (w as i16 + 128) as u8;
                            }
                        }
                    }
                }
            }
        }
        if source == Source::Q4_0
            && m.iter()
                .zip(&d)
                .any(|(m, d)| m.to_f32() != -8.0 * d.to_f32())
        {
            // −8·d is exact in f16 unless it overflows (|d| > 8188).
            return None;
        }
        Some(Self {
            codes,
            rows,
            cols,
            d,
            m,
            qs,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the tiles take.
    pub fn bytes(&self) -> usize {
        (self.d.len() + self.m.len()) * 2 + self.qs.len()
    }

    /// `out[i·stride + start + o] += Σ_k W[o, k]·x̂[i, k]` for every row `i`
    /// of `a` and output `o`, where `x̂` is `a` as rounded, plus (4-bit,
    /// `offsets` on) the offsets against the exact block sums. Runs on
    /// candle's CPU thread pool.
    pub fn matmul(
        &self,
        level: Level,
        a: &Activations,
        offsets: bool,
        out: &mut [f32],
        stride: usize,
        start: usize,
    ) {
        assert_eq!(a.cols, self.cols, "activations of another width");
        assert!(start + self.rows <= stride, "output columns out of range");
        assert!(out.len() >= a.n * stride, "output too short");
        if a.n == 0 {
            return;
        }
        let offsets = offsets && self.codes == Codes::Q4;
        let tiles = self.rows.div_ceil(TILE);
        let dst = Dst {
            ptr: out.as_mut_ptr(),
            stride,
        };
        let run = |range: std::ops::Range<usize>| {
            for t in range {
                let valid = (self.rows - t * TILE).min(TILE);
                let col = start + t * TILE;
                let mut r0 = 0;
                while r0 < a.n {
                    let rows = (a.n - r0).min(MAX_ROWS);
                    let job = Job {
                        tiles: self,
                        tile: t,
                        a,
                        r0,
                        rows,
                        offsets,
                    };
                    let mut acc = [[0f32; TILE]; MAX_ROWS];
                    job.run(level, &mut acc);
                    for (i, acc) in acc[..rows].iter().enumerate() {
                        // SAFETY: each tile `t` is run by exactly one worker
                        // and owns output columns `col..col + valid` of
                        // every row; `out` outlives the pool call, and the
                        // asserts above keep the range inside it.
                        unsafe { dst.add(r0 + i, col, &acc[..valid]) };
                    }
                    r0 += rows;
                }
            }
        };
        candle_core::utils::barrier_pool().execute_chunked(tiles, run);
    }
}

/// The output matrix, written by the pool's workers at disjoint columns.
struct Dst {
    ptr: *mut f32,
    stride: usize,
}

// SAFETY: workers write disjoint elements (see `Tiles::matmul`).
unsafe impl Sync for Dst {}

impl Dst {
    /// # Safety
    /// `row·stride + col + values.len()` is inside the buffer, and no other
    /// thread touches those elements meanwhile.
    unsafe fn add(&self, row: usize, col: usize, values: &[f32]) {
        let p = self.ptr.add(row * self.stride + col);
        for (i, v) in values.iter().enumerate() {
            *p.add(i) += v;
        }
    }
}

/// One tile against up to [`MAX_ROWS`] activation rows.
struct Job<'a> {
    tiles: &'a Tiles,
    tile: usize,
    a: &'a Activations,
    r0: usize,
    rows: usize,
    offsets: bool,
}

impl Job<'_> {
    fn blocks(&self) -> usize {
        self.tiles.cols / BLOCK
    }

    /// This tile's scales, offsets and codes.
    fn weights(&self) -> (&[f16], &[f16], &[u8]) {
        let (kb, tb) = (self.blocks(), self.tiles.codes.tile_bytes());
        let t = self.tile;
        let d = &self.tiles.d[t * kb * TILE..(t + 1) * kb * TILE];
        let m = match self.tiles.codes {
            Codes::Q4 => &self.tiles.m[t * kb * TILE..(t + 1) * kb * TILE],
            Codes::Q8 => &[][..],
        };
        (d, m, &self.tiles.qs[t * kb * tb..(t + 1) * kb * tb])
    }

    fn run(&self, level: Level, acc: &mut [[f32; TILE]; MAX_ROWS]) {
        #[cfg(target_arch = "x86_64")]
        match level {
            // SAFETY: levels come from `Level::detect` or `Level::available`,
            // which offer only what this CPU has.
            Level::Avx512Vnni => return unsafe { x86::run_avx512(self, acc) },
            Level::Avx2 => return unsafe { x86::run_avx2(self, acc) },
            Level::Scalar => {}
        }
        let _ = level;
        self.run_scalar(acc);
    }

    /// The reference: the same integers and the same order of float
    /// operations per block as the SIMD paths.
    fn run_scalar(&self, acc: &mut [[f32; TILE]; MAX_ROWS]) {
        let (d, m, qs) = self.weights();
        let tb = self.tiles.codes.tile_bytes();
        for b in 0..self.blocks() {
            let tile = &qs[b * tb..(b + 1) * tb];
            for (i, acc) in acc[..self.rows].iter_mut().enumerate() {
                let row = self.r0 + i;
                let (q, da, asum, xsum) = self.a.block(row, b);
                for lane in 0..TILE {
                    let dot: i32 = match self.tiles.codes {
                        Codes::Q4 => {
                            (0..4)
                                .flat_map(|g| (0..4).map(move |j| (g, j)))
                                .map(|(g, j)| {
                                    let byte = tile[(g * TILE + lane) * 4 + j];
                                    (byte & 0x0F) as i32 * q[4 * g + j] as i32
                                        + (byte >> 4) as i32 * q[16 + 4 * g + j] as i32
                                })
                                .sum::<i32>()
                                - 8 * asum
                        }
                        Codes::Q8 => {
                            (0..8)
                                .flat_map(|g| (0..4).map(move |j| (g, j)))
                                .map(|(g, j)| {
                                    tile[(g * TILE + lane) * 4 + j] as i32 * q[4 * g + j] as i32
                                })
                                .sum::<i32>()
                                - 128 * asum
                        }
                    };
                    let dw = d[b * TILE + lane].to_f32();
                    acc[lane] = (dot as f32).mul_add(dw * da, acc[lane]);
                    if self.offsets {
                        let offset = 8f32.mul_add(dw, m[b * TILE + lane].to_f32());
                        acc[lane] = offset.mul_add(xsum, acc[lane]);
                    }
                }
            }
        }
    }
}

/// Activation rows rounded per block of 32 to `i8`, with what the kernels
/// need per block: the scale, the sum of the codes, and the exact sum.
#[derive(Debug, Clone)]
pub struct Activations {
    n: usize,
    cols: usize,
    q: Vec<i8>,
    scale: Vec<f32>,
    code_sum: Vec<i32>,
    sum: Vec<f32>,
}

impl Activations {
    /// Rounds `n` rows of `cols` (a multiple of 32) values.
    pub fn quantize(x: &[f32], n: usize, cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(BLOCK) && x.len() == n * cols,
            "bad activation shape"
        );
        let blocks = n * cols / BLOCK;
        let mut out = Self {
            n,
            cols,
            q: vec![0; n * cols],
            scale: Vec::with_capacity(blocks),
            code_sum: Vec::with_capacity(blocks),
            sum: Vec::with_capacity(blocks),
        };
        for (src, dst) in x.chunks_exact(BLOCK).zip(out.q.chunks_exact_mut(BLOCK)) {
            let amax = src.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut codes = 0i32;
            for (q, &v) in dst.iter_mut().zip(src) {
                *q = (v * inv).round() as i8;
                codes += *q as i32;
            }
            out.scale.push(d);
            out.code_sum.push(codes);
            out.sum.push(super::simd::sum(src));
        }
        out
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    /// What the rounding lost, `x − x̂`, over rows `from..` (the precision
    /// pass's input); `x` is the whole input these were rounded from.
    pub fn residual(&self, x: &[f32], from: usize) -> Vec<f32> {
        assert_eq!(x.len(), self.n * self.cols, "not the rounded input");
        let skip = from * self.cols;
        let mut out = Vec::with_capacity(x.len() - skip);
        for ((src, q), &d) in x[skip..]
            .chunks_exact(BLOCK)
            .zip(self.q[skip..].chunks_exact(BLOCK))
            .zip(&self.scale[skip / BLOCK..])
        {
            out.extend(src.iter().zip(q).map(|(&v, &q)| v - q as f32 * d));
        }
        out
    }

    /// Row `row`, block `b`: its codes, scale, code sum and exact sum.
    fn block(&self, row: usize, b: usize) -> (&[i8], f32, i32, f32) {
        let i = row * self.cols / BLOCK + b;
        (
            &self.q[i * BLOCK..(i + 1) * BLOCK],
            self.scale[i],
            self.code_sum[i],
            self.sum[i],
        )
    }
}

#[cfg(test)]
mod tests;
