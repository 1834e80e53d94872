//! Stand-in for `mlx-metal` in builds without MLX.
//!
//! It answers the same questions as the real crate (is Metal here? how much
//! memory is in use?) with "no" and a typed error, so that a program built
//! with only the `mlxlm` backend still compiles and explains itself.
//!
//! ```
//! assert!(!stub::metal_available());
//! assert!(stub::active_memory().is_err());
//! ```

#![warn(missing_docs)]

/// Why every memory call fails in a build without MLX.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The program was built without the MLX backend.
    #[error("no MLX: this program was built without the `metal` feature (rebuild with it after `cargo xtask build-mlx`)")]
    NoMlx,
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Always false: there is no MLX in this build.
pub fn metal_available() -> bool {
    false
}

/// Always false: there is no MLX in this build.
pub fn gpu_available() -> bool {
    false
}

/// Always [`Error::NoMlx`].
pub fn active_memory() -> Result<usize> {
    Err(Error::NoMlx)
}

/// Always [`Error::NoMlx`].
pub fn peak_memory() -> Result<usize> {
    Err(Error::NoMlx)
}

/// Always [`Error::NoMlx`].
pub fn cache_memory() -> Result<usize> {
    Err(Error::NoMlx)
}

/// Always [`Error::NoMlx`].
pub fn reset_peak_memory() -> Result<()> {
    Err(Error::NoMlx)
}

/// Always [`Error::NoMlx`].
pub fn clear_cache() -> Result<()> {
    Err(Error::NoMlx)
}

/// Always [`Error::NoMlx`].
pub fn set_cache_limit(_bytes: usize) -> Result<usize> {
    Err(Error::NoMlx)
}

/// Always [`Error::NoMlx`].
pub fn set_memory_limit(_bytes: usize) -> Result<usize> {
    Err(Error::NoMlx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_says_no_mlx() {
        assert!(!metal_available());
        assert!(!gpu_available());
        assert_eq!(active_memory(), Err(Error::NoMlx));
        assert_eq!(peak_memory(), Err(Error::NoMlx));
        assert_eq!(cache_memory(), Err(Error::NoMlx));
        assert_eq!(reset_peak_memory(), Err(Error::NoMlx));
        assert_eq!(clear_cache(), Err(Error::NoMlx));
        assert_eq!(set_cache_limit(1), Err(Error::NoMlx));
        assert_eq!(set_memory_limit(1), Err(Error::NoMlx));
        assert!(Error::NoMlx.to_string().contains("cargo xtask build-mlx"));
    }
}
