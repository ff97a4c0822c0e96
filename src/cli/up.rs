//! `cortex up`: the whole mesh on this machine, in the foreground. A
//! nats-server with JetStream (a child process, unless `--nats-url` names
//! one), a placement replica, one neuron and an ingress, in this process.
//! The default catalogue is SmolLM2-135M-Instruct (chat; greedy unless a
//! request asks for a temperature, since a 135M model sampled at 0.7 makes
//! a poor first answer) and all-MiniLM-L6-v2 (embeddings) from the setup
//! script's cache, both kept loaded; `--engine sim` runs a GPU-free demo fleet instead. Shows load
//! progress, prints a ready line with the URL, and on Ctrl-C stops every
//! part in order: ingress, neuron, placement, nats-server.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cortex_bus::NatsOptions;
use cortex_ingress::{Ingress, IngressConfig};
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_placement::{Placement, PlacementConfig};
use cortex_schemas::ModelState;

use super::signal;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// HTTP address of the API.
    #[arg(long, env = "CORTEX_LISTEN", default_value = "127.0.0.1:31313")]
    pub listen: SocketAddr,
    /// Use this NATS server (with JetStream) instead of starting one. Not
    /// read from the environment: `cortex up` must not join another mesh by
    /// accident (its catalogue would replace that mesh's).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// The catalogue (`models.toml`); default: SmolLM2 and MiniLM from `--models-dir`.
    #[arg(long, env = "CORTEX_MODELS")]
    pub models: Option<PathBuf>,
    /// Where the setup script put the model files.
    #[arg(long, env = "CORTEX_MODELS_DIR", default_value = ".cache/models")]
    pub models_dir: PathBuf,
    /// `sim` runs simulated models (no files, no maths) for a fleet demo.
    #[arg(long, value_enum, default_value = "candle")]
    pub engine: EngineKind,
    /// Port of the nats-server `cortex up` starts (0: any free port).
    #[arg(long, env = "CORTEX_UP_NATS_PORT", default_value_t = 4222)]
    pub nats_port: u16,
    /// Longest wait for the models to load before giving up.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub load_timeout: Duration,
}

/// A child nats-server, killed when dropped.
struct NatsChild {
    child: tokio::process::Child,
    url: String,
    _store: tempfile::TempDir,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Signals are caught from the start: a Ctrl-C during startup still
    // stops the nats-server child (it has its own process group).
    let mut signals = signal::Signals::listen();
    let started = Instant::now();
    let (nats, url) = match &args.nats_url {
        Some(url) => (None, url.clone()),
        None => {
            let child = start_nats(args.nats_port).await?;
            let url = child.url.clone();
            (Some(child), url)
        }
    };
    status_line(&format!("nats     {url}"));
    println!("nats {url}");
    let mesh = tokio::select! {
        mesh = start_mesh(&args, &url) => mesh,
        () = signals.next() => {
            stop_nats(nats).await;
            return Ok(());
        }
    };
    let (placement, neuron, ingress, wanted, _work) = match mesh {
        Ok(mesh) => mesh,
        Err(error) => {
            stop_nats(nats).await;
            return Err(error);
        }
    };
    let loaded = tokio::select! {
        loaded = show_progress(&neuron, &wanted, args.load_timeout) => loaded,
        () = signals.next() => {
            signals.arm();
            stop(ingress, neuron, placement, nats).await;
            return Ok(());
        }
    };
    if let Err(error) = loaded {
        stop(ingress, neuron, placement, nats).await;
        return Err(error);
    }
    let base = format!("http://{}", ingress.addr);
    eprintln!(
        "\ncortex is up in {:.1?}: {base}  (models: {})\n  curl {base}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"What is the capital of France?\"}}]}}'\n  fleet console: {base}/ui\nCtrl-C stops everything.",
        started.elapsed(),
        wanted.join(", "),
        wanted.first().map_or("smollm2", String::as_str),
    );
    println!("ready {base}");
    signals.shutdown().await;
    stop(ingress, neuron, placement, nats).await;
    Ok(())
}

type Mesh = (Placement, Neuron, Ingress, Vec<String>, tempfile::TempDir);

/// Placement, the neuron and the ingress, in this process.
async fn start_mesh(args: &UpArgs, url: &str) -> anyhow::Result<Mesh> {
    let work = tempfile::tempdir().context("a temporary folder for the catalogue")?;
    let catalog = match &args.models {
        Some(path) => path.clone(),
        None => default_catalog(work.path(), &args.models_dir, args.engine)?,
    };
    let client = |name: &'static str| {
        let url = url.to_string();
        async move {
            let mut options = NatsOptions::new([url]);
            options.connect_timeout = Duration::from_secs(10);
            options.connect(name).await
        }
    };
    // Each daemon is configured from flags, as `cortex <daemon>` would be
    // (environment variables included); `up` only names what it decides.
    let catalog_arg = catalog.display().to_string();
    let config = PlacementConfig::from_args([
        "--nats-url",
        url,
        "--id",
        "placement-local",
        "--models",
        &catalog_arg,
        "--reconcile-interval",
        "500ms",
        "--metrics-listen",
        "off",
    ])?;
    let placement = Placement::start(config, client("cortex-placement").await?).await?;
    status_line("placement ready (the catalogue is in KV bucket cortex-catalog)");

    // Joining a server that may hold another `cortex up`: an id of its own.
    let id = match args.nats_url {
        Some(_) => format!("local-{}", std::process::id()),
        None => "local".to_string(),
    };
    let config = NeuronConfig::from_args([
        "--nats-url",
        url,
        "--id",
        &id,
        "--engine",
        args.engine.as_str(),
        "--heartbeat-interval",
        "500ms",
        "--metrics-listen",
        "off",
    ])?;
    let neuron = Neuron::start(config, client("cortex-neuron").await?).await?;
    status_line(&format!(
        "neuron   {id} ({} engine, {})",
        args.engine.as_str(),
        devices(&neuron)
    ));

    let listen = args.listen.to_string();
    let config = IngressConfig::from_args(["--nats-url", url, "--listen", &listen])?;
    let ingress = Ingress::start(config, client("cortex-ingress").await?).await?;

    let wanted: Vec<String> = cortex_placement::catalog::file::read(&catalog)?
        .into_iter()
        .filter(|p| p.min_replicas > 0 || p.pinned.is_pinned())
        .map(|p| p.id)
        .collect();
    Ok((placement, neuron, ingress, wanted, work))
}

async fn stop_nats(nats: Option<NatsChild>) {
    if let Some(mut nats) = nats {
        status_line("stopping: nats-server");
        let _ = nats.child.kill().await;
    }
}

async fn stop(ingress: Ingress, neuron: Neuron, placement: Placement, nats: Option<NatsChild>) {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    status_line("stopping: ingress");
    ingress.shutdown().await;
    status_line("stopping: neuron (finishing requests in flight)");
    neuron.shutdown().await;
    status_line("stopping: placement");
    placement.shutdown().await;
    stop_nats(nats).await;
    status_line("stopped");
}

fn status_line(text: &str) {
    eprintln!("cortex up: {text}");
}

fn devices(neuron: &Neuron) -> String {
    neuron
        .status()
        .devices
        .iter()
        .map(|d| format!("{} {} GiB", d.name, d.memory_total_bytes >> 30))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Shows each wanted model's state until all are ready.
async fn show_progress(
    neuron: &Neuron,
    wanted: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let status = neuron.status();
        let mut parts = Vec::new();
        let mut ready = 0;
        for id in wanted {
            let model = status.models.iter().find(|m| &m.model_id == id);
            let part = match model {
                Some(m) if m.state == ModelState::Ready => {
                    ready += 1;
                    format!("{id} ready")
                }
                Some(m) if m.state == ModelState::Failed => {
                    bail!(
                        "{id} failed to load: {}",
                        m.error.clone().unwrap_or_default()
                    )
                }
                Some(m) => format!("{id} {:.0}%", m.load_progress.unwrap_or(0.0) * 100.0),
                None => format!("{id} waiting"),
            };
            parts.push(part);
        }
        let line = format!("loading  {}", parts.join(" | "));
        if line != last {
            if tty {
                eprint!("\r\x1b[2Kcortex up: {line}");
                let _ = std::io::stderr().flush();
            } else {
                status_line(&line);
            }
            last = line;
        }
        if ready == wanted.len() {
            if tty {
                eprintln!();
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("models not ready after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts nats-server with JetStream on loopback and waits until it answers.
async fn start_nats(port: u16) -> anyhow::Result<NatsChild> {
    let binary = nats_server_binary().context(
        "nats-server not found: set NATS_SERVER_BIN, put it on PATH, run scripts/setup.sh \
         (it installs one into .cache/bin), or pass --nats-url",
    )?;
    let port = if port == 0 {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("port {port} is taken (another nats-server?): pass --nats-url nats://127.0.0.1:{port} to use it, or --nats-port 0");
        }
        port
    };
    let store = tempfile::tempdir().context("a folder for the JetStream store")?;
    let log = store.path().join("nats-server.log");
    let mut child = server_command(&binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store.path())
        .arg("-l")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: Ctrl-C in the terminal reaches `cortex up`
        // only, which stops the server last, after the others said goodbye.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    if let Some(pid) = child.id() {
        signal::kill_on_exit(pid);
    }
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let tail = |log: &Path| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    };
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "nats-server exited ({status}) before listening:\n{}",
                tail(&log)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "nats-server did not listen on {port} within 15 s:\n{}",
                tail(&log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(NatsChild {
        child,
        url,
        _store: store,
    })
}

fn nats_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    on_path("nats-server")
        .or_else(|| Some(PathBuf::from(".cache/bin/nats-server")).filter(|p| p.is_file()))
}

fn knows_pdeathsig(setpriv: &Path) -> bool {
    std::process::Command::new(setpriv)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--pdeathsig"))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The command that starts `binary`. On Linux, through util-linux's
/// `setpriv --pdeathsig` when there is one that knows it (2.33 and later):
/// the kernel then stops the server should `cortex up` die without its
/// cleanup (kill -9, the OOM killer), so no orphan keeps the port. The
/// signal follows the thread that spawned the child; this runs on the main
/// thread, which lives as long as the process. setpriv execs the server, so
/// the child's pid is the server's.
fn server_command(binary: &Path) -> tokio::process::Command {
    if cfg!(target_os = "linux") {
        if let Some(setpriv) = on_path("setpriv").filter(|s| knows_pdeathsig(s)) {
            let mut command = tokio::process::Command::new(setpriv);
            command.args(["--pdeathsig", "TERM", "--"]).arg(binary);
            return command;
        }
    }
    tokio::process::Command::new(binary)
}

/// The default catalogue, written to `dir/models.toml`.
fn default_catalog(dir: &Path, models_dir: &Path, engine: EngineKind) -> anyhow::Result<PathBuf> {
    let text = match engine {
        EngineKind::Sim => {
            "[[model]]\nid = \"sim-chat\"\nsource = \"sim\"\nvram_mb = 512\nmin_replicas = 1\n\n\
                            [[model]]\nid = \"sim-large\"\nsource = \"sim\"\nvram_mb = 2048\n"
                .to_string()
        }
        EngineKind::Candle => {
            let smollm = models_dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
            let minilm = models_dir.join("all-minilm-l6-v2");
            for path in [&smollm, &minilm] {
                if !path.exists() {
                    bail!(
                        "{} is missing: run scripts/setup.sh (make up does), or pass --models",
                        path.display()
                    );
                }
            }
            let abs = |p: &Path| std::fs::canonicalize(p).map(|p| p.display().to_string());
            format!(
                "[[model]]\nid = \"smollm2\"\naliases = [\"smollm2-135m\"]\nsource = {:?}\ncontext_length = 2048\nmin_replicas = 1\n\
                 [model.sampling]\ntemperature = 0.0\n\n\
                 [[model]]\nid = \"minilm\"\naliases = [\"all-minilm-l6-v2\"]\nkind = \"embedding\"\nsource = {:?}\nmin_replicas = 1\n",
                abs(&smollm)?,
                abs(&minilm)?
            )
        }
    };
    let path = dir.join("models.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}
