//! The real Claude Code CLI (npm `@anthropic-ai/claude-code`, installed by
//! `scripts/setup.sh` into `.cache/bin/claude`) against an ingress pod on
//! loopback, offline: what it sends today (system turns inside `messages`,
//! `thinking`, `output_config`, `context_management`, `cache_control`,
//! `max_tokens: 32000`, `/v1/messages?beta=true`, several `anthropic-beta`
//! values) is answered, and a prompt past the window is reported as the
//! CLI expects. A small copy of its body is also checked field by field
//! over plain HTTP.

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

/// The body Claude Code 2.1 sends, in small: system turns inside
/// `messages`, `thinking`, `output_config`, `context_management`,
/// `cache_control`, a deferred tool, `metadata.user_id`, a `max_tokens`
/// far past the window, `?beta=true` and several `anthropic-beta` values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_take_what_claude_code_sends() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n1", &["sim-chat"], |c| {
        c.sim_reply_tokens = 5;
    })
    .await;
    let ingress = ingress(&server, &["sim-chat"], |_| {}).await;
    let url = format!("http://{}/v1/messages?beta=true", ingress.addr);
    let headers = [
        ("x-api-key", "anything"),
        ("anthropic-version", "2023-06-01"),
        (
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,some-future-beta-2031-01-01",
        ),
    ];
    let body = json!({
        "model": "sim-chat",
        "max_tokens": 32000,
        "stream": true,
        "system": [
            {"type": "text", "text": "You are an agent."},
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>remember</system-reminder>"},
                {"type": "text", "text": "Hello there", "cache_control": {"type": "ephemeral"}},
            ]},
            {"role": "system", "content": [{"type": "text", "text": "# Environment\ncwd: /x", "cache_control": {"type": "ephemeral"}}]},
        ],
        "tools": [{"name": "DeferredToolPlaceholder", "description": "later", "input_schema": {"type": "object"}, "defer_loading": true}],
        "metadata": {"user_id": "{\"device_id\":\"abc\"}"},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
    });
    let reply = post(&url, &body.to_string(), &headers).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // `event:` comes before `data:` in every event, as the real API writes.
    assert!(
        reply.body.starts_with("event: message_start\ndata: {"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("}\nevent:"), "{}", reply.body);
    let events = parse_sse(&reply.body);
    let delta: Value = serde_json::from_str(&events[events.len() - 2].data).unwrap();
    // The deferred tool was not offered, so the sim answers in words, and
    // the 32,000 tokens asked for were bounded by the window.
    assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{}", reply.body);
    assert_eq!(delta["usage"]["output_tokens"], 5);

    // What has no local meaning is ignored; what is wrong is still refused.
    let mut bad = body.clone();
    bad["thinking"] = json!({"type": "sometimes"});
    let reply = post(&url, &bad.to_string(), &headers).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert!(reply.body.contains("thinking.type"), "{}", reply.body);
    ingress.shutdown().await;
}
