//! The bus with per-role credentials: the whole mesh runs against the
//! permissions that ship in `compose/nats-auth.conf` without a single
//! permission violation, and each role's credentials are refused everything
//! outside its role: a neuron cannot impersonate placement or another neuron,
//! nor read other roles' replies or another neuron's subjects; ingress cannot
//! command neurons or write placement's state. (A neuron in queue group
//! `neurons` can be handed requests for any model: it may be assigned any.)

mod support;

use std::path::Path;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use cortex_bus::control::call;
use cortex_bus::{ConnectError, NatsOptions, PlacementOp, Subjects};
use cortex_ingress::{Ingress, IngressConfig};
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_placement::Placement;
use cortex_schemas::PlacementStatus;
use cortex_testkit::{NatsServer, ServerOptions};
use futures::StreamExt;
use serde_json::json;
use support::*;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Each role's user and the variable `nats-auth.conf` reads its password from.
const ROLES: [(&str, &str); 6] = [
    ("placement", "CORTEX_PLACEMENT_PASSWORD"),
    ("ingress", "CORTEX_INGRESS_PASSWORD"),
    ("neuron-1", "CORTEX_NEURON_1_PASSWORD"),
    ("neuron-2", "CORTEX_NEURON_2_PASSWORD"),
    ("neuron-gpu", "CORTEX_NEURON_GPU_PASSWORD"),
    ("operator", "CORTEX_OPERATOR_PASSWORD"),
];

fn password(user: &str) -> String {
    format!("test-secret-{user}")
}

/// A server with the shipped permissions; the passwords are defined as
/// config variables ahead of the file, as the environment would.
fn secured_server() -> NatsServer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/nats-auth.conf");
    let auth = std::fs::read_to_string(path).expect("compose/nats-auth.conf");
    let mut config: String = ROLES
        .iter()
        .map(|(user, var)| format!("{var}: \"{}\"\n", password(user)))
        .collect();
    config.push_str(&auth);
    NatsServer::with_options(ServerOptions {
        extra_config: config,
        ..ServerOptions::default()
    })
}

fn options(server: &NatsServer, user: &str) -> NatsOptions {
    let mut options = NatsOptions::new([server.url()]);
    options.user = Some(user.to_string());
    options.password = Some(password(user));
    options.connect_timeout = Duration::from_secs(10);
    options
}

/// A raw connection as `user` whose server errors (permission violations)
/// are collected, to probe what the role may not do.
async fn probe(server: &NatsServer, user: &str) -> (Client, UnboundedReceiver<String>) {
    let (tx, rx) = unbounded_channel();
    let client = ConnectOptions::with_user_and_password(user.into(), password(user))
        .custom_inbox_prefix(format!("_INBOX.{user}"))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(error) = event {
                    let _ = tx.send(error.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .expect("probe connects");
    (client, rx)
}

/// Waits for the server to refuse `what` on `subject`.
async fn refused(errors: &mut UnboundedReceiver<String>, what: &str, subject: &str) {
    let wanted = format!("permissions violation for {what} to \"{subject}\"").to_lowercase();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut other = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Some(error)) if error.to_lowercase().contains(&wanted) => return,
            Ok(Some(error)) => other.push(error),
            _ => panic!("the server did not refuse {what} to {subject:?} (errors: {other:?})"),
        }
    }
}

async fn publish_refused(client: &Client, errors: &mut UnboundedReceiver<String>, subject: &str) {
    client
        .publish(subject.to_string(), "forged".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    refused(errors, "publish", subject).await;
}

/// The subscription is refused, and nothing published there reaches it.
async fn subscribe_refused(
    client: &Client,
    errors: &mut UnboundedReceiver<String>,
    operator: &Client,
    subject: &str,
    sample: &str,
) {
    let mut sub = client.subscribe(subject.to_string()).await.unwrap();
    client.flush().await.unwrap();
    refused(errors, "subscription", subject).await;
    operator
        .publish(sample.to_string(), "secret".into())
        .await
        .unwrap();
    operator.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(!matches!(got, Ok(Some(_))), "{subject} delivered a message");
}

fn violations(server: &NatsServer) -> Vec<String> {
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains(" Violation"))
        .map(str::to_string)
        .collect()
}

const CATALOG: &str = "[[model]]\nid = \"m\"\nsource = \"sim\"\nvram_mb = 200\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mesh_runs_with_per_role_credentials_and_no_role_oversteps() {
    let server = secured_server();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), CATALOG);

    // The whole mesh, each part with its own credentials.
    let mut config = placement_config(&server, "p1", Some(&file));
    config.nats = options(&server, "placement");
    let client = config.nats.connect("placement").await.unwrap();
    let placement = Placement::start(config, client).await.unwrap();
    let mut neurons = Vec::new();
    for id in ["neuron-1", "neuron-2"] {
        let mut config = NeuronConfig::for_tests(&server.url(), id);
        config.nats = options(&server, id);
        config.engine = EngineKind::Sim;
        config.heartbeat_interval = Duration::from_millis(200);
        config.sim_reply_tokens = 8;
        let client = config.nats.connect(id).await.unwrap();
        neurons.push(Neuron::start(config, client).await.unwrap());
    }
    let mut config = IngressConfig::for_tests(&server.url());
    config.nats = options(&server, "ingress");
    let client = config.nats.connect("ingress").await.unwrap();
    let ingress = Ingress::start(config, client).await.unwrap();
    let base = format!("http://{}", ingress.addr);
    let operator = options(&server, "operator")
        .connect("operator")
        .await
        .unwrap();
    until("fleet seen", Duration::from_secs(10), || {
        placement.shared().fleet.live().len() == 2
    })
    .await;

    // A cold start (ingress → placement ensure → neuron load), then
    // streamed and whole answers, the model list from the catalogue.
    let answer = chat(&base, "m", json!({})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = chat(&base, "m", json!({"stream": true})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("data: [DONE]"), "{}", answer.body);
    let models = get_text(&format!("{base}/v1/models")).await;
    assert!(models.contains("\"m\""), "{models}");
    // The console shows placement's status through the ingress's user.
    let console = get_text(&format!("{base}/ui/api/status")).await;
    assert!(console.contains("\"replica\":\"p1\""), "{console}");
    let status: PlacementStatus = call(
        &operator,
        Subjects::default().placement(PlacementOp::Status),
        &json!({}),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(status.neurons.len(), 2);
    // A neuron reads model files from the object store.
    let js = async_nats::jetstream::new(operator.clone());
    let store = cortex_bus::objects::open_or_create(&js, cortex_bus::buckets::MODELS, 1)
        .await
        .unwrap();
    let weights = dir.path().join("weights.bin");
    std::fs::write(&weights, vec![7u8; 300_000]).unwrap();
    cortex_bus::objects::push(&store, &weights, "weights.bin")
        .await
        .unwrap();
    let neuron_client = options(&server, "neuron-1")
        .connect("neuron-1-fetch")
        .await
        .unwrap();
    let neuron_js = async_nats::jetstream::new(neuron_client);
    let neuron_store = neuron_js
        .get_object_store(cortex_bus::buckets::MODELS)
        .await
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let fetched = cortex_bus::objects::fetch(&neuron_store, "weights.bin", cache.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(fetched).unwrap().len(), 300_000);
    // Everything above stayed inside the permissions.
    assert_eq!(violations(&server), Vec::<String>::new());

    // A neuron cannot impersonate another neuron or placement...
    let (neuron, mut errors) = probe(&server, "neuron-1").await;
    publish_refused(&neuron, &mut errors, "cortex.v1.heartbeat.neuron-2").await;
    publish_refused(&neuron, &mut errors, "cortex.v1.prefix.neuron-2").await;
    publish_refused(&neuron, &mut errors, "cortex.v1.neuron.neuron-2.unload").await;
    publish_refused(&neuron, &mut errors, "$KV.cortex-placements.m").await;
    publish_refused(
        &neuron,
        &mut errors,
        "$JS.API.STREAM.DELETE.KV_cortex-placements",
    )
    .await;
    publish_refused(&neuron, &mut errors, "cortex.v1.infer.m").await;
    // ...answer placement's requests, or read anyone else's traffic.
    for (subject, sample) in [
        ("cortex.v1.placement.>", "cortex.v1.placement.ensure"),
        (
            "cortex.v1.neuron.neuron-2.>",
            "cortex.v1.neuron.neuron-2.infer",
        ),
        ("cortex.v1.infer.*", "cortex.v1.infer.m"),
        ("_INBOX.>", "_INBOX.ingress.abc"),
        ("_INBOX.ingress.>", "_INBOX.ingress.abc"),
        ("cortex.v1.heartbeat.*", "cortex.v1.heartbeat.neuron-2"),
        ("$KV.cortex-catalog.>", "$KV.cortex-catalog.m"),
    ] {
        subscribe_refused(&neuron, &mut errors, &operator, subject, sample).await;
    }

    // Neither can it speak for another neuron on its own heartbeat subject:
    // placement and ingress take a heartbeat only for the neuron its
    // subject names.
    let mut beats = operator
        .subscribe("cortex.v1.heartbeat.neuron-1")
        .await
        .unwrap();
    let beat = tokio::time::timeout(Duration::from_secs(5), beats.next())
        .await
        .unwrap()
        .unwrap();
    let mut forged: serde_json::Value = serde_json::from_slice(&beat.payload).unwrap();
    forged["neuron_id"] = json!("ghost");
    forged["models"] = json!([{
        "model_id": "phantom", "state": "ready", "device": 0, "memory_bytes": 1,
        "slots_busy": 0, "slots_total": 4, "queue_depth": 0, "tokens_per_second": 0.0,
    }]);
    // Well-formed: only the subject check keeps it out.
    let _: cortex_schemas::NeuronStatus = serde_json::from_value(forged.clone()).unwrap();
    for _ in 0..5 {
        neuron
            .publish("cortex.v1.heartbeat.neuron-1", forged.to_string().into())
            .await
            .unwrap();
    }
    neuron.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let models = get_text(&format!("{base}/v1/models")).await;
    assert!(!models.contains("phantom"), "{models}");
    assert!(placement
        .shared()
        .fleet
        .live()
        .iter()
        .all(|n| n.neuron_id != "ghost"));
    // Nor may it publish placement's events or answer placement's discovery.
    publish_refused(&neuron, &mut errors, "cortex.v1.events.neuron.lost").await;
    subscribe_refused(
        &neuron,
        &mut errors,
        &operator,
        "$SRV.INFO.cortex-placement",
        "$SRV.INFO.cortex-placement",
    )
    .await;

    // Ingress cannot command neurons or write placement's state.
    let (ingress_probe, mut ingress_errors) = probe(&server, "ingress").await;
    publish_refused(
        &ingress_probe,
        &mut ingress_errors,
        "cortex.v1.neuron.neuron-1.load",
    )
    .await;
    // The console's verbs (placement load / unload / pin, gated by
    // --admin-keys in ingress) are allowed; re-reading the catalogue is not.
    publish_refused(
        &ingress_probe,
        &mut ingress_errors,
        "cortex.v1.placement.reload",
    )
    .await;
    publish_refused(&ingress_probe, &mut ingress_errors, "$KV.cortex-catalog.m").await;
    publish_refused(
        &ingress_probe,
        &mut ingress_errors,
        "cortex.v1.heartbeat.neuron-1",
    )
    .await;
    subscribe_refused(
        &ingress_probe,
        &mut ingress_errors,
        &operator,
        "cortex.v1.infer.*",
        "cortex.v1.infer.m",
    )
    .await;

    // A wrong password is refused at connect, at once, as an auth error.
    let mut wrong = options(&server, "neuron-1");
    wrong.password = Some("guess".into());
    let started = std::time::Instant::now();
    assert!(matches!(
        wrong.connect("intruder").await,
        Err(ConnectError::Auth(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(5));

    // The mesh still serves after all that.
    let answer = chat(&base, "m", json!({})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    ingress.shutdown().await;
    for neuron in neurons {
        neuron.shutdown().await;
    }
    placement.shutdown().await;
}
