//! Reductions, normalisations over axes, sorting and scans.

use mlx_metal_sys as sys;

use crate::{Array, Result};

/// Defines `pub fn $name(&self, axes: &[i32], keepdims: bool)`; empty `axes`
/// reduces over every axis.
macro_rules! reductions {
    ($($(#[$doc:meta])* $name:ident => $all:ident, $axes:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
            if axes.is_empty() {
                // SAFETY: handles are valid; `res` is owned by the result.
                return Array::build(|res, s| unsafe { sys::$all(res, self.raw(), keepdims, s) });
            }
            // SAFETY: `axes` is valid for its length; handles are valid.
            Array::build(|res, s| unsafe {
                sys::$axes(res, self.raw(), axes.as_ptr(), axes.len(), keepdims, s)
            })
        }
    )*};
}

impl Array {
    reductions! {
        /// Sum over `axes`.
        sum => mlx_sum, mlx_sum_axes;
        /// Mean over `axes`.
        mean => mlx_mean, mlx_mean_axes;
        /// Maximum over `axes`.
        max => mlx_max, mlx_max_axes;
        /// Minimum over `axes`.
        min => mlx_min, mlx_min_axes;
        /// `log(sum(exp(self)))` over `axes`, computed stably.
        logsumexp => mlx_logsumexp, mlx_logsumexp_axes;
    }

    /// Variance over `axes` (every axis when empty) with `ddof` degrees of
    /// freedom removed.
    pub fn var(&self, axes: &[i32], keepdims: bool, ddof: i32) -> Result<Array> {
        if axes.is_empty() {
            // SAFETY: handles are valid; `res` is owned by the result.
            return Array::build(|res, s| unsafe {
                sys::mlx_var(res, self.raw(), keepdims, ddof, s)
            });
        }
        // SAFETY: `axes` is valid for its length; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_var_axes(
                res,
                self.raw(),
                axes.as_ptr(),
                axes.len(),
                keepdims,
                ddof,
                s,
            )
        })
    }

    /// Softmax over `axes`; `precise` accumulates half types in f32.
    pub fn softmax(&self, axes: &[i32], precise: bool) -> Result<Array> {
        // SAFETY: `axes` is valid for its length; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_softmax_axes(res, self.raw(), axes.as_ptr(), axes.len(), precise, s)
        })
    }

    /// Index of the maximum along `axis`.
    pub fn argmax(&self, axis: i32, keepdims: bool) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_argmax_axis(res, self.raw(), axis, keepdims, s) })
    }

    /// Indices that partition `axis` around its `kth` smallest element.
    pub fn argpartition(&self, kth: i32, axis: i32) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_argpartition_axis(res, self.raw(), kth, axis, s) })
    }

    /// Sorted along `axis`, ascending.
    pub fn sort(&self, axis: i32) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_sort_axis(res, self.raw(), axis, s) })
    }

    /// Indices that sort `axis` ascending.
    pub fn argsort(&self, axis: i32) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_argsort_axis(res, self.raw(), axis, s) })
    }

    /// Cumulative sum along `axis`.
    pub fn cumsum(&self, axis: i32, reverse: bool, inclusive: bool) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_cumsum_axis(
                res,
                self.raw(),
                axis,
                reverse,
                inclusive,
                super::opt_dtype(None),
                s,
            )
        })
    }
}
