//! RMS normalisation.

use crate::nn::params::{join, Module, Visitor};
use crate::{fast, Array, Result};

/// `x / rms(x) * w` over the last axis. Gemma stores `w - 1`: such norms
/// are built with [`RmsNorm::offset_one`] and scale by `1 + w`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Array,
    eps: f32,
    /// Built by [`RmsNorm::offset_one`]: the stored `w`, with `weight`
    /// holding `1 + w`.
    offset: Option<Array>,
}

impl RmsNorm {
    /// A norm scaling by `weight`.
    pub fn new(weight: Array, eps: f32) -> RmsNorm {
        RmsNorm {
            weight,
            eps,
            offset: None,
        }
    }

    /// A norm scaling by `1 + weight` (Gemma's convention).
    pub fn offset_one(weight: Array, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: plus_one(&weight)?,
            eps,
            offset: Some(weight),
        })
    }

    /// Normalises `x`.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        fast::rms_norm(x, Some(&self.weight), self.eps)
    }
}

/// `1 + w` in `w`'s dtype.
fn plus_one(w: &Array) -> Result<Array> {
    w.add(&Array::scalar(1.0f32).astype(w.dtype())?)
}

impl Module for RmsNorm {
    /// Visits `prefix.weight`. Gemma-style norms show the stored `w` (as
    /// mlx_lm names and trains it) and fold `1 + w` again when a visitor
    /// replaces it.
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        let name = join(prefix, "weight");
        match &mut self.offset {
            None => v.array(&name, &mut self.weight),
            Some(w) => {
                let before = w.handle_addr();
                v.array(&name, w)?;
                if w.handle_addr() != before {
                    self.weight = plus_one(w)?;
                }
                Ok(())
            }
        }
    }
}
