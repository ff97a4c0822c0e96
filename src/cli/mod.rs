//! Subcommands of the `cortex` binary: the whole mesh on one machine (`up`),
//! the daemons (`neuron`, `placement`, `ingress`), and the tools (`status`,
//! `load`, `unload`, `pin`, `unpin`, `models`, `events`, `bench`, `ping`).

mod bench;
mod events;
mod ingress;
mod models;
mod neuron;
mod ops;
mod ping;
mod placement;
mod signal;
mod up;

pub use neuron::parse_with_file;

use clap::{Parser, Subcommand};

/// Cortex: one OpenAI- and Anthropic-compatible API over a fleet of GPU hosts, on NATS.
#[derive(Debug, Parser)]
#[command(name = "cortex", version, about)]
pub struct Cli {
    /// More log output; RUST_LOG overrides. Daemons log `info` by
    /// default (-v debug, -vv trace); `up` and the operator tools only
    /// warnings and errors (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole mesh on this machine: nats-server, placement, a neuron, ingress.
    Up(Box<up::UpArgs>),
    /// The fleet: neurons, devices, models, slots, queues (from placement).
    Status(ops::StatusArgs),
    /// Load a model (on a neuron, or where placement chooses).
    Load(ops::ModelArgs),
    /// Unload a model (from one neuron, or everywhere).
    Unload(ops::ModelArgs),
    /// Keep a model loaded (on given neurons, or anywhere).
    Pin(ops::ModelArgs),
    /// Undo an operator pin.
    Unpin(ops::ModelArgs),
    /// Load generator for an OpenAI-compatible URL: TTFT, inter-token latency, tokens/s.
    Bench(bench::BenchArgs),
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

impl Command {
    /// The long-running daemons, whose logs are their output; the other
    /// commands print their answer and log only what went wrong.
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Self::Neuron(_) | Self::Placement(_) | Self::Ingress(_)
        )
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up::run(*args).await,
        Command::Status(args) => ops::status(args).await,
        Command::Load(args) => ops::verb(ops::Verb::Load, args).await,
        Command::Unload(args) => ops::verb(ops::Verb::Unload, args).await,
        Command::Pin(args) => ops::verb(ops::Verb::Pin, args).await,
        Command::Unpin(args) => ops::verb(ops::Verb::Unpin, args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Ping(args) => ping::run(args).await,
        Command::Events(args) => events::run(args).await,
        Command::Neuron(config) => neuron::run(*config).await,
        Command::Ingress(config) => ingress::run(*config).await,
        Command::Placement(config) => placement::run(*config).await,
        Command::Models(args) => models::run(args).await,
    }
}

/// Logs to stderr. Daemons: `info` by default, `-v` debug, `-vv` trace.
/// `quiet` commands (`up`, whose own progress lines say what happens, and
/// the operator tools): `warn`, then one level more per `-v`.
pub fn init_tracing(verbose: u8, quiet: bool) {
    const LEVELS: [&str; 4] = ["warn", "info", "debug", "trace"];
    let step = usize::from(verbose) + usize::from(!quiet);
    let default = LEVELS[step.min(LEVELS.len() - 1)];
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
