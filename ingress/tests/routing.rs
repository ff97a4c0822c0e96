//! Routing across replicas (`cortex_ingress::route`): conversations stay
//! on the neuron that holds their prefix, unrelated requests spread
//! evenly, and the queue group takes over when the view is empty.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_ingress::route::Routing;
use cortex_testkit::{eventually, NatsServer};
use serde_json::{json, Value};
use support::*;
use tokio::sync::Mutex;

const SYSTEM: &str = "You are a helpful assistant for curious readers. Answer in one short, \
    plain sentence, without lists or headings, and never repeat the question. If you are not \
    sure of a fact, say so briefly rather than guessing.";

const TOPICS: [&str; 30] = [
    "volcanoes",
    "the moon",
    "honey bees",
    "glaciers",
    "the Roman empire",
    "octopuses",
    "thunderstorms",
    "coffee",
    "the Sahara",
    "penguins",
    "rainbows",
    "the printing press",
    "tigers",
    "coral reefs",
    "the Nile",
    "comets",
    "bamboo",
    "the violin",
    "whales",
    "the Alps",
    "tea",
    "lightning",
    "owls",
    "the Pacific ocean",
    "tulips",
    "bridges",
    "the Amazon river",
    "salt",
    "wolves",
    "clocks",
];

const FOLLOW_UPS: [&str; 2] = [
    "Tell me one more thing about it.",
    "Say that again in five words.",
];

/// One streamed turn as the client saw it.
#[derive(Debug)]
struct Turn {
    neuron: String,
    ttft: Duration,
    text: String,
    cached: u64,
}

/// Streams a chat request and times its first content.
async fn stream_turn(base: &str, messages: &[Value]) -> Turn {
    let url = format!("{base}/v1/chat/completions");
    let body = json!({
        "model": "smollm2", "messages": messages, "max_tokens": 16, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true},
    })
    .to_string();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let started = Instant::now();
        let response = agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.as_str())
            .expect("HTTP POST");
        assert_eq!(response.status().as_u16(), 200);
        let neuron = response
            .headers()
            .get("cortex-neuron")
            .and_then(|v| v.to_str().ok())
            .expect("a cortex-neuron header")
            .to_string();
        let mut reader = BufReader::new(response.into_body().into_reader());
        let (mut ttft, mut text, mut cached) = (None, String::new(), 0);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                if data != "[DONE]" {
                    let chunk: Value = serde_json::from_str(data).unwrap();
                    if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                        ttft.get_or_insert_with(|| started.elapsed());
                        text.push_str(piece);
                    }
                    if let Some(n) =
                        chunk["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64()
                    {
                        cached = n;
                    }
                }
            }
            line.clear();
        }
        Turn {
            neuron,
            ttft: ttft.unwrap_or_else(|| started.elapsed()),
            text,
            cached,
        }
    })
    .await
    .unwrap()
}

/// What a run of conversations showed.
#[derive(Debug)]
struct Run {
    /// Later turns, and those that went where the turn before went.
    later: usize,
    stayed: usize,
    /// Later turns' cached prompt tokens, and their times to first token.
    cached: Vec<u64>,
    ttft: Vec<Duration>,
    /// Conversations by the neuron their first turn went to.
    first: HashMap<String, usize>,
}

/// `TOPICS.len()` conversations of three turns, `clients` at a time;
/// `salt` makes the run's prompts its own.
async fn converse(base: &str, clients: usize, salt: &str) -> Run {
    let queue = Arc::new(Mutex::new((0..TOPICS.len()).collect::<Vec<_>>()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (queue, results, base, salt) = (
            queue.clone(),
            results.clone(),
            base.to_string(),
            salt.to_string(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let Some(topic) = queue.lock().await.pop() else {
                    return;
                };
                let mut messages = vec![
                    json!({"role": "system", "content": SYSTEM}),
                    json!({"role": "user", "content": format!("{salt}I am reading about {topic} for a school project and want to know what makes them special. Tell me one surprising fact about {topic}.", topic = TOPICS[topic])}),
                ];
                let mut turns = Vec::new();
                for follow_up in [None, Some(FOLLOW_UPS[0]), Some(FOLLOW_UPS[1])] {
                    if let Some(text) = follow_up {
                        messages.push(json!({"role": "user", "content": text}));
                    }
                    let turn = stream_turn(&base, &messages).await;
                    messages.push(json!({"role": "assistant", "content": turn.text}));
                    turns.push(turn);
                }
                results.lock().await.push(turns);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let conversations = std::mem::take(&mut *results.lock().await);
    let mut run = Run {
        later: 0,
        stayed: 0,
        cached: Vec::new(),
        ttft: Vec::new(),
        first: HashMap::new(),
    };
    for turns in &conversations {
        *run.first.entry(turns[0].neuron.clone()).or_default() += 1;
        for pair in turns.windows(2) {
            run.later += 1;
            run.stayed += usize::from(pair[1].neuron == pair[0].neuron);
            run.cached.push(pair[1].cached);
            run.ttft.push(pair[1].ttft);
        }
    }
    run
}

fn p50(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// 3 SmolLM2 neurons: 30 three-turn conversations, 6 at a time. With the
/// prefix view, each later turn goes to the neuron that served the turn
/// before (and so holds its KV) at least 90% of the time, and reads its
/// prompt from the cache. With `CORTEX_BENCH_ROUTING=1` the same run goes
/// through a pod that leaves the choice to the queue group too, and both
/// print what they cached and their TTFT (the README's figure).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conversations_stay_on_the_neuron_that_holds_their_prefix() {
    let server = NatsServer::start();
    let spec = format!("smollm2={}", smollm_path().display());
    let mut neurons = Vec::new();
    for id in ["a", "b", "c"] {
        neurons.push(real_neuron(&server, id, std::slice::from_ref(&spec)).await);
    }
    let routed = ingress(&server, &["smollm2"], |_| {}).await;
    let queued = ingress(&server, &["smollm2"], |c| c.routing = Routing::Queue).await;
    let base = format!("http://{}", routed.addr);
    eventually(
        "the pod sees three replicas",
        Duration::from_secs(10),
        || async { (routed.state().fleet.replicas("smollm2").len() == 3).then_some(()) },
    )
    .await;

    let share = |run: &Run| run.stayed as f64 / run.later as f64;
    let show = |what: &str, run: &Run| {
        let cached = run.cached.iter().sum::<u64>() as f64 / run.cached.len() as f64;
        println!(
            "{what}: {}/{} later turns stayed ({:.0}%), {cached:.0} cached prompt tokens on average, TTFT p50 {:?}; conversations begun per neuron {:?}",
            run.stayed, run.later, 100.0 * share(run), p50(run.ttft.clone()), run.first,
        );
    };
    let with = converse(&base, 6, "").await;
    show("prefix routing", &with);
    let queued_base = format!("http://{}", queued.addr);
    if std::env::var_os("CORTEX_BENCH_ROUTING").is_some() {
        show("queue group", &converse(&queued_base, 6, "Please: ").await);
    } else {
        let messages = [json!({"role": "user", "content": "Hello"})];
        for _ in 0..3 {
            stream_turn(&queued_base, &messages).await;
        }
    }
    assert_eq!(with.later, 60);
    // The shared system prompt does not pull every conversation to one
    // replica: each neuron begins at least a sixth of them.
    assert_eq!(with.first.len(), 3, "{with:?}");
    assert!(with.first.values().all(|n| *n >= 5), "{with:?}");
    assert!(share(&with) >= 0.9, "{with:?}");
    // A turn that stayed read at least the turn before's prompt from the cache.
    let stayed_cached = with.cached.iter().filter(|n| **n >= 20).count();
    assert!(stayed_cached >= with.stayed, "{with:?}");

    let (_, metrics) = get(&format!("{base}/metrics")).await;
    let prefix = counter(&metrics, "cortex_route_decisions_total{reason=\"prefix\"}");
    assert!(prefix >= 54, "{metrics}");
    assert!(metrics.contains("cortex_route_prefix_hit_blocks_bucket"));
    // The pod that leaves the choice to the queue group counts each as a fallback.
    let (_, metrics) = get(&format!("{queued_base}/metrics")).await;
    let fallback = counter(
        &metrics,
        "cortex_route_decisions_total{reason=\"fallback\"}",
    );
    assert!(fallback == 3 || fallback == 90, "{metrics}");
}

/// 3 equal sim neurons, 60 unrelated requests, 4 at a time: none gets
/// more than 40% of them; with no replica known the queue group serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_requests_spread_evenly() {
    let server = NatsServer::start();
    let mut neurons = Vec::new();
    for id in ["a", "b", "c"] {
        neurons.push(sim_neuron(&server, id, &["m"], |_| {}).await);
    }
    let pod = ingress(&server, &["m"], |_| {}).await;
    eventually(
        "the pod sees three replicas",
        Duration::from_secs(10),
        || async { (pod.state().fleet.replicas("m").len() == 3).then_some(()) },
    )
    .await;
    let url = format!("http://{}/v1/chat/completions", pod.addr);
    let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (url, counts) = (url.clone(), counts.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..15 {
                let text = format!("unrelated question {client}-{i}");
                let body = json!({"model": "m", "max_tokens": 4,
                    "messages": [{"role": "user", "content": text}]});
                let reply = post(&url, &body.to_string(), &[]).await;
                assert_eq!(reply.status, 200, "{}", reply.body);
                *counts
                    .lock()
                    .await
                    .entry(reply.header("cortex-neuron").unwrap().to_string())
                    .or_default() += 1;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let counts = counts.lock().await.clone();
    println!("requests per neuron: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 60);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n <= 24), "{counts:?}");
    let (_, metrics) = get(&format!("http://{}/metrics", pod.addr)).await;
    assert_eq!(
        counter(&metrics, "cortex_route_decisions_total{reason=\"load\"}"),
        60,
        "{metrics}"
    );
}
