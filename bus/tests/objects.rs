//! The `cortex-models` object store against a real nats-server: a file and
//! a folder pushed and fetched, a cached copy reused while its digest
//! matches and fetched again when it does not.

use std::time::Duration;

use cortex_bus::objects::{fetch, open_or_create, push, ObjectError};
use cortex_bus::NatsOptions;
use cortex_testkit::NatsServer;

#[tokio::test]
async fn files_and_folders_round_trip_through_the_store() {
    let server = NatsServer::start();
    let mut options = NatsOptions::new([server.url()]);
    options.connect_timeout = Duration::from_secs(10);
    let client = options.connect("test").await.unwrap();
    let js = async_nats::jetstream::new(client);
    let store = open_or_create(&js, "cortex-models", 1).await.unwrap();
    let src = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();

    // A file bigger than one chunk.
    let weights: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = src.path().join("tiny.gguf");
    std::fs::write(&file, &weights).unwrap();
    let pushed = push(&store, &file, "tiny.gguf").await.unwrap();
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].size, weights.len() as u64);
    assert!(pushed[0].digest.starts_with("SHA-256="));
    let path = fetch(&store, "tiny.gguf", cache.path()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), weights);

    // A cached copy that no longer matches its digest is fetched again.
    std::fs::write(&path, b"corrupted").unwrap();
    std::fs::write(cache.path().join("tiny.gguf.digest"), "SHA-256=stale").unwrap();
    let path = fetch(&store, "tiny.gguf", cache.path()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), weights);
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    // A current copy is left alone.
    fetch(&store, "tiny.gguf", cache.path()).await.unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        modified
    );

    // A folder in Hugging Face layout.
    let folder = src.path().join("minilm");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("config.json"), b"{}").unwrap();
    std::fs::write(folder.join("model.safetensors"), &weights[..1000]).unwrap();
    let pushed = push(&store, &folder, "minilm").await.unwrap();
    let names: Vec<_> = pushed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["minilm/config.json", "minilm/model.safetensors"]
    );
    let dir = fetch(&store, "minilm", cache.path()).await.unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        &weights[..1000]
    );
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), b"{}");

    // Unknown names and unsafe names are refused clearly.
    assert!(matches!(
        fetch(&store, "nothing", cache.path()).await,
        Err(ObjectError::NotFound { .. })
    ));
    assert!(matches!(
        fetch(&store, "../etc", cache.path()).await,
        Err(ObjectError::BadName(_))
    ));
}
