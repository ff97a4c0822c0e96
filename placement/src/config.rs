//! `cortex placement` settings: clap flags, each with an environment
//! variable, validated as a whole before anything connects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cortex_bus::subject::{validate_token, DEFAULT_PREFIX};
use cortex_bus::{NatsOptions, Subjects};

use crate::decide::{Settings, Strategy};

/// `cortex placement`: the control plane; run several for availability.
#[derive(Debug, Clone, clap::Args)]
pub struct PlacementConfig {
    #[command(flatten)]
    pub nats: NatsOptions,
    /// Subject prefix of the mesh.
    #[arg(long, env = "CORTEX_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Replica id (default: host name and process id).
    #[arg(long = "id", env = "CORTEX_PLACEMENT_ID")]
    pub id: Option<String>,
    /// The catalogue, `models.toml`; published to `cortex-catalog` at start
    /// and whenever the file changes. Without it the catalogue in KV is used.
    #[arg(long, env = "CORTEX_MODELS")]
    pub models: Option<PathBuf>,
    /// Reconciler lease time-to-live: a dead leader is replaced within it.
    #[arg(long, env = "CORTEX_LEASE_TTL", default_value = "6s",
          value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// How often the leader reconciles.
    #[arg(long, env = "CORTEX_RECONCILE_INTERVAL", default_value = "1s",
          value_parser = humantime::parse_duration)]
    pub reconcile_interval: Duration,
    /// Eviction order.
    #[arg(long, env = "CORTEX_EVICTION", value_enum, default_value = "lru")]
    pub strategy: Strategy,
    /// Evictions after which scattered copies are consolidated (0: never).
    #[arg(long, env = "CORTEX_DEFRAG_AFTER_CYCLES", default_value_t = 0)]
    pub defrag_after_cycles: u32,
    /// Reconcile cycles with a deep queue before one more copy is loaded.
    #[arg(long, env = "CORTEX_SCALE_UP_AFTER", default_value_t = 3)]
    pub scale_up_after: u32,
    /// Idle time after which a copy beyond the first (and min_replicas) is unloaded.
    #[arg(long, env = "CORTEX_SCALE_DOWN_AFTER", default_value = "2m",
          value_parser = humantime::parse_duration)]
    pub scale_down_after: Duration,
    /// Longest a load may take before it counts as failed.
    #[arg(long, env = "CORTEX_LOAD_TIMEOUT", default_value = "10m",
          value_parser = humantime::parse_duration)]
    pub load_timeout: Duration,
    /// Replicas of the KV buckets and object store (1 on one server, 3 on a cluster).
    #[arg(long, env = "CORTEX_BUCKET_REPLICAS", default_value_t = 1)]
    pub bucket_replicas: usize,
    /// Address of `/metrics` and `/healthz`; `off` disables them.
    #[arg(
        long,
        env = "CORTEX_PLACEMENT_METRICS",
        default_value = "0.0.0.0:13132"
    )]
    pub metrics_listen: String,
}

/// A configuration error: exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What validation derived.
#[derive(Debug, Clone)]
pub struct Validated {
    pub id: String,
    pub subjects: Subjects,
    pub metrics_listen: Option<SocketAddr>,
    pub settings: Settings,
}

impl PlacementConfig {
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

    pub fn validate(&self) -> Result<Validated, ConfigError> {
        self.nats
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        let subjects =
            Subjects::new(&self.prefix).map_err(|e| ConfigError(format!("--prefix: {e}")))?;
        let id = self.id.clone().unwrap_or_else(default_id);
        validate_token("placement id", &id).map_err(|e| ConfigError(format!("--id: {e}")))?;
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(ConfigError("--lease-ttl must be at least 300ms".into()));
        }
        if self.reconcile_interval < Duration::from_millis(50) {
            return Err(ConfigError(
                "--reconcile-interval must be at least 50ms".into(),
            ));
        }
        if self.load_timeout < Duration::from_secs(1)
            || self.load_timeout > Duration::from_secs(86_400)
        {
            return Err(ConfigError(
                "--load-timeout must be between 1s and 24h".into(),
            ));
        }
        if !(1..=5).contains(&self.bucket_replicas) {
            return Err(ConfigError("--bucket-replicas must be 1 to 5".into()));
        }
        if let Some(path) = &self.models {
            crate::catalog::file::read(path).map_err(|e| ConfigError(e.to_string()))?;
        }
        let metrics_listen = match self.metrics_listen.trim() {
            "off" | "none" | "" => None,
            addr => Some(addr.parse().map_err(|e| {
                ConfigError(format!(
                    "--metrics-listen {addr:?}: {e} (use HOST:PORT or off)"
                ))
            })?),
        };
        Ok(Validated {
            id,
            subjects,
            metrics_listen,
            settings: Settings {
                strategy: self.strategy,
                scale_up_after: self.scale_up_after.max(1),
                interval_ms: self.reconcile_interval.as_millis() as u64,
                scale_down_after_ms: self.scale_down_after.as_millis() as u64,
                defrag_after: self.defrag_after_cycles,
            },
        })
    }
}

/// `placement-<host>-<pid>`, as a valid subject token.
fn default_id() -> String {
    let host: String = gethostname::gethostname()
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("placement-{host}-{}", std::process::id())
}
