//! Affine quantisation (MLX's format: packed uint32 weights, one scale and
//! bias per group).

use std::ffi::CStr;

use mlx_metal_sys as sys;

use super::{null_array, opt_dtype, opt_int};
use crate::vector::VectorArray;
use crate::{Array, Error, Result};

const AFFINE: &CStr = c"affine";

/// A matrix quantised by [`Array::quantize`]: packed weights with per-group
/// scales and biases.
#[derive(Debug, Clone)]
pub struct QuantizedWeight {
    /// Packed `uint32` weights, `[out, in * bits / 32]`.
    pub weight: Array,
    /// One scale per group, `[out, in / group_size]`.
    pub scales: Array,
    /// One bias per group, same shape as `scales`.
    pub biases: Array,
    /// Elements per group along the last axis.
    pub group_size: i32,
    /// Bits per element (2, 3, 4, 5, 6 or 8).
    pub bits: i32,
}

impl QuantizedWeight {
    /// Back to a dense matrix (in the scales' dtype).
    pub fn dequantize(&self) -> Result<Array> {
        // SAFETY: all handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_dequantize(
                res,
                self.weight.raw(),
                self.scales.raw(),
                self.biases.raw(),
                opt_int(Some(self.group_size)),
                opt_int(Some(self.bits)),
                AFFINE.as_ptr(),
                null_array(),
                opt_dtype(None),
                s,
            )
        })
    }
}

impl Array {
    /// Quantises a matrix along its last axis in groups of `group_size`
    /// with `bits` per element.
    pub fn quantize(&self, group_size: i32, bits: i32) -> Result<QuantizedWeight> {
        // SAFETY: handles are valid; `res` is owned by the builder.
        let parts = VectorArray::build(|res, s| unsafe {
            sys::mlx_quantize(
                res,
                self.raw(),
                opt_int(Some(group_size)),
                opt_int(Some(bits)),
                AFFINE.as_ptr(),
                null_array(),
                s,
            )
        })?;
        let [weight, scales, biases]: [Array; 3] = parts.try_into().map_err(|v: Vec<Array>| {
            Error::Mlx(format!("quantize returned {} arrays, expected 3", v.len()))
        })?;
        Ok(QuantizedWeight {
            weight,
            scales,
            biases,
            group_size,
            bits,
        })
    }

    /// `self @ w.T` (with `transpose`) or `self @ w` against a quantised
    /// matrix, without dequantising it.
    pub fn quantized_matmul(&self, w: &QuantizedWeight, transpose: bool) -> Result<Array> {
        // SAFETY: all handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_quantized_matmul(
                res,
                self.raw(),
                w.weight.raw(),
                w.scales.raw(),
                w.biases.raw(),
                transpose,
                opt_int(Some(w.group_size)),
                opt_int(Some(w.bits)),
                AFFINE.as_ptr(),
                s,
            )
        })
    }
}
