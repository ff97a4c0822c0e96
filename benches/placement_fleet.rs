//! Placement at fleet scale: NEURONS simulated neurons (real `Neuron`s with
//! the sim engine, in this process, heartbeating each second) and MODELS
//! catalogue entries with `min_replicas = 1`, against one `cortex
//! placement` process. Reports placement's CPU and memory while the fleet
//! heartbeats, how long it took to load every model, and, for KILLS
//! neurons crashed one after another (connection closed, no goodbye), the
//! time from the crash to every model it held being ready elsewhere.
//!
//! `cargo bench --bench placement_fleet` (NEURONS=1000 MODELS=200 KILLS=3
//! WINDOW_S=20 by default).

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cortex_bus::NatsOptions;
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_schemas::{Event, EventDetail};
use cortex_testkit::NatsServer;
use futures::StreamExt;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (CPU seconds, resident bytes) of a process, from /proc.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss_kb * 1024)
}

async fn connect(url: &str) -> async_nats::Client {
    let mut options = NatsOptions::new([url]);
    options.connect_timeout = Duration::from_secs(10);
    options.connect("bench").await.unwrap()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let neurons = env_or("NEURONS", 1000);
    let models = env_or("MODELS", 200);
    let kills = env_or("KILLS", 3);
    let window = Duration::from_secs(env_or("WINDOW_S", 20) as u64);
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let mut catalog = String::new();
    for i in 0..models {
        catalog.push_str(&format!(
            "[[model]]\nid = \"m{i}\"\nsource = \"sim\"\nvram_mb = 4096\nmin_replicas = 1\n\n"
        ));
    }
    let file = dir.path().join("models.toml");
    std::fs::write(&file, catalog).unwrap();

    // The fleet: 100 neurons per connection; the KILLS victims on their own.
    let started = Instant::now();
    let mut fleet: Vec<(Neuron, Option<async_nats::Client>)> = Vec::new();
    let mut shared = connect(&url).await;
    for i in 0..neurons {
        if i % 100 == 0 {
            shared = connect(&url).await;
        }
        let own = i < kills;
        let client = if own {
            connect(&url).await
        } else {
            shared.clone()
        };
        let mut config = NeuronConfig::for_tests(&url, &format!("n{i:04}"));
        config.engine = EngineKind::Sim;
        config.heartbeat_interval = Duration::from_secs(1);
        config.sim_gpus = vec![24 << 30];
        let neuron = Neuron::start(config, client.clone()).await.unwrap();
        fleet.push((neuron, own.then_some(client)));
    }
    println!("{neurons} sim neurons up in {:.1?}", started.elapsed());

    let observer = connect(&url).await;
    let mut ready_events = observer
        .subscribe("cortex.v1.events.model.ready")
        .await
        .unwrap();
    observer.flush().await.unwrap();
    let placement = Command::new(env!("CARGO_BIN_EXE_cortex"))
        .args(["placement", "--nats-url", &url, "--id", "bench", "--models"])
        .arg(&file)
        .args(["--metrics-listen", "off", "--reconcile-interval", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = placement.id();
    let _placement = Daemon(placement);
    let loading = Instant::now();
    let mut ready: BTreeSet<String> = BTreeSet::new();
    let mut holder = std::collections::BTreeMap::new();
    while ready.len() < models {
        let message = tokio::time::timeout(Duration::from_secs(120), ready_events.next())
            .await
            .expect("models keep loading")
            .unwrap();
        let event: Event = serde_json::from_slice(&message.payload).unwrap();
        if let EventDetail::ModelReady { model, neuron, .. } = event.detail {
            holder.insert(model.clone(), neuron);
            ready.insert(model);
        }
    }
    println!(
        "{models} models (min_replicas 1) ready in {:.1?}",
        loading.elapsed()
    );

    let (cpu0, _) = usage(pid);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let (cpu1, rss) = usage(pid);
    let cpu = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "placement steady, {neurons} neurons heartbeating each second: CPU {cpu:.1}% of one core, RSS {:.1} MiB",
        rss as f64 / (1 << 20) as f64
    );

    for (index, (neuron, client)) in fleet.iter().enumerate().take(kills) {
        let id = neuron.id().to_string();
        let held: BTreeSet<String> = holder
            .iter()
            .filter(|(_, n)| **n == id)
            .map(|(m, _)| m.clone())
            .collect();
        if held.is_empty() {
            println!("kill {index}: {id} holds nothing; skipped");
            continue;
        }
        let crashed = Instant::now();
        if let Some(client) = client {
            // No final heartbeat, no goodbye: the connection is gone.
            client.drain().await.ok();
        }
        let mut pending = held.clone();
        while !pending.is_empty() {
            let message = tokio::time::timeout(Duration::from_secs(60), ready_events.next())
                .await
                .expect("models come back")
                .unwrap();
            let event: Event = serde_json::from_slice(&message.payload).unwrap();
            if let EventDetail::ModelReady { model, neuron, .. } = event.detail {
                if neuron != id && pending.remove(&model) {
                    holder.insert(model, neuron);
                }
            }
        }
        println!(
            "kill {index}: {id} held {} models; all ready elsewhere {:.2?} after the crash (lost after 3 heartbeat intervals of 1 s)",
            held.len(),
            crashed.elapsed()
        );
    }
    let (_, rss) = usage(pid);
    println!(
        "placement RSS at the end: {:.1} MiB",
        rss as f64 / (1 << 20) as f64
    );
    drop(_placement);
    for (neuron, _) in fleet.into_iter().skip(kills) {
        neuron.shutdown().await;
    }
}
