//! An owned `mlx_vector_array`, used to pass lists of arrays to mlx-c.

use mlx_metal_sys as sys;

use crate::status::init;
use crate::{Array, Result};

/// Owns an mlx-c vector of arrays; frees it on drop.
pub(crate) struct VectorArray {
    pub(crate) raw: sys::mlx_vector_array,
}

impl VectorArray {
    /// An empty vector (an out-parameter for mlx-c).
    pub(crate) fn new() -> VectorArray {
        init();
        // SAFETY: creates a handle this value owns.
        VectorArray {
            raw: unsafe { sys::mlx_vector_array_new() },
        }
    }

    /// A vector holding references to `arrays`.
    pub(crate) fn from_arrays<'a>(arrays: impl IntoIterator<Item = &'a Array>) -> VectorArray {
        let raws: Vec<sys::mlx_array> = arrays.into_iter().map(|a| a.raw()).collect();
        init();
        // SAFETY: `raws` holds valid handles for the call; mlx-c copies references.
        VectorArray {
            raw: unsafe { sys::mlx_vector_array_new_data(raws.as_ptr(), raws.len()) },
        }
    }

    /// Copies out the arrays of a vector this value does not own.
    pub(crate) fn read(raw: sys::mlx_vector_array) -> Result<Vec<Array>> {
        // SAFETY: `raw` is a valid vector handle for the duration of the call.
        let n = unsafe { sys::mlx_vector_array_size(raw) };
        (0..n)
            .map(|i| {
                // SAFETY: `i < n`; `res` is a fresh handle owned by the new `Array`.
                Array::fill(|res| unsafe { sys::mlx_vector_array_get(res, raw, i) })
            })
            .collect()
    }

    /// Runs an mlx-c call that writes a vector of arrays, on the default
    /// stream, and returns them.
    pub(crate) fn build(
        f: impl FnOnce(*mut sys::mlx_vector_array, sys::mlx_stream) -> i32,
    ) -> Result<Vec<Array>> {
        let mut out = VectorArray::new();
        crate::device::with_default_stream(|s| crate::status::call(|| f(&mut out.raw, s)))?;
        out.to_vec()
    }

    /// The arrays held.
    pub(crate) fn to_vec(&self) -> Result<Vec<Array>> {
        VectorArray::read(self.raw)
    }
}

impl Drop for VectorArray {
    fn drop(&mut self) {
        // SAFETY: `raw` is owned by this value and freed exactly once.
        unsafe { sys::mlx_vector_array_free(self.raw) };
    }
}
