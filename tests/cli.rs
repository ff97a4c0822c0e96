//! The `cortex` binary against a real nats-server.

use std::process::Command;
use std::time::{Duration, Instant};

use cortex_schemas::{Event, EventDetail};
use cortex_testkit::{json_output, NatsServer};

fn cortex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cortex"))
}

#[test]
fn ping_reports_the_server_and_jetstream() {
    let server = NatsServer::start();
    let report = json_output(cortex().args(["ping", "--json", "--nats-url", &server.url()]));
    assert_eq!(report["jetstream"], true);
    assert_eq!(report["port"], server.port());
    assert!(report["max_payload"].as_u64().unwrap() >= 1024 * 1024);
    assert!(report["version"].as_str().unwrap().starts_with("2."));
}

/// Operator tools print their answer; the NATS client's `connected
/// successfully` and such come out only with `-v`.
#[test]
fn operator_tools_are_quiet_unless_asked() {
    let server = NatsServer::start();
    let url = server.url();
    let quiet = cortex()
        .args(["ping", "--nats-url", &url])
        .output()
        .unwrap();
    assert!(quiet.status.success());
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(String::from_utf8_lossy(&quiet.stdout).contains("JetStream enabled"));
    let verbose = cortex()
        .args(["-v", "ping", "--nats-url", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(stderr.contains("connected"), "{stderr}");
    // An error stays one clear line.
    let status = cortex()
        .args(["status", "--nats-url", &url])
        .output()
        .unwrap();
    assert!(!status.status.success());
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("cortex: "), "{stderr}");
}

#[test]
fn ping_fails_clearly_when_nats_is_unreachable() {
    let port = cortex_testkit::free_port();
    let started = Instant::now();
    let output = cortex()
        .args(["ping", "--nats-connect-timeout", "1s"])
        .args(["--nats-url", &format!("nats://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no NATS server reachable"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up within its timeout"
    );
}

#[test]
fn ping_refuses_conflicting_auth_options_before_connecting() {
    let output = cortex()
        .args(["ping", "--nats-user", "u", "--nats-token", "t"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("choose one of"), "{stderr}");
}

#[tokio::test]
async fn events_prints_lifecycle_events_as_json_lines() {
    let server = NatsServer::start();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cortex"))
        .args(["events", "--count", "1", "--nats-url", &server.url()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let event = Event {
        at_ms: 1,
        source: "test".into(),
        detail: EventDetail::ModelReady {
            model: "smollm2".into(),
            neuron: "n1".into(),
            load_ms: 42,
        },
    };
    let payload = serde_json::to_vec(&event).unwrap();
    // The subscriber may not be up yet: publish until the process exits.
    let output = loop {
        client
            .publish("cortex.v1.events.model.ready", payload.clone().into())
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(100), child.wait()).await {
            Ok(status) => {
                assert!(status.unwrap().success());
                break child.wait_with_output().await.unwrap();
            }
            Err(_) => continue,
        }
    };
    let line = String::from_utf8(output.stdout).unwrap();
    let printed: Event = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(printed, event);
}

#[test]
fn the_compose_nats_config_is_valid() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/compose/nats.conf");
    // nats-auth.conf reads each role's password from the environment, as
    // docker-compose.yml sets it.
    let mut command = Command::new(cortex_testkit::binary::nats_server_bin());
    command.args(["-t", "-c", config]);
    for role in [
        "PLACEMENT",
        "INGRESS",
        "NEURON_1",
        "NEURON_2",
        "NEURON_GPU",
        "OPERATOR",
    ] {
        command.env(format!("CORTEX_{role}_PASSWORD"), "test-password");
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
