//! The neuron's configuration: clap flags, each with an environment
//! variable, optionally filled from a TOML file ([`crate::config_file`]),
//! and validated as a whole before anything connects or binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cortex_bus::subject::{validate_token, DEFAULT_PREFIX};
use cortex_bus::{ModelToken, NatsOptions, Subjects};
use cortex_engine::DeviceSpec;
use cortex_schemas::ModelProfile;

use crate::size::{parse_bytes, MemorySize};

/// Which engine runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// Real inference on candle (GGUF and safetensors).
    Candle,
    /// The simulated engine: no maths, configured latency; for fleet tests.
    Sim,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::Sim => "sim",
        }
    }
}

/// `cortex neuron`: one daemon per GPU host.
#[derive(Debug, Clone, clap::Args)]
pub struct NeuronConfig {
    #[command(flatten)]
    pub nats: NatsOptions,
    /// Subject prefix of the mesh.
    #[arg(long, env = "CORTEX_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Neuron id, the `<neuron>` token of its subjects (default: the host name).
    #[arg(long = "id", env = "CORTEX_NEURON_ID")]
    pub id: Option<String>,
    /// TOML file with any of these settings (keys are the long flag names)
    /// and `[[model]]` tables to load at start. Flags and environment win.
    #[arg(long = "config", env = "CORTEX_NEURON_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// Engine that runs the models.
    #[arg(long, env = "CORTEX_ENGINE", value_enum, default_value = "candle")]
    pub engine: EngineKind,
    /// Models to load at start, comma-separated: `ID=SOURCE` or a bare
    /// SOURCE (a local path or `hf:org/name[@rev]:file`; the id is then the
    /// file name without extension).
    #[arg(long, env = "CORTEX_NEURON_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Devices to use: `auto` (every GPU NVML finds, else the CPU), `cpu`,
    /// or a list like `cuda:0,cuda:1`.
    #[arg(long, env = "CORTEX_DEVICES", default_value = "auto")]
    pub devices: String,
    /// Memory the CPU device may use for models: a size (`12GiB`) or a share of RAM (`75%`).
    #[arg(long, env = "CORTEX_MEMORY_BUDGET", default_value = "75%")]
    pub memory_budget: MemorySize,
    /// Heartbeat period; a neuron silent for 3 periods is considered lost.
    #[arg(long, env = "CORTEX_HEARTBEAT_INTERVAL", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Concurrent sequences per model when its profile does not say.
    #[arg(long, env = "CORTEX_MAX_CONCURRENCY", default_value_t = cortex_schemas::DEFAULT_MAX_CONCURRENCY)]
    pub max_concurrency: u32,
    /// Requests that may wait for a slot, per model; beyond that `overloaded`.
    #[arg(long, env = "CORTEX_MAX_QUEUE", default_value_t = 16)]
    pub max_queue: u32,
    /// How long a drain (or SIGTERM) waits for in-flight requests before cancelling them.
    #[arg(long, env = "CORTEX_DRAIN_TIMEOUT", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Address of `/metrics` and `/healthz`; `off` disables them.
    #[arg(long, env = "CORTEX_NEURON_METRICS", default_value = "0.0.0.0:13131")]
    pub metrics_listen: String,
    /// Where `store:<name>` sources are downloaded (default: the user's cache, `cortex/models`).
    #[arg(long, env = "CORTEX_MODEL_CACHE")]
    pub model_cache: Option<std::path::PathBuf>,
    /// Skip the CPU decoder's precision pass on prompts (faster prefill, llama.cpp's numerics).
    #[arg(long, env = "CORTEX_FAST_PROMPT")]
    pub fast_prompt: bool,
    /// Sim engine: time to first token.
    #[arg(long, env = "CORTEX_SIM_TTFT", default_value = "50ms",
          value_parser = humantime::parse_duration)]
    pub sim_ttft: Duration,
    /// Sim engine: tokens per second of each sequence.
    #[arg(long, env = "CORTEX_SIM_TOKENS_PER_SECOND", default_value_t = 50.0)]
    pub sim_tokens_per_second: f64,
    /// Sim engine: tokens in a reply when `max_tokens` does not cut it short.
    #[arg(long, env = "CORTEX_SIM_REPLY_TOKENS", default_value_t = 32)]
    pub sim_reply_tokens: u32,
    /// Sim engine: memory a model claims when its profile has no `vram_mb`.
    #[arg(long, env = "CORTEX_SIM_MODEL_MEMORY", default_value = "512MiB",
          value_parser = parse_bytes)]
    pub sim_model_memory: u64,
    /// Sim engine: how long a load takes.
    #[arg(long, env = "CORTEX_SIM_LOAD_TIME", default_value = "0s",
          value_parser = humantime::parse_duration)]
    pub sim_load_time: Duration,
    /// Sim engine: simulated GPUs by memory size (`80GiB,24GiB`); none
    /// means the CPU device with `--memory-budget`.
    #[arg(long, env = "CORTEX_SIM_GPUS", value_delimiter = ',', value_parser = parse_bytes)]
    pub sim_gpus: Vec<u64>,
    /// Model profiles from the config file's `[[model]]` tables.
    #[arg(skip)]
    pub profiles: Vec<ModelProfile>,
}

/// Which devices the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(Vec<u32>),
}

/// A configuration that cannot run; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid neuron configuration: {0}")]
pub struct ConfigError(pub String);

/// The settings after validation, in the forms the daemon uses.
#[derive(Debug, Clone)]
pub struct Validated {
    pub id: String,
    pub subjects: Subjects,
    pub devices: DeviceChoice,
    pub metrics_listen: Option<SocketAddr>,
    /// `--models` entries and `[[model]]` tables, in that order.
    pub preload: Vec<ModelProfile>,
}

impl NeuronConfig {
    /// The folder `store:` sources are fetched into.
    pub fn model_cache_dir(&self) -> std::path::PathBuf {
        if let Some(dir) = &self.model_cache {
            return dir.clone();
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("cortex").join("models")
    }

    /// Parses `args` as the subcommand's flags (environment variables
    /// honoured, defaults filled in), as the command line would: how
    /// `cortex up` builds the daemons it runs in-process.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        cortex_bus::flags::parse(args)
    }

    /// Defaults for a test: `nats_url: &str, id: &str`, no metrics port.
    pub fn for_tests(nats_url: &str, id: &str) -> Self {
        cortex_bus::flags::for_tests(nats_url, id)
    }

    /// Checks everything that can be checked without the network.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        self.nats
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        let subjects =
            Subjects::new(&self.prefix).map_err(|e| ConfigError(format!("--prefix: {e}")))?;
        let id = match &self.id {
            Some(id) => id.clone(),
            None => default_id(),
        };
        validate_token("neuron id", &id).map_err(|e| ConfigError(format!("--id: {e}")))?;
        let devices = parse_devices(&self.devices)?;
        if self.engine == EngineKind::Sim && matches!(devices, DeviceChoice::Cuda(_)) {
            return Err(ConfigError(
                "--devices cuda:N does not apply to --engine sim; use --sim-gpus".into(),
            ));
        }
        let metrics_listen = match self.metrics_listen.trim() {
            "off" | "none" | "" => None,
            addr => Some(addr.parse().map_err(|e| {
                ConfigError(format!(
                    "--metrics-listen {addr:?}: {e} (use HOST:PORT or off)"
                ))
            })?),
        };
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(ConfigError(
                "--heartbeat-interval must be at least 100ms".into(),
            ));
        }
        if self.max_concurrency == 0 {
            return Err(ConfigError("--max-concurrency must be at least 1".into()));
        }
        if !(self.sim_tokens_per_second.is_finite() && self.sim_tokens_per_second > 0.0) {
            return Err(ConfigError(
                "--sim-tokens-per-second must be positive".into(),
            ));
        }
        let mut preload = Vec::new();
        for spec in &self.models {
            preload.push(parse_model_spec(spec)?);
        }
        preload.extend(self.profiles.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        for profile in &preload {
            let token = ModelToken::new(&profile.id)
                .map_err(|e| ConfigError(format!("model {:?}: {e}", profile.id)))?;
            if !seen.insert(token) {
                return Err(ConfigError(format!(
                    "model {:?} is listed twice (or two ids share one subject token)",
                    profile.id
                )));
            }
        }
        Ok(Validated {
            id,
            subjects,
            devices,
            metrics_listen,
            preload,
        })
    }
}

/// The host name, as a valid subject token (dots become `-`).
pub fn default_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let id: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "neuron".into()
    } else {
        id
    }
}

fn parse_devices(text: &str) -> Result<DeviceChoice, ConfigError> {
    match text.trim() {
        "auto" | "" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        list => {
            let mut indices = Vec::new();
            for part in list.split(',') {
                match part.trim().parse::<DeviceSpec>() {
                    Ok(DeviceSpec::Cuda(n)) => indices.push(n as u32),
                    Ok(DeviceSpec::Cpu) => {
                        return Err(ConfigError(
                            "--devices: cpu cannot be combined with GPUs".into(),
                        ))
                    }
                    Err(e) => return Err(ConfigError(format!("--devices: {e}"))),
                }
            }
            Ok(DeviceChoice::Cuda(indices))
        }
    }
}

/// `ID=SOURCE` or `SOURCE` (id from the file name) → a profile with defaults.
pub fn parse_model_spec(spec: &str) -> Result<ModelProfile, ConfigError> {
    let spec = spec.trim();
    let (id, source) = match spec.split_once('=') {
        Some((id, source)) => (id.trim().to_string(), source.trim().to_string()),
        None => (id_from_source(spec), spec.to_string()),
    };
    if id.is_empty() || source.is_empty() {
        return Err(ConfigError(format!(
            "--models entry {spec:?}: expected ID=SOURCE or SOURCE"
        )));
    }
    serde_json::from_value(serde_json::json!({ "id": id, "source": source }))
        .map_err(|e| ConfigError(format!("--models entry {spec:?}: {e}")))
}

fn id_from_source(source: &str) -> String {
    let last = source
        .rsplit([':', '/'])
        .find(|part| !part.is_empty())
        .unwrap_or(source);
    last.strip_suffix(".gguf").unwrap_or(last).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_ids_are_tokens() {
        let config = NeuronConfig::for_tests("nats://127.0.0.1:4222", "n1");
        let valid = config.validate().unwrap();
        assert_eq!(valid.id, "n1");
        assert_eq!(valid.devices, DeviceChoice::Auto);
        assert!(valid.metrics_listen.is_none());
        assert!(validate_token("id", &default_id()).is_ok());
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let mut config = NeuronConfig::for_tests("nats://127.0.0.1:4222", "a.b");
        assert!(config.validate().unwrap_err().0.contains("--id"));
        config.id = Some("ok".into());
        config.devices = "tpu:0".into();
        assert!(config.validate().unwrap_err().0.contains("--devices"));
        config.devices = "cuda:0,cuda:1".into();
        assert_eq!(
            config.validate().unwrap().devices,
            DeviceChoice::Cuda(vec![0, 1])
        );
        config.metrics_listen = "nowhere".into();
        assert!(config
            .validate()
            .unwrap_err()
            .0
            .contains("--metrics-listen"));
        config.metrics_listen = "127.0.0.1:0".into();
        config.models = vec!["a=x.gguf".into(), "a=y.gguf".into()];
        assert!(config.validate().unwrap_err().0.contains("twice"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut config = NeuronConfig::for_tests("nats://127.0.0.1:4222", "n1");
        config.nats.user = Some("neuron".into());
        config.nats.password = Some("hunter2".into());
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn model_specs_name_or_derive_the_id() {
        let p = parse_model_spec("smol=/models/SmolLM2.Q4_1.gguf").unwrap();
        assert_eq!(
            (p.id.as_str(), p.source.as_str()),
            ("smol", "/models/SmolLM2.Q4_1.gguf")
        );
        assert_eq!(
            parse_model_spec("/m/SmolLM2.Q4_1.gguf").unwrap().id,
            "SmolLM2.Q4_1"
        );
        assert_eq!(
            parse_model_spec("hf:org/name@main:model-q4.gguf")
                .unwrap()
                .id,
            "model-q4"
        );
        assert_eq!(
            parse_model_spec("/m/all-MiniLM-L6-v2/").unwrap().id,
            "all-MiniLM-L6-v2"
        );
        assert!(parse_model_spec("=x").is_err());
    }
}
