//! JetStream KV helpers against a real nats-server.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cortex_bus::kv::{self, BucketSpec, CasOutcome, KvEvent};
use cortex_testkit::NatsServer;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use support::connect;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    value: u64,
    writers: Vec<String>,
}

#[tokio::test]
async fn two_writers_racing_on_one_key_never_lose_an_update() {
    let server = NatsServer::start();
    const PER_WRITER: u64 = 150;
    let attempts = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for name in ["w1", "w2"] {
        // Each writer has its own connection, as two placement replicas would.
        let client = connect(&[server.url()]).await;
        let attempts = attempts.clone();
        writers.push(tokio::spawn(async move {
            let js = async_nats::jetstream::new(client);
            let store = kv::open_or_create(&js, &BucketSpec::new("race"))
                .await
                .unwrap();
            for _ in 0..PER_WRITER {
                let outcome = kv::update_cas(&store, "counter", |current: Option<&Counter>| {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let mut next = current.cloned().unwrap_or_default();
                    next.value += 1;
                    next.writers.push(name.to_string());
                    Some(next)
                })
                .await
                .unwrap();
                assert!(matches!(outcome, CasOutcome::Written(_)));
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let client = connect(&[server.url()]).await;
    let js = async_nats::jetstream::new(client);
    let store = kv::open_or_create(&js, &BucketSpec::new("race"))
        .await
        .unwrap();
    let counter = kv::get::<Counter>(&store, "counter")
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(counter.value, 2 * PER_WRITER, "no increment lost");
    for name in ["w1", "w2"] {
        let count = counter.writers.iter().filter(|w| *w == name).count() as u64;
        assert_eq!(count, PER_WRITER, "{name}'s updates all landed");
    }
    let attempts = attempts.load(Ordering::Relaxed);
    println!("{attempts} attempts for {} writes", 2 * PER_WRITER);
}

#[tokio::test]
async fn update_cas_can_leave_a_value_unchanged_and_recreate_a_deleted_key() {
    let server = NatsServer::start();
    let client = connect(&[server.url()]).await;
    let js = async_nats::jetstream::new(client);
    let store = kv::open_or_create(&js, &BucketSpec::new("cas"))
        .await
        .unwrap();

    let unchanged = kv::update_cas::<Counter, _>(&store, "k", |_| None)
        .await
        .unwrap();
    assert_eq!(unchanged, CasOutcome::Unchanged(None));

    let set = |v: u64| {
        move |_: Option<&Counter>| {
            Some(Counter {
                value: v,
                writers: vec![],
            })
        }
    };
    let CasOutcome::Written(first) = kv::update_cas(&store, "k", set(1)).await.unwrap() else {
        panic!("expected a write");
    };
    store.delete("k").await.unwrap();
    assert!(kv::get::<Counter>(&store, "k").await.unwrap().is_none());
    let CasOutcome::Written(again) = kv::update_cas(&store, "k", set(2)).await.unwrap() else {
        panic!("expected a write");
    };
    assert!(again.revision > first.revision);
    assert_eq!(again.value.value, 2);
}

#[tokio::test]
async fn open_or_create_is_safe_from_many_processes_at_once() {
    let server = NatsServer::start();
    let mut opens = Vec::new();
    for _ in 0..4 {
        let client = connect(&[server.url()]).await;
        opens.push(tokio::spawn(async move {
            let js = async_nats::jetstream::new(client);
            kv::open_or_create(&js, &BucketSpec::new("shared").history(5))
                .await
                .map(|_| ())
        }));
    }
    for open in opens {
        open.await.unwrap().expect("every opener gets the bucket");
    }
}

#[tokio::test]
async fn a_watch_delivers_current_values_then_changes_and_deletes() {
    let server = NatsServer::start();
    let client = connect(&[server.url()]).await;
    let js = async_nats::jetstream::new(client);
    let store = kv::open_or_create(&js, &BucketSpec::new("w"))
        .await
        .unwrap();
    store
        .put("a", br#"{"value":1,"writers":[]}"#.to_vec().into())
        .await
        .unwrap();

    let mut events = Box::pin(kv::watch::<Counter>(js.clone(), "w".into(), ">".into()));
    let first: KvEvent<Counter> = next(&mut events).await;
    assert_eq!(first.key, "a");
    assert_eq!(first.value.as_ref().map(|c| c.value), Some(1));

    // A value of the wrong shape is skipped, not fatal.
    store
        .put("junk", b"not json".to_vec().into())
        .await
        .unwrap();
    store
        .put("b", br#"{"value":2,"writers":[]}"#.to_vec().into())
        .await
        .unwrap();
    let second = next(&mut events).await;
    assert_eq!(
        (second.key.as_str(), second.value.map(|c| c.value)),
        ("b", Some(2))
    );

    store.delete("a").await.unwrap();
    let deleted = next(&mut events).await;
    assert_eq!(deleted.key, "a");
    assert!(deleted.value.is_none());
}

async fn next<S: futures::Stream<Item = KvEvent<Counter>> + Unpin>(
    events: &mut S,
) -> KvEvent<Counter> {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("watch event in time")
        .expect("watch never ends")
}
