//! The `mlxlm` backend: the `inference` API served by a Python `mlx_lm`
//! subprocess speaking JSON lines.

/// The name this backend registers under.
pub const BACKEND_NAME: &str = "mlxlm";
