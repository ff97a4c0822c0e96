//! A plain HTTP client for tests (ureq on a blocking thread, so async
//! tests can call it): any status is an answer, not an error; bodies are
//! read whole, or a stream is read only so far and then dropped as a
//! client that goes away would.

use std::io::{BufRead, BufReader};
use std::time::Duration;

/// How long one request may take in all.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Largest body read.
const BODY_LIMIT: u64 = 64 << 20;

/// A response: status, headers, body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics, showing it, when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

fn reply(mut response: ureq::http::Response<ureq::Body>) -> Reply {
    let headers = response
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    Reply {
        status: response.status().as_u16(),
        headers,
        body: response
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
            .unwrap_or_default(),
    }
}

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// GETs `url` with `headers`; an error while nothing answers.
async fn try_get(url: &str, headers: &[(&str, &str)]) -> Result<Reply, ureq::Error> {
    let (url, headers) = (url.to_string(), owned(headers));
    tokio::task::spawn_blocking(move || {
        let mut request = agent(TIMEOUT).get(&url);
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        request.call().map(reply)
    })
    .await
    .expect("the GET thread")
}

/// GETs `url` with `headers`.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    try_get(url, headers).await.expect("HTTP GET")
}

/// GETs `url`.
pub async fn get(url: &str) -> Reply {
    get_with(url, &[]).await
}

/// The status a GET of `url` answers with; `None` while nothing answers
/// (not listening yet, or gone).
pub async fn status(url: &str) -> Option<u16> {
    try_get(url, &[]).await.ok().map(|reply| reply.status)
}

/// POSTs `body` as JSON text with `headers`.
pub async fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let (url, body, headers) = (url.to_string(), body.to_string(), owned(headers));
    tokio::task::spawn_blocking(move || {
        let mut request = agent(TIMEOUT)
            .post(&url)
            .header("content-type", "application/json");
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        reply(request.send(body.as_str()).expect("HTTP POST"))
    })
    .await
    .expect("the POST thread")
}

/// POSTs a JSON value.
pub async fn post_json(url: &str, body: &serde_json::Value) -> Reply {
    post(url, &body.to_string(), &[]).await
}

/// Streams a POST and stops reading after `events` `data:` lines (the
/// connection is then dropped, as a client that goes away).
pub async fn post_and_hang_up(url: &str, body: &str, events: usize) -> Vec<String> {
    let (url, body) = (url.to_string(), body.to_string());
    tokio::task::spawn_blocking(move || {
        let response = agent(TIMEOUT)
            .post(&url)
            .header("content-type", "application/json")
            .send(body.as_str())
            .expect("HTTP POST");
        let mut reader = BufReader::new(response.into_body().into_reader());
        let mut seen = Vec::new();
        let mut line = String::new();
        while seen.len() < events && reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                seen.push(data.to_string());
            }
            line.clear();
        }
        seen
    })
    .await
    .expect("the POST thread")
}

/// POSTs and gives up after `after` (the connection is dropped), as a
/// client tired of waiting; panics if an answer came sooner.
pub async fn post_and_give_up(url: &str, body: &str, after: Duration) {
    let (url, body) = (url.to_string(), body.to_string());
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(after))
            .build()
            .into();
        let result = agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.as_str());
        assert!(
            result.is_err(),
            "the request was expected to outlast {after:?}"
        );
    })
    .await
    .expect("the POST thread")
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Parses an SSE body into events (comments skipped).
pub fn parse_sse(body: &str) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut event = None;
    let mut data: Vec<String> = Vec::new();
    for line in body.lines() {
        if line.is_empty() {
            if !data.is_empty() {
                events.push(SseEvent {
                    event: event.take(),
                    data: data.join("\n"),
                });
            }
            data.clear();
            event = None;
        } else if let Some(value) = line.strip_prefix("event:") {
            event = Some(value.trim().to_string());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
        }
    }
    events
}
