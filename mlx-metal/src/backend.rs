//! The `metal` / `mlx` backend registered with `inference`.

use std::path::Path;

use inference::{Backend, BackendRegistration, BackendStatus, LoadOptions, TextModel};

use crate::llm::NativeModel;
use crate::runtime::{backend_name, device_description, mlx_version};

/// Runs models in-process on MLX: registered as `metal` on Apple silicon and
/// as `mlx` (CPU or CUDA) elsewhere. Preferred over `mlxlm`; answers
/// `Unsupported` for architectures it does not run, so that `load_model`
/// falls back to another backend.
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
            .with_blas(crate::blas_in_use())
            .with_dtype(crate::llm::dtype::auto_description())
    }

    /// A model directory with a config.json, or a GGUF file.
    fn accepts(&self, path: &Path) -> bool {
        path.join("config.json").is_file()
            || (inference::gguf::is_gguf(path) && crate::llm::gguf::inspect(path).is_ok())
    }

    fn load(&self, dir: &Path, opts: &LoadOptions) -> inference::Result<Box<dyn TextModel>> {
        let mut model = match &opts.distributed {
            None => NativeModel::load_with_dtype(dir, opts.dtype)?,
            Some(d) => {
                if opts.adapter_path.is_some() {
                    return Err(inference::Error::Unsupported(
                        "an adapter on a distributed model (fuse it into the weights first)".into(),
                    ));
                }
                let kind = match d.parallelism {
                    inference::Parallelism::Tensor => crate::nn::ParallelKind::Tensor,
                    inference::Parallelism::Pipeline => crate::nn::ParallelKind::Pipeline,
                };
                NativeModel::load_distributed(dir, opts.dtype, d.backend.as_deref(), kind)?
            }
        };
        if let Some(adapter) = &opts.adapter_path {
            model.load_adapter(adapter)?;
        }
        Ok(Box::new(model))
    }
}

static BACKEND: MlxBackend = MlxBackend;

inventory::submit! { BackendRegistration::new(&BACKEND) }

/// Returns the registered backend. Calling it (once, anywhere) guarantees
/// that the linker keeps this crate's registration in the program, which a
/// crate that is only listed as a dependency does not.
pub fn ensure_registered() -> &'static dyn Backend {
    &BACKEND
}
