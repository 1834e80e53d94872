//! What MLX build this is and which devices it can use.

use mlx_metal_sys as sys;

use crate::status::{call, init, read_string};
use crate::{Device, DeviceType};

/// The MLX version this program runs against (e.g. `0.32.2`).
pub fn mlx_version() -> String {
    // SAFETY: the out-parameter is a live string handle.
    read_string(|s| unsafe { sys::mlx_version(s) }).unwrap_or_else(|_| "unknown".into())
}

/// True only on macOS on Apple silicon with a Metal device that MLX can use.
pub fn metal_available() -> bool {
    if backend_name() != "metal" {
        return false;
    }
    init();
    let mut avail = false;
    // SAFETY: live out-parameter.
    call(|| unsafe { sys::mlx_metal_is_available(&mut avail) }).is_ok() && avail
}

/// True when MLX can run on a GPU here (Metal on macOS, CUDA on Linux).
pub fn gpu_available() -> bool {
    Device::new(DeviceType::Gpu).is_available()
}

/// The name this crate's backend registers under: `metal` on macOS with
/// Apple silicon, `mlx` elsewhere.
pub fn backend_name() -> &'static str {
    inference::native_backend_name()
}

/// A short description of the device MLX computes on by default.
pub(crate) fn device_description() -> String {
    let kind = Device::default_device().and_then(|d| d.kind());
    match kind {
        Ok(DeviceType::Cpu) => "cpu".into(),
        Ok(DeviceType::Gpu) if metal_available() => "gpu (metal)".into(),
        Ok(DeviceType::Gpu) => "gpu (cuda)".into(),
        Err(e) => format!("unknown ({e})"),
    }
}
