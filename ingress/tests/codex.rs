//! The real Codex CLI (npm `@openai/codex`, installed by `scripts/setup.sh`
//! into `.cache/bin/codex`) against an ingress pod on loopback, offline,
//! through the Responses API (`wire_api = "responses"`): its stock request
//! (developer messages, twelve tools of which some are hosted or
//! namespaced, `reasoning`, `include`, `prompt_cache_key`, `store: false`,
//! streamed) is answered, and an agent turn runs a tool and reads its
//! output back as `function_call` / `function_call_output` items.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

fn codex() -> PathBuf {
    let codex = std::env::var_os("CORTEX_CODEX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/bin/codex"));
    assert!(
        codex.exists(),
        "{} is missing: run `scripts/setup.sh` (or `make test`) first; it needs npm",
        codex.display()
    );
    codex
}

/// `codex exec PROMPT` with a fresh `CODEX_HOME` whose config names the
/// pod as its model provider; returns (success, stdout, stderr).
async fn run(base: &str, model: &str, prompt: &str) -> (bool, String, String) {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("config.toml"), config(base, model)).unwrap();
    let mut command = tokio::process::Command::new(codex());
    command
        .args(["exec", "--skip-git-repo-check", "--sandbox", "read-only"])
        .arg(prompt)
        .current_dir(work.path())
        .env("HOME", home.path())
        .env("CODEX_HOME", home.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("codex finishes within 5 minutes")
        .expect("codex runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn config(base: &str, model: &str) -> String {
    format!(
        "model = \"{model}\"\nmodel_provider = \"cortex\"\n\n\
         [model_providers.cortex]\nname = \"Cortex\"\nbase_url = \"{base}/v1\"\nwire_api = \"responses\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_runs_an_agent_turn_over_the_responses_api() {
    let server = NatsServer::start();
    // Room for Codex's prompt: about 27,000 of the sim's byte-sized tokens.
    let profile = json!({"id": "sim-chat", "source": "sim", "context_length": 131072});
    let _neuron = profiled_sim_neuron(&server, "sim", &[profile]).await;
    let ingress = ingress(&server, &["sim-chat"], |_| {}).await;
    let base = format!("http://{}", ingress.addr);
    let (ok, stdout, stderr) = run(&base, "sim-chat", "What is the capital of France?").await;
    assert!(ok, "codex failed:\n{stdout}\n{stderr}");
    // The sim calls the first tool offered (exec_command, with empty
    // arguments); Codex runs it, returns the failure as a
    // function_call_output, and the sim's answer to that ends the turn.
    assert!(
        stderr.contains("failed to parse function arguments"),
        "the tool call reached Codex:\n{stderr}"
    );
    let said: Vec<&str> = stdout.split_whitespace().collect();
    assert!(
        !said.is_empty() && said.iter().all(|w| cortex_engine::sim::WORDS.contains(w)),
        "the final answer is the sim's words:\n{stdout}\n{stderr}"
    );
    let metrics = get(&format!("{base}/metrics")).await.1;
    let turns = requests_answered(&metrics);
    assert!(turns >= 2, "two Responses calls at least:\n{metrics}");
    println!("codex: {turns} responses; said {:?}", stdout.trim());
    ingress.shutdown().await;
}

/// 200s counted on this pod (every dialect).
fn requests_answered(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("cortex_requests_total{") && l.contains("status=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
