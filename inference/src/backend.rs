//! The backend trait and its registration.

use std::path::Path;

use crate::{LoadOptions, TextModel};

/// The name of the in-process MLX backend on this platform: `metal` on
/// macOS with Apple silicon, `mlx` everywhere else (Linux CPU or CUDA).
///
/// ```
/// let name = inference::native_backend_name();
/// assert!(name == "metal" || name == "mlx");
/// ```
pub const fn native_backend_name() -> &'static str {
    if cfg!(all(target_os = "macos", target_arch = "aarch64")) {
        "metal"
    } else {
        "mlx"
    }
}

/// What a backend reports about itself for listings such as
/// `mlx-infer backends`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendStatus {
    /// Whether it can load models on this machine.
    pub available: bool,
    /// Why not, when it cannot.
    pub reason: Option<String>,
    /// Version of the engine behind it (e.g. the MLX version).
    pub version: Option<String>,
    /// The device it computes on.
    pub device: Option<String>,
    /// The BLAS library behind its CPU matrix products, when it has one
    /// (e.g. `OpenBLAS 0.3.21, 2 threads` or `reference`).
    pub blas: Option<String>,
    /// What [`ComputeDtype::Auto`](crate::ComputeDtype::Auto) computes in
    /// here (e.g. `float32 for bfloat16/float16 weights`).
    pub dtype: Option<String>,
}

impl BackendStatus {
    /// An available backend.
    pub fn available(version: impl Into<String>, device: impl Into<String>) -> Self {
        BackendStatus {
            available: true,
            reason: None,
            version: Some(version.into()),
            device: Some(device.into()),
            blas: None,
            dtype: None,
        }
    }

    /// Adds the BLAS library in use.
    pub fn with_blas(mut self, blas: impl Into<String>) -> Self {
        self.blas = Some(blas.into());
        self
    }

    /// Adds what the default compute dtype resolves to.
    pub fn with_dtype(mut self, dtype: impl Into<String>) -> Self {
        self.dtype = Some(dtype.into());
        self
    }

    /// An unavailable backend and why.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        BackendStatus {
            available: false,
            reason: Some(reason.into()),
            ..Default::default()
        }
    }
}

/// A way of running models. Implementations register a `'static` instance
/// with `inference::inventory::submit!` so that [`load_model`](crate::load_model)
/// can find them.
pub trait Backend: Send + Sync {
    /// Unique short name (`metal`, `mlx`, `mlxlm`).
    fn name(&self) -> &'static str;

    /// Higher wins when several backends can load a directory.
    fn priority(&self) -> i32;

    /// Whether it can run here, and on what.
    fn status(&self) -> BackendStatus;

    /// Shorthand for `status().available`.
    fn is_available(&self) -> bool {
        self.status().available
    }

    /// Whether this backend wants to try `dir`. The default accepts any
    /// directory holding a `config.json`.
    fn accepts(&self, dir: &Path) -> bool {
        dir.join("config.json").is_file()
    }

    /// Loads the model in `dir`.
    fn load(&self, dir: &Path, opts: &LoadOptions) -> crate::Result<Box<dyn TextModel>>;
}

/// A registered backend; submit one with `inference::inventory::submit!`.
///
/// ```
/// use std::path::Path;
/// use inference::{Backend, BackendRegistration, BackendStatus, LoadOptions, TextModel};
///
/// struct Nothing;
/// impl Backend for Nothing {
///     fn name(&self) -> &'static str { "nothing" }
///     fn priority(&self) -> i32 { -100 }
///     fn status(&self) -> BackendStatus { BackendStatus::unavailable("example only") }
///     fn load(&self, _: &Path, _: &LoadOptions) -> inference::Result<Box<dyn TextModel>> {
///         Err(inference::Error::Unsupported("example only".into()))
///     }
/// }
/// inference::inventory::submit! { BackendRegistration::new(&Nothing) }
///
/// assert!(inference::backends().iter().any(|b| b.name() == "nothing"));
/// ```
pub struct BackendRegistration {
    /// The backend.
    pub backend: &'static dyn Backend,
}

impl BackendRegistration {
    /// Registers `backend`.
    pub const fn new(backend: &'static dyn Backend) -> Self {
        BackendRegistration { backend }
    }
}

inventory::collect!(BackendRegistration);

#[cfg(test)]
mod tests {
    #[test]
    fn the_native_backend_is_named_for_the_platform() {
        let on_apple_silicon = cfg!(target_os = "macos") && cfg!(target_arch = "aarch64");
        let expected = if on_apple_silicon { "metal" } else { "mlx" };
        assert_eq!(super::native_backend_name(), expected);
    }
}
