//! Array operations, as methods on [`Array`](crate::Array).
//!
//! Every op is lazy and returns `Result<Array>`: shape and type errors come
//! back as [`Error::Mlx`](crate::Error::Mlx) with MLX's own message, from
//! the op that caused them.

mod activation;
mod arith;
mod creation;
mod quant;
mod reduce;
mod shape;

pub use quant::QuantizedWeight;

/// Defines `pub fn $name(&self) -> Result<Array>` over a unary mlx-c op.
macro_rules! unary_ops {
    ($($(#[$doc:meta])* $name:ident => $ffi:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(&self) -> $crate::Result<$crate::Array> {
            // SAFETY: `self` is a valid handle and `res` a fresh one owned by the result.
            $crate::Array::build(|res, s| unsafe { mlx_metal_sys::$ffi(res, self.raw(), s) })
        }
    )*};
}

/// Defines `pub fn $name(&self, other: &Array) -> Result<Array>` over a
/// binary mlx-c op (broadcasting as MLX does).
macro_rules! binary_ops {
    ($($(#[$doc:meta])* $name:ident => $ffi:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(&self, other: &$crate::Array) -> $crate::Result<$crate::Array> {
            // SAFETY: both inputs are valid handles; `res` is owned by the result.
            $crate::Array::build(|res, s| unsafe {
                mlx_metal_sys::$ffi(res, self.raw(), other.raw(), s)
            })
        }
    )*};
}

pub(crate) use binary_ops;
pub(crate) use unary_ops;

/// mlx-c's "no array" value for optional array arguments.
pub(crate) fn null_array() -> mlx_metal_sys::mlx_array {
    mlx_metal_sys::mlx_array {
        ctx: std::ptr::null_mut(),
    }
}

pub(crate) fn opt_int(v: Option<i32>) -> mlx_metal_sys::mlx_optional_int {
    mlx_metal_sys::mlx_optional_int {
        value: v.unwrap_or(0),
        has_value: v.is_some(),
    }
}

pub(crate) fn opt_float(v: Option<f32>) -> mlx_metal_sys::mlx_optional_float {
    mlx_metal_sys::mlx_optional_float {
        value: v.unwrap_or(0.0),
        has_value: v.is_some(),
    }
}

pub(crate) fn opt_dtype(v: Option<crate::Dtype>) -> mlx_metal_sys::mlx_optional_dtype {
    mlx_metal_sys::mlx_optional_dtype {
        value: v.unwrap_or(crate::Dtype::Float32).to_sys(),
        has_value: v.is_some(),
    }
}
