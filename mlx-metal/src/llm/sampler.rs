//! Choosing the next token: greedy, or temperature sampling narrowed by
//! top-p, min-p and top-k, after an optional repetition penalty — the
//! order and formulas of mlx_lm.

use crate::{random, Array, Dtype, Result};

/// What a [`Sampler`] does: the sampling settings alone (callers convert
/// their own options into these).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerSettings {
    /// Softmax temperature; `0.0` or less means greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass; `1.0` disables.
    pub top_p: f32,
    /// Drop tokens below `min_p` times the top probability; `0.0` disables.
    pub min_p: f32,
    /// Keep the `top_k` most likely tokens; `0` disables.
    pub top_k: usize,
    /// Repetition penalty and how many recent tokens it looks at.
    pub repetition: Option<(f32, usize)>,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        SamplerSettings {
            temperature: 0.0,
            top_p: 1.0,
            min_p: 0.0,
            top_k: 0,
            repetition: None,
            seed: None,
        }
    }
}

/// Sampling state for one generation.
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    min_p: f32,
    top_k: usize,
    repetition: Option<(f32, usize)>,
    key: Option<Array>,
}

fn neg_inf(dtype: Dtype) -> Result<Array> {
    Array::scalar(f32::NEG_INFINITY).astype(dtype)
}

impl Sampler {
    /// A sampler with these settings (seeded when `settings.seed` is set).
    pub fn new(settings: &SamplerSettings) -> Result<Sampler> {
        Ok(Sampler {
            temperature: settings.temperature,
            top_p: settings.top_p,
            min_p: settings.min_p,
            top_k: settings.top_k,
            repetition: settings.repetition,
            key: settings.seed.map(random::key).transpose()?,
        })
    }

    /// Whether the repetition penalty needs the token history.
    pub fn wants_history(&self) -> bool {
        self.repetition.is_some()
    }

    /// Applies the repetition penalty to `logits` (`[1, vocab]`) given the
    /// token history (`[n]`).
    fn penalise(&self, logits: Array, history: Option<&Array>) -> Result<Array> {
        let (Some((penalty, context)), Some(history)) = (self.repetition, history) else {
            return Ok(logits);
        };
        let n = history.dim(0)?;
        if n == 0 || context == 0 {
            return Ok(logits);
        }
        let recent = history
            .slice_axis(0, (n - context as i32).max(0), n)?
            .reshape(&[1, -1])?;
        let selected = logits.take_along_axis(&recent, -1)?;
        let zero = Array::scalar(0.0f32).astype(selected.dtype())?;
        let penalised = selected.less(&zero)?.select(
            &selected.mul_scalar(penalty)?,
            &selected.mul_scalar(1.0 / penalty)?,
        )?;
        logits.put_along_axis(&recent, &penalised, -1)
    }

    fn top_p(&self, logprobs: &Array) -> Result<Array> {
        let sorted = logprobs.sort(-1)?;
        let probs = sorted.astype(Dtype::Float32)?.exp()?;
        let mass_above = probs.cumsum(-1, true, false)?;
        let total = mass_above
            .slice_axis(-1, 0, 1)?
            .add(&probs.slice_axis(-1, 0, 1)?)?;
        let dropped = mass_above
            .greater_equal(&total.mul_scalar(self.top_p)?)?
            .astype(Dtype::Int32)?
            .sum(&[-1], true)?;
        let threshold = sorted.take_along_axis(&dropped, -1)?;
        logprobs
            .less(&threshold)?
            .select(&neg_inf(logprobs.dtype())?, logprobs)
    }

    fn min_p(&self, logprobs: &Array) -> Result<Array> {
        let top = logprobs.max(&[-1], true)?;
        let floor = top.add_scalar(self.min_p.ln())?;
        logprobs
            .less(&floor)?
            .select(&neg_inf(logprobs.dtype())?, logprobs)
    }

    fn top_k(&self, logprobs: &Array) -> Result<Array> {
        let vocab = logprobs.dim(-1)?;
        let k = self.top_k as i32;
        if k >= vocab {
            return Ok(logprobs.clone());
        }
        let order = logprobs.negative()?.argpartition(k - 1, -1)?;
        let drop = order.slice_axis(-1, k, vocab)?;
        let fill = neg_inf(logprobs.dtype())?.broadcast_to(&drop.shape())?;
        logprobs.put_along_axis(&drop, &fill, -1)
    }

    /// The next token (`[1]`, uint32) from `logits` (`[1, vocab]`).
    pub fn sample(&mut self, logits: Array, history: Option<&Array>) -> Result<Array> {
        let logits = self.penalise(logits, history)?;
        let logprobs = logits.subtract(&logits.logsumexp(&[-1], true)?)?;
        if self.temperature <= 0.0 {
            return logprobs.argmax(-1, false);
        }
        let mut lp = logprobs;
        if self.top_p > 0.0 && self.top_p < 1.0 {
            lp = self.top_p(&lp)?;
        }
        if self.min_p != 0.0 {
            lp = self.min_p(&lp)?;
        }
        if self.top_k > 0 {
            lp = self.top_k(&lp)?;
        }
        let scaled = lp.mul_scalar(1.0 / self.temperature)?;
        let key = match self.key.take() {
            Some(k) => {
                let (next, sub) = random::split(&k)?;
                self.key = Some(next);
                Some(sub)
            }
            None => None,
        };
        random::categorical(&scaled, -1, key.as_ref())?.astype(Dtype::Uint32)
    }
}
