//! # Cortex test support
//!
//! Real parts for tests, never mocks: a `nats-server` with JetStream on a free
//! loopback port and a temporary store, killed on drop; a 3-node cluster; and
//! helpers to poll for a condition with a deadline instead of sleeping.
//!
//! ## Layout
//! - [`binary`]: finds the `nats-server` executable (`NATS_SERVER_BIN`, `PATH`,
//!   or the setup script's cache).
//! - [`server`]: [`NatsServer`], one server process; `restart()` keeps port and store.
//! - [`command`]: [`json_output`], a command that must succeed and print JSON.
//! - [`cluster`]: [`NatsCluster`], several routed servers with clustered JetStream.
//! - [`wait`]: [`eventually`] and [`until`], polling with a deadline.
//! - [`http`]: a plain HTTP client (any status is an answer), SSE parsing,
//!   and clients that hang up or give up.
//! - [`models`]: paths of the real models the setup script installs.
//! - [`fuzz`]: committed seed corpora and proptest mutation strategies.
//! - [`partition`]: [`PartitionProxy`], a loopback TCP relay that can cut
//!   the link it carries (a partition: silence, no close) and heal it.

pub mod binary;
pub mod cluster;
pub mod command;
pub mod fuzz;
pub mod http;
pub mod models;
pub mod partition;
mod ports;
mod process;
pub mod server;
pub mod wait;

pub use cluster::NatsCluster;
pub use command::json_output;
pub use partition::PartitionProxy;
pub use ports::free_port;
pub use server::{NatsServer, ServerOptions};
pub use wait::{eventually, until};
