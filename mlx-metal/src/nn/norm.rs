//! RMS normalisation.

use crate::{fast, Array, Result};

/// `x / rms(x) * w` over the last axis. Gemma stores `w - 1`: such norms
/// are built with [`RmsNorm::offset_one`] and scale by `1 + w`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Array,
    eps: f32,
}

impl RmsNorm {
    /// A norm scaling by `weight`.
    pub fn new(weight: Array, eps: f32) -> RmsNorm {
        RmsNorm { weight, eps }
    }

    /// A norm scaling by `1 + weight` (Gemma's convention).
    pub fn offset_one(weight: Array, eps: f32) -> Result<RmsNorm> {
        let one = Array::scalar(1.0f32).astype(weight.dtype())?;
        Ok(RmsNorm {
            weight: weight.add(&one)?,
            eps,
        })
    }

    /// Normalises `x`.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        fast::rms_norm(x, Some(&self.weight), self.eps)
    }
}
