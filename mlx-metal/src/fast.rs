//! MLX's fused kernels: normalisation, rotary embeddings and attention.

use std::ffi::CString;

use mlx_metal_sys as sys;

use crate::ops::{null_array, opt_float};
use crate::{Array, Result};

/// `x / sqrt(mean(x^2) + eps) * weight` over the last axis.
pub fn rms_norm(x: &Array, weight: Option<&Array>, eps: f32) -> Result<Array> {
    let w = weight.map_or_else(null_array, Array::raw);
    // SAFETY: handles are valid or null where mlx-c allows it; `res` is owned by the result.
    Array::build(|res, s| unsafe { sys::mlx_fast_rms_norm(res, x.raw(), w, eps, s) })
}

/// Layer normalisation over the last axis, with optional affine parameters.
pub fn layer_norm(
    x: &Array,
    weight: Option<&Array>,
    bias: Option<&Array>,
    eps: f32,
) -> Result<Array> {
    let w = weight.map_or_else(null_array, Array::raw);
    let b = bias.map_or_else(null_array, Array::raw);
    // SAFETY: handles are valid or null where mlx-c allows it; `res` is owned by the result.
    Array::build(|res, s| unsafe { sys::mlx_fast_layer_norm(res, x.raw(), w, b, eps, s) })
}

/// Rotary position embedding of the last axis's first `dims` features of
/// `x` (`[batch, heads, seq, head_dim]`), positions starting at `offset`.
///
/// Either `base` (frequencies `base^(-2i/dims)`) or `freqs` (explicit
/// frequencies, e.g. Llama-3 scaling) must be given. `traditional` rotates
/// adjacent pairs instead of the two halves.
pub fn rope(
    x: &Array,
    dims: i32,
    traditional: bool,
    base: Option<f32>,
    scale: f32,
    offset: i32,
    freqs: Option<&Array>,
) -> Result<Array> {
    let f = freqs.map_or_else(null_array, Array::raw);
    // SAFETY: handles are valid or null where mlx-c allows it; `res` is owned by the result.
    Array::build(|res, s| unsafe {
        sys::mlx_fast_rope(
            res,
            x.raw(),
            dims,
            traditional,
            opt_float(base),
            scale,
            offset,
            f,
            s,
        )
    })
}

/// [`rope`] with a position offset per batch row: `offset` is an int32
/// array of shape `[batch]`.
pub fn rope_dynamic(
    x: &Array,
    dims: i32,
    traditional: bool,
    base: Option<f32>,
    scale: f32,
    offset: &Array,
    freqs: Option<&Array>,
) -> Result<Array> {
    let f = freqs.map_or_else(null_array, Array::raw);
    // SAFETY: handles are valid or null where mlx-c allows it; `res` is owned by the result.
    Array::build(|res, s| unsafe {
        sys::mlx_fast_rope_dynamic(
            res,
            x.raw(),
            dims,
            traditional,
            opt_float(base),
            scale,
            offset.raw(),
            f,
            s,
        )
    })
}

/// The mask given to [`scaled_dot_product_attention`].
#[derive(Debug, Clone, Copy)]
pub enum AttentionMask<'a> {
    /// Every query sees every key.
    None,
    /// Query `i` sees keys up to its own position (aligned to the end).
    Causal,
    /// Added to the scores (`-inf` hides), or a boolean keep-mask.
    Array(&'a Array),
}

/// `softmax(q @ k.T * scale + mask) @ v`, with grouped-query attention when
/// `k`/`v` have fewer heads than `q`. Shapes are `[batch, heads, seq, dim]`.
pub fn scaled_dot_product_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: AttentionMask<'_>,
) -> Result<Array> {
    let (mode, arr) = match mask {
        AttentionMask::None => ("", null_array()),
        AttentionMask::Causal => ("causal", null_array()),
        AttentionMask::Array(a) => ("array", a.raw()),
    };
    let mode = CString::new(mode).expect("mask mode has no NUL");
    // SAFETY: handles are valid or null where mlx-c allows it; `mode` outlives the call.
    Array::build(|res, s| unsafe {
        sys::mlx_fast_scaled_dot_product_attention(
            res,
            q.raw(),
            k.raw(),
            v.raw(),
            scale,
            mode.as_ptr(),
            arr,
            null_array(),
            false,
            s,
        )
    })
}
