//! The harness itself: a real server that answers, restarts in place, and dies on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::Duration;

use cortex_testkit::{NatsServer, ServerOptions};

/// The first protocol line a NATS server sends: `INFO {...}`.
fn info_line(port: u16) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("server accepts connections");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

#[test]
fn a_server_starts_with_jetstream_and_restarts_on_the_same_port_and_store() {
    let mut server = NatsServer::with_options(ServerOptions {
        max_payload: Some(65536),
        ..ServerOptions::default()
    });
    let port = server.port();
    let info = info_line(port);
    assert!(info.starts_with("INFO "), "{info}");
    assert!(info.contains("\"jetstream\":true"), "{info}");
    assert!(info.contains("\"max_payload\":65536"), "{info}");
    assert!(server.url().starts_with("nats://127.0.0.1:"));

    let store = server.dir().join("cortex-test-store");
    assert!(
        store.exists(),
        "JetStream store lives in the temporary folder"
    );
    server.restart();
    assert_eq!(server.port(), port);
    assert!(info_line(port).contains("\"jetstream\":true"));
    assert!(store.exists());

    server.kill();
    assert!(!server.is_running());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "killed means gone"
    );
    server.start_again();
    assert!(server.is_running());
}

#[test]
fn dropping_the_server_kills_it_and_removes_its_folder() {
    let server = NatsServer::start();
    let (port, dir) = (server.port(), server.dir().to_path_buf());
    drop(server);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!dir.exists());
}
