//! Fuzzing the bus decoders: every frame a requester reads and every
//! request a neuron reads come off the network, so no byte sequence may
//! panic either decoder, in JSON or MessagePack; what decodes re-encodes
//! to a fixed point. Seeds: the message examples of `docs/asyncapi.json`
//! (checked against the wire types by `tests/api_docs.rs`) in both
//! encodings, kept in `fuzz/corpus/frames/` (`CORTEX_UPDATE_CORPUS=1`
//! rewrites them).

use cortex_bus::Encoding;
use cortex_schemas::{Frame, InferRequest};
use cortex_testkit::fuzz;
use proptest::test_runner::TestRunner;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The asyncapi examples of `message`, as JSON values.
fn examples(message: &str) -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["components"]["messages"][message]["examples"]
        .as_array()
        .unwrap_or_else(|| panic!("asyncapi has no examples of {message}"))
        .iter()
        .map(|e| e["payload"].clone())
        .collect()
}

/// Each example of `message` decoded as `T`, then encoded both ways.
fn seeds<T: DeserializeOwned + Serialize>(message: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, example) in examples(message).into_iter().enumerate() {
        let value: T = serde_json::from_value(example).unwrap();
        for (encoding, ext) in [(Encoding::Json, "json"), (Encoding::MsgPack, "msgpack")] {
            let bytes = encoding.encode(&value).unwrap().to_vec();
            out.push((format!("{}-{i}.{ext}", message.to_lowercase()), bytes));
        }
    }
    out
}

/// Decodes `bytes` as `T` in `encoding`; whatever decodes must re-encode
/// to bytes that decode and re-encode to themselves.
fn check<T: DeserializeOwned + Serialize>(encoding: Encoding, bytes: &[u8]) -> Result<(), String> {
    let Ok(value) = encoding.decode::<T>(bytes) else {
        return Ok(());
    };
    let once = encoding.encode(&value).map_err(|e| e.to_string())?;
    let again: T = encoding
        .decode(&once)
        .map_err(|e| format!("re-encoded value does not decode: {e}"))?;
    let twice = encoding.encode(&again).map_err(|e| e.to_string())?;
    if once != twice {
        return Err("encoding is not a fixed point".into());
    }
    Ok(())
}

fn check_all(bytes: &[u8]) -> Result<(), String> {
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        check::<Frame>(encoding, bytes)?;
        check::<InferRequest>(encoding, bytes)?;
    }
    Ok(())
}

#[test]
fn no_frame_or_request_bytes_panic_the_decoders() {
    let mut generated = seeds::<Frame>("Frame");
    generated.extend(seeds::<InferRequest>("InferRequest"));
    if std::env::var_os("CORTEX_UPDATE_CORPUS").is_some() {
        fuzz::write_corpus("frames", &generated);
    }
    let mut corpus = fuzz::corpus("frames");
    corpus.extend(generated.into_iter().map(|(_, bytes)| bytes));
    for seed in &corpus {
        check_all(seed).unwrap();
    }
    TestRunner::new(fuzz::config(5000))
        .run(&fuzz::inputs(corpus, 512), |bytes: Vec<u8>| {
            check_all(&bytes).map_err(proptest::test_runner::TestCaseError::fail)
        })
        .unwrap();
}
