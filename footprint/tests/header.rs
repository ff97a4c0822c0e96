//! The GGUF header reader against a real file (SmolLM2, from the setup
//! script's cache) and against corrupt and hostile headers.

use std::io::Write;

use cortex_footprint::gguf_header::{read, HeaderError, Value};
use proptest::prelude::*;

#[test]
fn smollm2_reads_as_its_model_card_says() {
    let path = cortex_testkit::models::smollm_path();
    let table = read(&path).expect("a real GGUF header reads");
    assert_eq!(table["general.architecture"], Value::Text("llama".into()));
    // SmolLM2-135M: 30 layers of 9 query heads and 3 KV heads over 576.
    assert_eq!(table["llama.block_count"], Value::Uint(30));
    assert_eq!(table["llama.attention.head_count"], Value::Uint(9));
    assert_eq!(table["llama.attention.head_count_kv"], Value::Uint(3));
    assert_eq!(table["llama.embedding_length"], Value::Uint(576));
    // The vocabulary is skipped, not read: only its length is kept.
    assert_eq!(table["tokenizer.ggml.tokens"], Value::Array(49152));
    let profile = serde_json::from_value(serde_json::json!({"id": "m", "source": "x"})).unwrap();
    let need = cortex_footprint::estimate(&path, &profile);
    let file = std::fs::metadata(&path).unwrap().len();
    let window = match table["llama.context_length"] {
        Value::Uint(n) => n,
        ref other => panic!("{other:?}"),
    };
    // Keys and values in f32, 30 layers, 3 heads of 64, one window; twice
    // (the running batch and the prefix cache).
    assert_eq!(need, file + 2 * (8 * 30 * 3 * 64 * window));
}

fn header(entries: u64, body: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"GGUF").unwrap();
    file.write_all(&3u32.to_le_bytes()).unwrap();
    file.write_all(&0u64.to_le_bytes()).unwrap();
    file.write_all(&entries.to_le_bytes()).unwrap();
    file.write_all(body).unwrap();
    file
}

fn format_error(file: &tempfile::NamedTempFile) -> String {
    match read(file.path()) {
        Err(HeaderError::Format(why)) => why,
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn corrupt_headers_are_refused_without_allocating() {
    let mut not_gguf = tempfile::NamedTempFile::new().unwrap();
    not_gguf.write_all(b"GGML and more").unwrap();
    assert_eq!(format_error(&not_gguf), "no GGUF magic");
    assert!(format_error(&header(u64::MAX, &[])).contains("metadata entries"));
    // A key claiming 2^40 bytes: refused before any buffer is made.
    let huge = header(1, &(1u64 << 40).to_le_bytes());
    assert!(
        format_error(&huge).contains("a string of"),
        "{}",
        format_error(&huge)
    );
    // A string past the end of the file.
    let mut body = 100u64.to_le_bytes().to_vec();
    body.extend_from_slice(b"short");
    assert!(format_error(&header(1, &body)).contains("past the end"));
    // An array of strings claiming more than the file holds.
    let mut body = 1u64.to_le_bytes().to_vec();
    body.push(b'k');
    body.extend_from_slice(&9u32.to_le_bytes());
    body.extend_from_slice(&8u32.to_le_bytes());
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(format_error(&header(1, &body)).contains("past the end"));
}

/// Arrays of arrays are skipped (bounded in depth), and version 1's
/// 32-bit counts and lengths read.
#[test]
fn nested_arrays_and_version_1_headers_read() {
    // "n": an array of 2 arrays of u8 (3 and 1 elements), then "a": 32u32.
    let mut body = 1u64.to_le_bytes().to_vec();
    body.push(b'n');
    body.extend_from_slice(&9u32.to_le_bytes());
    body.extend_from_slice(&9u32.to_le_bytes());
    body.extend_from_slice(&2u64.to_le_bytes());
    for items in [&[1u8, 2, 3][..], &[4]] {
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&(items.len() as u64).to_le_bytes());
        body.extend_from_slice(items);
    }
    body.extend_from_slice(&1u64.to_le_bytes());
    body.push(b'a');
    body.extend_from_slice(&4u32.to_le_bytes());
    body.extend_from_slice(&32u32.to_le_bytes());
    let table = read(header(2, &body).path()).unwrap();
    assert_eq!(table["n"], Value::Array(2));
    assert_eq!(table["a"], Value::Uint(32));
    // Arrays nested past the bound are refused, not recursed into.
    let mut deep = 1u64.to_le_bytes().to_vec();
    deep.push(b'd');
    deep.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..100 {
        deep.extend_from_slice(&9u32.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
    }
    assert!(format_error(&header(1, &deep)).contains("nested"));
    // Version 1: u32 tensor count, entry count and string length.
    let mut v1 = tempfile::NamedTempFile::new().unwrap();
    v1.write_all(b"GGUF").unwrap();
    for word in [1u32, 0, 1, 1] {
        v1.write_all(&word.to_le_bytes()).unwrap();
    }
    v1.write_all(b"k").unwrap();
    v1.write_all(&8u32.to_le_bytes()).unwrap();
    v1.write_all(&2u32.to_le_bytes()).unwrap();
    v1.write_all(b"hi").unwrap();
    assert_eq!(read(v1.path()).unwrap()["k"], Value::Text("hi".into()));
}

proptest! {
    /// Whatever follows a valid start, the reader returns (an error or a
    /// table) and never panics.
    #[test]
    fn any_bytes_after_the_magic_are_read_or_refused(
        entries in 0u64..64,
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let file = header(entries, &body);
        let _ = read(file.path());
    }
}
