//! Continuous batching on tiny random-weight models: one forward pass over
//! several sequences gives each the tokens it gets alone, on the CPU decoder
//! and on the candle tensor decoder (the one CUDA runs), with sequences
//! joining mid-way and prompts of several lengths.

mod tiny;

use std::path::Path;

use candle_core::quantized::GgmlDType;
use cortex_engine::chat_model::ChatModel;
use cortex_engine::models::Step;
use cortex_engine::{ChatEngine, EngineConfig, LoadOptions};
use tiny::*;

const DECODE: usize = 6;

/// Prompts of several lengths over the tiny vocabulary.
fn prompts() -> Vec<Vec<u32>> {
    let vocab = tokens().len() as u32;
    [2usize, 5, 11, 23, 40]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n as u32)
                .map(|t| (t * 7 + i as u32 * 3) % vocab)
                .collect()
        })
        .collect()
}

/// Each prompt alone: its greedy tokens and the logits that chose them.
fn alone(model: &ChatModel, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut seq = model.lm.start();
    let mut logits = seq.forward(prompt).unwrap();
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
    for _ in 0..DECODE {
        let t = argmax(&logits) as u32;
        tokens.push(t);
        all.push(logits);
        logits = seq.forward(&[t]).unwrap();
    }
    (tokens, all)
}

/// All prompts batched: sequence `i` joins at step `i` (its whole prompt
/// in the same pass as the others' decode tokens) and decodes `DECODE`.
fn batched(model: &ChatModel, prompts: &[Vec<u32>]) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let mut seqs: Vec<_> = prompts.iter().map(|_| model.lm.start()).collect();
    let mut out: Vec<(Vec<u32>, Vec<Vec<f32>>)> = vec![Default::default(); prompts.len()];
    for step in 0..prompts.len() + DECODE {
        let mut inputs: Vec<(usize, Vec<u32>, bool)> = Vec::new();
        for i in 0..prompts.len() {
            if step == i {
                inputs.push((i, prompts[i].clone(), true));
            } else if step > i && out[i].0.len() < DECODE {
                inputs.push((i, vec![*out[i].0.last().unwrap()], false));
            }
        }
        let who: Vec<usize> = inputs.iter().map(|(i, _, _)| *i).collect();
        let mut steps: Vec<Step<'_>> = seqs
            .iter_mut()
            .enumerate()
            .filter_map(|(i, seq)| {
                let (_, tokens, prompt) = inputs.iter().find(|(j, _, _)| *j == i)?;
                Some(Step {
                    seq: seq.as_mut(),
                    tokens,
                    logits: true,
                    prompt: *prompt,
                })
            })
            .collect();
        let logits = model.lm.forward_batch(&mut steps).unwrap();
        drop(steps);
        for (i, logits) in who.into_iter().zip(logits) {
            let logits = logits.expect("logits asked for");
            out[i].0.push(argmax(&logits) as u32);
            out[i].1.push(logits);
        }
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn models(dir: &Path) -> Vec<(String, std::sync::Arc<ChatModel>, f32)> {
    let weights = weights(tokens().len(), false);
    let q41 = dir.join("tiny-q41.gguf");
    write_gguf(&q41, &weights, GgmlDType::Q4_1);
    let f32_file = dir.join("tiny-f32.gguf");
    write_gguf(&f32_file, &weights, GgmlDType::F32);
    let hf = dir.join("hf");
    std::fs::create_dir(&hf).unwrap();
    write_hf_dir(&hf, &weights, "llama");
    let tensor = LoadOptions {
        tensor_decoder: true,
        ..LoadOptions::default()
    };
    // The quantized kernels compute each row as they would alone (bit for
    // bit); candle's dense matmul (f32 weights, the tensor decoder) may
    // block a larger matrix differently, which moves the last bits.
    vec![
        ("cpu q4_1".into(), chat_model(&q41), 0.0),
        ("cpu f32".into(), chat_model(&f32_file), 1e-5),
        (
            "tensor q4_1".into(),
            chat_model_with(&q41, tensor.clone()),
            1e-3,
        ),
        (
            "tensor safetensors".into(),
            chat_model_with(&hf, tensor),
            1e-3,
        ),
    ]
}

#[test]
fn a_batched_pass_gives_each_sequence_what_it_gets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts();
    for (name, model, tolerance) in models(dir.path()) {
        let together = batched(&model, &prompts);
        for (i, prompt) in prompts.iter().enumerate() {
            let (tokens, logits) = alone(&model, prompt);
            assert_eq!(together[i].0, tokens, "{name}: prompt {i}");
            for (step, (a, b)) in logits.iter().zip(&together[i].1).enumerate() {
                let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
                let diff = max_diff(a, b);
                assert!(
                    diff <= tolerance * scale,
                    "{name}: prompt {i} step {step}: logits differ by {diff}"
                );
            }
        }
    }
}

/// Through the engine: five requests at once (batched, some prompts read
/// in chunks beside others' decode steps) say what each says alone, and a
/// repeated prompt is served from the prefix cache with the same answer.
#[test]
fn the_engine_batches_requests_and_reuses_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model, _) in models(dir.path()) {
        let engine = ChatEngine::start(
            model.clone(),
            EngineConfig {
                max_concurrency: 5,
                prefix_cache_bytes: Some(0),
                // Prompts come in chunks of a few tokens beside the
                // others' decode steps.
                prompt_tokens_per_step: Some(7),
                ..EngineConfig::default()
            },
        );
        let reqs: Vec<_> = ["hi", "hello there", "what is this", "a b c d e f g", "zz"]
            .iter()
            .map(|text| {
                let mut r = request(8);
                if let cortex_schemas::infer::GenerateInput::Chat { messages } = &mut r.input {
                    messages[0] = cortex_schemas::chat::ChatMessage::text(
                        cortex_schemas::chat::Role::User,
                        *text,
                    );
                }
                r
            })
            .collect();
        let solo: Vec<String> = reqs
            .iter()
            .map(|r| engine.submit(r).unwrap().collect_blocking().unwrap().text)
            .collect();
        let handles: Vec<_> = reqs.iter().map(|r| engine.submit(r).unwrap()).collect();
        let together: Vec<String> = handles
            .into_iter()
            .map(|h| h.collect_blocking().unwrap().text)
            .collect();
        assert_eq!(solo, together, "{name}");

        let cached = ChatEngine::start(model, EngineConfig::default());
        let first = cached.submit(&reqs[1]).unwrap().collect_blocking().unwrap();
        let again = cached.submit(&reqs[1]).unwrap().collect_blocking().unwrap();
        assert_eq!(first.text, solo[1], "{name}");
        assert_eq!(again.text, solo[1], "{name}");
        assert_eq!(first.done.usage.cached_tokens, 0, "{name}");
        assert_eq!(
            again.done.usage.cached_tokens,
            again.done.usage.prompt_tokens - 1,
            "{name}"
        );
    }
}

/// A prompt's KV goes into the prefix cache as soon as it is computed: a
/// second request with the same prompt, sent while the first still
/// decodes, reuses it (a stream resumed onto a replica serving the same
/// prompt starts from there), and both answer as they would alone.
#[test]
fn a_prompt_is_reused_while_its_first_request_still_runs() {
    use cortex_engine::generate::Event;
    let dir = tempfile::tempdir().unwrap();
    for (name, model, _) in models(dir.path()) {
        let alone = ChatEngine::start(model.clone(), EngineConfig::default());
        let long_alone = alone
            .submit(&request(48))
            .unwrap()
            .collect_blocking()
            .unwrap();
        let short_alone = alone
            .submit(&request(8))
            .unwrap()
            .collect_blocking()
            .unwrap();

        // A small event buffer holds the first back while nobody reads it.
        let engine = ChatEngine::start(
            model,
            EngineConfig {
                event_buffer: 4,
                ..EngineConfig::default()
            },
        );
        let mut first = engine.submit(&request(48)).unwrap();
        let mut text = String::new();
        // Its first token: its prompt has been computed.
        loop {
            match first.events.blocking_recv().expect("an event") {
                Event::Delta(delta) => {
                    text.push_str(&delta.text);
                    break;
                }
                Event::Done(_) | Event::Error(_) => panic!("{name}: ended early"),
                _ => {}
            }
        }
        let second = engine
            .submit(&request(8))
            .unwrap()
            .collect_blocking()
            .unwrap();
        // Whatever the first has sent so far: it has not ended, so the
        // second's reuse came from a request still running.
        let mut ended = None;
        while let Ok(event) = first.events.try_recv() {
            match event {
                Event::Delta(delta) => text.push_str(&delta.text),
                Event::Done(done) => ended = Some(done),
                Event::Error(error) => panic!("{name}: {error}"),
                _ => {}
            }
        }
        assert!(ended.is_none(), "{name}: the first ended before the second");
        assert_eq!(
            second.done.usage.cached_tokens,
            second.done.usage.prompt_tokens - 1,
            "{name}"
        );
        assert_eq!(second.text, short_alone.text, "{name}");
        let rest = first.collect_blocking().unwrap();
        text.push_str(&rest.text);
        assert_eq!(text, long_alone.text, "{name}");
        assert_eq!(rest.done.usage.cached_tokens, 0, "{name}");
    }
}

/// A KV budget smaller than the batch needs: the newest sequences give
/// their KV up and wait (keeping their slots), come back when older ones
/// end, and still say what each says alone; the running KV never passes
/// the budget, with the prefix cache on (a suspended sequence's KV waits
/// there) or off (it is computed again).
#[test]
fn a_batch_over_its_kv_budget_suspends_the_newest_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model, _) in models(dir.path()) {
        let reqs: Vec<_> = ["hi", "hello there", "what is this", "a b c d e f g", "zz"]
            .iter()
            .map(|text| {
                let mut r = request(12);
                if let cortex_schemas::infer::GenerateInput::Chat { messages } = &mut r.input {
                    messages[0] = cortex_schemas::chat::ChatMessage::text(
                        cortex_schemas::chat::Role::User,
                        *text,
                    );
                }
                r
            })
            .collect();
        let alone = ChatEngine::start(model.clone(), EngineConfig::default());
        let solo: Vec<_> = reqs
            .iter()
            .map(|r| alone.submit(r).unwrap().collect_blocking().unwrap())
            .collect();
        let longest = solo
            .iter()
            .map(|o| (o.done.usage.prompt_tokens + o.done.usage.completion_tokens) as usize)
            .max()
            .unwrap();
        // Room for about two sequences at once, five asking.
        let budget_tokens = 2 * longest + 2;
        for cache in [Some(0), None] {
            let engine = ChatEngine::start(
                model.clone(),
                EngineConfig {
                    max_concurrency: 5,
                    prefix_cache_bytes: cache,
                    kv_budget_bytes: Some((budget_tokens * model.lm.kv_bytes_per_token()) as u64),
                    ..EngineConfig::default()
                },
            );
            let handles: Vec<_> = reqs.iter().map(|r| engine.submit(r).unwrap()).collect();
            let together: Vec<_> = handles
                .into_iter()
                .map(|h| h.collect_blocking().unwrap())
                .collect();
            for (a, b) in solo.iter().zip(&together) {
                assert_eq!(a.text, b.text, "{name}, cache {cache:?}");
                assert_eq!(a.done.usage.prompt_tokens, b.done.usage.prompt_tokens);
                assert_eq!(
                    a.done.usage.completion_tokens,
                    b.done.usage.completion_tokens
                );
            }
            let stats = engine.stats();
            assert!(stats.suspensions > 0, "{name}: nothing was suspended");
            assert_eq!(stats.batch_kv_budget, Some(budget_tokens), "{name}");
            assert!(
                stats.batch_kv_peak <= budget_tokens,
                "{name}: {} tokens of KV held against a budget of {budget_tokens}",
                stats.batch_kv_peak
            );
            assert!(stats.batch_kv_peak > longest, "{name}: it never batched");
            assert_eq!(stats.batch_kv_tokens, 0);
        }
    }
}
