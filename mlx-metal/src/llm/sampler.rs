//! Choosing the next token: greedy, or temperature sampling narrowed by
//! top-p, min-p and top-k, after an optional repetition penalty — the
//! order and formulas of mlx_lm.

use inference::GenerateOptions;

use crate::{random, Array, Dtype, Result};

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
    /// A sampler for `opts` (seeded when `opts.seed` is set).
    pub fn new(opts: &GenerateOptions) -> Result<Sampler> {
        Ok(Sampler {
            temperature: opts.temperature,
            top_p: opts.top_p,
            min_p: opts.min_p,
            top_k: opts.top_k,
            repetition: opts
                .repetition_penalty
                .map(|p| (p, opts.repetition_context_size)),
            key: opts.seed.map(random::key).transpose()?,
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
