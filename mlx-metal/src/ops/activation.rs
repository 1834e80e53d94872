//! Exponentials and the activations transformer models use.

use super::unary_ops;
use crate::{Array, Result};

impl Array {
    unary_ops! {
        /// `e^self`.
        exp => mlx_exp;
        /// Natural logarithm.
        log => mlx_log;
        /// Hyperbolic tangent.
        tanh => mlx_tanh;
        /// `1 / (1 + e^-self)`.
        sigmoid => mlx_sigmoid;
    }

    /// SiLU (swish): `self * sigmoid(self)`.
    pub fn silu(&self) -> Result<Array> {
        self.multiply(&self.sigmoid()?)
    }

    /// Exact GELU: `0.5 * x * (1 + erf(x / sqrt(2)))`.
    pub fn gelu(&self) -> Result<Array> {
        let inner = self.mul_scalar(std::f32::consts::FRAC_1_SQRT_2)?.erf()?;
        self.multiply(&inner.add_scalar(1.0)?)?.mul_scalar(0.5)
    }

    /// GELU with the tanh approximation (as `gelu_pytorch_tanh`):
    /// `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`.
    pub fn gelu_approx(&self) -> Result<Array> {
        let c = (2.0f32 / std::f32::consts::PI).sqrt();
        let cube = self.multiply(&self.square()?)?;
        let inner = self
            .add(&cube.mul_scalar(0.044715)?)?
            .mul_scalar(c)?
            .tanh()?;
        self.multiply(&inner.add_scalar(1.0)?)?.mul_scalar(0.5)
    }
}
