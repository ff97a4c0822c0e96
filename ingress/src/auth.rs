//! API keys and per-key limits.
//!
//! Keys come from `--api-keys` / `CORTEX_API_KEYS` (comma-separated), each
//! either the key itself or `sha256:<hex>` of it, so a config file need not
//! hold the secret. Only SHA-256 digests are kept in memory, and a
//! presented key is compared with every digest in constant time. Clients
//! send `Authorization: Bearer <key>` (OpenAI) or `x-api-key: <key>`
//! (Anthropic). Without keys configured, every caller is one anonymous
//! caller.
//!
//! Limits are token buckets per key: requests per minute (checked when a
//! request arrives) and tokens per minute (prompt plus generated, debited
//! when a request finishes; a caller in debt is refused until the bucket
//! refills). A refusal is 429 with `Retry-After`.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Dialect, Kind};
use crate::state::AppState;

/// Who is calling: the index of the matching key (0 when no keys are set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller(pub usize);

/// Why the keys cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct KeyError {
    pub(crate) flag: &'static str,
    pub(crate) reason: String,
}

/// The configured keys, as digests: API keys first, then operator keys.
#[derive(Debug, Default)]
pub struct Keys {
    digests: Vec<[u8; 32]>,
    /// Index of the first operator key in `digests`.
    operators_from: usize,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Keys {
    /// Parses `--api-keys` entries.
    pub fn parse(entries: &[String]) -> Result<Self, KeyError> {
        let mut digests = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            match entry.strip_prefix("sha256:") {
                Some(hex) => {
                    let bytes =
                        decode_hex(hex)
                            .filter(|b| b.len() == 32)
                            .ok_or_else(|| KeyError {
                                flag: "--api-keys",
                                reason: "a sha256: entry needs 64 hex digits".into(),
                            })?;
                    let mut digest = [0u8; 32];
                    digest.copy_from_slice(&bytes);
                    digests.push(digest);
                }
                None => digests.push(digest(entry)),
            }
        }
        let operators_from = digests.len();
        Ok(Self {
            digests,
            operators_from,
        })
    }

    /// API keys and operator keys (`--admin-keys`): both authenticate;
    /// only the second may drive placement from the console.
    pub fn parse_with_operators(api: &[String], operators: &[String]) -> Result<Self, KeyError> {
        let mut keys = Self::parse(api)?;
        let operators = Self::parse(operators).map_err(|e| KeyError {
            flag: "--admin-keys",
            ..e
        })?;
        keys.digests.extend(operators.digests);
        Ok(keys)
    }

    /// Whether `caller` may load, unload and pin: an operator key, or
    /// anyone when no key is configured (an open mesh).
    pub fn is_operator(&self, caller: Caller) -> bool {
        self.digests.is_empty() || caller.0 >= self.operators_from
    }

    /// The tenant name of `caller` on the wire: `key-` and the first 12
    /// hex digits of its key's digest (the same on every pod, whatever the
    /// order of the key list; never the key). `None` without keys.
    pub fn tenant(&self, caller: Caller) -> Option<String> {
        let digest = self.digests.get(caller.0)?;
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Some(format!("key-{hex}"))
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// The caller a presented key belongs to; every digest is compared, in
    /// constant time, whatever matches.
    pub fn check(&self, presented: &str) -> Option<Caller> {
        let presented = digest(presented);
        let mut found = None;
        for (i, known) in self.digests.iter().enumerate() {
            let difference = known
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some(Caller(i));
            }
        }
        found
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The key a request presents, if any.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: f64) -> Self {
        Self {
            level: capacity,
            at: Instant::now(),
        }
    }

    /// Refills at `per_minute`, up to that capacity.
    fn refill(&mut self, per_minute: f64) {
        let now = Instant::now();
        let seconds = now.duration_since(self.at).as_secs_f64();
        self.level = (self.level + seconds * per_minute / 60.0).min(per_minute);
        self.at = now;
    }

    /// Seconds until the level is back to `needed`.
    fn wait_for(&self, needed: f64, per_minute: f64) -> u64 {
        let missing = (needed - self.level).max(0.0);
        (missing * 60.0 / per_minute).ceil().max(1.0) as u64
    }
}

/// Per-caller request and token buckets (one pair per key: bounded).
#[derive(Debug)]
pub struct Limits {
    requests_per_minute: u32,
    tokens_per_minute: u32,
    buckets: Mutex<Vec<(Bucket, Bucket)>>,
}

impl Limits {
    pub fn new(callers: usize, requests_per_minute: u32, tokens_per_minute: u32) -> Self {
        let pair = (
            Bucket::full(f64::from(requests_per_minute)),
            Bucket::full(f64::from(tokens_per_minute)),
        );
        Self {
            requests_per_minute,
            tokens_per_minute,
            buckets: Mutex::new(vec![pair; callers.max(1)]),
        }
    }

    /// Takes one request from `caller`'s budget, or says when to retry.
    pub fn admit(&self, caller: Caller) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some((requests, tokens)) = buckets.get_mut(caller.0) else {
            return Ok(());
        };
        if self.tokens_per_minute > 0 {
            let rate = f64::from(self.tokens_per_minute);
            tokens.refill(rate);
            if tokens.level <= 0.0 {
                return Err(tokens.wait_for(1.0, rate));
            }
        }
        if self.requests_per_minute > 0 {
            let rate = f64::from(self.requests_per_minute);
            requests.refill(rate);
            if requests.level < 1.0 {
                return Err(requests.wait_for(1.0, rate));
            }
            requests.level -= 1.0;
        }
        Ok(())
    }

    /// Debits tokens a finished request used.
    pub fn spend(&self, caller: Caller, used: u32) {
        if self.tokens_per_minute == 0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, tokens)) = buckets.get_mut(caller.0) {
            tokens.refill(f64::from(self.tokens_per_minute));
            tokens.level -= f64::from(used);
        }
    }
}

/// Middleware on the API routes: 401 without a valid key (when keys are
/// configured), 429 over a limit; the `Caller` goes into the request's
/// extensions for the handlers.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let dialect = if request.uri().path().starts_with("/v1/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    let caller = if state.keys.is_empty() {
        Caller(0)
    } else {
        match presented(request.headers()).and_then(|key| state.keys.check(key)) {
            Some(caller) => caller,
            None => {
                let error = ApiError::new(
                    Kind::Unauthorized,
                    "a valid API key is required (Authorization: Bearer <key> or x-api-key)",
                );
                return error.into_response_for(dialect);
            }
        }
    };
    if let Err(retry_after_s) = state.limits.admit(caller) {
        let error = ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(Kind::Overloaded, "rate limit reached for this API key")
        };
        return error.into_response_for(dialect);
    }
    request.extensions_mut().insert(caller);
    next.run(request).await.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_plain_and_hashed_entries_only() {
        let hashed = format!(
            "sha256:{}",
            digest("second")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let keys = Keys::parse(&["first".into(), hashed]).unwrap();
        assert_eq!(keys.check("first"), Some(Caller(0)));
        assert_eq!(keys.check("second"), Some(Caller(1)));
        assert_eq!(keys.check("third"), None);
        assert!(Keys::parse(&["sha256:abc".into()]).is_err());
        assert!(!keys.is_operator(Caller(0)) && !keys.is_operator(Caller(1)));
        let both = Keys::parse_with_operators(&["user".into()], &["root".into()]).unwrap();
        assert_eq!(both.check("root"), Some(Caller(1)));
        assert!(both.is_operator(Caller(1)) && !both.is_operator(Caller(0)));
        assert!(Keys::default().is_operator(Caller(0)));
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer first".parse().unwrap());
        assert_eq!(presented(&headers), Some("first"));
    }

    #[test]
    fn buckets_refuse_over_the_limit_and_say_when() {
        let limits = Limits::new(1, 2, 0);
        assert!(limits.admit(Caller(0)).is_ok());
        assert!(limits.admit(Caller(0)).is_ok());
        let wait = limits.admit(Caller(0)).unwrap_err();
        assert!((1..=30).contains(&wait), "{wait}");
        let tokens = Limits::new(1, 0, 100);
        assert!(tokens.admit(Caller(0)).is_ok());
        tokens.spend(Caller(0), 150);
        assert!(tokens.admit(Caller(0)).is_err(), "in debt");
    }
}
