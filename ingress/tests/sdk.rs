//! The official `openai` and `anthropic` Python SDKs (installed by
//! `scripts/setup.sh` into `.cache/venv`) against an ingress pod: a sim
//! model for the protocol, MiniLM for embeddings, SmolLM2 for structured
//! output (`chat.completions.parse` with a Pydantic model, 20 of 20 at
//! temperature 1; `responses.parse`; a forced tool call).

mod support;

use std::path::PathBuf;
use std::process::Command;

use cortex_testkit::NatsServer;
use support::*;

fn python() -> PathBuf {
    let python = std::env::var_os("CORTEX_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} is missing: run `scripts/setup.sh` (or `make test`) first",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdks_succeed_against_the_ingress() {
    let server = NatsServer::start();
    let _chat = sim_neuron(&server, "sim", &["sim-chat"], |_| {}).await;
    let _real = real_neuron(
        &server,
        "cpu",
        &[
            format!("minilm={}", minilm_dir().display()),
            format!("smollm2={}", smollm_path().display()),
        ],
    )
    .await;
    let ingress = ingress(&server, &["sim-chat", "minilm", "smollm2"], |_| {}).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/check.py");
    let base = format!("http://{}", ingress.addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .args([base.as_str(), "sim-chat", "minilm", "smollm2"])
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all SDK checks passed"), "{stdout}");
    println!("{stdout}");
    ingress.shutdown().await;
}
