//! `cortex up` as a user runs it: the whole mesh in one foreground process
//! that answers HTTP, is inspected and driven with `cortex status`, `load`,
//! `unload` and `bench`, and leaves no process behind on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cortex_testkit::binary::nats_server_bin;
use cortex_testkit::json_output;
use cortex_testkit::models::models_dir;
use serde_json::{json, Value};

struct Up {
    child: Child,
    base: String,
    nats: String,
    _log: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        // Ctrl-C first, so that its nats-server goes too; kill after 10 s.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `cortex` command with no `CORTEX_*` variable from the environment.
fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cortex"));
    command.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
}

/// Starts `cortex up` with `args` and waits (up to 2 minutes) for its ready line.
fn up(args: &[&str]) -> Up {
    let listen = format!("127.0.0.1:{}", cortex_testkit::free_port());
    let log = tempfile::tempdir().unwrap();
    let stderr = std::fs::File::create(log.path().join("up.log")).unwrap();
    let mut child = command()
        .arg("up")
        .args(["--listen", &listen, "--nats-port", "0"])
        .args(args)
        .env("NATS_SERVER_BIN", nats_server_bin())
        .env("CORTEX_MODELS_DIR", models_dir())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (mut base, mut nats) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while base.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let text = std::fs::read_to_string(log.path().join("up.log")).unwrap_or_default();
            panic!("cortex up was not ready within 2 minutes:\n{text}");
        };
        if let Some(url) = line.strip_prefix("nats ") {
            nats = Some(url.to_string());
        }
        if let Some(url) = line.strip_prefix("ready ") {
            base = Some(url.to_string());
        }
    }
    Up {
        child,
        base: base.unwrap(),
        nats: nats.expect("the nats line comes first"),
        _log: log,
    }
}

fn post(url: &str, body: Value) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut response = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn cortex(args: &[&str]) -> Value {
    json_output(Command::new(env!("CARGO_BIN_EXE_cortex")).args(args))
}

/// Polls `cortex status --json` until `check` holds (10 s at most).
fn status_until(nats: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fleet = cortex(&["status", "--json", "--nats-url", nats]);
        if check(&fleet) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {fleet}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn holds(fleet: &Value, model: &str) -> bool {
    fleet["neurons"][0]["models"]
        .as_array()
        .is_some_and(|models| models.iter().any(|m| m["model_id"] == model))
}

/// Ctrl-C: the process exits 0 and its nats-server is gone.
fn interrupt(mut up: Up) {
    let nats_port: u16 = up.nats.rsplit(':').next().unwrap().parse().unwrap();
    Command::new("kill")
        .args(["-INT", &up.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "cortex up did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_err(),
        "nats-server still listening after Ctrl-C"
    );
}

/// kill -9 gives `cortex up` no chance to clean up; its nats-server still
/// goes (the kernel's parent-death signal, through util-linux's setpriv).
#[cfg(target_os = "linux")]
#[test]
fn a_killed_up_leaves_no_nats_server_behind() {
    let mut up = up(&["--engine", "sim"]);
    let nats_port: u16 = up.nats.rsplit(':').next().unwrap().parse().unwrap();
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    let killed = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_ok() {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "nats-server still listening 10 s after cortex up was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn up_with_the_sim_engine_is_inspected_driven_and_stopped() {
    let up = up(&["--engine", "sim"]);
    let (status, body) = post(
        &format!("{}/v1/chat/completions", up.base),
        json!({
            "model": "sim-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4
        }),
    );
    assert_eq!(status, 200, "{body}");

    let fleet = cortex(&["status", "--json", "--nats-url", &up.nats]);
    let neuron = &fleet["neurons"][0];
    assert_eq!(neuron["neuron_id"], "local");
    assert!(neuron["devices"][0]["memory_total_bytes"].as_u64().unwrap() > 0);
    let models: Vec<&str> = fleet["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(models, vec!["sim-chat", "sim-large"]);

    let loaded = cortex(&["load", "sim-large", "--nats-url", &up.nats]);
    assert_eq!(loaded["replicas"][0]["state"], "ready", "{loaded}");
    status_until(&up.nats, "sim-large loaded", |fleet| {
        holds(fleet, "sim-large")
    });
    cortex(&["unload", "sim-large", "--nats-url", &up.nats]);
    status_until(&up.nats, "sim-large unloaded", |fleet| {
        !holds(fleet, "sim-large")
    });

    let report = cortex(&[
        "bench",
        "--url",
        &up.base,
        "--model",
        "sim-chat",
        "--duration",
        "3s",
        "--concurrency",
        "4",
        "--max-tokens",
        "16",
        "--json",
    ]);
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["requests"].as_u64().unwrap() > 10, "{report}");
    assert!(report["ttft_ms"]["p99"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["inter_token_ms"]["p50"].as_f64().is_some(),
        "{report}"
    );
    // The same load against a second endpoint (here the mesh again), one
    // after the other, with the ratios.
    let both = cortex(&[
        "bench",
        "--url",
        &up.base,
        "--compare",
        &up.base,
        "--model",
        "sim-chat",
        "--duration",
        "2s",
        "--concurrency",
        "2",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert!(both["first"]["requests"].as_u64().unwrap() > 0, "{both}");
    assert!(both["compared"]["requests"].as_u64().unwrap() > 0, "{both}");
    let ratio = both["ratio"]["tokens_per_second"].as_f64().unwrap();
    assert!((0.5..2.0).contains(&ratio), "the same mesh twice: {both}");
    assert!(both["ratio"]["ttft_p50"].as_f64().is_some(), "{both}");
    interrupt(up);
}

#[test]
fn up_with_the_default_models_answers_paris() {
    let up = up(&[]);
    let (status, body) = post(
        &format!("{}/v1/chat/completions", up.base),
        json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16, "temperature": 0
        }),
    );
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    let (status, body) = post(
        &format!("{}/v1/embeddings", up.base),
        json!({"model": "minilm", "input": "hello"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
    interrupt(up);
}
