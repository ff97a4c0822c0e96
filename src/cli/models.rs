//! `cortex models`: the catalogue and model files.
//! - `push <path> [--name]`: a file or a Hugging Face folder into the
//!   `cortex-models` object store, for `source = "store:<name>"`;
//! - `reload`: a placement replica re-reads its `models.toml`;
//! - `list` (also plain `cortex models`): the catalogue and where each
//!   model is loaded (JSON).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cortex_bus::{buckets, control::call, NatsOptions, PlacementOp, Subjects};
use cortex_schemas::PlacementStatus;

#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    pub nats: NatsOptions,
    /// Subject prefix of the mesh.
    #[arg(long, env = "CORTEX_PREFIX", default_value = cortex_bus::subject::DEFAULT_PREFIX)]
    pub prefix: String,
    /// What to do; without one, `list`.
    #[command(subcommand)]
    pub action: Option<ModelsAction>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModelsAction {
    /// Upload a model file (or a folder of files) to the object store.
    Push {
        /// A GGUF file, or a folder with config.json, *.safetensors, tokenizer.json.
        path: PathBuf,
        /// Object name (default: the file or folder name); use it as `store:<name>`.
        #[arg(long)]
        name: Option<String>,
        /// Replicas of the object store if it has to be created.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Ask placement to re-read its models.toml and publish it.
    Reload,
    /// The catalogue and where each model is loaded, as JSON.
    List,
}

const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let subjects = Subjects::new(&args.prefix)?;
    let client = args.nats.connect("cortex-models").await?;
    match args.action.unwrap_or(ModelsAction::List) {
        ModelsAction::Push {
            path,
            name,
            replicas,
        } => {
            let name = match name {
                Some(name) => name,
                None => path
                    .file_name()
                    .context("the path has no file name; give --name")?
                    .to_string_lossy()
                    .into_owned(),
            };
            let js = async_nats::jetstream::new(client.clone());
            let store = cortex_bus::objects::open_or_create(&js, buckets::MODELS, replicas).await?;
            let pushed = cortex_bus::objects::push(&store, &path, &name).await?;
            for object in &pushed {
                println!(
                    "{}",
                    serde_json::json!({"name": object.name, "size": object.size, "digest": object.digest})
                );
            }
            eprintln!("use it as source = \"store:{name}\"");
        }
        ModelsAction::Reload => {
            let reply: serde_json::Value = call(
                &client,
                subjects.placement(PlacementOp::Reload),
                &serde_json::json!({}),
                CONTROL_TIMEOUT,
            )
            .await?;
            println!("{reply}");
        }
        ModelsAction::List => {
            let status: PlacementStatus = call(
                &client,
                subjects.placement(PlacementOp::Status),
                &serde_json::json!({}),
                CONTROL_TIMEOUT,
            )
            .await?;
            let models: Vec<_> = status
                .catalog
                .iter()
                .map(|profile| {
                    let loaded: Vec<_> = status
                        .assignments
                        .iter()
                        .filter(|a| a.model_id == profile.id)
                        .flat_map(|a| a.replicas.iter())
                        .collect();
                    serde_json::json!({"id": profile.id, "kind": profile.kind, "source": profile.source, "replicas": loaded})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&models)?);
        }
    }
    Ok(())
}
