//! `cortex neuron` as a real process: killed mid-stream, stopped with
//! SIGTERM, started from a config file, refused for bad configuration.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cortex_bus::{stream_request, ModelToken, NatsOptions, StreamError, StreamOptions, Subjects};
use cortex_schemas::{
    ChatMessage, Frame, GenerateInput, GenerateRequest, InferRequest, ModelState, NeuronState,
    NeuronStatus, Role,
};
use cortex_testkit::NatsServer;
use futures::StreamExt;

/// A child process killed when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn neuron(args: &[&str]) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_cortex"))
        .arg("neuron")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cortex neuron starts");
    Daemon(child)
}

async fn connect(server: &NatsServer) -> async_nats::Client {
    NatsOptions::new([server.url()])
        .connect("test")
        .await
        .unwrap()
}

/// Waits for a heartbeat of `id` in which `model` is ready.
async fn wait_ready(client: &async_nats::Client, id: &str, model: &str) {
    let mut beats = client
        .subscribe(Subjects::default().heartbeat(id))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), beats.next()).await
        {
            let status: NeuronStatus = serde_json::from_slice(&message.payload).unwrap();
            if status
                .models
                .iter()
                .any(|m| m.model_id == model && m.state == ModelState::Ready)
            {
                return;
            }
        }
    }
    panic!("{id} never reported {model} ready");
}

fn request(id: &str, max_tokens: u32) -> InferRequest {
    InferRequest::Generate(Box::new(GenerateRequest {
        max_tokens: Some(max_tokens),
        ..GenerateRequest::new(
            id,
            "m",
            GenerateInput::Chat {
                messages: vec![ChatMessage::text(Role::User, "hi")],
            },
        )
    }))
}

fn subject() -> String {
    Subjects::default().infer(&ModelToken::new("m").unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neuron_killed_mid_stream_is_detected_within_3_seconds() {
    let server = NatsServer::start();
    let url = server.url();
    let mut daemon = neuron(&[
        "--nats-url",
        &url,
        "--id",
        "victim",
        "--engine",
        "sim",
        "--models",
        "m=sim",
        "--sim-tokens-per-second",
        "5",
        "--metrics-listen",
        "off",
    ]);
    let client = connect(&server).await;
    wait_ready(&client, "victim", "m").await;

    let mut stream = stream_request(
        &client,
        subject(),
        &request("doomed", 200),
        &StreamOptions::default(),
    )
    .await
    .unwrap();
    // Read continuously in a task, noting when the stream fails.
    let (first_delta_tx, first_delta) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut first_delta_tx = Some(first_delta_tx);
        while let Some(item) = stream.next().await {
            match item {
                Ok(Frame::Delta(_)) => {
                    if let Some(tx) = first_delta_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(frame) if frame.is_terminal() => {
                    return Err(format!("ended normally: {frame:?}"))
                }
                Ok(_) => {}
                Err(error) => return Ok((error, Instant::now())),
            }
        }
        Err("stream ended without an error".into())
    });
    first_delta.await.expect("a first delta");
    daemon.0.kill().unwrap();
    let killed = Instant::now();
    let (error, detected) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the requester notices")
        .unwrap()
        .unwrap();
    let after = detected.duration_since(killed);
    println!("killed neuron detected {after:?} after the kill ({error})");
    assert!(matches!(error, StreamError::Idle { .. }), "{error:?}");
    assert!(after < Duration::from_secs(3), "detected after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_says_stopped_and_exits_cleanly() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("neuron.toml");
    std::fs::write(
        &config,
        format!(
            "nats-url = \"{}\"\nid = \"graceful\"\nengine = \"sim\"\nmetrics_listen = \"off\"\n\
             sim-tokens-per-second = 20\n\n[[model]]\nid = \"m\"\nsource = \"sim\"\n",
            server.url()
        ),
    )
    .unwrap();
    let mut daemon = neuron(&["--config", config.to_str().unwrap()]);
    let client = connect(&server).await;
    wait_ready(&client, "graceful", "m").await;
    let mut beats = client
        .subscribe(Subjects::default().heartbeat("graceful"))
        .await
        .unwrap();

    let mut stream = stream_request(
        &client,
        subject(),
        &request("last", 20),
        &StreamOptions::default(),
    )
    .await
    .unwrap();
    loop {
        if let Frame::Delta(_) = stream.next().await.unwrap().unwrap() {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut done = None;
    while let Some(item) = stream.next().await {
        if let Frame::Done(d) = item.expect("the stream finishes") {
            done = Some(d);
        }
    }
    assert_eq!(done.map(|d| d.usage.completion_tokens), Some(20));

    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = daemon.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the neuron exits after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    let mut last = None;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(300), beats.next()).await
    {
        last = Some(
            serde_json::from_slice::<NeuronStatus>(&message.payload)
                .unwrap()
                .state,
        );
    }
    assert_eq!(last, Some(NeuronState::Stopped));
}

#[test]
fn bad_configuration_exits_64_before_connecting() {
    let run = |args: &[&str]| {
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_cortex"))
            .arg("neuron")
            .args(args)
            // Nothing listens here: a connect attempt would retry for 30 s.
            .args(["--nats-url", "nats://127.0.0.1:9"])
            .output()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused before connecting"
        );
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--id", "a.b"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--id"), "{stderr}");

    let (code, stderr) = run(&["--memory-budget", "lots"]);
    assert_eq!(code, Some(2), "clap's own usage error: {stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "heartbeat = \"2s\"\n").unwrap();
    let (code, stderr) = run(&["--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("unknown setting \"heartbeat\""), "{stderr}");

    let (code, stderr) = run(&["--nats-password", "hunter2", "--id", "x*"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "secrets never logged: {stderr}"
    );
}
