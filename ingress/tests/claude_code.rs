//! The real Claude Code CLI (npm `@anthropic-ai/claude-code`, installed by
//! `scripts/setup.sh` into `.cache/bin/claude`) against an ingress pod on
//! loopback, offline: what it sends today (system turns inside `messages`,
//! `thinking`, `output_config`, `context_management`, `cache_control`,
//! `max_tokens: 32000`, `/v1/messages?beta=true`, several `anthropic-beta`
//! values) is answered, and a prompt past the window is reported as the
//! CLI expects.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use cortex_testkit::NatsServer;
use serde_json::{json, Value};
use support::*;

/// Context window given to SmolLM2 here: the `--bare` prompt with three
/// tools (about 1,100 tokens) fits, the CLI's 32,000 `max_tokens` does
/// not, and the stock prompt (about 12,000 tokens) does not fit at all.
const WINDOW: u32 = 1536;

fn claude() -> PathBuf {
    let claude = std::env::var_os("CORTEX_CLAUDE_CODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/bin/claude"));
    assert!(
        claude.exists(),
        "{} is missing: run `scripts/setup.sh` (or `make test`) first; it needs npm",
        claude.display()
    );
    claude
}

/// Runs `claude -p PROMPT --model MODEL --output-format json ARGS` with a
/// fresh HOME and working directory, and returns its JSON result.
async fn run(base: &str, model: &str, prompt: &str, args: &[&str]) -> Value {
    let home = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(claude());
    command
        .args(["-p", prompt, "--model", model, "--output-format", "json"])
        .args(args)
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", base)
        .env("ANTHROPIC_API_KEY", "anything")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env_remove("ANTHROPIC_MODEL")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .env_remove("CLAUDE_CODE_MAX_OUTPUT_TOKENS")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("claude finishes within 5 minutes")
        .expect("claude runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("claude's output is not JSON ({e}):\n{stdout}\n{stderr}");
    })
}

fn answered(result: &Value) -> &str {
    assert_eq!(result["is_error"], false, "{result:#}");
    assert_eq!(result["subtype"], "success", "{result:#}");
    let text = result["result"].as_str().unwrap_or_default();
    assert!(!text.trim().is_empty(), "{result:#}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_is_answered_by_smollm2_and_told_when_its_prompt_is_too_long() {
    let server = NatsServer::start();
    let _neuron = profiled_neuron(
        &server,
        "cpu",
        &[json!({
            "id": "smollm2",
            "source": smollm_path().display().to_string(),
            "context_length": WINDOW,
            "sampling": {"temperature": 0.0},
        })],
    )
    .await;
    let ingress = ingress(&server, &["smollm2"], |_| {}).await;
    let base = format!("http://{}", ingress.addr);

    // A one-line system prompt and no tools; the CLI still adds a system
    // turn after the user's (its environment) and asks for 32,000 tokens.
    let plain = run(
        &base,
        "smollm2",
        "What is the capital of France?",
        &[
            "--system-prompt",
            "Answer in one short sentence.",
            "--tools",
            "",
        ],
    )
    .await;
    let text = answered(&plain);
    assert!(text.contains("Paris"), "{plain:#}");

    // `--bare` with three tools: about 1,100 tokens of prompt, so the
    // 32,000 asked for are bounded by what is left of the window.
    let bare = run(
        &base,
        "smollm2",
        "What is the capital of France?",
        &["--bare", "--tools", "Bash,Read,Edit"],
    )
    .await;
    answered(&bare);
    let usage = &bare["usage"];
    let prompt = usage["input_tokens"].as_u64().unwrap()
        + usage["cache_read_input_tokens"].as_u64().unwrap();
    assert!(prompt > 900 && prompt < u64::from(WINDOW), "{bare:#}");

    // The stock request (a 12,000-token system prompt and twelve tools)
    // cannot fit: the CLI reports it as too long, with our numbers.
    let stock = run(&base, "smollm2", "What is the capital of France?", &[]).await;
    assert_eq!(stock["is_error"], true, "{stock:#}");
    let said = stock["result"].as_str().unwrap_or_default();
    assert!(said.contains("Prompt is too long"), "{stock:#}");
    // It read the window out of our error (`... tokens > 1535 maximum`).
    assert!(said.contains(&format!("limit {}", WINDOW - 1)), "{said}");
    println!(
        "plain: {text:?}\nbare: {bare_usage}\nstock: {said:?}",
        bare_usage = bare["usage"]
    );
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_runs_a_tool_round_trip() {
    let server = NatsServer::start();
    // The sim calls the first tool it is offered, then answers the result.
    let _neuron = sim_neuron(&server, "sim", &["sim-chat"], |_| {}).await;
    let ingress = ingress(&server, &["sim-chat"], |_| {}).await;
    let base = format!("http://{}", ingress.addr);
    let result = run(
        &base,
        "sim-chat",
        "Read the file notes.txt",
        &["--bare", "--tools", "Read", "--max-turns", "4"],
    )
    .await;
    answered(&result);
    // One turn asked for the tool, the next answered its result.
    assert!(result["num_turns"].as_u64().unwrap() >= 2, "{result:#}");
    assert_eq!(result["stop_reason"], "end_turn", "{result:#}");
    ingress.shutdown().await;
}
