//! RMS normalisation.

use crate::nn::params::{join, Module, Visitor};
use crate::{fast, Array, Result};

/// `x / rms(x) * w` over the last axis. Gemma stores `w - 1`: such norms
/// are built with [`RmsNorm::offset_one`] and scale by `1 + w`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Array,
    eps: f32,
    /// Built by [`RmsNorm::offset_one`]: `weight` holds `1 + w`.
    offset_one: bool,
}

impl RmsNorm {
    /// A norm scaling by `weight`.
    pub fn new(weight: Array, eps: f32) -> RmsNorm {
        RmsNorm {
            weight,
            eps,
            offset_one: false,
        }
    }

    /// A norm scaling by `1 + weight` (Gemma's convention).
    pub fn offset_one(weight: Array, eps: f32) -> Result<RmsNorm> {
        let one = Array::scalar(1.0f32).astype(weight.dtype())?;
        Ok(RmsNorm {
            weight: weight.add(&one)?,
            eps,
            offset_one: true,
        })
    }

    /// Normalises `x`.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        fast::rms_norm(x, Some(&self.weight), self.eps)
    }
}

impl Module for RmsNorm {
    /// Visits `prefix.weight`. Gemma-style norms keep `1 + w` folded into
    /// their weight for speed and expose no parameter (they are not
    /// trainable here).
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        if self.offset_one {
            return Ok(());
        }
        v.array(&join(prefix, "weight"), &mut self.weight)
    }
}
