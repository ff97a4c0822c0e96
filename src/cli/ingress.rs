//! `cortex ingress`: the HTTP front (see the `cortex-ingress` crate).

use cortex_ingress::IngressConfig;

use super::signal;

pub async fn run(config: IngressConfig) -> anyhow::Result<()> {
    cortex_ingress::run(config, signal::shutdown()).await?;
    Ok(())
}
