//! `cortex placement`: the control plane (see the `cortex-placement` crate).

use cortex_placement::PlacementConfig;

use super::signal;

pub async fn run(config: PlacementConfig) -> anyhow::Result<()> {
    cortex_placement::run(config, signal::shutdown()).await?;
    Ok(())
}
