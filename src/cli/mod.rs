//! Subcommands of the `cortex` binary: the daemons (`neuron`, `placement`,
//! `ingress`; `up` joins with its issue) and the tools (`models`, `events`, `ping`).

mod events;
mod ingress;
mod models;
mod neuron;
mod ping;
mod placement;
mod signal;

pub use neuron::parse_with_file;

use clap::{Parser, Subcommand};

/// Cortex: one OpenAI- and Anthropic-compatible API over a fleet of GPU hosts, on NATS.
#[derive(Debug, Parser)]
#[command(name = "cortex", version, about)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to NATS and report the server, its limits and JetStream.
    Ping(ping::PingArgs),
    /// Follow lifecycle events (`<prefix>.v1.events.>`) as JSON lines.
    Events(events::EventsArgs),
    /// Run a neuron: discover devices, load models, serve them on NATS.
    Neuron(Box<cortex_neuron::NeuronConfig>),
    /// Run a placement replica: catalogue, cold loads, eviction, replicas.
    Placement(Box<cortex_placement::PlacementConfig>),
    /// The catalogue and model files: push to the object store, reload, list.
    Models(models::ModelsArgs),
    /// Run an ingress pod: the OpenAI- and Anthropic-compatible HTTP API.
    Ingress(Box<cortex_ingress::IngressConfig>),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ping(args) => ping::run(args).await,
        Command::Events(args) => events::run(args).await,
        Command::Neuron(config) => neuron::run(*config).await,
        Command::Ingress(config) => ingress::run(*config).await,
        Command::Placement(config) => placement::run(*config).await,
        Command::Models(args) => models::run(args).await,
    }
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
