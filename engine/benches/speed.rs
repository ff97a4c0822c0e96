//! Prefill and decode speed of a GGUF model on the CPU, beside llama.cpp's
//! `llama-bench` on the same file and thread count in the same run.
//!
//! ```text
//! LLAMA_BENCH=/path/to/llama-bench make bench-engine
//! ```
//!
//! Three engines are timed: ours (the CPU decoder, with and without its
//! prompt precision pass), plain candle
//! (`candle_transformers::models::quantized_llama`, the code a typical
//! candle server runs), and llama.cpp when `LLAMA_BENCH` names its
//! `llama-bench`. Settings: `BENCH_MODEL` (default: the setup script's
//! SmolLM2 Q4_1), `BENCH_PROMPT` tokens (64), `BENCH_GEN` tokens (128),
//! `BENCH_REPS` (3, the median is reported), `BENCH_THREADS` (2). It also
//! prints what structured output (the llguidance constraint) costs per
//! token beside one decode step.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama;
use cortex_engine::{load, LoadOptions, LoadedModel};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Tokens per second of one prefill of `prompt` tokens and of `gen`
/// single-token decode steps from an empty context.
struct Speed {
    prefill: f64,
    decode: f64,
}

fn time_ours(path: &Path, prompt: usize, gen: usize, reps: usize, fast_prompt: bool) -> Speed {
    let opts = LoadOptions {
        fast_prompt,
        ..LoadOptions::default()
    };
    let LoadedModel::Chat(model) = load(path, &opts).expect("load") else {
        panic!("not a chat model")
    };
    let ids: Vec<u32> = (0..prompt as u32).map(|i| 100 + i).collect();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..reps + 1 {
        let mut seq = model.lm.start();
        let t = Instant::now();
        seq.forward(&ids).unwrap();
        pp.push(prompt as f64 / t.elapsed().as_secs_f64());
        let mut seq = model.lm.start();
        let t = Instant::now();
        for i in 0..gen {
            seq.forward(&[100 + i as u32]).unwrap();
        }
        tg.push(gen as f64 / t.elapsed().as_secs_f64());
    }
    // The first round warms caches and the thread pool.
    Speed {
        prefill: median(pp[1..].to_vec()),
        decode: median(tg[1..].to_vec()),
    }
}

/// Aggregate decode tokens/s of `batch` sequences stepped together through
/// one batched forward pass per step (continuous batching), each after a
/// short prompt of its own.
fn time_batched(path: &Path, batch: usize, gen: usize) -> f64 {
    use cortex_engine::models::Step;
    let opts = LoadOptions {
        ..LoadOptions::default()
    };
    let LoadedModel::Chat(model) = load(path, &opts).expect("load") else {
        panic!("not a chat model")
    };
    let mut seqs: Vec<_> = (0..batch).map(|_| model.lm.start()).collect();
    for (i, seq) in seqs.iter_mut().enumerate() {
        seq.forward(&[100 + i as u32, 200, 300]).unwrap();
    }
    let mut rates = Vec::new();
    for _ in 0..2 {
        let t = Instant::now();
        for g in 0..gen {
            let tokens: Vec<[u32; 1]> = (0..batch).map(|i| [(400 + i + g) as u32]).collect();
            let mut steps: Vec<Step<'_>> = seqs
                .iter_mut()
                .zip(&tokens)
                .map(|(seq, t)| Step {
                    seq: seq.as_mut(),
                    tokens: t,
                    logits: true,
                    prompt: false,
                })
                .collect();
            model.lm.forward_batch(&mut steps).unwrap();
        }
        rates.push((batch * gen) as f64 / t.elapsed().as_secs_f64());
    }
    rates[1]
}

fn time_candle(path: &Path, prompt: usize, gen: usize, reps: usize) -> Speed {
    let device = Device::Cpu;
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut model = quantized_llama::ModelWeights::from_gguf(content, &mut file, &device).unwrap();
    let ids: Vec<u32> = (0..prompt as u32).map(|i| 100 + i).collect();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..reps + 1 {
        let input = Tensor::new(ids.as_slice(), &device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let t = Instant::now();
        model.forward(&input, 0).unwrap();
        pp.push(prompt as f64 / t.elapsed().as_secs_f64());
        model.clear_kv_cache();
        let t = Instant::now();
        for i in 0..gen {
            let input = Tensor::new(&[100 + i as u32], &device)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            model.forward(&input, i).unwrap();
        }
        tg.push(gen as f64 / t.elapsed().as_secs_f64());
        model.clear_kv_cache();
    }
    Speed {
        prefill: median(pp[1..].to_vec()),
        decode: median(tg[1..].to_vec()),
    }
}

/// Runs llama-bench and reads its JSON: (prefill, decode) tokens/s.
fn time_llama_cpp(
    bin: &str,
    path: &Path,
    prompt: usize,
    gen: usize,
    reps: usize,
    threads: usize,
) -> Option<Speed> {
    let out = Command::new(bin)
        .args([
            "-m",
            path.to_str()?,
            "-p",
            &prompt.to_string(),
            "-n",
            &gen.to_string(),
        ])
        .args([
            "-t",
            &threads.to_string(),
            "-r",
            &reps.to_string(),
            "-o",
            "json",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "llama-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut speed = Speed {
        prefill: 0.0,
        decode: 0.0,
    };
    for run in runs.as_array()? {
        let tps = run["avg_ts"].as_f64()?;
        if run["n_prompt"].as_u64()? > 0 {
            speed.prefill = tps;
        } else {
            speed.decode = tps;
        }
    }
    Some(speed)
}

/// Structured output's price per token: the llguidance mask and commit of
/// each token of a schema-constrained answer (replayed, so only the
/// constraint is timed), beside the time one decode step takes.
fn time_constraint(path: &Path, decode_tok_s: f64) {
    use cortex_schemas::chat::{ChatMessage, Role};
    use cortex_schemas::infer::{GenerateInput, GenerateRequest};
    use cortex_schemas::sampling::ResponseFormat;
    let LoadedModel::Chat(model) = load(path, &LoadOptions::default()).expect("load") else {
        panic!("not a chat model")
    };
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"}, "country": {"type": "string"},
            "population": {"type": "integer"}, "is_capital": {"type": "boolean"},
            "districts": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["city", "country", "population", "is_capital", "districts"],
        "additionalProperties": false,
    });
    let request = GenerateRequest {
        max_tokens: Some(64),
        response_format: Some(ResponseFormat::JsonSchema {
            name: "city".into(),
            schema,
            strict: true,
        }),
        ..GenerateRequest::new(
            "bench",
            "bench",
            GenerateInput::Chat {
                messages: vec![ChatMessage::text(Role::User, "Describe Paris.")],
            },
        )
    };
    let answer = r#"{"city": "Paris", "country": "France", "population": 2102650, "is_capital": true, "districts": ["Le Marais", "Montmartre", "Saint-Germain-des-Pres", "La Defense"]}"#;
    let tokens = model.tokenizer.encode(answer).expect("tokenize");
    let vocab = model.tokenizer.vocab_size();
    let started = Instant::now();
    let _warm = model.constraint(&request).expect("constraint");
    let first_build = started.elapsed().as_secs_f64() * 1e3;
    let mut per_token = Vec::new();
    let mut compile = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut constraint = model
            .constraint(&request)
            .expect("constraint")
            .expect("wanted");
        compile.push(started.elapsed().as_secs_f64() * 1e3);
        let mut logits = vec![0.0f32; vocab];
        let started = Instant::now();
        for &token in &tokens {
            // Fresh logits each step, as the model gives them.
            logits.fill(0.0);
            constraint.mask(&mut logits).expect("mask");
            assert!(
                logits[token as usize].is_finite(),
                "the answer fits the schema"
            );
            constraint.commit(token).expect("commit");
        }
        per_token.push(started.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64);
    }
    let per_token = median(per_token);
    let step_us = 1e6 / decode_tok_s;
    println!(
        "structured output: {per_token:.0} us per token (mask + commit, median of 5 over {} tokens) \
         = {:.2}x of a {step_us:.0} us decode step; schema compiled in {:.1} ms; token trie built once in {first_build:.0} ms",
        tokens.len(),
        per_token / step_us,
        median(compile),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` run does nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let threads = env_usize("BENCH_THREADS", 2);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let prompt = env_usize("BENCH_PROMPT", 64);
    let gen = env_usize("BENCH_GEN", 128);
    let reps = env_usize("BENCH_REPS", 3);
    let path = std::env::var_os("BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let models = std::env::var_os("CORTEX_MODELS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/models"))
                });
            models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    println!(
        "model {} · {threads} threads · prompt {prompt} · generate {gen} · median of {reps}",
        path.display()
    );

    let ours = time_ours(&path, prompt, gen, reps, false);
    time_constraint(&path, ours.decode);
    if let Ok(batches) = std::env::var("BENCH_BATCHES") {
        for batch in batches.split(',').filter_map(|b| b.parse::<usize>().ok()) {
            let rate = time_batched(&path, batch, gen.min(64));
            println!("cortex batched decode, {batch} sequences: {rate:.1} tok/s");
        }
    }
    if std::env::var("BENCH_ONLY_OURS").is_ok() {
        println!(
            "cortex (ours): prefill {:.1} tok/s, decode {:.1} tok/s",
            ours.prefill, ours.decode
        );
        return;
    }
    let ours_fast = time_ours(&path, prompt, gen, reps, true);
    let candle = time_candle(&path, prompt, gen, reps);
    let llama = std::env::var("LLAMA_BENCH")
        .ok()
        .and_then(|bin| time_llama_cpp(&bin, &path, prompt, gen, reps, threads));

    println!(
        "{:<22} {:>14} {:>14}",
        "engine", "prefill tok/s", "decode tok/s"
    );
    let row = |name: &str, s: &Speed| println!("{name:<22} {:>14.1} {:>14.1}", s.prefill, s.decode);
    row("cortex (ours)", &ours);
    row("cortex, fast_prompt", &ours_fast);
    row("candle quantized_llama", &candle);
    if let Some(l) = &llama {
        row("llama.cpp llama-bench", l);
        println!(
            "ratio ours/llama.cpp: prefill {:.2}x (fast_prompt {:.2}x), decode {:.2}x",
            ours.prefill / l.prefill,
            ours_fast.prefill / l.prefill,
            ours.decode / l.decode
        );
    } else {
        println!("(set LLAMA_BENCH to llama.cpp's llama-bench for the reference)");
    }
    println!(
        "ratio ours/plain candle: prefill {:.2}x, decode {:.2}x",
        ours.prefill / candle.prefill,
        ours.decode / candle.decode
    );
}
