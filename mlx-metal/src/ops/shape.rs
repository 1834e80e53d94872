//! Reshaping, indexing, joining and splitting.

use mlx_metal_sys as sys;

use crate::vector::VectorArray;
use crate::{Array, Dtype, Error, Result};

impl Array {
    /// Same elements, new shape (one dimension may be `-1`).
    pub fn reshape(&self, shape: &[i32]) -> Result<Array> {
        // SAFETY: `shape` is valid for its length; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_reshape(res, self.raw(), shape.as_ptr(), shape.len(), s)
        })
    }

    /// Reverses the axes.
    pub fn transpose(&self) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_transpose(res, self.raw(), s) })
    }

    /// Permutes the axes.
    pub fn transpose_axes(&self, axes: &[i32]) -> Result<Array> {
        // SAFETY: `axes` is valid for its length; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_transpose_axes(res, self.raw(), axes.as_ptr(), axes.len(), s)
        })
    }

    /// Swaps two axes.
    pub fn swap_axes(&self, a: i32, b: i32) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_swapaxes(res, self.raw(), a, b, s) })
    }

    /// `self[start:stop:strides]` over every axis.
    pub fn slice(&self, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<Array> {
        // SAFETY: the three slices are valid for their lengths; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_slice(
                res,
                self.raw(),
                start.as_ptr(),
                start.len(),
                stop.as_ptr(),
                stop.len(),
                strides.as_ptr(),
                strides.len(),
                s,
            )
        })
    }

    /// `self[..., start:stop, ...]` on one axis (unit stride).
    pub fn slice_axis(&self, axis: i32, start: i32, stop: i32) -> Result<Array> {
        let shape = self.shape();
        let n = shape.len() as i32;
        let ax = if axis < 0 { axis + n } else { axis };
        if ax < 0 || ax >= n {
            return Err(Error::InvalidArgument(format!(
                "axis {axis} out of range for shape {shape:?}"
            )));
        }
        let mut lo = vec![0; shape.len()];
        let mut hi = shape.clone();
        lo[ax as usize] = start;
        hi[ax as usize] = stop;
        self.slice(&lo, &hi, &vec![1; shape.len()])
    }

    /// A copy of `self` with `self[start:stop:strides] = update`.
    pub fn slice_update(
        &self,
        update: &Array,
        start: &[i32],
        stop: &[i32],
        strides: &[i32],
    ) -> Result<Array> {
        // SAFETY: the three slices are valid for their lengths; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_slice_update(
                res,
                self.raw(),
                update.raw(),
                start.as_ptr(),
                start.len(),
                stop.as_ptr(),
                stop.len(),
                strides.as_ptr(),
                strides.len(),
                s,
            )
        })
    }

    /// A copy of `self` with `update` written from `start` (an int32 array,
    /// one entry per axis of `axes`) along `axes`: the position can be an
    /// array computed in the graph, so a compiled function writes at a new
    /// place on each call without being traced again.
    pub fn slice_update_dynamic(
        &self,
        update: &Array,
        start: &Array,
        axes: &[i32],
    ) -> Result<Array> {
        // SAFETY: `axes` is valid for its length; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_slice_update_dynamic(
                res,
                self.raw(),
                update.raw(),
                start.raw(),
                axes.as_ptr(),
                axes.len(),
                s,
            )
        })
    }

    /// Joins arrays along `axis`.
    pub fn concatenate(arrays: &[&Array], axis: i32) -> Result<Array> {
        let v = VectorArray::from_arrays(arrays.iter().copied());
        // SAFETY: `v` holds valid handles for the call.
        Array::build(|res, s| unsafe { sys::mlx_concatenate_axis(res, v.raw, axis, s) })
    }

    /// Stacks arrays along a new `axis`.
    pub fn stack(arrays: &[&Array], axis: i32) -> Result<Array> {
        let v = VectorArray::from_arrays(arrays.iter().copied());
        // SAFETY: `v` holds valid handles for the call.
        Array::build(|res, s| unsafe { sys::mlx_stack_axis(res, v.raw, axis, s) })
    }

    /// Splits into `parts` equal pieces along `axis`.
    pub fn split(&self, parts: i32, axis: i32) -> Result<Vec<Array>> {
        // SAFETY: `res` is the vector owned by the builder; handles are valid.
        VectorArray::build(|res, s| unsafe { sys::mlx_split(res, self.raw(), parts, axis, s) })
    }

    /// Splits along `axis` before each of `indices`.
    pub fn split_at(&self, indices: &[i32], axis: i32) -> Result<Vec<Array>> {
        // SAFETY: `res` is owned by the builder; `indices` is valid for its length.
        VectorArray::build(|res, s| unsafe {
            sys::mlx_split_sections(res, self.raw(), indices.as_ptr(), indices.len(), axis, s)
        })
    }

    /// Gathers `indices` along `axis` (embedding lookup is `take(ids, 0)`).
    pub fn take(&self, indices: &Array, axis: i32) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_take_axis(res, self.raw(), indices.raw(), axis, s)
        })
    }

    /// Gathers along `axis` with `indices` of the same rank.
    pub fn take_along_axis(&self, indices: &Array, axis: i32) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_take_along_axis(res, self.raw(), indices.raw(), axis, s)
        })
    }

    /// A copy of `self` with `values` written at `indices` along `axis`
    /// (the scatter counterpart of [`take_along_axis`](Self::take_along_axis)).
    pub fn put_along_axis(&self, indices: &Array, values: &Array, axis: i32) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_put_along_axis(res, self.raw(), indices.raw(), values.raw(), axis, s)
        })
    }

    /// Inserts size-one axes at `axes`.
    pub fn expand_dims(&self, axes: &[i32]) -> Result<Array> {
        // SAFETY: `axes` is valid for its length; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_expand_dims_axes(res, self.raw(), axes.as_ptr(), axes.len(), s)
        })
    }

    /// Removes the size-one axes at `axes` (all of them when empty).
    pub fn squeeze(&self, axes: &[i32]) -> Result<Array> {
        if axes.is_empty() {
            // SAFETY: handles are valid; `res` is owned by the result.
            return Array::build(|res, s| unsafe { sys::mlx_squeeze(res, self.raw(), s) });
        }
        // SAFETY: `axes` is valid for its length; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_squeeze_axes(res, self.raw(), axes.as_ptr(), axes.len(), s)
        })
    }

    /// Broadcasts to `shape` (a view: no copy).
    pub fn broadcast_to(&self, shape: &[i32]) -> Result<Array> {
        // SAFETY: `shape` is valid for its length; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_broadcast_to(res, self.raw(), shape.as_ptr(), shape.len(), s)
        })
    }

    /// Converts the elements to `dtype`.
    pub fn astype(&self, dtype: Dtype) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_astype(res, self.raw(), dtype.to_sys(), s) })
    }

    /// A row-major copy (shares the buffer when already row-major).
    pub fn contiguous(&self) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_contiguous(res, self.raw(), false, s) })
    }

    /// Blocks gradients from flowing through this value.
    pub fn stop_gradient(&self) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_stop_gradient(res, self.raw(), s) })
    }
}
