//! The fleet console (`/ui`) in a real browser: headless Chromium (Debian's
//! `chromium`) driven by playwright-core (`tests/console/drive.cjs`, both
//! installed by `scripts/setup.sh`) loads a model with its button, unloads
//! it, and reads a streamed answer from the playground; the mesh's real
//! state is checked after each click. Screenshots are kept under
//! `target/tmp/console/`. Without keys the mesh is open; with keys only an
//! operator key may drive placement.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cortex_ingress::config::ApiKey;
use cortex_ingress::{Ingress, IngressConfig};
use cortex_testkit::NatsServer;
use serde_json::{json, Value};
use support::*;

const CATALOG: &str = "[[model]]\nid = \"m\"\nsource = \"sim\"\nvram_mb = 300\n";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the driver script against `base`; its JSON report.
fn drive(base: &str, shots: &Path) -> Value {
    let playwright = repo().join(".cache/playwright/node_modules/playwright-core");
    assert!(
        playwright.exists(),
        "playwright-core missing: run scripts/setup.sh (make setup)"
    );
    let output = Command::new("node")
        .arg(repo().join("tests/console/drive.cjs"))
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("BASE", base)
        .env("SHOTS", shots)
        .env("MODEL", "m")
        .output()
        .expect("node runs (install Node.js)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = stdout.lines().last().unwrap_or_default();
    assert!(
        output.status.success(),
        "the browser run failed: {report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(report).unwrap_or_else(|e| panic!("report {report:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_loads_unloads_and_streams_in_a_real_browser() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), CATALOG);
    let _placement = placement(placement_config(&server, "p1", Some(&file))).await;
    let _neuron = sim_neuron(&server, "n1", |c| {
        c.sim_load_time = Duration::from_millis(800);
        c.sim_tokens_per_second = 50.0;
    })
    .await;
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    let client = connect(&server.url()).await;
    until_listed(&base).await;

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).unwrap();
    let report = tokio::task::spawn_blocking({
        let (base, shots) = (base.clone(), shots.clone());
        move || drive(&base, &shots)
    })
    .await
    .unwrap();
    println!(
        "browser saw: {report:#}\nscreenshots in {}",
        shots.display()
    );

    assert_eq!(report["neurons"], 1, "{report}");
    assert_eq!(report["memory_bar"], 1, "{report}");
    assert_eq!(report["before"], "not loaded");
    assert!(
        report["loaded"].as_str().unwrap().starts_with("n1 ready"),
        "{report}"
    );
    assert_eq!(report["unloaded"], "not loaded");
    // The answer streamed in the page is the model's, word for word.
    let whole = chat(
        &base,
        "m",
        json!({"messages": [{"role": "user", "content": "Say something."}]}),
    )
    .await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let text = whole.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());
    assert_eq!(report["answer"], text.as_str(), "{report}");
    assert!(
        report["progress"]
            .as_str()
            .unwrap()
            .starts_with("first token after"),
        "{report}"
    );
    let recent = report["recent_first"].as_str().unwrap();
    assert!(
        recent.contains(" m openai (stream) 200 "),
        "the streamed request is listed: {report}"
    );
    assert_eq!(report["error"], "", "{report}");
    assert_eq!(report["failed_requests"], json!([]));
    for shot in ["1-loaded.png", "2-unloaded.png", "3-answer.png"] {
        let bytes = std::fs::metadata(shots.join(shot)).unwrap().len();
        assert!(bytes > 10_000, "{shot}: {bytes} bytes");
    }
    // The clicks changed the mesh, not only the page: the playground's cold
    // load left the model on n1 (loaded, then unloaded, then loaded again).
    ready_on_n1(&client).await;
}

/// Waits until placement sees the model ready on n1 (and only there).
async fn ready_on_n1(client: &async_nats::Client) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ready_on(client, "m").await != vec!["n1".to_string()] {
        assert!(std::time::Instant::now() < deadline, "m never ready on n1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the ingress's catalogue lists the model.
async fn until_listed(base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !get_text(&format!("{base}/v1/models"))
        .await
        .contains("\"m\"")
    {
        assert!(std::time::Instant::now() < deadline, "catalogue not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `method` on `url` with an optional bearer key: status and body.
async fn call(method: &'static str, url: String, key: Option<&str>, body: Value) -> (u16, Value) {
    // No key: an empty bearer, which the ingress treats as none.
    let bearer = format!("Bearer {}", key.unwrap_or_default());
    let headers = [("authorization", bearer.as_str())];
    let reply = match method {
        "GET" => cortex_testkit::http::get_with(&url, &headers).await,
        _ => cortex_testkit::http::post(&url, &body.to_string(), &headers).await,
    };
    let value = serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body));
    (reply.status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_an_operator_key_drives_placement_from_the_console() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), CATALOG);
    let _placement = placement(placement_config(&server, "p1", Some(&file))).await;
    let _neuron = sim_neuron(&server, "n1", |_| {}).await;
    let mut config = IngressConfig::for_tests(&server.url());
    config.api_keys = vec![ApiKey("user-key".into())];
    config.admin_keys = vec![ApiKey("root-key".into())];
    let ingress = Ingress::start(config, connect(&server.url()).await)
        .await
        .expect("ingress starts");
    let base = format!("http://{}", ingress.addr);
    let client = connect(&server.url()).await;

    // The page itself holds no data and needs no key; its API does.
    let page = get_text(&format!("{base}/ui")).await;
    assert!(page.contains("<title>Cortex console</title>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no CDN"
    );
    let status = format!("{base}/ui/api/status");
    let (code, _) = call("GET", status.clone(), None, Value::Null).await;
    assert_eq!(code, 401);
    let (code, user) = call("GET", status.clone(), Some("user-key"), Value::Null).await;
    assert_eq!(code, 200, "{user}");
    assert_eq!(user["operator"], false);
    assert_eq!(user["placement"]["replica"], "p1", "{user}");
    let (_, root) = call("GET", status, Some("root-key"), Value::Null).await;
    assert_eq!(root["operator"], true);

    // A user key may look, not act: 403, and nothing is loaded.
    let load = format!("{base}/ui/api/load");
    let (code, refused) = call(
        "POST",
        load.clone(),
        Some("user-key"),
        json!({"model": "m"}),
    )
    .await;
    assert_eq!(code, 403, "{refused}");
    assert_eq!(refused["error"]["type"], "permission_error");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ready_on(&client, "m").await.is_empty());
    // Bad orders get clear errors.
    let (code, bad) = call(
        "POST",
        load.clone(),
        Some("root-key"),
        json!({"modle": "m"}),
    )
    .await;
    assert_eq!(code, 400, "{bad}");
    let (code, _) = call(
        "POST",
        format!("{base}/ui/api/explode"),
        Some("root-key"),
        json!({"model": "m"}),
    )
    .await;
    assert_eq!(code, 404);
    let (code, unknown) = call(
        "POST",
        load.clone(),
        Some("root-key"),
        json!({"model": "nope"}),
    )
    .await;
    assert_eq!(code, 404, "{unknown}");
    // The operator's key loads it, for real.
    let (code, assignment) = call("POST", load, Some("root-key"), json!({"model": "m"})).await;
    assert_eq!(code, 200, "{assignment}");
    assert_eq!(assignment["model_id"], "m");
    ready_on_n1(&client).await;
    let (code, pinned) = call(
        "POST",
        format!("{base}/ui/api/pin"),
        Some("root-key"),
        json!({"model": "m"}),
    )
    .await;
    assert_eq!(code, 200, "{pinned}");
    let (_, view) = call(
        "GET",
        format!("{base}/ui/api/status"),
        Some("root-key"),
        Value::Null,
    )
    .await;
    let model = view["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "m")
        .cloned()
        .unwrap();
    assert_eq!(model["pinned"], true, "{view}");
}

#[tokio::test]
async fn no_ui_serves_no_console() {
    let server = NatsServer::start();
    let mut config = IngressConfig::for_tests(&server.url());
    config.no_ui = true;
    let ingress = Ingress::start(config, connect(&server.url()).await)
        .await
        .expect("ingress starts");
    let base = format!("http://{}", ingress.addr);
    let (code, _) = call("GET", format!("{base}/ui"), None, Value::Null).await;
    assert_eq!(code, 404);
    let (code, _) = call("GET", format!("{base}/ui/api/status"), None, Value::Null).await;
    assert_eq!(code, 404);
}
