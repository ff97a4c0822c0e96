//! Several routed `nats-server`s with clustered JetStream.

use tempfile::TempDir;

use crate::ports::free_ports;
use crate::process::{ProcessConfig, ServerProcess};

/// A cluster of `n` servers on loopback (3 for a JetStream quorum), each
/// with its own store; nodes can be killed and restarted one at a time.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<ServerProcess>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until every one is healthy (JetStream meta
    /// leader elected).
    pub fn start(n: usize) -> Self {
        assert!(n >= 1, "a cluster needs at least one node");
        let dir = tempfile::Builder::new()
            .prefix("cortex-nats-cluster-")
            .tempdir()
            .expect("temporary directory");
        let ports = free_ports(3 * n);
        let cluster_ports: Vec<u16> = (0..n).map(|i| ports[3 * i + 2]).collect();
        let mut nodes: Vec<ServerProcess> = (0..n)
            .map(|i| {
                let routes = cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| *p)
                    .collect();
                ServerProcess::create(ProcessConfig {
                    name: format!("n{i}"),
                    dir: dir.path(),
                    port: ports[3 * i],
                    http_port: ports[3 * i + 1],
                    jetstream: true,
                    max_payload: None,
                    cluster: Some((cluster_ports[i], routes)),
                    extra_config: "",
                })
            })
            .collect();
        for node in &mut nodes {
            node.wait_healthy();
        }
        Self { nodes, _dir: dir }
    }

    /// Client URLs of every node, for a connection that fails over.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again (same ports and store) and waits until healthy.
    pub fn start_again(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.nodes[i].wait_healthy();
    }
}
