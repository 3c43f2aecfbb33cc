//! Which device a model runs on, from a setting users write (`--device`, `SLUICE_DEVICE`).
//!
//! Callers hold a [`DeviceSpec`], a plain value; the candle device it means is made here, so
//! no crate above this one depends on candle.

use candle_core::Device;

use crate::ModelError;

/// `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (GPU 0 when this build has CUDA and one is
/// present, else the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// A GPU when there is one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// GPU N.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        let spec = s.trim().to_ascii_lowercase();
        match spec.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(ModelError::InvalidSettings(format!(
                    "unknown device {spec:?}: expected cpu, cuda, cuda:N or auto"
                ))),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The device this means on this machine and build; a GPU that cannot be used says why.
    pub fn select(self) -> Result<Device, ModelError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
            DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                ModelError::InvalidSettings(format!(
                    "device \"cuda:{n}\": {e} (CUDA needs a build with --features cuda, as the \
                     CUDA image has, and a visible GPU)"
                ))
            }),
        }
    }

    /// Whether this means the CPU on this machine and build.
    pub fn is_cpu(self) -> bool {
        self.select().map(|d| d.is_cpu()).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert!(matches!(DeviceSpec::Cpu.select(), Ok(Device::Cpu)));
        assert!(DeviceSpec::Auto.select().is_ok());
        let err = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("cpu, cuda, cuda:N or auto"), "{err}");
        #[cfg(not(feature = "cuda"))]
        assert!(DeviceSpec::Cuda(1)
            .select()
            .unwrap_err()
            .to_string()
            .contains("--features cuda"));
    }
}
