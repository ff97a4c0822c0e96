//! The operator's commands over NATS, talking to any placement replica:
//! `cortex status` (fleet, devices with memory bars, models with state,
//! slots, queue and tokens/s; `--watch`, `--json`) and `cortex load |
//! unload | pin | unpin <model> [--neuron]`.

use std::time::Duration;

use cortex_bus::control::call;
use cortex_bus::{NatsOptions, PlacementOp, Subjects};
use cortex_schemas::{
    Assignment, ModelState, NeuronStatus, PinRequest, PlaceRequest, PlacementStatus, UnpinRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// NATS and prefix, shared by the operator commands.
#[derive(Debug, clap::Args)]
pub struct Target {
    #[command(flatten)]
    pub nats: NatsOptions,
    /// Subject prefix of the mesh.
    #[arg(long, env = "CORTEX_PREFIX", default_value = cortex_bus::subject::DEFAULT_PREFIX)]
    pub prefix: String,
    /// How long to wait for placement's answer (loads can take minutes).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print placement's status as JSON.
    #[arg(long)]
    pub json: bool,
    /// Redraw every 2 seconds.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub target: Target,
    /// Model id or alias.
    pub model: String,
    /// One neuron (load: where; unload: from where; pin: may repeat).
    #[arg(long)]
    pub neuron: Vec<String>,
}

/// Which verb a [`ModelArgs`] command is.
#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Load,
    Unload,
    Pin,
    Unpin,
}

async fn ask<Req: Serialize, Rep: DeserializeOwned>(
    target: &Target,
    op: PlacementOp,
    request: &Req,
) -> anyhow::Result<Rep> {
    let subjects = Subjects::new(&target.prefix)?;
    let client = target.nats.connect("cortex-cli").await?;
    Ok(call(&client, subjects.placement(op), request, target.timeout).await?)
}

pub async fn verb(verb: Verb, args: ModelArgs) -> anyhow::Result<()> {
    match verb {
        Verb::Load | Verb::Unload if args.neuron.len() > 1 => {
            anyhow::bail!("give at most one --neuron")
        }
        Verb::Unpin if !args.neuron.is_empty() => {
            anyhow::bail!("unpin takes no --neuron: it removes the operator's pin")
        }
        _ => {}
    }
    let neuron = args.neuron.first().cloned();
    let place = PlaceRequest {
        model: args.model.clone(),
        neuron,
    };
    let assignment: Assignment = match verb {
        Verb::Load => ask(&args.target, PlacementOp::Load, &place).await?,
        Verb::Unload => ask(&args.target, PlacementOp::Unload, &place).await?,
        Verb::Pin => {
            let pin = PinRequest {
                model: args.model.clone(),
                neurons: args.neuron.clone(),
            };
            ask(&args.target, PlacementOp::Pin, &pin).await?
        }
        Verb::Unpin => {
            let unpin = UnpinRequest {
                model: args.model.clone(),
            };
            ask(&args.target, PlacementOp::Unpin, &unpin).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&assignment)?);
    Ok(())
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    loop {
        let status: PlacementStatus =
            ask(&args.target, PlacementOp::Status, &serde_json::json!({})).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&status));
        }
        if !args.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The human view of a status.
pub fn render(status: &PlacementStatus) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "placement {} (leader: {}) · {} neurons · {} models in the catalogue\n",
        status.replica,
        status.leader.as_deref().unwrap_or("none"),
        status.neurons.len(),
        status.catalog.len()
    ));
    for neuron in &status.neurons {
        out.push_str(&render_neuron(neuron));
    }
    let loaded: Vec<&str> = status
        .neurons
        .iter()
        .flat_map(|n| n.models.iter().map(|m| m.model_id.as_str()))
        .collect();
    let idle: Vec<&str> = status
        .catalog
        .iter()
        .map(|p| p.id.as_str())
        .filter(|id| !loaded.contains(id))
        .collect();
    if !idle.is_empty() {
        out.push_str(&format!(
            "not loaded (loaded on first request): {}\n",
            idle.join(", ")
        ));
    }
    out
}

fn render_neuron(neuron: &NeuronStatus) -> String {
    let mut out = format!(
        "\n{}  {:?}  engine {}  v{}\n",
        neuron.neuron_id, neuron.state, neuron.engine, neuron.version
    );
    for d in &neuron.devices {
        let used = d.memory_total_bytes.saturating_sub(d.memory_free_bytes);
        out.push_str(&format!(
            "  {:?}:{} {:<24} {} {} / {}\n",
            d.kind,
            d.index,
            d.name,
            bar(used, d.memory_total_bytes),
            gib(used),
            gib(d.memory_total_bytes)
        ));
    }
    for m in &neuron.models {
        let state = match (m.state, m.load_progress) {
            (ModelState::Loading, Some(p)) => format!("loading {:.0}%", p * 100.0),
            (state, _) => format!("{state:?}").to_lowercase(),
        };
        out.push_str(&format!(
            "  · {:<28} {:<12} dev {} · {} · slots {}/{} · queue {} · {:.1} tok/s\n",
            m.model_id,
            state,
            m.device,
            gib(m.memory_bytes),
            m.slots_busy,
            m.slots_total,
            m.queue_depth,
            m.tokens_per_second
        ));
    }
    out
}

fn bar(used: u64, total: u64) -> String {
    const WIDTH: usize = 20;
    let filled = if total == 0 {
        0
    } else {
        ((used as f64 / total as f64) * WIDTH as f64).round() as usize
    }
    .min(WIDTH);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
