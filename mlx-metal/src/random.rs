//! Random numbers from explicit keys (reproducible) or MLX's global seed.

use mlx_metal_sys as sys;

use crate::ops::null_array;
use crate::{Array, Dtype, Result};

/// A PRNG key from `seed`.
pub fn key(seed: u64) -> Result<Array> {
    // SAFETY: `res` is owned by the result.
    Array::fill(|res| unsafe { sys::mlx_random_key(res, seed) })
}

/// Seeds MLX's global generator (used when no key is passed).
pub fn seed(seed: u64) -> Result<()> {
    crate::status::init();
    // SAFETY: plain call with no handles.
    crate::status::check(unsafe { sys::mlx_random_seed(seed) })
}

/// Splits a key into two independent keys.
pub fn split(key: &Array) -> Result<(Array, Array)> {
    // SAFETY: `a` and `b` are fresh handles owned by the results; `key` is valid.
    Array::build_pair(|a, b, s| unsafe { sys::mlx_random_split(a, b, key.raw(), s) })
}

fn key_raw(key: Option<&Array>) -> sys::mlx_array {
    key.map_or_else(null_array, Array::raw)
}

/// Samples indices from the unnormalised log-probabilities `logits` along `axis`.
pub fn categorical(logits: &Array, axis: i32, key: Option<&Array>) -> Result<Array> {
    let k = key_raw(key);
    // SAFETY: handles are valid or null; `res` is owned by the result.
    Array::build(|res, s| unsafe { sys::mlx_random_categorical(res, logits.raw(), axis, k, s) })
}

/// Uniform samples in `[low, high)`.
pub fn uniform(
    low: f32,
    high: f32,
    shape: &[i32],
    dtype: Dtype,
    key: Option<&Array>,
) -> Result<Array> {
    let (lo, hi) = (Array::scalar(low), Array::scalar(high));
    let k = key_raw(key);
    // SAFETY: handles are valid or null; `shape` is valid for its length.
    Array::build(|res, s| unsafe {
        sys::mlx_random_uniform(
            res,
            lo.raw(),
            hi.raw(),
            shape.as_ptr(),
            shape.len(),
            dtype.to_sys(),
            k,
            s,
        )
    })
}

/// Normal samples with mean `loc` and standard deviation `scale`.
pub fn normal(
    shape: &[i32],
    dtype: Dtype,
    loc: f32,
    scale: f32,
    key: Option<&Array>,
) -> Result<Array> {
    let k = key_raw(key);
    // SAFETY: handles are valid or null; `shape` is valid for its length.
    Array::build(|res, s| unsafe {
        sys::mlx_random_normal(
            res,
            shape.as_ptr(),
            shape.len(),
            dtype.to_sys(),
            loc,
            scale,
            k,
            s,
        )
    })
}
