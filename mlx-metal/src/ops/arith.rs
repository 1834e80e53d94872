//! Element-wise arithmetic, comparisons and matrix products.

use mlx_metal_sys as sys;

use super::{binary_ops, unary_ops};
use crate::{Array, Result};

impl Array {
    binary_ops! {
        /// `self + other`.
        add => mlx_add;
        /// `self - other`.
        subtract => mlx_subtract;
        /// `self * other`.
        multiply => mlx_multiply;
        /// `self / other`.
        divide => mlx_divide;
        /// `self ** other`.
        power => mlx_power;
        /// Element-wise maximum.
        maximum => mlx_maximum;
        /// Element-wise minimum.
        minimum => mlx_minimum;
        /// Remainder of division, with the sign of `other`.
        remainder => mlx_remainder;
        /// `self == other`.
        equal => mlx_equal;
        /// `self != other`.
        not_equal => mlx_not_equal;
        /// `self < other`.
        less => mlx_less;
        /// `self <= other`.
        less_equal => mlx_less_equal;
        /// `self > other`.
        greater => mlx_greater;
        /// `self >= other`.
        greater_equal => mlx_greater_equal;
        /// Logical and of two boolean arrays.
        logical_and => mlx_logical_and;
        /// Logical or of two boolean arrays.
        logical_or => mlx_logical_or;
        /// Matrix product (batched over leading dimensions).
        matmul => mlx_matmul;
    }

    unary_ops! {
        /// `-self`.
        negative => mlx_negative;
        /// Absolute value.
        abs => mlx_abs;
        /// Square root.
        sqrt => mlx_sqrt;
        /// `1 / sqrt(self)`.
        rsqrt => mlx_rsqrt;
        /// `self * self`.
        square => mlx_square;
        /// `1 / self`.
        reciprocal => mlx_reciprocal;
        /// Logical not.
        logical_not => mlx_logical_not;
        /// Round down.
        floor => mlx_floor;
        /// Gauss error function.
        erf => mlx_erf;
        /// Cosine.
        cos => mlx_cos;
        /// Sine.
        sin => mlx_sin;
    }

    /// `alpha * (self @ b) + beta * c`, fused.
    pub fn addmm(&self, c: &Array, b: &Array, alpha: f32, beta: f32) -> Result<Array> {
        // SAFETY: all inputs are valid handles; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_addmm(res, c.raw(), self.raw(), b.raw(), alpha, beta, s)
        })
    }

    /// Adds a scalar, kept in `self`'s dtype.
    pub fn add_scalar(&self, v: f32) -> Result<Array> {
        self.add(&Array::scalar(v).astype(self.dtype())?)
    }

    /// Multiplies by a scalar, kept in `self`'s dtype.
    pub fn mul_scalar(&self, v: f32) -> Result<Array> {
        self.multiply(&Array::scalar(v).astype(self.dtype())?)
    }

    /// MLX's `where`: selects from `x` where `self` is true, else from `y`
    /// (element-wise, broadcasting).
    pub fn select(&self, x: &Array, y: &Array) -> Result<Array> {
        // SAFETY: all inputs are valid handles; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_where(res, self.raw(), x.raw(), y.raw(), s) })
    }
}
