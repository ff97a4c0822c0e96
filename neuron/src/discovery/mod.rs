//! What this host can run models on, re-read at every heartbeat: the GPUs
//! NVML reports ([`gpu`]), or the CPU with a memory budget ([`cpu`]), or
//! simulated GPUs for the sim engine.
//!
//! Memory is what placement decides on, so each device reports a total,
//! what is used and what is free. For GPUs these are NVML's figures (other
//! processes included); for the CPU the total is the configured budget, the
//! used part is our models' footprint, and free is what is left of the
//! budget, never more than the kernel says is available.

mod cpu;
mod gpu;

use cortex_engine::DeviceSpec;
use cortex_schemas::{DeviceKind, DeviceStatus};

use crate::config::{DeviceChoice, EngineKind};
use crate::size::MemorySize;

pub use cpu::{cpu_name, MemInfo};
pub use gpu::Gpus;

/// Why the devices asked for cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("NVML is not available: {0}")]
    NoNvml(String),
    #[error("--devices names cuda:{index}, but NVML finds {count} GPU(s)")]
    NoSuchGpu { index: u32, count: u32 },
    #[error(
        "--devices names GPUs, but this build has no CUDA support (rebuild with --features cuda)"
    )]
    NoCudaBuild,
}

/// The devices a neuron serves from.
#[derive(Debug)]
pub struct Discovery {
    source: Source,
}

#[derive(Debug)]
enum Source {
    // NVML keeps a large table of function pointers.
    Gpus(Box<Gpus>),
    Cpu { budget: MemorySize, name: String },
    Sim { gpus: Vec<u64> },
}

impl Discovery {
    /// Finds the devices `choice` asks for. `auto` takes every GPU NVML
    /// reports when this build can drive them, else the CPU.
    pub fn open(
        choice: &DeviceChoice,
        engine: EngineKind,
        budget: MemorySize,
        sim_gpus: &[u64],
    ) -> Result<Self, DiscoveryError> {
        let cpu = || Source::Cpu {
            budget,
            name: cpu_name(),
        };
        let source = match (engine, choice) {
            (EngineKind::Sim, _) if !sim_gpus.is_empty() => Source::Sim {
                gpus: sim_gpus.to_vec(),
            },
            (EngineKind::Sim, _) | (_, DeviceChoice::Cpu) => cpu(),
            (EngineKind::Candle, DeviceChoice::Auto) => match Gpus::open(None) {
                Ok(gpus) if gpus.is_empty() => cpu(),
                Ok(gpus) if !cfg!(feature = "cuda") => {
                    tracing::warn!(
                        gpus = gpus.len(),
                        "NVML finds GPUs but this build has no CUDA support; serving from the CPU"
                    );
                    cpu()
                }
                Ok(gpus) => Source::Gpus(Box::new(gpus)),
                Err(reason) => {
                    tracing::info!(%reason, "no GPUs; serving from the CPU");
                    cpu()
                }
            },
            (EngineKind::Candle, DeviceChoice::Cuda(indices)) => {
                if !cfg!(feature = "cuda") {
                    return Err(DiscoveryError::NoCudaBuild);
                }
                Source::Gpus(Box::new(Gpus::open(Some(indices))?))
            }
        };
        Ok(Self { source })
    }

    /// Every device now. `ours(index)` is the memory our models take on
    /// device `index`.
    pub fn devices(&self, ours: impl Fn(u32) -> u64) -> Vec<DeviceStatus> {
        match &self.source {
            Source::Gpus(gpus) => gpus.statuses(),
            Source::Cpu { budget, name } => {
                let meminfo = MemInfo::read();
                let total = budget.resolve(meminfo.total);
                let used = ours(0);
                let free = total.saturating_sub(used).min(meminfo.available);
                vec![DeviceStatus {
                    index: 0,
                    kind: DeviceKind::Cpu,
                    name: name.clone(),
                    uuid: None,
                    memory_total_bytes: total,
                    memory_used_bytes: used,
                    memory_free_bytes: free,
                    utilization_pct: None,
                    temperature_c: None,
                    driver: None,
                }]
            }
            Source::Sim { gpus } => gpus
                .iter()
                .enumerate()
                .map(|(i, &total)| {
                    let used = ours(i as u32);
                    DeviceStatus {
                        index: i as u32,
                        kind: DeviceKind::Cuda,
                        name: format!("simulated GPU ({})", crate::size::format_bytes(total)),
                        uuid: None,
                        memory_total_bytes: total,
                        memory_used_bytes: used,
                        memory_free_bytes: total.saturating_sub(used),
                        utilization_pct: None,
                        temperature_c: None,
                        driver: None,
                    }
                })
                .collect(),
        }
    }

    /// Whether free memory already excludes our models' reservations (the
    /// CPU budget and simulated GPUs), or comes from the device (NVML).
    pub fn tracks_our_memory(&self) -> bool {
        !matches!(self.source, Source::Gpus(_))
    }

    /// The engine's name for device `index`.
    pub fn engine_device(&self, index: u32) -> DeviceSpec {
        match &self.source {
            Source::Gpus(gpus) => DeviceSpec::Cuda(gpus.cuda_ordinal(index) as usize),
            Source::Cpu { .. } | Source::Sim { .. } => DeviceSpec::Cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_serves_with_its_budget_and_sim_gpus_with_theirs() {
        let cpu = Discovery::open(
            &DeviceChoice::Cpu,
            EngineKind::Candle,
            MemorySize::Percent(50.0),
            &[],
        )
        .unwrap();
        let devices = cpu.devices(|_| 1 << 20);
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].kind, DeviceKind::Cpu);
        let half = MemInfo::read().total / 2;
        assert!(devices[0].memory_total_bytes.abs_diff(half) < 64 << 20);
        assert_eq!(devices[0].memory_used_bytes, 1 << 20);
        assert!(devices[0].memory_free_bytes <= devices[0].memory_total_bytes - (1 << 20));
        assert!(cpu.tracks_our_memory());
        assert_eq!(cpu.engine_device(0), DeviceSpec::Cpu);

        let sim = Discovery::open(
            &DeviceChoice::Auto,
            EngineKind::Sim,
            MemorySize::Percent(50.0),
            &[80 << 30, 24 << 30],
        )
        .unwrap();
        let devices = sim.devices(|index| if index == 1 { 4 << 30 } else { 0 });
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[1].memory_free_bytes, 20 << 30);
        assert!(devices[0].name.contains("80.0 GiB"));
    }

    #[test]
    fn a_cpu_build_refuses_named_gpus_and_auto_falls_back_to_the_cpu() {
        if cfg!(feature = "cuda") {
            return;
        }
        let named = Discovery::open(
            &DeviceChoice::Cuda(vec![0]),
            EngineKind::Candle,
            MemorySize::Percent(50.0),
            &[],
        );
        assert!(matches!(named, Err(DiscoveryError::NoCudaBuild)));
        let auto = Discovery::open(
            &DeviceChoice::Auto,
            EngineKind::Candle,
            MemorySize::Percent(50.0),
            &[],
        )
        .unwrap();
        assert_eq!(auto.devices(|_| 0)[0].kind, DeviceKind::Cpu);
    }
}
