//! GPUs through NVML (`libnvidia-ml`, loaded at run time: a build without
//! the driver still compiles and runs, and falls back to the CPU).

use std::ffi::OsStr;

use cortex_schemas::{DeviceKind, DeviceStatus};
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::Nvml;

use super::DiscoveryError;

/// The GPUs this neuron uses, by NVML index.
pub struct Gpus {
    nvml: Nvml,
    /// NVML indices of the GPUs in use; our device `i` is `indices[i]`.
    indices: Vec<u32>,
    driver: Option<String>,
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpus")
            .field("indices", &self.indices)
            .field("driver", &self.driver)
            .finish()
    }
}

impl Gpus {
    /// Opens NVML; `only` restricts to these indices (each must exist).
    /// `NoNvml` carries NVML's own reason.
    pub fn open(only: Option<&[u32]>) -> Result<Self, DiscoveryError> {
        // Driver-only hosts ship `libnvidia-ml.so.1`; the unversioned name
        // comes with development packages.
        let nvml = Nvml::builder()
            .lib_path(OsStr::new("libnvidia-ml.so.1"))
            .init()
            .or_else(|_| Nvml::init())
            .map_err(|e| DiscoveryError::NoNvml(e.to_string()))?;
        let count = nvml
            .device_count()
            .map_err(|e| DiscoveryError::NoNvml(e.to_string()))?;
        let indices = match only {
            Some(list) => {
                if let Some(&index) = list.iter().find(|&&i| i >= count) {
                    return Err(DiscoveryError::NoSuchGpu { index, count });
                }
                list.to_vec()
            }
            None => (0..count).collect(),
        };
        let driver = nvml.sys_driver_version().ok();
        Ok(Self {
            nvml,
            indices,
            driver,
        })
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The CUDA ordinal of our device `index`. NVML numbers GPUs by PCI bus;
    /// CUDA does too when `CUDA_DEVICE_ORDER=PCI_BUS_ID` is set (its default
    /// puts the fastest first), which multi-GPU hosts should set.
    pub fn cuda_ordinal(&self, index: u32) -> u32 {
        self.indices.get(index as usize).copied().unwrap_or(index)
    }

    /// Each GPU's identity, memory, utilisation and temperature, now.
    pub fn statuses(&self) -> Vec<DeviceStatus> {
        self.indices
            .iter()
            .enumerate()
            .filter_map(|(i, &nvml_index)| {
                let device = match self.nvml.device_by_index(nvml_index) {
                    Ok(device) => device,
                    Err(error) => {
                        tracing::warn!(nvml_index, %error, "GPU not readable");
                        return None;
                    }
                };
                let memory = device.memory_info().ok();
                Some(DeviceStatus {
                    index: i as u32,
                    kind: DeviceKind::Cuda,
                    name: device.name().unwrap_or_else(|_| "unknown GPU".into()),
                    uuid: device.uuid().ok(),
                    memory_total_bytes: memory.as_ref().map_or(0, |m| m.total),
                    memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
                    memory_free_bytes: memory.as_ref().map_or(0, |m| m.free),
                    utilization_pct: device.utilization_rates().ok().map(|u| u.gpu),
                    temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                    driver: self.driver.clone(),
                })
            })
            .collect()
    }
}
