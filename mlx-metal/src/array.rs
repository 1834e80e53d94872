//! [`Array`]: an owned MLX array, and moving data in and out of it.

use mlx_metal_sys as sys;

use crate::device::with_default_stream;
use crate::status::{call, init, read_string};
use crate::{Dtype, Error, Result};

/// A Rust element type that can be copied into and out of an [`Array`].
pub trait Element: Copy + sealed::Sealed + 'static {
    /// The matching MLX dtype.
    const DTYPE: Dtype;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: Dtype = Dtype::$d;
        }
    )*};
}

element! {
    bool => Bool,
    u8 => Uint8,
    u32 => Uint32,
    i32 => Int32,
    i64 => Int64,
    f32 => Float32,
    f64 => Float64,
    half::f16 => Float16,
    half::bf16 => Bfloat16,
}

/// An MLX array. Owns its handle: dropping it releases MLX's reference;
/// cloning shares the same data (MLX arrays are immutable values).
///
/// Operations are lazy: they build a graph that runs on [`eval`](Self::eval),
/// on reading data, or on [`crate::eval`].
pub struct Array {
    raw: sys::mlx_array,
}

// SAFETY: an mlx_array handle is a reference-counted pointer to an immutable
// graph node; MLX allows moving arrays between threads.
unsafe impl Send for Array {}

impl Array {
    /// Takes ownership of a handle returned by mlx-c.
    pub(crate) fn from_raw(raw: sys::mlx_array) -> Array {
        Array { raw }
    }

    pub(crate) fn raw(&self) -> sys::mlx_array {
        self.raw
    }

    /// The address of this value's handle: it changes exactly when the
    /// value is replaced by another array (clones have their own).
    pub(crate) fn handle_addr(&self) -> usize {
        self.raw.ctx as usize
    }

    /// The handle, for mlx-c calls that fill it in place.
    pub(crate) fn raw_mut(&mut self) -> *mut sys::mlx_array {
        &mut self.raw
    }

    /// Runs an mlx-c call that writes one array into a fresh handle.
    pub(crate) fn fill(f: impl FnOnce(*mut sys::mlx_array) -> i32) -> Result<Array> {
        init();
        // SAFETY: a fresh empty handle, owned by `out` (freed on error too).
        let mut out = Array::from_raw(unsafe { sys::mlx_array_new() });
        call(|| f(&mut out.raw))?;
        Ok(out)
    }

    /// Runs an mlx-c call that writes one array, on the default stream.
    pub(crate) fn build(
        f: impl FnOnce(*mut sys::mlx_array, sys::mlx_stream) -> i32,
    ) -> Result<Array> {
        with_default_stream(|s| Array::fill(|res| f(res, s)))
    }

    /// Runs an mlx-c call that writes two arrays, on the default stream.
    pub(crate) fn build_pair(
        f: impl FnOnce(*mut sys::mlx_array, *mut sys::mlx_array, sys::mlx_stream) -> i32,
    ) -> Result<(Array, Array)> {
        init();
        // SAFETY: fresh empty handles, owned by `a` and `b` (freed on error too).
        let (mut a, mut b) = unsafe {
            (
                Array::from_raw(sys::mlx_array_new()),
                Array::from_raw(sys::mlx_array_new()),
            )
        };
        with_default_stream(|s| call(|| f(&mut a.raw, &mut b.raw, s)))?;
        Ok((a, b))
    }

    /// An array of `shape` holding `data` (row-major). Fails when the
    /// element count does not match the shape.
    ///
    /// ```
    /// let a = mlx_metal::Array::from_slice(&[1i32, 2, 3, 4, 5, 6], &[2, 3])?;
    /// assert_eq!(a.shape(), vec![2, 3]);
    /// # Ok::<(), mlx_metal::Error>(())
    /// ```
    pub fn from_slice<T: Element>(data: &[T], shape: &[i32]) -> Result<Array> {
        check_dims(shape)?;
        let expected: i64 = shape.iter().map(|&d| d as i64).product();
        if expected != data.len() as i64 {
            return Err(Error::InvalidArgument(format!(
                "shape {shape:?} holds {expected} elements but {} were given",
                data.len()
            )));
        }
        init();
        // SAFETY: `data` is valid for `data.len()` elements of `T`, whose layout
        // matches `T::DTYPE`; MLX copies the buffer before returning.
        let raw = unsafe {
            sys::mlx_array_new_data(
                data.as_ptr().cast(),
                shape.as_ptr(),
                shape.len() as i32,
                T::DTYPE.to_sys(),
            )
        };
        Ok(Array::from_raw(raw))
    }

    /// An array of `shape` and `dtype` whose elements are the
    /// little-endian bytes `bytes` (row-major), as a safetensors file
    /// stores them. Fails when the length does not match.
    pub fn from_bytes(bytes: &[u8], shape: &[i32], dtype: Dtype) -> Result<Array> {
        check_dims(shape)?;
        let needed = shape
            .iter()
            .try_fold(dtype.size() as u128, |n, &d| n.checked_mul(d as u128));
        if needed != Some(bytes.len() as u128) {
            return Err(Error::InvalidArgument(format!(
                "shape {shape:?} of {dtype} does not hold the {} bytes given",
                bytes.len()
            )));
        }
        // MLX reads the buffer as elements of `dtype`: give it one aligned
        // for any of them.
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        init();
        // SAFETY: `words` holds `bytes` (native order is little-endian on
        // every platform MLX runs on) in 8-byte-aligned memory, at least as
        // many bytes as `shape` of `dtype` needs (checked above); MLX
        // copies the buffer before returning.
        let raw = unsafe {
            sys::mlx_array_new_data(
                words.as_ptr().cast(),
                shape.as_ptr(),
                shape.len() as i32,
                dtype.to_sys(),
            )
        };
        Ok(Array::from_raw(raw))
    }

    /// A one-dimensional array holding `data`.
    pub fn from_vec<T: Element>(data: &[T]) -> Result<Array> {
        Array::from_slice(data, &[data.len() as i32])
    }

    /// A zero-dimensional array holding `value`.
    pub fn scalar<T: Element>(value: T) -> Array {
        Array::from_slice(std::slice::from_ref(&value), &[])
            .expect("a scalar always matches the empty shape")
    }

    /// The dimensions.
    pub fn shape(&self) -> Vec<i32> {
        let n = self.ndim();
        if n == 0 {
            return Vec::new();
        }
        // SAFETY: `raw` is valid; mlx-c returns a pointer to `ndim` ints owned
        // by the array, copied out before the array can change.
        unsafe { std::slice::from_raw_parts(sys::mlx_array_shape(self.raw), n) }.to_vec()
    }

    /// Size of dimension `axis` (negative counts from the end).
    pub fn dim(&self, axis: i32) -> Result<i32> {
        let shape = self.shape();
        let n = shape.len() as i32;
        let a = if axis < 0 { axis + n } else { axis };
        shape
            .get(a as usize)
            .copied()
            .filter(|_| a >= 0)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("axis {axis} out of range for shape {shape:?}"))
            })
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        // SAFETY: `raw` is a valid handle.
        unsafe { sys::mlx_array_ndim(self.raw) }
    }

    /// Number of elements.
    pub fn size(&self) -> usize {
        // SAFETY: `raw` is a valid handle.
        unsafe { sys::mlx_array_size(self.raw) }
    }

    /// Bytes taken by the elements.
    pub fn nbytes(&self) -> usize {
        // SAFETY: `raw` is a valid handle.
        unsafe { sys::mlx_array_nbytes(self.raw) }
    }

    /// Element type.
    pub fn dtype(&self) -> Dtype {
        // SAFETY: `raw` is a valid handle.
        Dtype::from_sys(unsafe { sys::mlx_array_dtype(self.raw) })
    }

    /// Computes the array now.
    pub fn eval(&self) -> Result<()> {
        // SAFETY: `raw` is a valid handle.
        call(|| unsafe { sys::mlx_array_eval(self.raw) })
    }

    /// Copies the elements out in row-major order, converting to `T` when the
    /// dtype differs. Correct for any view (transposed, broadcast, sliced):
    /// non-contiguous arrays are made contiguous first.
    ///
    /// ```
    /// let a = mlx_metal::Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
    /// assert_eq!(a.transpose()?.to_vec::<f32>()?, vec![1.0, 3.0, 2.0, 4.0]);
    /// # Ok::<(), mlx_metal::Error>(())
    /// ```
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let typed = if self.dtype() == T::DTYPE {
            self.clone()
        } else {
            self.astype(T::DTYPE)?
        };
        typed.eval()?;
        let mut row_contiguous = false;
        // SAFETY: `typed.raw` is a valid, evaluated handle; out-parameter is live.
        call(|| unsafe { sys::_mlx_array_is_row_contiguous(&mut row_contiguous, typed.raw) })?;
        let dense = if row_contiguous {
            typed
        } else {
            let c = Array::build(|res, s| {
                // SAFETY: valid handles; `res` is owned by the new `Array`.
                unsafe { sys::mlx_contiguous(res, typed.raw, false, s) }
            })?;
            c.eval()?;
            c
        };
        let n = dense.size();
        let mut out: Vec<T> = Vec::with_capacity(n);
        if n > 0 {
            // SAFETY: `dense` is evaluated and row-contiguous, so its data pointer
            // (already offset for views) addresses `n` elements of `T`.
            unsafe {
                let src = sys::mlx_array_data_uint8(dense.raw) as *const T;
                if src.is_null() {
                    return Err(Error::Mlx("array has no data after evaluation".into()));
                }
                std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), n);
                out.set_len(n);
            }
        }
        Ok(out)
    }

    /// The single element of a one-element array.
    pub fn item<T: Element>(&self) -> Result<T> {
        if self.size() != 1 {
            return Err(Error::InvalidArgument(format!(
                "item() needs one element, the array has shape {:?}",
                self.shape()
            )));
        }
        Ok(self.to_vec::<T>()?[0])
    }
}

impl Clone for Array {
    fn clone(&self) -> Self {
        init();
        // SAFETY: a fresh handle, then pointed at the same MLX array (shared data).
        let mut raw = unsafe { sys::mlx_array_new() };
        // SAFETY: both handles are valid; `set` only copies a reference.
        unsafe { sys::mlx_array_set(&mut raw, self.raw) };
        Array { raw }
    }
}

impl Drop for Array {
    fn drop(&mut self) {
        // SAFETY: `raw` is owned by this value and freed exactly once.
        unsafe { sys::mlx_array_free(self.raw) };
    }
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: `raw` is a valid handle; printing evaluates the array.
        let text = read_string(|s| unsafe { sys::mlx_array_tostring(s, self.raw) })
            .unwrap_or_else(|e| format!("<array {:?} {}: {e}>", self.shape(), self.dtype()));
        f.write_str(&text)
    }
}

/// Refuses a shape with a negative dimension.
fn check_dims(shape: &[i32]) -> Result<()> {
    if shape.iter().any(|&d| d < 0) {
        return Err(Error::InvalidArgument(format!(
            "negative dimension in shape {shape:?}"
        )));
    }
    Ok(())
}
