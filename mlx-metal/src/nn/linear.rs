//! `y = x W^T + b`, with W dense or affine-quantised.

use crate::{Array, QuantizedWeight, Result};

/// A linear layer. Weights are `[out, in]` as in Hugging Face and MLX.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Dense weights (any float dtype) and an optional bias.
    Dense {
        /// `[out, in]`.
        weight: Array,
        /// `[out]`.
        bias: Option<Array>,
    },
    /// Quantised weights and an optional bias.
    Quantized {
        /// Packed weights with scales and biases.
        weight: QuantizedWeight,
        /// `[out]`.
        bias: Option<Array>,
    },
}

impl Linear {
    /// Applies the layer to `x` (`[..., in]` → `[..., out]`).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            Linear::Dense { weight, bias } => {
                let wt = weight.transpose()?;
                match bias {
                    Some(b) => x.addmm(b, &wt, 1.0, 1.0),
                    None => x.matmul(&wt),
                }
            }
            Linear::Quantized { weight, bias } => {
                let y = x.quantized_matmul(weight, true)?;
                match bias {
                    Some(b) => y.add(b),
                    None => Ok(y),
                }
            }
        }
    }
}
