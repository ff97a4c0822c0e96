//! Connecting with each authentication method against a real server that requires it.

use std::time::{Duration, Instant};

use cortex_bus::{ConnectError, NatsOptions};
use cortex_testkit::{NatsServer, ServerOptions};

fn server_with(auth: &str) -> NatsServer {
    NatsServer::with_options(ServerOptions {
        extra_config: auth.to_string(),
        ..ServerOptions::default()
    })
}

fn options(server: &NatsServer) -> NatsOptions {
    let mut options = NatsOptions::new([server.url()]);
    options.connect_timeout = Duration::from_secs(20);
    options
}

/// Wrong credentials fail at once with the auth kind: retrying for the whole
/// connect timeout would only hide the mistake.
async fn assert_refused(options: NatsOptions) {
    let started = Instant::now();
    let result = options.connect("test").await;
    assert!(matches!(result, Err(ConnectError::Auth(_))), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "auth errors are not retried"
    );
}

#[tokio::test]
async fn user_and_password() {
    let server = server_with("authorization { user: cortex, password: s3cret }\n");
    let mut good = options(&server);
    good.user = Some("cortex".into());
    good.password = Some("s3cret".into());
    let client = good.connect("test").await.expect("right password connects");
    client.flush().await.unwrap();

    let mut bad = good.clone();
    bad.password = Some("wrong".into());
    assert_refused(bad).await;
    assert_refused(options(&server)).await;
}

#[tokio::test]
async fn token() {
    let server = server_with("authorization { token: \"t0ken\" }\n");
    let mut good = options(&server);
    good.token = Some("t0ken".into());
    good.connect("test").await.expect("right token connects");
    let mut bad = options(&server);
    bad.token = Some("nope".into());
    assert_refused(bad).await;
}

#[tokio::test]
async fn nkey_seed_file() {
    let user = nkeys::KeyPair::new_user();
    let server = server_with(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();

    let mut good = options(&server);
    good.nkey_file = Some(seed_file);
    good.connect("test").await.expect("the seed's key connects");

    let stranger = nkeys::KeyPair::new_user();
    let other_file = dir.path().join("other.nk");
    std::fs::write(&other_file, stranger.seed().unwrap()).unwrap();
    let mut bad = options(&server);
    bad.nkey_file = Some(other_file);
    assert_refused(bad).await;

    let mut missing = options(&server);
    missing.nkey_file = Some(dir.path().join("absent.nk"));
    let result = missing.connect("test").await;
    assert!(
        matches!(result, Err(ConnectError::Credentials { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn the_first_connect_waits_for_a_server_that_comes_up_late() {
    let mut server = NatsServer::start();
    server.kill();
    let options = options(&server);
    let connecting = tokio::spawn(async move { options.connect("late").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !connecting.is_finished(),
        "still retrying while the server is down"
    );
    server.start_again();
    let client = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("connected soon after the server came up")
        .unwrap()
        .expect("connect succeeds");
    client.flush().await.unwrap();
}

#[tokio::test]
async fn several_urls_fail_over_to_one_that_answers() {
    let server = NatsServer::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = NatsOptions::new([format!("nats://127.0.0.1:{dead}"), server.url()]);
    options.connect_timeout = Duration::from_secs(10);
    let client = options
        .connect("failover")
        .await
        .expect("one live server is enough");
    assert_eq!(client.server_info().port, server.port());
}
