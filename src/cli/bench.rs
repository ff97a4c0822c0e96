//! `cortex bench`: a load generator for any OpenAI-compatible URL (like
//! `nats bench` for this mesh), or several taken in turn by the clients.
//! Each of `--concurrency` clients sends
//! streamed chat completions back to back for `--duration` (a request still
//! running then is abandoned and not counted); the report gives time to
//! first token, inter-token latency (per request: from the first to the last
//! content chunk over the tokens between them, since one chunk may carry
//! several tokens) and request latency as percentiles, tokens per second
//! (from `usage`, else content chunks) and errors by kind, with a progress
//! line while it runs, or JSON with `--json`.
//!
//! `--compare URL` runs the same load against a second server right after
//! the first (one at a time, so they do not share the machine) and prints
//! both reports and their ratios: Cortex beside the server it replaces.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the API; several, comma-separated, spread the clients
    /// over them in turn (one per ingress pod, without a balancer).
    #[arg(long, default_value = "http://127.0.0.1:31313", value_delimiter = ',')]
    pub url: Vec<String>,
    /// Model to ask.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Clients sending at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// How long to run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Prompt length, in words (about one token each).
    #[arg(long, default_value_t = 32)]
    pub prompt_words: usize,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// Bearer token, when the API wants one.
    #[arg(long, env = "CORTEX_API_KEY")]
    pub api_key: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Then the same load against this base URL (comma-separated for
    /// several), and the ratios of the first to it.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// The model name the compared server knows (default: `--model`).
    #[arg(long)]
    pub compare_model: Option<String>,
}

/// The first run's figures over the compared run's (above 1: the first
/// has more throughput, or takes longer).
#[derive(Debug, Serialize)]
pub struct Ratios {
    pub tokens_per_second: Option<f64>,
    pub requests_per_second: Option<f64>,
    pub ttft_p50: Option<f64>,
    pub inter_token_p50: Option<f64>,
    pub latency_p50: Option<f64>,
}

impl Ratios {
    fn of(a: &Report, b: &Report) -> Self {
        let ratio = |x: f64, y: f64| (y > 0.0 && x.is_finite()).then(|| x / y);
        let p50 = |x: &Option<Spread>, y: &Option<Spread>| match (x, y) {
            (Some(x), Some(y)) => ratio(x.p50, y.p50),
            _ => None,
        };
        Self {
            tokens_per_second: ratio(a.tokens_per_second, b.tokens_per_second),
            requests_per_second: ratio(a.requests_per_second, b.requests_per_second),
            ttft_p50: p50(&a.ttft_ms, &b.ttft_ms),
            inter_token_p50: p50(&a.inter_token_ms, &b.inter_token_ms),
            latency_p50: p50(&a.latency_ms, &b.latency_ms),
        }
    }

    fn render(&self) -> String {
        let x = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
        format!(
            "ratio (first / compared): tok/s {}, req/s {}, TTFT p50 {}, inter-token p50 {}, request p50 {}\n",
            x(self.tokens_per_second),
            x(self.requests_per_second),
            x(self.ttft_p50),
            x(self.inter_token_p50),
            x(self.latency_p50)
        )
    }
}

#[derive(Debug, Default)]
struct Samples {
    ttft_ms: Vec<f64>,
    itl_ms: Vec<f64>,
    latency_ms: Vec<f64>,
    errors: std::collections::BTreeMap<String, u64>,
}

/// Percentiles of one measure, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Spread {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// What `cortex bench` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    pub url: String,
    pub model: String,
    pub concurrency: usize,
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    pub completion_tokens: u64,
    pub tokens_per_second: f64,
    pub requests_per_second: f64,
    pub ttft_ms: Option<Spread>,
    pub inter_token_ms: Option<Spread>,
    pub latency_ms: Option<Spread>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let json = args.json;
    let compared = (!args.compare.is_empty()).then(|| BenchArgs {
        url: args.compare.clone(),
        model: args
            .compare_model
            .clone()
            .unwrap_or_else(|| args.model.clone()),
        ..args.clone()
    });
    let first = tokio::task::spawn_blocking(move || measure(&args)).await??;
    let second = match compared {
        Some(args) => Some(tokio::task::spawn_blocking(move || measure(&args)).await??),
        None => None,
    };
    match (&second, json) {
        (None, true) => println!("{}", serde_json::to_string_pretty(&first)?),
        (None, false) => print!("{}", render(&first)),
        (Some(second), true) => {
            let both = serde_json::json!({
                "first": first,
                "compared": second,
                "ratio": Ratios::of(&first, second),
            });
            println!("{}", serde_json::to_string_pretty(&both)?);
        }
        (Some(second), false) => {
            print!("{}", render(&first));
            print!("{}", render(second));
            print!("{}", Ratios::of(&first, second).render());
        }
    }
    for report in std::iter::once(&first).chain(second.as_ref()) {
        if report.requests == 0 {
            anyhow::bail!("no request to {} succeeded", report.url);
        }
    }
    Ok(())
}

fn measure(args: &BenchArgs) -> anyhow::Result<Report> {
    let urls: Vec<String> = args
        .url
        .iter()
        .map(|u| format!("{}/v1/chat/completions", u.trim_end_matches('/')))
        .collect();
    anyhow::ensure!(!urls.is_empty(), "--url: give at least one URL");
    let prompt = (0..args.prompt_words)
        .map(|i| ["tell", "me", "about", "the", "sea", "and", "its", "tides"][i % 8])
        .collect::<Vec<_>>()
        .join(" ");
    let body = serde_json::json!({
        "model": args.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": args.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let samples = Arc::new(Mutex::new(Samples::default()));
    let done = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for client in 0..args.concurrency.max(1) {
        let url = urls[client % urls.len()].clone();
        let (body, key) = (body.clone(), args.api_key.clone());
        let (samples, done, tokens, failed, stop) = (
            samples.clone(),
            done.clone(),
            tokens.clone(),
            failed.clone(),
            stop.clone(),
        );
        // Small stacks: a thousand clients are a thousand threads.
        let spawned = std::thread::Builder::new()
            .stack_size(CLIENT_STACK)
            .spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(600)))
                    .build()
                    .into();
                while !stop.load(Ordering::Relaxed) {
                    match one(&agent, &url, &body, key.as_deref(), &stop) {
                        Ok(result) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            tokens.fetch_add(result.tokens, Ordering::Relaxed);
                            let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(ttft) = result.ttft_ms {
                                s.ttft_ms.push(ttft);
                            }
                            s.itl_ms.extend(result.gaps_ms);
                            s.latency_ms.push(result.latency_ms);
                        }
                        Err(kind) if kind == ABANDONED => {}
                        Err(kind) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *samples
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .errors
                                .entry(kind)
                                .or_default() += 1;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            });
        workers.push(spawned?);
    }
    let tty = std::io::stderr().is_terminal() && !args.json;
    while started.elapsed() < args.duration {
        let left = args.duration.saturating_sub(started.elapsed());
        std::thread::sleep(Duration::from_millis(500).min(left));
        if tty {
            let fraction = (started.elapsed().as_secs_f64() / args.duration.as_secs_f64()).min(1.0);
            let filled = (fraction * 30.0) as usize;
            eprint!(
                "\r[{}{}] {:>4.0}s  {} requests  {} errors  {:.0} tok/s ",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                started.elapsed().as_secs_f64(),
                done.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                tokens.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    for worker in workers {
        let _ = worker.join();
    }
    if tty {
        eprintln!();
    }
    let mut s = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let requests = done.load(Ordering::Relaxed);
    let completion_tokens = tokens.load(Ordering::Relaxed);
    Ok(Report {
        url: args.url.join(","),
        model: args.model.clone(),
        concurrency: args.concurrency,
        seconds,
        requests,
        errors: failed.load(Ordering::Relaxed),
        error_kinds: std::mem::take(&mut s.errors),
        completion_tokens,
        tokens_per_second: completion_tokens as f64 / seconds,
        requests_per_second: requests as f64 / seconds,
        ttft_ms: spread(&mut s.ttft_ms),
        inter_token_ms: spread(&mut s.itl_ms),
        latency_ms: spread(&mut s.latency_ms),
    })
}

struct One {
    ttft_ms: Option<f64>,
    gaps_ms: Vec<f64>,
    latency_ms: f64,
    tokens: u64,
}

/// Stack of each client thread; reading SSE lines needs little.
const CLIENT_STACK: usize = 256 << 10;

/// The error kind of a request cut off at the end of the run (not counted).
const ABANDONED: &str = "abandoned";

fn kind(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Timeout(_) => "timeout".into(),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => "connect".into(),
        ureq::Error::Io(_) => "io".into(),
        other => format!("client: {other}"),
    }
}

/// One streamed request; an error is its kind (`http_429`, `io`, ...).
fn one(
    agent: &ureq::Agent,
    url: &str,
    body: &str,
    key: Option<&str>,
    stop: &AtomicBool,
) -> Result<One, String> {
    let sent = Instant::now();
    let mut request = agent.post(url).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("authorization", &format!("Bearer {key}"));
    }
    let mut response = request.send(body).map_err(|e| kind(&e))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(format!("http_{status}"));
    }
    let reader = BufReader::new(response.body_mut().as_reader());
    let (mut ttft, mut first, mut last, mut chunks, mut tokens, mut finished) =
        (None, None, None, 0u64, 0, false);
    for line in reader.lines() {
        if stop.load(Ordering::Relaxed) {
            return Err(ABANDONED.into());
        }
        let line = line.map_err(|_| "io".to_string())?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            finished = true;
            break;
        }
        let chunk: serde_json::Value =
            serde_json::from_str(data).map_err(|_| "bad_chunk".to_string())?;
        if chunk.get("error").is_some() {
            return Err("stream_error".into());
        }
        if let Some(used) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = used;
        }
        let content = chunk["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or("");
        if !content.is_empty() {
            let now = Instant::now();
            if first.is_none() {
                ttft = Some(now.duration_since(sent).as_secs_f64() * 1e3);
                first = Some(now);
            }
            last = Some(now);
            chunks += 1;
        }
    }
    if !finished {
        return Err("truncated".into());
    }
    // Without `usage`, each content chunk counts as one token (a floor).
    let tokens = if tokens > 0 { tokens } else { chunks };
    let mut gaps_ms = Vec::new();
    if let (Some(first), Some(last)) = (first, last) {
        if tokens > 1 {
            gaps_ms.push(last.duration_since(first).as_secs_f64() * 1e3 / (tokens - 1) as f64);
        }
    }
    Ok(One {
        ttft_ms: ttft,
        gaps_ms,
        latency_ms: sent.elapsed().as_secs_f64() * 1e3,
        tokens,
    })
}

fn spread(values: &mut [f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Some(Spread {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: values[values.len() - 1],
    })
}

fn render(r: &Report) -> String {
    let row = |name: &str, s: &Option<Spread>| match s {
        Some(s) => format!(
            "  {name:<18} p50 {:>9.2}  p90 {:>9.2}  p99 {:>9.2}  max {:>9.2} ms\n",
            s.p50, s.p90, s.p99, s.max
        ),
        None => format!("  {name:<18} (no samples)\n"),
    };
    let mut out = format!(
        "{} · model {} · {} clients · {:.1} s\n  {} requests ({:.1}/s), {} errors, {} tokens ({:.1} tok/s)\n",
        r.url, r.model, r.concurrency, r.seconds, r.requests, r.requests_per_second, r.errors,
        r.completion_tokens, r.tokens_per_second
    );
    out.push_str(&row("time to first token", &r.ttft_ms));
    out.push_str(&row("inter-token (mean)", &r.inter_token_ms));
    out.push_str(&row("request", &r.latency_ms));
    for (kind, n) in &r.error_kinds {
        out.push_str(&format!("  error {kind}: {n}\n"));
    }
    out
}
