//! One `nats-server` process: its config file, spawn, health wait and kill.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary::nats_server_bin;

/// How long a server may take to report healthy (JetStream included).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A server's config on disk plus its (maybe running) process.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    pub(crate) name: String,
    pub(crate) port: u16,
    http_port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

/// What goes into one server's config file.
pub(crate) struct ProcessConfig<'a> {
    pub(crate) name: String,
    pub(crate) dir: &'a Path,
    pub(crate) port: u16,
    pub(crate) http_port: u16,
    pub(crate) jetstream: bool,
    pub(crate) max_payload: Option<u32>,
    /// `(cluster port, route ports)` when clustered.
    pub(crate) cluster: Option<(u16, Vec<u16>)>,
    pub(crate) extra_config: &'a str,
}

impl ServerProcess {
    /// Writes the config (store and log under `dir`) and starts the server.
    pub(crate) fn create(config: ProcessConfig<'_>) -> Self {
        let store = config.dir.join(format!("{}-store", config.name));
        let log_path = config.dir.join(format!("{}.log", config.name));
        let mut text = format!(
            "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{http}\"\n\
             log_file: \"{log}\"\n",
            name = config.name,
            port = config.port,
            http = config.http_port,
            log = log_path.display(),
        );
        if let Some(max_payload) = config.max_payload {
            text.push_str(&format!("max_payload: {max_payload}\n"));
        }
        if config.jetstream {
            text.push_str(&format!(
                "jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n",
                store.display()
            ));
        }
        if let Some((cluster_port, routes)) = &config.cluster {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  name: \"cortex-test\"\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        text.push_str(config.extra_config);
        let config_path = config.dir.join(format!("{}.conf", config.name));
        std::fs::write(&config_path, text).expect("write nats-server config");
        let mut process = Self {
            name: config.name,
            port: config.port,
            http_port: config.http_port,
            config_path,
            log_path,
            child: None,
        };
        process.spawn();
        process
    }

    /// Starts the process if it is not running (does not wait for health).
    pub(crate) fn spawn(&mut self) {
        if self.child.is_some() {
            return;
        }
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
    }

    /// Waits until `/healthz` answers 200 (JetStream ready), panicking with
    /// the log's tail when the process dies or the deadline passes.
    pub(crate) fn wait_healthy(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "nats-server {} exited with {status} at start:\n{}",
                        self.name,
                        self.log_tail(40)
                    );
                }
            }
            if healthz(self.http_port) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "nats-server {} not healthy after {READY_TIMEOUT:?}:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL and reap: the harshest way a server can go.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- nats-server {} log tail ---\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        self.kill();
    }
}

/// One HTTP/1.0 GET of the monitoring endpoint; true on status 200.
fn healthz(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}
