//! `cortex ingress` settings: clap flags, each with an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use cortex_bus::subject::DEFAULT_PREFIX;
use cortex_bus::{NatsOptions, Subjects};

/// `cortex ingress`: the HTTP front of the mesh.
#[derive(Debug, Clone, clap::Args)]
pub struct IngressConfig {
    #[command(flatten)]
    pub nats: NatsOptions,
    /// Subject prefix of the mesh.
    #[arg(long, env = "CORTEX_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// HTTP address.
    #[arg(long, env = "CORTEX_INGRESS_LISTEN", default_value = "0.0.0.0:31313")]
    pub listen: SocketAddr,
    /// Requests this pod serves at once; beyond that 429 with `Retry-After`.
    #[arg(long, env = "CORTEX_INGRESS_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Largest request body in bytes; beyond that 413.
    #[arg(long, env = "CORTEX_INGRESS_BODY_LIMIT", default_value_t = 8 << 20)]
    pub body_limit: usize,
    /// Time a client has to send a request's headers (and the longest an idle
    /// keep-alive connection stays open); then the connection is closed.
    #[arg(long, env = "CORTEX_INGRESS_HEADER_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in; then 408.
    #[arg(long, env = "CORTEX_INGRESS_BODY_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// How long writing to a client may make no progress (it stopped
    /// reading); then the connection is closed.
    #[arg(long, env = "CORTEX_INGRESS_WRITE_TIMEOUT", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; beyond that 431.
    #[arg(long, env = "CORTEX_INGRESS_MAX_HEADER_BYTES", default_value_t = 64 << 10)]
    pub max_header_bytes: usize,
    /// Most headers in one request; beyond that 431.
    #[arg(long, env = "CORTEX_INGRESS_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
    /// Open client connections at most; further ones wait in the listen
    /// backlog until one closes.
    #[arg(long, env = "CORTEX_INGRESS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Web origins whose pages may call the API from a browser,
    /// comma-separated (`https://chat.example.com,http://localhost:3000`),
    /// or `*` for any. Empty (the default): no CORS headers at all.
    #[arg(long, env = "CORTEX_INGRESS_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Deadline of a request, and the longest one a client may ask for with
    /// the `cortex-timeout-ms` header.
    #[arg(long, env = "CORTEX_INGRESS_TIMEOUT", default_value = "10m",
          value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Keepalive period asked of neurons; 2.5 silent periods fail a stream.
    #[arg(long, env = "CORTEX_INGRESS_KEEPALIVE", default_value = "1s",
          value_parser = humantime::parse_duration)]
    pub keepalive: Duration,
    /// Attempts before the first token (another replica after an overload
    /// or a neuron that died before answering).
    #[arg(long, env = "CORTEX_INGRESS_ATTEMPTS", default_value_t = 4)]
    pub attempts: u32,
    /// API keys, comma-separated: each the key itself or `sha256:<hex>` of
    /// it. None means no authentication.
    #[arg(
        long,
        env = "CORTEX_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<ApiKey>,
    /// Operator keys, in the same form: API keys that may also load,
    /// unload and pin models from the console. Without any key configured
    /// the mesh is open and so is the console's control.
    #[arg(
        long,
        env = "CORTEX_ADMIN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_keys: Vec<ApiKey>,
    /// Serve no fleet console at `/ui`.
    #[arg(long, env = "CORTEX_INGRESS_NO_UI")]
    pub no_ui: bool,
    /// How a request picks among a model's replicas: `cache` (the one
    /// holding most of its prompt prefix, weighed against load) or `queue`
    /// (NATS's queue group picks at random).
    #[arg(long, env = "CORTEX_INGRESS_ROUTING", value_enum, default_value_t = crate::route::Routing::Cache)]
    pub routing: crate::route::Routing,
    /// Requests per minute per API key (0: no limit).
    #[arg(long, env = "CORTEX_RATE_LIMIT_RPM", default_value_t = 0)]
    pub rate_limit_rpm: u32,
    /// Tokens (prompt and generated) per minute per API key (0: no limit).
    #[arg(long, env = "CORTEX_RATE_LIMIT_TPM", default_value_t = 0)]
    pub rate_limit_tpm: u32,
    /// How long shutdown waits for open streams to finish.
    #[arg(long, env = "CORTEX_INGRESS_SHUTDOWN_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

/// An API key from the configuration; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for ApiKey {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// A configuration that cannot run: the flag at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ingress configuration: {flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

impl ConfigError {
    fn new(flag: &'static str, reason: impl std::fmt::Display) -> Self {
        Self {
            flag,
            reason: reason.to_string(),
        }
    }
}

/// What [`IngressConfig::validate`] makes of the flags: the parsed forms
/// a pod is built from, so that none is parsed again (or defaulted) later.
#[derive(Debug)]
pub struct Settings {
    pub subjects: Subjects,
    /// API and operator keys, as digests; empty: no authentication.
    pub keys: crate::auth::Keys,
    pub cors: crate::cors::Cors,
}

impl IngressConfig {
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

    /// Defaults for a test: `nats_url: &str`, no metrics port.
    pub fn for_tests(nats_url: &str) -> Self {
        Self::from_args(["--nats-url", nats_url, "--listen", "127.0.0.1:0"])
            .expect("default configuration parses")
    }

    /// Checks everything that can be checked without the network and
    /// returns the parsed settings.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        self.nats
            .validate()
            .map_err(|e| ConfigError::new("--nats-*", e))?;
        if self.max_in_flight == 0 {
            return Err(ConfigError::new("--max-in-flight", "must be at least 1"));
        }
        if self.max_header_bytes < 8192 {
            return Err(ConfigError::new(
                "--max-header-bytes",
                "must be at least 8192",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("--max-connections", "must be at least 1"));
        }
        if self.max_headers == 0 {
            return Err(ConfigError::new("--max-headers", "must be at least 1"));
        }
        for (flag, timeout) in [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--write-timeout", self.write_timeout),
        ] {
            if timeout.is_zero() {
                return Err(ConfigError::new(flag, "must be above zero"));
            }
        }
        if self.attempts == 0 {
            return Err(ConfigError::new("--attempts", "must be at least 1"));
        }
        let keys = self.keys()?;
        let cors = crate::cors::Cors::parse(&self.cors_origins).map_err(|e| {
            let reason = e.to_string();
            let reason = reason.strip_prefix("--cors-origins: ").unwrap_or(&reason);
            ConfigError::new("--cors-origins", reason)
        })?;
        let subjects = Subjects::new(&self.prefix).map_err(|e| ConfigError::new("--prefix", e))?;
        Ok(Settings {
            subjects,
            keys,
            cors,
        })
    }

    /// The API keys as digests.
    fn keys(&self) -> Result<crate::auth::Keys, ConfigError> {
        let entries = |keys: &[ApiKey]| keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>();
        crate::auth::Keys::parse_with_operators(
            &entries(&self.api_keys),
            &entries(&self.admin_keys),
        )
        .map_err(|e| ConfigError {
            flag: e.flag,
            reason: e.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_setting_is_named_by_its_flag() {
        let config = |tune: fn(&mut IngressConfig)| {
            let mut config = IngressConfig::for_tests("nats://127.0.0.1:4222");
            tune(&mut config);
            config.validate().unwrap_err()
        };
        assert_eq!(config(|c| c.attempts = 0).flag, "--attempts");
        assert_eq!(
            config(|c| c.write_timeout = Duration::ZERO).flag,
            "--write-timeout"
        );
        assert_eq!(config(|c| c.max_headers = 0).flag, "--max-headers");
        let keys = config(|c| c.api_keys = vec![ApiKey("sha256:zz".into())]);
        assert_eq!(keys.flag, "--api-keys", "{keys}");
        let prefix = config(|c| c.prefix = "a b".into());
        assert_eq!(
            prefix.to_string(),
            format!("invalid ingress configuration: --prefix: {}", prefix.reason)
        );
    }

    #[test]
    fn validated_settings_carry_the_keys() {
        let mut config = IngressConfig::for_tests("nats://127.0.0.1:4222");
        config.api_keys = vec![ApiKey("k".into())];
        let settings = config.validate().unwrap();
        assert!(!settings.keys.is_empty());
        assert!(!settings.cors.is_on());
    }
}
