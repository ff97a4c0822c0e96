//! `cortex ping`: is NATS reachable with these options, and what does it allow?

use std::time::Instant;

use anyhow::Context;
use cortex_bus::NatsOptions;

#[derive(Debug, clap::Args)]
pub struct PingArgs {
    #[command(flatten)]
    pub nats: NatsOptions,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: PingArgs) -> anyhow::Result<()> {
    let client = args.nats.connect("cortex-ping").await?;
    let started = Instant::now();
    client.flush().await.context("round trip to the server")?;
    let rtt = started.elapsed();
    let jetstream = async_nats_jetstream_enabled(&client).await;
    let info = client.server_info();
    let report = serde_json::json!({
        "server_id": info.server_id,
        "server_name": info.server_name,
        "version": info.version,
        "host": info.host,
        "port": info.port,
        "max_payload": info.max_payload,
        "headers": info.headers,
        "jetstream": jetstream,
        "rtt_ms": rtt.as_secs_f64() * 1000.0,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "NATS {} ({}) at {}:{}: rtt {:.2} ms, max_payload {} bytes, JetStream {}",
            info.version,
            info.server_name,
            info.host,
            info.port,
            rtt.as_secs_f64() * 1000.0,
            info.max_payload,
            if jetstream { "enabled" } else { "disabled" },
        );
    }
    Ok(())
}

/// Whether JetStream answers on this connection.
async fn async_nats_jetstream_enabled(client: &async_nats::Client) -> bool {
    let js = async_nats::jetstream::new(client.clone());
    tokio::time::timeout(std::time::Duration::from_secs(2), js.query_account())
        .await
        .is_ok_and(|r| r.is_ok())
}
