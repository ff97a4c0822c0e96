//! Cross-origin access for browser clients, off unless `--cors-origins`
//! names the web origins allowed (or `*`). Off, no CORS header is ever sent
//! and a page elsewhere cannot read an answer.
//!
//! On, a request whose `Origin` is allowed gets:
//! - for a preflight (`OPTIONS` with `Access-Control-Request-Method`): 204
//!   at once, before authentication (browsers send no credentials on a
//!   preflight), allowing `GET`, `POST` and the headers asked for (API keys
//!   ride in `Authorization` or `x-api-key`, which `*` would not cover);
//! - for any other request: its answer, with `Access-Control-Allow-Origin`
//!   and the headers a client may read (`Retry-After`, `x-request-id`).
//!
//! No credentials mode: keys are headers, never cookies. An origin not
//! allowed gets no CORS header, as when it is off.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// How long a browser may reuse a preflight's answer.
const MAX_AGE_SECS: &str = "600";
/// The headers a page may read from an answer besides the safe ones.
const EXPOSED: &str = "retry-after, x-request-id";

/// The web origins allowed; built once from `--cors-origins`.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    inner: Arc<Allowed>,
}

#[derive(Debug, Default)]
struct Allowed {
    any: bool,
    origins: HashSet<String>,
}

/// A `--cors-origins` entry that is not an origin.
#[derive(Debug, thiserror::Error)]
#[error("--cors-origins: {0:?} is not an origin (scheme://host[:port], or *)")]
pub struct BadOrigin(pub String);

impl Cors {
    /// From the flag's entries: `*`, or origins such as
    /// `https://chat.example.com` and `http://localhost:3000`.
    pub fn parse(entries: &[String]) -> Result<Self, BadOrigin> {
        let mut allowed = Allowed::default();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if entry == "*" {
                allowed.any = true;
                continue;
            }
            if !is_origin(entry) {
                return Err(BadOrigin(entry.to_string()));
            }
            allowed
                .origins
                .insert(without_default_port(&entry.to_ascii_lowercase()));
        }
        Ok(Self {
            inner: Arc::new(allowed),
        })
    }

    /// Whether any origin is allowed at all.
    pub fn is_on(&self) -> bool {
        self.inner.any || !self.inner.origins.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.inner.any {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        self.inner.origins.contains(&text).then(|| origin.clone())
    }
}

/// Browsers leave a scheme's default port out of `Origin`.
fn without_default_port(origin: &str) -> String {
    for (port, scheme) in [(":443", "https://"), (":80", "http://")] {
        if origin.starts_with(scheme) {
            if let Some(bare) = origin.strip_suffix(port) {
                return bare.to_string();
            }
        }
    }
    origin.to_string()
}

/// `scheme://host[:port]`, nothing after: what a browser sends as `Origin`.
fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let host_ok = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    scheme_ok && host_ok && HeaderValue::from_str(text).is_ok()
}

/// The middleware: answers allowed preflights, marks allowed answers.
pub async fn apply(State(cors): State<Cors>, request: Request, next: Next) -> Response {
    let allowed = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|origin| cors.allow(origin));
    let Some(allow_origin) = allowed else {
        let mut response = next.run(request).await;
        if !cors.inner.any {
            // The answer depends on the origin: caches must key on it.
            vary_on_origin(response.headers_mut());
        }
        return response;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        return preflight_answer(allow_origin, request.headers());
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    if !cors.inner.any {
        vary_on_origin(headers);
    }
    response
}

fn vary_on_origin(headers: &mut HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

fn preflight_answer(allow_origin: HeaderValue, asked: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    // The header names asked for, when they are names.
    if let Some(names) = asked
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| v.to_str().is_ok_and(header_names))
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, names.clone());
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE_SECS),
    );
    headers.insert(
        header::VARY,
        HeaderValue::from_static("origin, access-control-request-headers"),
    );
    response
}

/// A comma-separated list of header names (RFC 9110 tokens).
fn header_names(text: &str) -> bool {
    text.split(',').map(str::trim).all(|name| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(entries: &[&str]) -> Cors {
        Cors::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn origins_are_checked_and_matched_without_case() {
        let listed = cors(&["https://Chat.example.com", "http://localhost:3000"]);
        assert!(listed.is_on());
        let origin = HeaderValue::from_static("https://chat.example.com");
        assert_eq!(listed.allow(&origin), Some(origin));
        let local = HeaderValue::from_static("http://localhost:3000");
        assert_eq!(listed.allow(&local), Some(local));
        let ported = cors(&["https://a.example:443", "http://b.example:80"]);
        for origin in ["https://a.example", "http://b.example"] {
            assert!(ported.allow(&HeaderValue::from_static(origin)).is_some());
        }
        for other in ["https://evil.example", "http://localhost:3001", "null"] {
            assert_eq!(listed.allow(&HeaderValue::from_static(other)), None);
        }
        let any = cors(&["*"]);
        assert_eq!(
            any.allow(&HeaderValue::from_static("https://x.example")),
            Some(HeaderValue::from_static("*"))
        );
        assert!(!cors(&[]).is_on());
        assert!(!cors(&[" "]).is_on());
    }

    #[test]
    fn entries_that_are_not_origins_are_refused() {
        for bad in [
            "chat.example.com",
            "https://chat.example.com/",
            "https://chat.example.com/path",
            "https://",
            "https://a b",
            "://host",
        ] {
            let entries = vec![bad.to_string()];
            assert!(Cors::parse(&entries).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_entry_stops_the_ingress_at_start() {
        let mut config = crate::config::IngressConfig::for_tests("nats://127.0.0.1:4222");
        config.cors_origins = vec!["https://ok.example".into(), "chat.example.com".into()];
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("--cors-origins: \"chat.example.com\""),
            "{error}"
        );
        config.cors_origins = vec!["https://ok.example".into(), "*".into()];
        assert!(config.validate().is_ok());
    }

    #[test]
    fn only_header_names_are_echoed() {
        assert!(header_names("authorization, content-type, x-api-key"));
        assert!(header_names("anthropic-dangerous-direct-browser-access"));
        assert!(!header_names("authorization, "));
        assert!(!header_names("bad header"));
        assert!(!header_names("x:y"));
    }
}
