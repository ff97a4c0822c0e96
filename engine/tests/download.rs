//! Hub sources: a file missing from the cache is fetched from the endpoint
//! (here a loopback server speaking the Hub's `resolve` API) into the cache
//! layout, then served from the cache; offline, nothing is fetched.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cortex_engine::source::{HubSettings, ModelSource};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `/org/name/resolve/main/model.gguf`; 404 otherwise. Counts requests.
fn hub_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
            }
            let response = if request_line.starts_with("GET /org/name/resolve/main/model.gguf ") {
                let body = "pretend weights";
                format!("HTTP/1.1 200 OK\r\nX-Repo-Commit: {COMMIT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (url, hits)
}

fn settings(cache: &std::path::Path, endpoint: &str, offline: bool) -> HubSettings {
    HubSettings {
        cache: cache.to_path_buf(),
        endpoint: endpoint.to_string(),
        offline,
        token: None,
    }
}

#[test]
fn downloads_into_the_cache_once() {
    let (url, hits) = hub_server();
    let cache = tempfile::tempdir().unwrap();
    let source = ModelSource::parse("hf:org/name:model.gguf").unwrap();

    let offline = source
        .resolve_with(&settings(cache.path(), &url, true))
        .unwrap_err()
        .to_string();
    assert!(
        offline.contains("model.gguf") && offline.contains("refs/main"),
        "{offline}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "offline touches no network");

    let path = source
        .resolve_with(&settings(cache.path(), &url, false))
        .unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "pretend weights");
    let expected = cache
        .path()
        .join(format!("models--org--name/snapshots/{COMMIT}/model.gguf"));
    assert_eq!(path, expected);
    let refs = std::fs::read_to_string(cache.path().join("models--org--name/refs/main")).unwrap();
    assert_eq!(refs, COMMIT);

    // Now cached: found offline, and no second request.
    assert_eq!(
        source
            .resolve_with(&settings(cache.path(), &url, true))
            .unwrap(),
        expected
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn a_missing_remote_file_or_endpoint_is_a_clear_error() {
    let (url, _) = hub_server();
    let cache = tempfile::tempdir().unwrap();
    let err = ModelSource::parse("hf:org/name:other.gguf")
        .unwrap()
        .resolve_with(&settings(cache.path(), &url, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other.gguf") && err.contains("HTTP 404"),
        "{err}"
    );
    assert!(
        !cache.path().join("models--org--name/snapshots").exists()
            || std::fs::read_dir(cache.path().join("models--org--name/snapshots"))
                .unwrap()
                .count()
                == 0
    );

    // Nothing listens on a port we just closed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = ModelSource::parse("hf:org/name:model.gguf")
        .unwrap()
        .resolve_with(&settings(cache.path(), &format!("http://{closed}"), false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("download failed"), "{err}");
}
