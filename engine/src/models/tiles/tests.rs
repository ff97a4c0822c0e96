use half::f16;

use super::*;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn float(&mut self) -> f32 {
        (self.next() % 20_001) as f32 / 10_000.0 - 1.0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Random GGML blocks of `source` and their values dequantized.
fn matrix(g: &mut Gen, source: Source, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut values = Vec::new();
    for _ in 0..rows * cols / BLOCK {
        let d = f16::from_f32(g.float() * 0.1);
        bytes.extend_from_slice(&d.to_le_bytes());
        match source {
            Source::Q4_0 | Source::Q4_1 => {
                let m = f16::from_f32(g.float() * 0.5);
                if source == Source::Q4_1 {
                    bytes.extend_from_slice(&m.to_le_bytes());
                }
                let codes: Vec<u8> = (0..16).map(|_| g.byte()).collect();
                let mut block = [0f32; BLOCK];
                for (j, &c) in codes.iter().enumerate() {
                    let (lo, hi) = ((c & 0x0F) as f32, (c >> 4) as f32);
                    let value = |q: f32| match source {
                        Source::Q4_0 => d.to_f32() * (q - 8.0),
                        _ => d.to_f32() * q + m.to_f32(),
                    };
                    block[j] = value(lo);
                    block[j + 16] = value(hi);
                }
                bytes.extend(codes);
                values.extend(block);
            }
            Source::Q8_0 => {
                for _ in 0..BLOCK {
                    let w = g.byte() as i8;
                    bytes.push(w as u8);
                    values.push(d.to_f32() * w as f32);
                }
            }
        }
    }
    (bytes, values)
}

fn exact(w: &[f32], x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    x.chunks_exact(cols)
        .flat_map(|x| {
            w.chunks_exact(cols)
                .map(|w| {
                    w.iter()
                        .zip(x)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>() as f32
                })
                .collect::<Vec<_>>()
        })
        .take(x.len() / cols * rows)
        .collect()
}

fn run(tiles: &Tiles, level: Level, x: &[f32], n: usize, precise: bool, init: &[f32]) -> Vec<f32> {
    let a = Activations::quantize(x, n, tiles.cols());
    let mut out = init.to_vec();
    let stride = init.len() / n;
    tiles.matmul(level, &a, true, &mut out, stride, 1);
    if precise {
        let r = a.residual(x, 0);
        let ra = Activations::quantize(&r, n, tiles.cols());
        tiles.matmul(level, &ra, false, &mut out, stride, 1);
    }
    out
}

/// Every SIMD level computes what the scalar path computes, bit for bit,
/// for every row count (partial row groups, more than one group) and
/// rows that do not fill the last tile; and adds into the output.
#[test]
fn simd_levels_equal_the_scalar_path() {
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    for source in [Source::Q4_0, Source::Q4_1, Source::Q8_0] {
        for (rows, cols) in [(40, 576), (16, 64), (7, 32)] {
            let (bytes, _) = matrix(&mut g, source, rows, cols);
            let tiles = Tiles::pack(source, &bytes, rows, cols).expect("packs");
            for n in [1, 3, 8, 9, 17] {
                let x: Vec<f32> = (0..n * cols).map(|_| g.float()).collect();
                let init: Vec<f32> = (0..n * (rows + 2)).map(|_| g.float()).collect();
                let reference = run(&tiles, Level::Scalar, &x, n, true, &init);
                for (i, row) in reference.chunks_exact(rows + 2).enumerate() {
                    let start = &init[i * (rows + 2)..];
                    assert_eq!(row[0], start[0], "column before the range untouched");
                    assert_eq!(row[rows + 1], start[rows + 1], "column after untouched");
                }
                for level in Level::available() {
                    let got = run(&tiles, level, &x, n, true, &init);
                    assert_eq!(got, reference, "{level:?} {source:?} {rows}x{cols} n={n}");
                }
            }
        }
    }
}

/// Against the weights applied exactly: 8-bit activations land close, and
/// the precision pass lands far closer.
#[test]
fn products_approach_the_exact_one() {
    let mut g = Gen(42);
    let level = Level::available()[0];
    for source in [Source::Q4_0, Source::Q4_1, Source::Q8_0] {
        let (rows, cols, n) = (48, 576, 5);
        let (bytes, w) = matrix(&mut g, source, rows, cols);
        let tiles = Tiles::pack(source, &bytes, rows, cols).unwrap();
        let x: Vec<f32> = (0..n * cols).map(|_| g.float()).collect();
        let want = exact(&w, &x, rows, cols);
        let zeros = vec![0f32; n * (rows + 2)];
        let strip = |v: Vec<f32>| -> Vec<f32> {
            v.chunks_exact(rows + 2)
                .flat_map(|r| r[1..rows + 1].to_vec())
                .collect()
        };
        let fast = strip(run(&tiles, level, &x, n, false, &zeros));
        let precise = strip(run(&tiles, level, &x, n, true, &zeros));
        let err = |v: &[f32]| {
            v.iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let (e_fast, e_precise) = (err(&fast), err(&precise));
        assert!(
            e_fast < scale * 0.02,
            "{source:?}: fast off by {e_fast} of {scale}"
        );
        assert!(
            e_precise < e_fast / 20.0,
            "{source:?}: precise {e_precise} against fast {e_fast}"
        );
    }
}

#[test]
fn shapes_it_cannot_take_are_refused() {
    assert!(
        Tiles::pack(Source::Q4_0, &[0; 18], 1, 48).is_none(),
        "width not a multiple of 32"
    );
    assert!(
        Tiles::pack(Source::Q4_0, &[0; 17], 1, 32).is_none(),
        "bytes short"
    );
    assert!(Tiles::pack(Source::Q8_0, &[0; 34], 1, 32).is_some());
}
