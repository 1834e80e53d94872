//! Rotary position embeddings, with the scalings the supported models use.

use crate::{fast, Array, Error, Result};

/// Where the new tokens of a forward pass start.
#[derive(Debug, Clone)]
pub enum Positions {
    /// At the same position in every row.
    Same(i32),
    /// At each row's own position (int32 `[batch]`).
    PerRow(Array),
}

/// RoPE over the first `dims` features of each head.
#[derive(Debug, Clone)]
pub struct Rope {
    dims: i32,
    traditional: bool,
    base: Option<f32>,
    scale: f32,
    freqs: Option<Array>,
    /// Multiplies the rotated features before rotating (Phi-3's LongRoPE).
    input_scale: f32,
}

impl Rope {
    /// Plain RoPE with frequencies `base^(-2i/dims)`, positions times `scale`.
    pub fn new(dims: i32, base: f32, traditional: bool, scale: f32) -> Rope {
        Rope {
            dims,
            traditional,
            base: Some(base),
            scale,
            freqs: None,
            input_scale: 1.0,
        }
    }

    /// Phi-3's LongRoPE (`su` / `longrope`) as mlx_lm applies it: periods
    /// `long_factor[i] * base^(2i/dims)` and the rotated features scaled by
    /// `sqrt(1 + ln(max / original) / ln(original))` when the context was
    /// extended.
    pub fn long_rope(
        dims: i32,
        base: f32,
        long_factor: &[f32],
        max_positions: f32,
        original_max_positions: f32,
    ) -> Result<Rope> {
        if long_factor.len() != (dims / 2) as usize {
            return Err(Error::InvalidArgument(format!(
                "rope_scaling.long_factor has {} entries, expected {}",
                long_factor.len(),
                dims / 2
            )));
        }
        let exponents = Array::arange(0.0, dims as f64, 2.0, crate::Dtype::Float32)?
            .mul_scalar(1.0 / dims as f32)?;
        let periods = Array::scalar(base).power(&exponents)?;
        let freqs = Array::from_vec(long_factor)?.multiply(&periods)?;
        let factor = max_positions / original_max_positions;
        let input_scale = if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / original_max_positions.ln()).sqrt()
        };
        Ok(Rope {
            dims,
            traditional: false,
            base: None,
            scale: 1.0,
            freqs: Some(freqs),
            input_scale,
        })
    }

    /// RoPE as a Hugging Face `rope_scaling` entry asks (`default`,
    /// `linear`, `llama3`); other types are rejected with their name.
    pub fn from_config(
        dims: i32,
        base: f32,
        traditional: bool,
        scaling: Option<&serde_json::Value>,
    ) -> Result<Rope> {
        let Some(cfg) = scaling.filter(|v| !v.is_null()) else {
            return Ok(Rope::new(dims, base, traditional, 1.0));
        };
        let kind = cfg
            .get("type")
            .or_else(|| cfg.get("rope_type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let num =
            |key: &str, default: f64| cfg.get(key).and_then(|v| v.as_f64()).unwrap_or(default);
        match kind {
            "default" => Ok(Rope::new(dims, base, traditional, 1.0)),
            "linear" => Ok(Rope::new(
                dims,
                base,
                traditional,
                1.0 / num("factor", 1.0) as f32,
            )),
            "llama3" => {
                let factor = num("factor", 8.0);
                let low = num("low_freq_factor", 1.0);
                let high = num("high_freq_factor", 4.0);
                let old = num("original_max_position_embeddings", 8192.0);
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                // Computed in f32 as MLX does, so the frequencies match bit for bit.
                let freqs: Vec<f32> = (0..dims / 2)
                    .map(|i| {
                        let f = base.powf((2 * i) as f32 / dims as f32);
                        let wavelen = 2.0 * std::f32::consts::PI * f;
                        let scaled = if wavelen > low_wavelen as f32 {
                            f * factor as f32
                        } else {
                            f
                        };
                        let medium = wavelen > high_wavelen as f32 && wavelen < low_wavelen as f32;
                        if medium {
                            let smooth =
                                (old as f32 / wavelen - low as f32) / (high as f32 - low as f32);
                            scaled / ((1.0 - smooth) / factor as f32 + smooth)
                        } else {
                            scaled
                        }
                    })
                    .collect();
                Ok(Rope {
                    dims,
                    traditional,
                    base: None,
                    scale: 1.0,
                    freqs: Some(Array::from_vec(&freqs)?),
                    input_scale: 1.0,
                })
            }
            other => Err(Error::InvalidArgument(format!(
                "rope_scaling type `{other}` is not supported"
            ))),
        }
    }

    /// Rotates `x` (`[batch, heads, seq, head_dim]`) for positions starting at `offset`.
    pub fn forward(&self, x: &Array, offset: i32) -> Result<Array> {
        self.apply(x, &Positions::Same(offset))
    }

    /// Rotates `x` for positions starting at `positions` (one offset for
    /// every row, or one per batch row).
    pub fn apply(&self, x: &Array, positions: &Positions) -> Result<Array> {
        let scaled;
        let x = if self.input_scale == 1.0 {
            x
        } else {
            let width = x.dim(-1)?;
            scaled = if self.dims == width {
                x.mul_scalar(self.input_scale)?
            } else {
                let rotated = x
                    .slice_axis(-1, 0, self.dims)?
                    .mul_scalar(self.input_scale)?;
                Array::concatenate(&[&rotated, &x.slice_axis(-1, self.dims, width)?], -1)?
            };
            &scaled
        };
        let (dims, trad, base, scale, freqs) = (
            self.dims,
            self.traditional,
            self.base,
            self.scale,
            self.freqs.as_ref(),
        );
        match positions {
            Positions::Same(offset) => fast::rope(x, dims, trad, base, scale, *offset, freqs),
            Positions::PerRow(offsets) => {
                fast::rope_dynamic(x, dims, trad, base, scale, offsets, freqs)
            }
        }
    }
}
