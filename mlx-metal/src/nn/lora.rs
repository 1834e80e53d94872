//! Low-rank adapters on a linear layer, as mlx_lm's `LoRALinear` and
//! `DoRALinear`: `y = base(x) + scale * (dropout(x) @ lora_a) @ lora_b`,
//! with DoRA rescaling each output row by a learned magnitude `m` over the
//! norm of the adapted weight. The base layer may be dense or quantised
//! (QLoRA: the base stays 4/8-bit and frozen).

use std::sync::{Arc, Mutex};

use crate::nn::params::{join, Module, Visitor};
use crate::nn::Linear;
use crate::{random, Array, Dtype, Error, Result};

/// Rank, scale and dropout of an adapter (mlx_lm's `lora_parameters`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraParams {
    /// Rank of `lora_a` / `lora_b`.
    pub rank: i32,
    /// Multiplier of the low-rank update.
    pub scale: f32,
    /// Dropout probability on the adapter's input while training.
    pub dropout: f32,
}

impl Default for LoraParams {
    /// mlx_lm's defaults: rank 8, scale 20.0, dropout 0.0.
    fn default() -> Self {
        LoraParams {
            rank: 8,
            scale: 20.0,
            dropout: 0.0,
        }
    }
}

/// A linear layer with a low-rank adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// The frozen base layer (`linear` in mlx_lm's names).
    pub base: Linear,
    /// `[in, rank]`, initialised uniform in `±1/sqrt(in)`.
    pub lora_a: Array,
    /// `[rank, out]`, initialised to zeros.
    pub lora_b: Array,
    /// DoRA's per-output magnitude `m` (`[out]`); `None` for plain LoRA.
    pub magnitude: Option<Array>,
    /// Multiplier of the low-rank update.
    pub scale: f32,
    /// Dropout probability on the adapter input (applied while `training`).
    pub dropout: f32,
    /// Whether dropout is active.
    pub training: bool,
}

impl LoraLinear {
    /// Wraps `base` with fresh adapter weights (float32) drawn from MLX's
    /// global random state, as mlx_lm does; `dora` adds the magnitude `m`
    /// set to the row norms of the base weight.
    pub fn new(base: Linear, p: LoraParams, dora: bool) -> Result<LoraLinear> {
        if p.rank < 1 {
            return Err(Error::InvalidArgument(format!(
                "LoRA rank must be at least 1, got {}",
                p.rank
            )));
        }
        if !(0.0..1.0).contains(&p.dropout) {
            return Err(Error::InvalidArgument(format!(
                "LoRA dropout must be in [0, 1), got {}",
                p.dropout
            )));
        }
        let (out, inp) = base.dims()?;
        let bound = 1.0 / (inp as f32).sqrt();
        let lora_a = random::uniform(-bound, bound, &[inp, p.rank], Dtype::Float32, None)?;
        let lora_b = Array::zeros(&[p.rank, out], Dtype::Float32)?;
        let magnitude = if dora {
            Some(row_norms(&base.dense_weight()?.astype(Dtype::Float32)?)?)
        } else {
            None
        };
        Ok(LoraLinear {
            base,
            lora_a,
            lora_b,
            magnitude,
            scale: p.scale,
            dropout: p.dropout,
            training: false,
        })
    }

    /// `x` with dropout applied when training.
    fn dropped(&self, x: &Array) -> Result<Array> {
        if !self.training || self.dropout <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.dropout;
        let u = random::uniform(0.0, 1.0, &x.shape(), Dtype::Float32, None)?;
        let mask = u.less(&Array::scalar(keep))?;
        let kept = x.mul_scalar(1.0 / keep)?;
        mask.select(&kept, &Array::scalar(0.0f32).astype(x.dtype())?)
    }

    /// `scale * (dropout(x) @ a) @ b` in `x`'s dtype.
    fn update(&self, x: &Array) -> Result<Array> {
        let z = self
            .dropped(x)?
            .matmul(&self.lora_a)?
            .matmul(&self.lora_b)?;
        z.mul_scalar(self.scale)?.astype(x.dtype())
    }

    /// Applies the layer.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let Some(m) = &self.magnitude else {
            return self.base.forward(x)?.add(&self.update(x)?);
        };
        let w = self.base.dense_weight()?;
        let out = x.matmul(&w.transpose()?)?.add(&self.update(x)?)?;
        let delta = self
            .lora_b
            .transpose()?
            .mul_scalar(self.scale)?
            .matmul(&self.lora_a.transpose()?)?;
        let denom = row_norms(&w.add(&delta)?)?.stop_gradient()?;
        let out = m.divide(&denom)?.astype(x.dtype())?.multiply(&out)?;
        match self.base.bias() {
            Some(b) => out.add(b),
            None => Ok(out),
        }
    }

    /// The plain linear layer with the adapter merged into its weight:
    /// `W + scale * b^T a^T` (DoRA: rows rescaled to `m`), requantised with
    /// the base's settings unless `dequantize`.
    pub fn fuse(&self, dequantize: bool) -> Result<Linear> {
        let w = self.base.dense_weight()?;
        let delta = self
            .lora_b
            .transpose()?
            .mul_scalar(self.scale)?
            .matmul(&self.lora_a.transpose()?)?
            .astype(w.dtype())?;
        let mut fused = w.add(&delta)?;
        if let Some(m) = &self.magnitude {
            let s = m.divide(&row_norms(&fused)?)?;
            fused = s.expand_dims(&[1])?.multiply(&fused)?;
        }
        let bias = self.base.bias().cloned();
        match &self.base {
            Linear::Quantized { weight: q, .. } if !dequantize => Ok(Linear::Quantized {
                weight: fused.quantize(q.group_size, q.bits)?,
                bias,
            }),
            _ => Ok(Linear::Dense {
                weight: fused,
                bias,
            }),
        }
    }
}

/// The L2 norm of each row of `w` (`[out, in]` → `[out]`).
fn row_norms(w: &Array) -> Result<Array> {
    w.square()?.sum(&[1], false)?.sqrt()
}

impl Module for LoraLinear {
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        self.base.visit(&join(prefix, "linear"), v)?;
        v.array(&join(prefix, "lora_a"), &mut self.lora_a)?;
        v.array(&join(prefix, "lora_b"), &mut self.lora_b)?;
        if let Some(m) = &mut self.magnitude {
            v.array(&join(prefix, "m"), m)?;
        }
        Ok(())
    }
}

/// One adapter's low-rank update on one layer: `scale * (x @ a) @ b`.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    /// `[in, rank]`.
    pub lora_a: Array,
    /// `[rank, out]`.
    pub lora_b: Array,
    /// Multiplier of the update.
    pub scale: f32,
}

impl LoraDelta {
    /// `scale * (x @ a) @ b` in `x`'s dtype (as [`LoraLinear`] computes it).
    fn apply(&self, x: &Array) -> Result<Array> {
        x.matmul(&self.lora_a)?
            .matmul(&self.lora_b)?
            .mul_scalar(self.scale)?
            .astype(x.dtype())
    }
}

/// Which rows of the next forward pass each adapter of a [`MultiLora`]
/// applies to: per adapter, a `[rows, 1, 1]` 0/1 mask, or `None` when no
/// row uses it. One selection is shared by every layer of a model and set
/// before each forward pass; the masks are read when the pass's graph is
/// built.
#[derive(Debug, Clone, Default)]
pub struct AdapterRows(Arc<Mutex<Vec<Option<Array>>>>);

impl AdapterRows {
    /// Selects, for each row of the next pass, its adapter (an index below
    /// `adapters`, or `None` for the base model alone).
    pub fn select(&self, rows: &[Option<usize>], adapters: usize) -> Result<()> {
        let masks = (0..adapters)
            .map(|j| {
                if !rows.contains(&Some(j)) {
                    return Ok(None);
                }
                let mask: Vec<f32> = rows
                    .iter()
                    .map(|r| if *r == Some(j) { 1.0 } else { 0.0 })
                    .collect();
                Array::from_slice(&mask, &[rows.len() as i32, 1, 1]).map(Some)
            })
            .collect::<Result<Vec<_>>>()?;
        *self.lock() = masks;
        Ok(())
    }

    /// No adapter on any row (the base model alone).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Array>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A base layer with several adapters, each added to the rows that chose
/// it: `y = base(x) + Σ_j mask_j ⊙ scale_j (x A_j) B_j`. The model is
/// shared by every row; only the masks change between forward passes.
#[derive(Debug, Clone)]
pub struct MultiLora {
    /// The layer as loaded (plain, quantised, or with its own adapter).
    pub base: Linear,
    /// Per adapter, its update on this layer (`None`: not adapted here).
    pub adapters: Vec<Option<LoraDelta>>,
    /// The rows each adapter applies to.
    pub rows: AdapterRows,
}

impl MultiLora {
    /// Applies the layer.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let mut y = self.base.forward(x)?;
        let masks = self.rows.lock().clone();
        for (delta, mask) in self.adapters.iter().zip(&masks) {
            if let (Some(delta), Some(mask)) = (delta, mask) {
                // `[rows, 1, 1]` against `[rows, L, out]`; `[rows, 1]`
                // against one position per row, `[rows, out]`.
                let mask = match x.ndim() {
                    2 => mask.reshape(&[-1, 1])?,
                    _ => mask.clone(),
                };
                let z = delta.apply(x)?.multiply(&mask.astype(x.dtype())?)?;
                y = y.add(&z)?;
            }
        }
        Ok(y)
    }
}
