//! The docker-compose dev cluster (`compose/`): the file validates with
//! `docker-compose config` (no Docker daemon needed) and names the topology
//! the README describes; the Grafana dashboard only charts metrics that the
//! components really export (scraped here from a running mesh).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

fn compose(args: &[&str]) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/docker-compose.yml");
    let output = Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("docker-compose not runnable ({e}): install Debian's docker-compose package (scripts/setup.sh does, as root)")
        });
    assert!(
        output.status.success(),
        "docker-compose {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// One service's block of the resolved compose file.
fn section(resolved: &str, service: &str) -> String {
    let header = format!("  {service}:");
    resolved
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_compose_file_validates_and_has_the_topology() {
    compose(&["config", "-q"]);
    let services = compose(&["--profile", "gpu", "config", "--services"]);
    let mut services: Vec<&str> = services.lines().collect();
    services.sort();
    assert_eq!(
        services,
        vec![
            "balancer",
            "grafana",
            "ingress",
            "nats",
            "neuron-1",
            "neuron-2",
            "neuron-gpu",
            "placement-1",
            "placement-2",
            "prometheus",
        ]
    );
    // The GPU neuron sits behind the `gpu` profile (docker-compose 1.29
    // lists every service whatever the profile, so read the resolved file).
    let resolved = compose(&["config"]);
    let gpu = section(&resolved, "neuron-gpu");
    assert!(gpu.contains("profiles:") && gpu.contains("- gpu"), "{gpu}");
    assert!(gpu.contains("driver: nvidia"), "{gpu}");
    // The ingress pods are one service of 3 replicas (`--scale ingress=N`
    // changes N), with no fixed name or host port that would stop a scale.
    let ingress = section(&resolved, "ingress");
    assert!(ingress.contains("replicas: 3"), "{ingress}");
    assert!(
        !ingress.contains("container_name") && !ingress.contains("ports:"),
        "{ingress}"
    );
    // The balancer finds however many there are in Docker's DNS, and its
    // config is one haproxy accepts.
    let compose_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("compose");
    let haproxy = std::fs::read_to_string(compose_dir.join("haproxy.cfg")).unwrap();
    assert!(
        haproxy.contains("server-template ingress- 10 ingress:31313")
            && haproxy.contains("resolvers docker")
            && haproxy.contains("nameserver dns 127.0.0.11:53"),
        "{haproxy}"
    );
    let checked = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(compose_dir.join("haproxy.cfg"))
        .output()
        .unwrap_or_else(|e| {
            panic!("haproxy not runnable ({e}): install Debian's haproxy package (scripts/setup.sh does, as root)")
        });
    assert!(
        checked.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // Prometheus scrapes every replica the same way.
    let prometheus = std::fs::read_to_string(compose_dir.join("prometheus.yml")).unwrap();
    assert!(prometheus.contains("dns_sd_configs"), "{prometheus}");
    // The catalogue the cluster mounts is a valid one.
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/models.toml");
    cortex_placement::catalog::file::read(&catalog).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_charts_only_exported_metrics() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(
        dir.path(),
        "[[model]]\nid = \"m\"\nsource = \"sim\"\nvram_mb = 100\n",
    );
    let mut config = placement_config(&server, "p1", Some(&file));
    config.metrics_listen = "127.0.0.1:0".into();
    let p = placement(config).await;
    let n = sim_neuron(&server, "n1", |c| c.metrics_listen = "127.0.0.1:0".into()).await;
    let i = ingress(&server).await;
    let base = format!("http://{}", i.addr);
    until("neuron seen", Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 1
    })
    .await;
    // A cold start and a streamed answer fill every family.
    assert_eq!(chat(&base, "m", json!({})).await.status, 200);
    assert_eq!(chat(&base, "m", json!({"stream": true})).await.status, 200);
    let mut scraped = String::new();
    for url in [
        format!("{base}/metrics"),
        format!("http://{}/metrics", n.metrics_addr().unwrap()),
        format!("http://{}/metrics", p.metrics_addr().unwrap()),
    ] {
        scraped.push_str(&get_text(&url).await);
    }
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/grafana/dashboards/cortex.json"),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("cortex_") {
                    names.push(word.to_string());
                }
            }
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        let exported = scraped
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        assert!(
            exported,
            "the dashboard charts {name}, which nothing exports"
        );
    }
    i.shutdown().await;
    n.shutdown().await;
    p.shutdown().await;
}
