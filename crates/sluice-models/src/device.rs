//! Which device a model runs on, from a setting users write (`--device`, `SLUICE_DEVICE`).

use candle_core::Device;

/// `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (GPU 0 when this build has CUDA and one is
/// present, else the CPU).
pub fn select(spec: &str) -> Result<Device, String> {
    let spec = spec.trim().to_ascii_lowercase();
    let cuda = |n: usize| {
        Device::new_cuda(n).map_err(|e| {
            format!(
                "device {spec:?}: {e} (CUDA needs a build with --features cuda, as the CUDA \
                 image has, and a visible GPU)"
            )
        })
    };
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        "cuda" | "gpu" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(format!(
                "unknown device {spec:?}: expected cpu, cuda, cuda:N or auto"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert!(matches!(select("CPU"), Ok(Device::Cpu)));
        assert!(select("auto").is_ok());
        let err = select("tpu").unwrap_err();
        assert!(err.contains("cpu, cuda, cuda:N or auto"), "{err}");
        #[cfg(not(feature = "cuda"))]
        assert!(select("cuda:1").unwrap_err().contains("--features cuda"));
    }
}
