use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    for (rows, cols) in [
        (576usize, 576usize),
        (960, 576),
        (3072, 576),
        (576, 1536),
        (49152, 576),
    ] {
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q8_0] {
            let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
            let mm = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, cols), &dev).unwrap();
            for _ in 0..20 {
                mm.forward(&x).unwrap();
            }
            let iters = (200_000_000 / (rows * cols)).max(20);
            let t = Instant::now();
            for _ in 0..iters {
                mm.forward(&x).unwrap();
            }
            let el = t.elapsed().as_secs_f64() / iters as f64;
            println!(
                "{dtype:?} {rows}x{cols}: {:.1} us/call, {:.2} GMAC/s",
                el * 1e6,
                (rows * cols) as f64 / el / 1e9
            );
        }
    }
}
