//! The x86 kernels: one weight tile (16 rows) against `R` activation rows,
//! `R` a compile-time constant so the accumulators stay in registers. Each
//! computes exactly the integers of [`Job::run_scalar`] and the same float
//! operations per block (the tests compare them bit for bit).

use core::arch::x86_64::*;

use super::{Codes, Job, BLOCK, MAX_ROWS, TILE};

pub(super) fn has_avx512_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Four activation codes as one 32-bit lane, broadcast.
#[inline(always)]
unsafe fn codes4(q: *const i8, i: usize) -> i32 {
    std::ptr::read_unaligned(q.add(4 * i) as *const i32)
}

macro_rules! by_rows {
    ($f:ident, $job:expr, $acc:expr) => {
        match $job.rows {
            1 => $f::<1>($job, $acc),
            2 => $f::<2>($job, $acc),
            3 => $f::<3>($job, $acc),
            4 => $f::<4>($job, $acc),
            5 => $f::<5>($job, $acc),
            6 => $f::<6>($job, $acc),
            7 => $f::<7>($job, $acc),
            _ => $f::<8>($job, $acc),
        }
    };
}

/// # Safety
/// The CPU has AVX-512 F/BW and VNNI ([`has_avx512_vnni`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn run_avx512(job: &Job<'_>, acc: &mut [[f32; TILE]; MAX_ROWS]) {
    match job.tiles.codes {
        Codes::Q4 => by_rows!(q4_avx512, job, acc),
        Codes::Q8 => by_rows!(q8_avx512, job, acc),
    }
}

/// # Safety
/// The CPU has AVX2, FMA and F16C ([`has_avx2`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn run_avx2(job: &Job<'_>, acc: &mut [[f32; TILE]; MAX_ROWS]) {
    match job.tiles.codes {
        Codes::Q4 => by_rows!(q4_avx2, job, acc),
        Codes::Q8 => by_rows!(q8_avx2, job, acc),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q4_avx512<const R: usize>(job: &Job<'_>, out: &mut [[f32; TILE]; MAX_ROWS]) {
    let (d, m, qs) = job.weights();
    let a = job.a;
    let kb = job.blocks();
    let mask = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..kb {
        let base = qs.as_ptr().add(b * Codes::Q4.tile_bytes());
        let mut lo = [_mm512_setzero_si512(); 4];
        let mut hi = [_mm512_setzero_si512(); 4];
        for g in 0..4 {
            let w = _mm512_loadu_si512(base.add(g * 64) as *const _);
            lo[g] = _mm512_and_si512(w, mask);
            hi[g] = _mm512_and_si512(_mm512_srli_epi16(w, 4), mask);
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr().add(b * TILE) as *const _));
        let mw = if job.offsets {
            let m = _mm512_cvtph_ps(_mm256_loadu_si256(m.as_ptr().add(b * TILE) as *const _));
            _mm512_fmadd_ps(_mm512_set1_ps(8.0), dw, m)
        } else {
            _mm512_setzero_ps()
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let i = (job.r0 + r) * kb + b;
            let q = a.q.as_ptr().add(i * BLOCK);
            let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for g in 0..4 {
                s0 = _mm512_dpbusd_epi32(s0, lo[g], _mm512_set1_epi32(codes4(q, g)));
                s1 = _mm512_dpbusd_epi32(s1, hi[g], _mm512_set1_epi32(codes4(q, 4 + g)));
            }
            // Centred codes (q − 8): the rounding's error stays small.
            let centre = _mm512_set1_epi32(8 * *a.code_sum.get_unchecked(i));
            let f = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(s0, s1), centre));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*a.scale.get_unchecked(i)));
            *acc = _mm512_fmadd_ps(f, scale, *acc);
            if job.offsets {
                *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(*a.sum.get_unchecked(i)), *acc);
            }
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), acc);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q8_avx512<const R: usize>(job: &Job<'_>, out: &mut [[f32; TILE]; MAX_ROWS]) {
    let (d, _, qs) = job.weights();
    let a = job.a;
    let kb = job.blocks();
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..kb {
        let base = qs.as_ptr().add(b * Codes::Q8.tile_bytes());
        let mut w = [_mm512_setzero_si512(); 8];
        for (g, w) in w.iter_mut().enumerate() {
            *w = _mm512_loadu_si512(base.add(g * 64) as *const _);
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr().add(b * TILE) as *const _));
        for (r, acc) in acc.iter_mut().enumerate() {
            let i = (job.r0 + r) * kb + b;
            let q = a.q.as_ptr().add(i * BLOCK);
            let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for g in 0..4 {
                s0 = _mm512_dpbusd_epi32(s0, w[g], _mm512_set1_epi32(codes4(q, g)));
                s1 = _mm512_dpbusd_epi32(s1, w[4 + g], _mm512_set1_epi32(codes4(q, 4 + g)));
            }
            let offset = _mm512_set1_epi32(128 * *a.code_sum.get_unchecked(i));
            let s = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), offset);
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*a.scale.get_unchecked(i)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *acc);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), acc);
    }
}

/// Each half of the tile (rows 0..8, 8..16) in turn: one 256-bit register
/// holds 8 rows × 4 inputs. `vpmaddubsw` sums pairs into `i16`: at most
/// 2·15·127 per pair and 8 pairs per lane for 4-bit codes, no saturation.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_avx2<const R: usize>(job: &Job<'_>, out: &mut [[f32; TILE]; MAX_ROWS]) {
    let (d, m, qs) = job.weights();
    let a = job.a;
    let kb = job.blocks();
    let mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..kb {
            let base = qs.as_ptr().add(b * Codes::Q4.tile_bytes() + half * 32);
            let mut lo = [_mm256_setzero_si256(); 4];
            let mut hi = [_mm256_setzero_si256(); 4];
            for g in 0..4 {
                let w = _mm256_loadu_si256(base.add(g * 64) as *const _);
                lo[g] = _mm256_and_si256(w, mask);
                hi[g] = _mm256_and_si256(_mm256_srli_epi16(w, 4), mask);
            }
            let at = b * TILE + half * 8;
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().add(at) as *const _));
            let mw = if job.offsets {
                let m = _mm256_cvtph_ps(_mm_loadu_si128(m.as_ptr().add(at) as *const _));
                _mm256_fmadd_ps(_mm256_set1_ps(8.0), dw, m)
            } else {
                _mm256_setzero_ps()
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let i = (job.r0 + r) * kb + b;
                let q = a.q.as_ptr().add(i * BLOCK);
                let mut p = _mm256_setzero_si256();
                for g in 0..4 {
                    let x0 = _mm256_set1_epi32(codes4(q, g));
                    let x1 = _mm256_set1_epi32(codes4(q, 4 + g));
                    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(lo[g], x0));
                    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(hi[g], x1));
                }
                let centre = _mm256_set1_epi32(8 * *a.code_sum.get_unchecked(i));
                let s = _mm256_sub_epi32(_mm256_madd_epi16(p, ones), centre);
                let f = _mm256_cvtepi32_ps(s);
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*a.scale.get_unchecked(i)));
                *acc = _mm256_fmadd_ps(f, scale, *acc);
                if job.offsets {
                    *acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(*a.sum.get_unchecked(i)), *acc);
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            _mm256_storeu_ps(o.as_mut_ptr().add(half * 8), acc);
        }
    }
}

/// As [`q4_avx2`] for 8-bit weights, with llama.cpp's sign trick: the
/// weight's magnitude (unsigned) times the activation carrying the
/// weight's sign, at most 2·128·127 per pair, widened to `i32` at once.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_avx2<const R: usize>(job: &Job<'_>, out: &mut [[f32; TILE]; MAX_ROWS]) {
    let (d, _, qs) = job.weights();
    let a = job.a;
    let kb = job.blocks();
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..kb {
            let base = qs.as_ptr().add(b * Codes::Q8.tile_bytes() + half * 32);
            let mut w = [_mm256_setzero_si256(); 8];
            for (g, w) in w.iter_mut().enumerate() {
                // Stored +128; flipping the top bit gives the signed weight.
                *w = _mm256_xor_si256(_mm256_loadu_si256(base.add(g * 64) as *const _), flip);
            }
            let at = b * TILE + half * 8;
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().add(at) as *const _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let i = (job.r0 + r) * kb + b;
                let q = a.q.as_ptr().add(i * BLOCK);
                let mut s = _mm256_setzero_si256();
                for (g, &w) in w.iter().enumerate() {
                    let x = _mm256_sign_epi8(_mm256_set1_epi32(codes4(q, g)), w);
                    let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), x);
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
                }
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*a.scale.get_unchecked(i)));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, *acc);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            _mm256_storeu_ps(o.as_mut_ptr().add(half * 8), acc);
        }
    }
}
