//! The `metal` / `mlx` backend registered with `inference`.

use std::path::Path;

use inference::{Backend, BackendRegistration, BackendStatus, LoadOptions, TextModel};

use crate::runtime::{backend_name, device_description, mlx_version};

/// Runs models in-process on MLX: registered as `metal` on Apple silicon and
/// as `mlx` (CPU or CUDA) elsewhere. Preferred over `mlxlm`.
pub struct MlxBackend;

impl Backend for MlxBackend {
    fn name(&self) -> &'static str {
        backend_name()
    }

    fn priority(&self) -> i32 {
        100
    }

    fn status(&self) -> BackendStatus {
        BackendStatus::available(mlx_version(), device_description())
    }

    fn load(&self, dir: &Path, _opts: &LoadOptions) -> inference::Result<Box<dyn TextModel>> {
        Err(inference::Error::Unsupported(format!(
            "the {} backend cannot load models yet ({})",
            backend_name(),
            dir.display()
        )))
    }
}

inventory::submit! { BackendRegistration::new(&MlxBackend) }
