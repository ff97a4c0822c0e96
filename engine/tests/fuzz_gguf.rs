//! Fuzzing the GGUF reader: a model file is input from outside (a path an
//! operator names, an object pushed to the store), so no byte sequence may
//! panic, abort, or make the reader allocate far more than the file holds.
//! Seeds in `fuzz/corpus/gguf/` (rebuild the generated ones with
//! `CORTEX_UPDATE_CORPUS=1`); `PROPTEST_CASES` runs longer campaigns.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use cortex_engine::gguf::GgufFile;
use cortex_engine::progress::LoadProgress;
use cortex_testkit::fuzz;
use proptest::test_runner::TestRunner;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

/// Every allocation of this test binary is counted.
#[global_allocator]
static HEAP: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// The most a read may allocate: a few times the file (metadata values
/// and tensors are held decoded) and a fixed allowance (buffers, tables).
fn heap_allowed(file_bytes: usize) -> usize {
    64 * file_bytes + (1 << 20)
}

/// The count is process-wide: the tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A GGUF whose one tensor has no elements: candle 0.11 viewed its empty
/// buffer through an unaligned pointer (an abort in debug builds, undefined
/// behaviour in release) until `GgufFile::open` refused such tables.
fn empty_tensor() -> Vec<u8> {
    let empty = Tensor::zeros((0, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let tensor = QTensor::quantize(&empty, GgmlDType::F32).unwrap();
    let arch = Value::String("llama".into());
    let mut bytes = std::io::Cursor::new(Vec::new());
    gguf_file::write(
        &mut bytes,
        &[("general.architecture", &arch)],
        &[("empty", &tensor)],
    )
    .unwrap();
    bytes.into_inner()
}

/// A small GGUF with every metadata type and two tensors, its data aligned
/// to `alignment` (0 made candle divide by zero).
fn seed(alignment: u32) -> Vec<u8> {
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.alignment", Value::U32(alignment)),
        ("general.name", Value::String("fuzz seed".into())),
        ("llama.context_length", Value::U32(128)),
        ("llama.embedding_length", Value::U64(8)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("f64", Value::F64(0.5)),
        ("i8", Value::I8(-1)),
        ("u8", Value::U8(1)),
        ("i16", Value::I16(-2)),
        ("u16", Value::U16(2)),
        ("i32", Value::I32(-3)),
        ("i64", Value::I64(-4)),
        ("bool", Value::Bool(true)),
        (
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        ),
        (
            "nested",
            Value::Array(vec![Value::Array(vec![Value::U8(1)])]),
        ),
    ];
    let device = Device::Cpu;
    let a = Tensor::arange(0f32, 64., &device)
        .unwrap()
        .reshape((2, 32))
        .unwrap();
    let tensors = [
        ("a.f32", QTensor::quantize(&a, GgmlDType::F32).unwrap()),
        ("a.q8", QTensor::quantize(&a, GgmlDType::Q8_0).unwrap()),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    let mut bytes = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &metadata, &tensors).unwrap();
    bytes.into_inner()
}

/// Opens `bytes` as a GGUF file and reads what a load reads, error
/// messages included; any outcome but a panic, an abort or a heap past
/// [`heap_allowed`] is fine.
fn read(path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    let heap = Region::new(HEAP);
    match GgufFile::open(path, &LoadProgress::new()) {
        Err(error) => drop(error.to_string()),
        Ok(mut file) => {
            let _ = file.architecture();
            let _ = file.u32("llama.context_length");
            let names: Vec<String> = file.content.tensor_infos.keys().cloned().collect();
            for name in names {
                if let Err(error) = file.tensor(&name, &Device::Cpu) {
                    drop(error.to_string());
                }
            }
        }
    }
    let stats = heap.change();
    let allocated = stats.bytes_allocated + stats.bytes_reallocated.max(0).unsigned_abs();
    assert!(
        allocated <= heap_allowed(bytes.len()),
        "a {}-byte input allocated {allocated} bytes",
        bytes.len()
    );
}

#[test]
fn no_gguf_input_panics_or_allocates_past_its_size() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let generated = [
        ("seed-small.gguf".to_string(), seed(32)),
        ("found-alignment-zero.gguf".to_string(), seed(0)),
        ("found-empty-tensor.gguf".to_string(), empty_tensor()),
    ];
    if std::env::var_os("CORTEX_UPDATE_CORPUS").is_some() {
        fuzz::write_corpus("gguf", &generated);
    }
    let mut seeds = fuzz::corpus("gguf");
    seeds.extend(generated.into_iter().map(|(_, bytes)| bytes));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.gguf");
    for seed in &seeds {
        read(&path, seed);
    }
    let mut runner = TestRunner::new(fuzz::config(2000));
    runner
        .run(&fuzz::inputs(seeds, 256), |bytes: Vec<u8>| {
            read(&path, &bytes);
            Ok(())
        })
        .unwrap();
}

/// An alignment of 0 (candle divides by it) is refused by name, before
/// candle reads the header.
#[test]
fn a_zero_alignment_is_a_clear_error() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero.gguf");
    std::fs::write(&path, seed(0)).unwrap();
    let error = GgufFile::open(&path, &LoadProgress::new()).unwrap_err();
    assert!(
        error.to_string().contains("general.alignment is 0"),
        "{error}"
    );
    std::fs::write(&path, seed(32)).unwrap();
    assert!(GgufFile::open(&path, &LoadProgress::new()).is_ok());
}
