//! A single `nats-server` with JetStream on a free loopback port.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::ports::free_ports;
use crate::process::{ProcessConfig, ServerProcess};

/// Knobs for a test server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Enable JetStream (KV, object store). On by default.
    pub jetstream: bool,
    /// Override the server's `max_payload` (default 1 MiB).
    pub max_payload: Option<u32>,
    /// Extra config text appended verbatim (accounts, TLS, authorization...).
    pub extra_config: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            jetstream: true,
            max_payload: None,
            extra_config: String::new(),
        }
    }
}

/// A running `nats-server`, killed when dropped. `restart()` keeps its port
/// and JetStream store, so clients reconnect to the same URL and find their
/// buckets again.
#[derive(Debug)]
pub struct NatsServer {
    process: ServerProcess,
    // Dropped after `process` (fields drop in order), so the store outlives the server.
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream and waits until it is healthy.
    pub fn start() -> Self {
        Self::with_options(ServerOptions::default())
    }

    /// Starts a server with `options` and waits until it is healthy.
    pub fn with_options(options: ServerOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cortex-nats-")
            .tempdir()
            .expect("temporary directory");
        let ports = free_ports(2);
        let mut process = ServerProcess::create(ProcessConfig {
            name: "cortex-test".into(),
            dir: dir.path(),
            port: ports[0],
            http_port: ports[1],
            jetstream: options.jetstream,
            max_payload: options.max_payload,
            cluster: None,
            extra_config: &options.extra_config,
        });
        process.wait_healthy();
        Self { process, dir }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.process.port)
    }

    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// The temporary folder holding the config, log and JetStream store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.process.name))
    }

    /// Kills the server (SIGKILL) and starts it again on the same port with
    /// the same store; returns once it is healthy.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process.spawn();
        self.process.wait_healthy();
    }

    /// Kills the server (SIGKILL) and leaves it down until [`Self::start_again`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts a killed server again; returns once it is healthy.
    pub fn start_again(&mut self) {
        self.process.spawn();
        self.process.wait_healthy();
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}
