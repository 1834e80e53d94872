//! Arrays made from a shape and a value.

use mlx_metal_sys as sys;

use crate::{Array, Dtype, Result};

impl Array {
    /// An array of zeros.
    pub fn zeros(shape: &[i32], dtype: Dtype) -> Result<Array> {
        // SAFETY: `shape` is valid for its length; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_zeros(res, shape.as_ptr(), shape.len(), dtype.to_sys(), s)
        })
    }

    /// An array of ones.
    pub fn ones(shape: &[i32], dtype: Dtype) -> Result<Array> {
        // SAFETY: `shape` is valid for its length; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_ones(res, shape.as_ptr(), shape.len(), dtype.to_sys(), s)
        })
    }

    /// An array filled with `value`.
    pub fn full(shape: &[i32], value: f32, dtype: Dtype) -> Result<Array> {
        let v = Array::scalar(value);
        // SAFETY: `shape` is valid for its length; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_full(res, shape.as_ptr(), shape.len(), v.raw(), dtype.to_sys(), s)
        })
    }

    /// `[start, start + step, ...)` up to `stop`.
    pub fn arange(start: f64, stop: f64, step: f64, dtype: Dtype) -> Result<Array> {
        // SAFETY: `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_arange(res, start, stop, step, dtype.to_sys(), s) })
    }
}
