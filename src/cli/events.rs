//! `cortex events`: follow the mesh's lifecycle events.

use cortex_bus::{codec::decode_message, NatsOptions, Subjects};
use cortex_schemas::Event;
use futures::StreamExt;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub nats: NatsOptions,
    /// Subject prefix of the mesh.
    #[arg(long, env = "CORTEX_PREFIX", default_value = cortex_bus::subject::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<usize>,
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let subjects = Subjects::new(&args.prefix)?;
    let client = args.nats.connect("cortex-events").await?;
    let mut subscriber = client.subscribe(subjects.events()).await?;
    let mut seen = 0;
    while let Some(message) = subscriber.next().await {
        match decode_message::<Event>(message.headers.as_ref(), &message.payload) {
            Ok(event) => println!("{}", serde_json::to_string(&event)?),
            Err(error) => tracing::warn!(subject = %message.subject, %error, "undecodable event"),
        }
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}
