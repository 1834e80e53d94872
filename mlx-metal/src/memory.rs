//! MLX's memory accounting and limits.

use mlx_metal_sys as sys;

use crate::status::call;
use crate::Result;

fn read(f: unsafe extern "C" fn(*mut usize) -> i32) -> Result<usize> {
    let mut v = 0usize;
    // SAFETY: `f` is one of mlx-c's getters writing a `size_t` into a live out-parameter.
    call(|| unsafe { f(&mut v) })?;
    Ok(v)
}

/// Bytes held by live arrays.
pub fn active_memory() -> Result<usize> {
    read(sys::mlx_get_active_memory)
}

/// Highest [`active_memory`] since start or [`reset_peak_memory`].
pub fn peak_memory() -> Result<usize> {
    read(sys::mlx_get_peak_memory)
}

/// Bytes kept in MLX's buffer cache for reuse.
pub fn cache_memory() -> Result<usize> {
    read(sys::mlx_get_cache_memory)
}

/// The memory limit MLX tries to stay under.
pub fn memory_limit() -> Result<usize> {
    read(sys::mlx_get_memory_limit)
}

/// Restarts peak tracking from the current active memory.
pub fn reset_peak_memory() -> Result<()> {
    // SAFETY: no arguments.
    call(|| unsafe { sys::mlx_reset_peak_memory() })
}

/// Frees the buffer cache.
pub fn clear_cache() -> Result<()> {
    // SAFETY: no arguments.
    call(|| unsafe { sys::mlx_clear_cache() })
}

/// Caps the buffer cache; returns the previous limit.
pub fn set_cache_limit(bytes: usize) -> Result<usize> {
    let mut previous = 0usize;
    // SAFETY: live out-parameter.
    call(|| unsafe { sys::mlx_set_cache_limit(&mut previous, bytes) })?;
    Ok(previous)
}

/// Sets the memory limit; returns the previous one.
pub fn set_memory_limit(bytes: usize) -> Result<usize> {
    let mut previous = 0usize;
    // SAFETY: live out-parameter.
    call(|| unsafe { sys::mlx_set_memory_limit(&mut previous, bytes) })?;
    Ok(previous)
}
