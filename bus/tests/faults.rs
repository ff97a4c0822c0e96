//! The bus through server restarts and node loss.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::connection::State;
use cortex_bus::kv::{self, BucketSpec, CasOutcome};
use cortex_bus::{stream_request, CancelRegistry, StreamOptions};
use cortex_schemas::Frame;
use cortex_testkit::{eventually, NatsCluster, NatsServer};
use futures::StreamExt;
use support::{connect, drain, generate, spawn_echo, Echo};

fn connects(client: &async_nats::Client) -> u64 {
    client.statistics().connects.load(Ordering::Relaxed)
}

/// Waits until `client` has connected again since it had `before` connects,
/// then waits until the server has processed its resubscriptions.
async fn reconnected(client: &async_nats::Client, before: u64) {
    eventually("client to reconnect", Duration::from_secs(10), || async {
        (connects(client) > before && client.connection_state() == State::Connected).then_some(())
    })
    .await;
    cortex_bus::sync_with_server(client)
        .await
        .expect("server has the resubscriptions");
}

#[tokio::test]
async fn after_a_server_restart_clients_responders_and_watches_resume() {
    let mut server = NatsServer::start();
    let requester = connect(&[server.url()]).await;
    let responder = connect(&[server.url()]).await;
    spawn_echo(
        responder.clone(),
        "t.restart",
        Some("neurons"),
        Echo::new("n"),
        CancelRegistry::new(),
    )
    .await;

    let js = async_nats::jetstream::new(requester.clone());
    let store = kv::open_or_create(&js, &BucketSpec::new("state"))
        .await
        .unwrap();
    let mut watch = Box::pin(kv::watch::<u64>(js.clone(), "state".into(), ">".into()));
    store.put("k", "1".into()).await.unwrap();
    let before = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.value, Some(1));

    let options = StreamOptions::default();
    let (frames, error) = drain(
        stream_request(&requester, "t.restart", &generate("a", 3), &options)
            .await
            .unwrap(),
    )
    .await;
    assert!(error.is_none() && frames.len() == 5);

    let (r0, s0) = (connects(&requester), connects(&responder));
    server.restart();
    reconnected(&requester, r0).await;
    reconnected(&responder, s0).await;

    // The next streamed request succeeds: the responder's queue subscription came back.
    let (frames, error) = drain(
        stream_request(&requester, "t.restart", &generate("b", 3), &options)
            .await
            .unwrap(),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert!(matches!(frames.last(), Some(Frame::Done(_))));

    // The KV state survived and the watch resumes with the next change only.
    let store = kv::open_or_create(&js, &BucketSpec::new("state"))
        .await
        .unwrap();
    assert_eq!(
        kv::get::<u64>(&store, "k").await.unwrap().map(|v| v.value),
        Some(1)
    );
    store.put("k", "2".into()).await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("watch resumed after restart")
        .unwrap();
    assert_eq!(after.value, Some(2));
    assert!(after.revision > before.revision);
}

#[tokio::test]
async fn a_three_node_cluster_keeps_kv_and_streams_through_the_loss_of_a_node() {
    let mut cluster = NatsCluster::start(3);
    // Clients pinned to different first nodes, each knowing all three.
    let mut urls = cluster.urls();
    let requester = connect(&urls).await;
    urls.rotate_left(1);
    let responder = connect(&urls).await;
    spawn_echo(
        responder.clone(),
        "t.cluster",
        Some("neurons"),
        Echo::new("n"),
        CancelRegistry::new(),
    )
    .await;

    let js = async_nats::jetstream::new(requester.clone());
    let store = kv::open_or_create(&js, &BucketSpec::new("replicated").replicas(3))
        .await
        .unwrap();
    let increment = |c: Option<&u64>| Some(c.copied().unwrap_or(0) + 1);
    kv::update_cas(&store, "n", increment).await.unwrap();

    // Kill the node the requester is connected to.
    let victim = (0..cluster.len())
        .find(|i| {
            cluster
                .url(*i)
                .ends_with(&format!(":{}", requester.server_info().port))
        })
        .expect("requester is on a cluster node");
    let responder_moves = responder.server_info().port == requester.server_info().port;
    let (r0, s0) = (connects(&requester), connects(&responder));
    cluster.kill(victim);
    reconnected(&requester, r0).await;
    if responder_moves {
        reconnected(&responder, s0).await;
    }

    let outcome = eventually(
        "KV writable after node loss",
        Duration::from_secs(15),
        || {
            let store = store.clone();
            async move { kv::update_cas(&store, "n", increment).await.ok() }
        },
    )
    .await;
    assert!(
        matches!(outcome, CasOutcome::Written(v) if v.value == 2),
        "no update lost"
    );

    let (frames, error) = drain(
        stream_request(
            &requester,
            "t.cluster",
            &generate("c", 10),
            &StreamOptions::default(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(frames.len(), 12);

    cluster.start_again(victim);
}

/// A served subject drained after the server went away: no round trip can
/// confirm the drain, so the stream gives every request it already holds
/// (more than a task's budget of them) and ends at once.
#[tokio::test]
async fn a_served_subject_drained_without_a_server_yields_what_it_holds_and_ends() {
    let mut server = NatsServer::start();
    let responder = connect(&[server.url()]).await;
    let requester = connect(&[server.url()]).await;
    let mut requests = cortex_bus::serve(&responder, "t.held", Some("q"))
        .await
        .unwrap();
    const SENT: usize = 500;
    for i in 0..SENT {
        requester
            .publish("t.held", format!("{i}").into())
            .await
            .unwrap();
    }
    // Everything reaches the responder before the server goes: a round
    // trip on the requester's connection means the server has routed its
    // requests (a flush only hands them to the socket), one on the
    // responder's that it has received them.
    cortex_bus::sync_with_server(&requester).await.unwrap();
    cortex_bus::sync_with_server(&responder).await.unwrap();
    server.kill();
    eventually(
        "responder to see the loss",
        Duration::from_secs(10),
        || async { (responder.connection_state() != State::Connected).then_some(()) },
    )
    .await;
    let started = std::time::Instant::now();
    requests.drain().await;
    let mut taken = 0;
    while let Some(incoming) = requests.next().await {
        assert_eq!(incoming.message.payload, format!("{taken}").as_bytes());
        taken += 1;
    }
    assert_eq!(taken, SENT);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
