//! The HTTP edge against hostile clients, over raw TCP: slowloris heads and
//! bodies are cut off, oversized heads get 431, the connection cap holds,
//! CORS is off, and API keys never reach logs or metrics.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cortex_ingress::{Ingress, IngressConfig};
use cortex_testkit::NatsServer;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn ingress_with(server: &NatsServer, tune: impl FnOnce(&mut IngressConfig)) -> Ingress {
    let mut config = IngressConfig::for_tests(&server.url());
    tune(&mut config);
    Ingress::start(config, connect(&server.url()).await)
        .await
        .expect("ingress starts")
}

/// Reads until the peer closes (or `limit` passes); what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// A connection that has had one keep-alive request answered, left open.
async fn served_and_kept(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(r#""ok"}"#) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("answered within 5 s")
            .unwrap();
        assert!(n > 0, "closed before the answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    stream
}

/// One raw request; the status line's code. It reads while it writes: a
/// server that refuses a head it has not read whole answers, then resets
/// the connection, and the answer must be read before the reset lands.
async fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    drop(writing.await);
    let answer = String::from_utf8_lossy(&got).into_owned();
    answer.split(' ').nth(1).unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let server = NatsServer::start();
    let ingress = ingress_with(&server, |c| {
        c.header_timeout = Duration::from_secs(1);
        c.body_timeout = Duration::from_secs(1);
    })
    .await;

    // A head dripped one byte every 200 ms never completes: closed near 1 s.
    let mut stream = TcpStream::connect(ingress.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let drip = async {
        for byte in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(8), drip)
        .await
        .unwrap();
    let cut = started.elapsed();
    assert!(cut < Duration::from_secs(4), "dripping went on for {cut:?}");

    // An idle connection is closed after the same time.
    let mut idle = TcpStream::connect(ingress.addr).await.unwrap();
    let started = Instant::now();
    assert!(read_until_closed(&mut idle, Duration::from_secs(5))
        .await
        .is_some());
    assert!(started.elapsed() < Duration::from_secs(3));

    // A body that stops halfway gets 408 in the dialect's error shape.
    let mut stream = TcpStream::connect(ingress.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("invalid_request_error"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_cors_is_off() {
    let server = NatsServer::start();
    let ingress = ingress_with(&server, |_| {}).await;
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 << 10)
    );
    assert_eq!(raw_status(ingress.addr, big.as_bytes()).await, "431");
    let mut many = String::from("GET /v1/models HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw_status(ingress.addr, many.as_bytes()).await, "431");
    // Within the limits all is well.
    let fine = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(ingress.addr, fine).await, "200");

    // No CORS: a browser's preflight and a cross-origin GET get no
    // Access-Control-Allow-Origin, so pages elsewhere cannot call the API.
    for request in [
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(ingress.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap_or_default()
            .to_lowercase();
        assert!(answer.starts_with("http/1.1 "), "{answer}");
        assert!(!answer.contains("access-control-allow"), "{answer}");
    }
    ingress.shutdown().await;
}

/// One request on its own connection; the whole answer, lower-cased.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .unwrap_or_default()
        .to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_opt_in_per_origin() {
    let server = NatsServer::start();
    let ingress = ingress_with(&server, |c| {
        c.cors_origins = vec!["https://chat.example.com".into()];
        c.api_keys = vec![cortex_ingress::config::ApiKey("secret".into())];
    })
    .await;
    // A preflight from the named origin is answered before authentication
    // (it carries no key), allowing the headers it asks for.
    let preflight = exchange(
        ingress.addr,
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nOrigin: https://chat.example.com\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(preflight.starts_with("http/1.1 204"), "{preflight}");
    assert!(
        preflight.contains("access-control-allow-origin: https://chat.example.com\r\n"),
        "{preflight}"
    );
    assert!(
        preflight.contains("access-control-allow-headers: authorization, content-type\r\n"),
        "{preflight}"
    );
    assert!(preflight.contains("access-control-allow-methods: get, post, options"));
    // Its calls are readable, refusals included, with Retry-After and the
    // request id exposed.
    for (key, status) in [("Bearer secret", "200"), ("Bearer wrong", "401")] {
        let answer = exchange(
            ingress.addr,
            &format!(
                "GET /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: https://chat.example.com\r\n\
                 Authorization: {key}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(
            answer.starts_with(&format!("http/1.1 {status}")),
            "{answer}"
        );
        assert!(
            answer.contains("access-control-allow-origin: https://chat.example.com\r\n"),
            "{answer}"
        );
        assert!(answer.contains("access-control-expose-headers: retry-after, x-request-id"));
        assert!(answer.contains("vary: origin"), "{answer}");
    }
    // Another origin gets no CORS header (its preflight goes on to the
    // router, which has no OPTIONS route: 405), and every answer varies on
    // the origin.
    for request in [
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nAuthorization: Bearer secret\r\nConnection: close\r\n\r\n",
    ] {
        let answer = exchange(ingress.addr, request).await;
        assert!(answer.starts_with("http/1.1 "), "{answer}");
        assert!(!answer.contains("access-control-allow"), "{answer}");
        assert!(answer.contains("vary: origin"), "{answer}");
    }
    let plain = exchange(
        ingress.addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(plain.contains("vary: origin"), "{plain}");
    ingress.shutdown().await;

    // `*` allows any origin, without credentials mode.
    let any = ingress_with(&server, |c| c.cors_origins = vec!["*".into()]).await;
    let answer = exchange(
        any.addr,
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: https://anywhere.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains("access-control-allow-origin: *\r\n"),
        "{answer}"
    );
    assert!(
        !answer.contains("access-control-allow-credentials"),
        "{answer}"
    );
    any.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds() {
    let server = NatsServer::start();
    let ingress = ingress_with(&server, |c| {
        c.max_connections = 2;
        c.header_timeout = Duration::from_secs(30);
    })
    .await;
    // Two connections that have been served, and so hold both slots.
    let first = served_and_kept(ingress.addr).await;
    let _second = served_and_kept(ingress.addr).await;
    // The third connection is accepted by the kernel but not served.
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut third = TcpStream::connect(ingress.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    assert!(
        read_until_closed(&mut third, Duration::from_millis(700))
            .await
            .is_none(),
        "served beyond the cap"
    );
    // Once one closes, it is served.
    drop(first);
    let answer = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection() {
    let server = NatsServer::start();
    let ingress = ingress_with(&server, |c| {
        c.max_connections = 1;
        c.write_timeout = Duration::from_secs(1);
        c.header_timeout = Duration::from_secs(60);
    })
    .await;
    // Pipelines requests for /metrics with a tiny receive window and never
    // reads: the ingress's writes stall.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut greedy = socket.connect(ingress.addr).await.unwrap();
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(50_000);
    let writing = tokio::spawn(async move {
        let _ = greedy.write_all(&request).await;
        greedy
    });
    // It holds the only connection slot, until its writes have stalled for
    // the write timeout; then the next client is served.
    let started = Instant::now();
    let mut next = TcpStream::connect(ingress.addr).await.unwrap();
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut next, Duration::from_secs(15))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let waited = started.elapsed();
    println!("the next client was served after {waited:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "the slot was free: {waited:?}"
    );
    drop(writing);
    ingress.shutdown().await;
}

#[test]
fn api_keys_never_reach_logs_or_metrics() {
    let server = NatsServer::start();
    let port = cortex_testkit::free_port();
    let key = "sk-cortex-very-secret-0123456789";
    let wrong = "sk-wrong-guess-9876543210";
    // Output to a file: a pipe read only at the end would fill and block it.
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("ingress.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cortex"))
        .args(["ingress", "--nats-url", &server.url()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("CORTEX_API_KEYS", key)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.get(&format!("{base}/healthz")).call().is_err() {
        assert!(Instant::now() < deadline, "ingress did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (header, value) in [
        ("authorization", format!("Bearer {key}")),
        ("authorization", format!("Bearer {wrong}")),
        ("x-api-key", key.to_string()),
        ("x-api-key", wrong.to_string()),
    ] {
        let status = agent
            .get(&format!("{base}/v1/models"))
            .header(header, &value)
            .call()
            .unwrap()
            .status()
            .as_u16();
        let expected = if value.contains(key) { 200 } else { 401 };
        assert_eq!(status, expected, "{header}");
    }
    let metrics = agent
        .get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    // The requests were logged (with their status), just not their keys.
    let logged = logs
        .lines()
        .filter(|l| l.contains("/v1/models") && (l.contains("401") || l.contains("200")))
        .count();
    assert!(logged >= 4, "the requests were not logged: {logs}");
    for secret in [key, wrong] {
        assert!(!logs.contains(secret), "a key reached the logs");
        assert!(!metrics.contains(secret), "a key reached the metrics");
    }
}
