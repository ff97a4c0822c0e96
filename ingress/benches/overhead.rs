//! What ingress and NATS add to a request: the sim engine at zero delay
//! (one token, no time to first token) called directly in-process, beside
//! the same model through `POST /v1/chat/completions` → ingress → NATS →
//! neuron → back, at 1, 16 and 128 concurrent clients, in the same run.
//!
//! With `LITELLM=/path/to/litellm` (the `litellm[proxy]` PyPI package's
//! script), LiteLLM's proxy runs in front of the same ingress and is
//! measured too: its added latency is through LiteLLM minus direct to the
//! ingress.
//!
//! `cargo bench -p cortex-ingress --bench overhead` (or `make bench-ingress`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_engine::sim::{sim_model, SimConfig};
use cortex_engine::{ChatEngine, EngineConfig};
use cortex_ingress::{Ingress, IngressConfig};
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_schemas::{ChatMessage, GenerateInput, GenerateRequest, Role};
use cortex_testkit::NatsServer;

const RUN: Duration = Duration::from_secs(4);
const LEVELS: [usize; 3] = [1, 16, 128];
const SLOTS: u32 = 256;

fn sim() -> SimConfig {
    SimConfig {
        time_to_first_token: Duration::ZERO,
        tokens_per_second: 1e9,
        reply_tokens: 1,
        ..SimConfig::default()
    }
}

fn request(i: usize) -> GenerateRequest {
    GenerateRequest {
        max_tokens: Some(1),
        ..GenerateRequest::new(
            format!("bench-{i}"),
            "sim",
            GenerateInput::Chat {
                messages: vec![ChatMessage::text(Role::User, "Hello")],
            },
        )
    }
}

/// Latencies of `clients` threads each running `call` back to back for `RUN`.
fn drive(clients: usize, call: impl Fn(usize) + Send + Sync + 'static) -> (Vec<Duration>, f64) {
    let call = Arc::new(call);
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let call = call.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut i = c * 1_000_000;
                while started.elapsed() < RUN {
                    let t = Instant::now();
                    call(i);
                    latencies.push(t.elapsed());
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (all, rate)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// One chat request over a keep-alive connection of this thread.
fn post(url: &str, bearer: Option<&str>) {
    thread_local! {
        static AGENT: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
    }
    AGENT.with(|agent| {
        let mut request = agent.post(url).header("content-type", "application/json");
        if let Some(key) = bearer {
            request = request.header("authorization", &format!("Bearer {key}"));
        }
        let mut response = request.send(BODY).expect("request");
        let _ = response.body_mut().read_to_string().unwrap();
    });
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// LiteLLM's proxy in front of the ingress, killed on drop.
struct LiteLlm {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

const LITELLM_KEY: &str = "sk-cortex-bench-0123456789abcdef";

impl LiteLlm {
    fn start(bin: &std::ffi::OsStr, ingress_url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let api_base = ingress_url.trim_end_matches("/chat/completions");
        let config = dir.path().join("litellm.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: sim\n    litellm_params:\n      model: openai/sim\n      api_base: {api_base}\n      api_key: unused\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(bin)
            .args([
                "--config",
                config.to_str().unwrap(),
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_MASTER_KEY", LITELLM_KEY)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("LiteLLM starts");
        let health = format!("http://127.0.0.1:{port}/health/liveliness");
        let started = Instant::now();
        while ureq::get(&health).call().is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "LiteLLM did not come up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
            _dir: dir,
        }
    }

    fn drive(&self, clients: usize) -> (Vec<Duration>, f64) {
        let url = self.url.clone();
        drive(clients, move |_| post(&url, Some(LITELLM_KEY)))
    }
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BODY: &str =
    r#"{"model":"sim","max_tokens":1,"messages":[{"role":"user","content":"Hello"}]}"#;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = NatsServer::start();
    let (neuron, ingress) = runtime.block_on(async {
        let mut config = NeuronConfig::for_tests(&server.url(), "bench");
        config.engine = EngineKind::Sim;
        config.models = vec!["sim=sim".into()];
        config.sim_ttft = Duration::ZERO;
        config.sim_tokens_per_second = 1e9;
        config.sim_reply_tokens = 1;
        config.max_concurrency = SLOTS;
        config.max_queue = SLOTS;
        let client = config.nats.connect("bench-neuron").await.unwrap();
        let neuron = Neuron::start(config, client).await.unwrap();
        while !neuron
            .status()
            .models
            .iter()
            .any(|m| m.state == cortex_schemas::ModelState::Ready)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let config = IngressConfig::for_tests(&server.url());
        let client = config.nats.connect("bench-ingress").await.unwrap();
        let ingress = Ingress::start(config, client).await.unwrap();
        (neuron, ingress)
    });
    let engine = Arc::new(ChatEngine::start(
        Arc::new(sim_model(sim()).unwrap()),
        EngineConfig {
            max_concurrency: SLOTS as usize,
            max_queue: SLOTS as usize,
            ..EngineConfig::default()
        },
    ));
    let url = format!("http://{}/v1/chat/completions", ingress.addr);

    let litellm = std::env::var_os("LITELLM").map(|bin| LiteLlm::start(&bin, &url));
    println!("| clients | direct p50 | direct p99 | direct req/s | ingress p50 | ingress p99 | ingress req/s | ingress adds p50 | ingress adds p99 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ingress_runs = Vec::new();
    for clients in LEVELS {
        let direct = {
            let engine = engine.clone();
            drive(clients, move |i| {
                engine
                    .submit(&request(i))
                    .unwrap()
                    .collect_blocking()
                    .unwrap();
            })
        };
        let through = {
            let url = url.clone();
            drive(clients, move |_| post(&url, None))
        };
        ingress_runs.push((
            clients,
            percentile(&through.0, 0.5),
            percentile(&through.0, 0.99),
        ));
        let (d50, d99) = (percentile(&direct.0, 0.5), percentile(&direct.0, 0.99));
        let (i50, i99) = (percentile(&through.0, 0.5), percentile(&through.0, 0.99));
        println!(
            "| {clients} | {} | {} | {:.0} | {} | {} | {:.0} | {} | {} |",
            ms(d50),
            ms(d99),
            direct.1,
            ms(i50),
            ms(i99),
            through.1,
            ms(i50.saturating_sub(d50)),
            ms(i99.saturating_sub(d99)),
        );
    }
    if let Some(litellm) = &litellm {
        println!();
        println!("| clients | LiteLLM p50 | LiteLLM p99 | LiteLLM req/s | LiteLLM adds p50 | LiteLLM adds p99 |");
        println!("|---|---|---|---|---|---|");
        for (clients, i50, i99) in ingress_runs {
            let run = litellm.drive(clients);
            let (l50, l99) = (percentile(&run.0, 0.5), percentile(&run.0, 0.99));
            println!(
                "| {clients} | {} | {} | {:.0} | {} | {} |",
                ms(l50),
                ms(l99),
                run.1,
                ms(l50.saturating_sub(i50)),
                ms(l99.saturating_sub(i99)),
            );
        }
    }
    drop(litellm);
    runtime.block_on(async {
        ingress.shutdown().await;
        neuron.shutdown().await;
    });
}
