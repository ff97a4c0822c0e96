//! Connecting to NATS: several server URLs, every auth method the server
//! offers (user/password, token, NKey seed, JWT `.creds`), TLS with a CA and
//! optional client certificate, retry with backoff on the first connect, and
//! connection events logged. Secrets never reach `Debug` output or logs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, ServerAddr};

/// Longest pause between reconnect attempts once a connection is lost.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Longest pause between first-connect attempts.
const MAX_FIRST_CONNECT_DELAY: Duration = Duration::from_secs(5);

/// How to reach and authenticate to NATS. Every daemon flattens this into
/// its command line (`--nats-*` flags, `CORTEX_NATS_*` variables).
#[derive(Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct NatsOptions {
    /// NATS server URLs, comma-separated; the client fails over between them.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "nats-url",
            env = "CORTEX_NATS_URL",
            value_delimiter = ',',
            default_value = "nats://127.0.0.1:4222"
        )
    )]
    pub servers: Vec<String>,
    /// User name for user/password authentication.
    #[cfg_attr(feature = "cli", arg(long = "nats-user", env = "CORTEX_NATS_USER"))]
    pub user: Option<String>,
    /// Password for user/password authentication.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "nats-password",
            env = "CORTEX_NATS_PASSWORD",
            hide_env_values = true
        )
    )]
    pub password: Option<String>,
    /// Token authentication.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-token", env = "CORTEX_NATS_TOKEN", hide_env_values = true)
    )]
    pub token: Option<String>,
    /// File holding an NKey seed (`SU...`) for NKey authentication.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-nkey-file", env = "CORTEX_NATS_NKEY_FILE")
    )]
    pub nkey_file: Option<PathBuf>,
    /// JWT credentials file (`.creds`) for decentralised authentication.
    #[cfg_attr(feature = "cli", arg(long = "nats-creds", env = "CORTEX_NATS_CREDS"))]
    pub creds_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server's TLS certificate.
    #[cfg_attr(feature = "cli", arg(long = "nats-tls-ca", env = "CORTEX_NATS_TLS_CA"))]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `--nats-tls-key`.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "nats-tls-cert",
            env = "CORTEX_NATS_TLS_CERT",
            requires = "tls_key"
        )
    )]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "nats-tls-key",
            env = "CORTEX_NATS_TLS_KEY",
            requires = "tls_cert"
        )
    )]
    pub tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-tls-required", env = "CORTEX_NATS_TLS_REQUIRED")
    )]
    pub tls_required: bool,
    /// Prefix of this connection's reply inboxes. Defaults to `_INBOX.<user>`
    /// with `--nats-user` (so a server can let each user read only its own
    /// replies, as `compose/nats-auth.conf` does), else `_INBOX`; with NKey,
    /// `.creds` or token auth, set it to the inboxes your server permits.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-inbox-prefix", env = "CORTEX_NATS_INBOX_PREFIX")
    )]
    pub inbox_prefix: Option<String>,
    /// How long to keep retrying the first connection before giving up.
    #[cfg_attr(feature = "cli", arg(
        long = "nats-connect-timeout",
        env = "CORTEX_NATS_CONNECT_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration
    ))]
    pub connect_timeout: Duration,
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |set: bool| if set { Some("<redacted>") } else { None };
        f.debug_struct("NatsOptions")
            .field("servers", &self.servers)
            .field("user", &self.user)
            .field("password", &redact(self.password.is_some()))
            .field("token", &redact(self.token.is_some()))
            .field("nkey_file", &self.nkey_file)
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_required", &self.tls_required)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self::new(["nats://127.0.0.1:4222"])
    }
}

/// Why connecting failed; the kinds say whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid NATS options: {0}")]
    InvalidOptions(String),
    #[error("invalid NATS server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot read NATS credentials from {path}: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("NATS refused the credentials: {0}")]
    Auth(#[source] async_nats::ConnectError),
    #[error("TLS to NATS failed: {0}")]
    Tls(#[source] async_nats::ConnectError),
    #[error("no NATS server reachable at {servers:?} within {waited:?}: {source}")]
    Unreachable {
        servers: Vec<String>,
        waited: Duration,
        #[source]
        source: async_nats::ConnectError,
    },
}

impl NatsOptions {
    /// Options for `servers` with no authentication.
    pub fn new<I, S>(servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            user: None,
            password: None,
            token: None,
            nkey_file: None,
            creds_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            inbox_prefix: None,
            connect_timeout: Duration::from_secs(30),
        }
    }

    /// Checks the options without connecting: every URL parses, at most one
    /// authentication method, a password only with a user.
    pub fn validate(&self) -> Result<Vec<ServerAddr>, ConnectError> {
        if self.servers.is_empty() {
            return Err(ConnectError::InvalidOptions(
                "no NATS server URL given".into(),
            ));
        }
        let methods = [
            self.user.is_some(),
            self.token.is_some(),
            self.nkey_file.is_some(),
            self.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(ConnectError::InvalidOptions(
                "choose one of user/password, token, NKey or credentials file".into(),
            ));
        }
        if self.password.is_some() && self.user.is_none() {
            return Err(ConnectError::InvalidOptions(
                "a password needs a user".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConnectError::InvalidOptions(
                "a TLS client certificate needs its key, and the key its certificate".into(),
            ));
        }
        let prefix = self.inbox_prefix();
        let bad_token =
            |t: &str| t.is_empty() || t.contains(['*', '>']) || t.chars().any(char::is_whitespace);
        if prefix.split('.').any(bad_token) {
            return Err(ConnectError::InvalidOptions(format!(
                "inbox prefix {prefix:?} is not a subject without wildcards"
            )));
        }
        self.servers
            .iter()
            .map(|url| {
                url.parse::<ServerAddr>()
                    .map_err(|e| ConnectError::InvalidUrl {
                        url: url.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    /// The reply-inbox prefix this connection uses (see `--nats-inbox-prefix`).
    pub fn inbox_prefix(&self) -> String {
        match (&self.inbox_prefix, &self.user) {
            (Some(prefix), _) => prefix.clone(),
            (None, Some(user)) => format!("_INBOX.{user}"),
            (None, None) => "_INBOX".to_string(),
        }
    }

    /// Builds the client options; reads key files, so it is async.
    async fn client_options(&self, name: &str) -> Result<ConnectOptions, ConnectError> {
        let mut options = match (&self.creds_file, &self.nkey_file) {
            (Some(path), _) => ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.clone(),
                    source,
                })?,
            (None, Some(path)) => {
                let seed = tokio::fs::read_to_string(path).await.map_err(|source| {
                    ConnectError::Credentials {
                        path: path.clone(),
                        source,
                    }
                })?;
                ConnectOptions::with_nkey(seed.trim().to_string())
            }
            (None, None) => ConnectOptions::new(),
        };
        if let Some(user) = &self.user {
            options =
                options.user_and_password(user.clone(), self.password.clone().unwrap_or_default());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        let name = name.to_string();
        Ok(options
            .custom_inbox_prefix(self.inbox_prefix())
            .name(&name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let name = name.clone();
                async move { log_event(&name, event) }
            }))
    }

    /// Connects as `name` (shown by `nats server report connections`),
    /// retrying unreachable servers with backoff for `connect_timeout`.
    /// Credentials and TLS failures are returned at once: retrying cannot fix them.
    pub async fn connect(&self, name: &str) -> Result<Client, ConnectError> {
        let addrs = self.validate()?;
        let started = tokio::time::Instant::now();
        let deadline = started + self.connect_timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            let options = self.client_options(name).await?;
            match options.connect(addrs.clone()).await {
                Ok(client) => return Ok(client),
                Err(error) => match error.kind() {
                    ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                        return Err(ConnectError::Auth(error))
                    }
                    ConnectErrorKind::Tls => return Err(ConnectError::Tls(error)),
                    ConnectErrorKind::Io if is_tls_failure(&error) => {
                        return Err(ConnectError::Tls(error))
                    }
                    ConnectErrorKind::ServerParse => {
                        return Err(ConnectError::InvalidOptions(error.to_string()))
                    }
                    _ if tokio::time::Instant::now() + delay < deadline => {
                        tracing::warn!(%error, retry_in = ?delay, servers = ?self.servers,
                            "NATS not reachable yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_FIRST_CONNECT_DELAY);
                    }
                    _ => {
                        return Err(ConnectError::Unreachable {
                            servers: self.servers.clone(),
                            waited: started.elapsed(),
                            source: error,
                        })
                    }
                },
            }
        }
    }
}

/// A handshake refused on certificates (unknown issuer, no client
/// certificate) reaches us as an I/O error that wraps a rustls error;
/// retrying cannot fix it, so it is a TLS error.
fn is_tls_failure(error: &async_nats::ConnectError) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// Reconnect quickly (a restarted server is back in a second) but not in a
/// tight loop: 0 ms, then doubling from 10 ms up to 1 s.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(10);
    (Duration::from_millis(10) * 2u32.pow(exp)).min(MAX_RECONNECT_DELAY)
}

fn log_event(name: &str, event: Event) {
    match event {
        Event::Connected => tracing::info!(connection = name, "NATS connected"),
        Event::Disconnected => tracing::warn!(connection = name, "NATS disconnected"),
        Event::LameDuckMode => {
            tracing::warn!(connection = name, "NATS server entering lame duck mode")
        }
        Event::Draining | Event::Closed => {
            tracing::info!(connection = name, %event, "NATS connection")
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(
                connection = name,
                sid,
                "NATS slow consumer: messages dropped"
            )
        }
        Event::ServerError(error) => {
            tracing::error!(connection = name, %error, "NATS server error")
        }
        Event::ClientError(error) => {
            tracing::error!(connection = name, %error, "NATS client error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_catches_conflicts() {
        let mut options = NatsOptions::new(["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]);
        assert_eq!(options.validate().unwrap().len(), 2);
        options.user = Some("u".into());
        options.token = Some("t".into());
        assert!(matches!(
            options.validate(),
            Err(ConnectError::InvalidOptions(_))
        ));
        options.token = None;
        options.password = Some("secret".into());
        options.validate().unwrap();
        assert!(
            !format!("{options:?}").contains("secret"),
            "password leaked into Debug"
        );
        assert_eq!(options.inbox_prefix(), "_INBOX.u");
        options.inbox_prefix = Some("_INBOX.*".into());
        assert!(matches!(
            options.validate(),
            Err(ConnectError::InvalidOptions(_))
        ));
        let bad = NatsOptions::new(["nats://[::1"]);
        assert!(matches!(
            bad.validate(),
            Err(ConnectError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn reconnect_delay_backs_off_to_a_cap() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(10));
        assert_eq!(reconnect_delay(3), Duration::from_millis(20));
        assert_eq!(reconnect_delay(100), MAX_RECONNECT_DELAY);
    }
}
