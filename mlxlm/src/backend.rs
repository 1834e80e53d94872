//! The `mlxlm` backend registered with `inference`.

use std::path::Path;

use inference::{Backend, BackendRegistration, BackendStatus, LoadOptions, TextModel};

use crate::{python_status, MlxLmModel, BACKEND_NAME};

/// Serves models through Python's `mlx_lm`. Lower priority than the native
/// MLX backend.
pub struct MlxLmBackend;

impl Backend for MlxLmBackend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn priority(&self) -> i32 {
        10
    }

    fn status(&self) -> BackendStatus {
        match python_status() {
            Ok(v) => BackendStatus::available(
                v.mlx,
                format!(
                    "python `{}` with mlx_lm {}",
                    crate::python_command(),
                    v.mlx_lm
                ),
            ),
            Err(reason) => BackendStatus::unavailable(reason),
        }
    }

    fn load(&self, dir: &Path, opts: &LoadOptions) -> inference::Result<Box<dyn TextModel>> {
        if opts.distributed.is_some() {
            return Err(inference::Error::Unsupported(
                "the mlxlm backend runs in one process; distributed runs need the native backend"
                    .into(),
            ));
        }
        Ok(Box::new(MlxLmModel::load_with_adapter(
            dir,
            opts.dtype,
            opts.adapter_path.as_deref(),
        )?))
    }
}

static BACKEND: MlxLmBackend = MlxLmBackend;

inventory::submit! { BackendRegistration::new(&BACKEND) }

/// Returns the registered backend. Calling it (once, anywhere) guarantees
/// that the linker keeps this crate's registration in the program, which a
/// crate that is only listed as a dependency does not.
pub fn ensure_registered() -> &'static dyn Backend {
    &BACKEND
}
