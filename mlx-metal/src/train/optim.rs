//! Optimisers with mlx's update formulas (`mlx.optimizers`): SGD (with
//! momentum, dampening, Nesterov, weight decay), Adam and AdamW (optional
//! bias correction, off by default as in mlx), plus global-norm gradient
//! clipping. State is kept per parameter name, in the parameter's dtype.

use std::collections::BTreeMap;

use crate::train::schedule::Schedule;
use crate::{Array, Error, Result};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// `w -= lr * (v = momentum * v + (1 - dampening) * g)` (plain SGD when
    /// momentum is 0).
    Sgd {
        /// Momentum `mu`.
        momentum: f32,
        /// L2 penalty added to the gradient.
        weight_decay: f32,
        /// Dampening `tau` of the momentum.
        dampening: f32,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// Adam (AdamW when `weight_decay` is set: decoupled decay
    /// `w *= 1 - lr * weight_decay` before the Adam step).
    Adam {
        /// `(beta1, beta2)`.
        betas: (f32, f32),
        /// Added to the denominator.
        eps: f32,
        /// Decoupled weight decay (0 for Adam, mlx's AdamW default 0.01).
        weight_decay: f32,
        /// Divide the moments by `1 - beta^t`.
        bias_correction: bool,
    },
}

/// An optimiser: a rule, a learning-rate schedule, the step count and the
/// state of each parameter.
#[derive(Debug, Clone)]
pub struct Optimizer {
    /// The update rule.
    pub rule: Rule,
    /// The learning rate by step.
    pub schedule: Schedule,
    step: u64,
    state: BTreeMap<String, Vec<Array>>,
}

impl Optimizer {
    /// An optimiser with `rule` and `schedule`.
    pub fn new(rule: Rule, schedule: Schedule) -> Optimizer {
        Optimizer {
            rule,
            schedule,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    /// mlx's `Adam(learning_rate=lr)`: betas (0.9, 0.999), eps 1e-8, no
    /// bias correction.
    pub fn adam(lr: f32) -> Optimizer {
        Optimizer::new(
            Rule::Adam {
                betas: (0.9, 0.999),
                eps: 1e-8,
                weight_decay: 0.0,
                bias_correction: false,
            },
            Schedule::Constant(lr),
        )
    }

    /// mlx's `AdamW(learning_rate=lr)`: as Adam with weight decay 0.01.
    pub fn adamw(lr: f32) -> Optimizer {
        Optimizer::new(
            Rule::Adam {
                betas: (0.9, 0.999),
                eps: 1e-8,
                weight_decay: 0.01,
                bias_correction: false,
            },
            Schedule::Constant(lr),
        )
    }

    /// mlx's `SGD(learning_rate=lr)`: no momentum, no weight decay.
    pub fn sgd(lr: f32) -> Optimizer {
        Optimizer::new(
            Rule::Sgd {
                momentum: 0.0,
                weight_decay: 0.0,
                dampening: 0.0,
                nesterov: false,
            },
            Schedule::Constant(lr),
        )
    }

    /// By name: `adam`, `adamw` or `sgd`, with mlx's defaults.
    pub fn by_name(name: &str, lr: f32) -> Result<Optimizer> {
        match name {
            "adam" => Ok(Optimizer::adam(lr)),
            "adamw" => Ok(Optimizer::adamw(lr)),
            "sgd" => Ok(Optimizer::sgd(lr)),
            other => Err(Error::InvalidArgument(format!(
                "unknown optimizer `{other}` (adam, adamw, sgd)"
            ))),
        }
    }

    /// Updates applied so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The learning rate the next update uses.
    pub fn learning_rate(&self) -> f32 {
        self.schedule.at(self.step)
    }

    /// The new value of every parameter in `grads` (`params` may hold
    /// more). Advances the step.
    pub fn apply(
        &mut self,
        grads: &BTreeMap<String, Array>,
        params: &BTreeMap<String, Array>,
    ) -> Result<BTreeMap<String, Array>> {
        let lr = self.schedule.at(self.step);
        self.step += 1;
        let t = self.step;
        let mut out = BTreeMap::new();
        for (name, g) in grads {
            let w = params.get(name).ok_or_else(|| {
                Error::InvalidArgument(format!("gradient for unknown parameter `{name}`"))
            })?;
            let new = match self.rule {
                Rule::Sgd {
                    momentum,
                    weight_decay,
                    dampening,
                    nesterov,
                } => {
                    self.sgd_single(name, g, w, lr, momentum, weight_decay, dampening, nesterov)?
                }
                Rule::Adam {
                    betas,
                    eps,
                    weight_decay,
                    bias_correction,
                } => {
                    let w = if weight_decay != 0.0 {
                        w.mul_scalar(1.0 - lr * weight_decay)?
                    } else {
                        w.clone()
                    };
                    self.adam_single(name, g, &w, lr, betas, eps, bias_correction, t)?
                }
            };
            out.insert(name.clone(), new);
        }
        Ok(out)
    }

    fn moments(&mut self, name: &str, g: &Array, n: usize) -> Result<&mut Vec<Array>> {
        if !self.state.contains_key(name) {
            let zeros = (0..n)
                .map(|_| Array::zeros(&g.shape(), g.dtype()))
                .collect::<Result<Vec<_>>>()?;
            self.state.insert(name.to_string(), zeros);
        }
        Ok(self.state.get_mut(name).expect("inserted above"))
    }

    #[allow(clippy::too_many_arguments)]
    fn sgd_single(
        &mut self,
        name: &str,
        g: &Array,
        w: &Array,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
        dampening: f32,
        nesterov: bool,
    ) -> Result<Array> {
        let mut g = g.clone();
        if weight_decay != 0.0 {
            g = g.add(&w.mul_scalar(weight_decay)?)?;
        }
        if momentum <= 0.0 {
            return w.subtract(&g.mul_scalar(lr)?);
        }
        let state = self.moments(name, &g, 1)?;
        let mut v = state[0].mul_scalar(momentum)?;
        v = if dampening > 0.0 {
            v.add(&g.mul_scalar(1.0 - dampening)?)?
        } else {
            v.add(&g)?
        };
        let update = if nesterov {
            g.add(&v.mul_scalar(momentum)?)?
        } else {
            v.clone()
        };
        state[0] = v;
        w.subtract(&update.mul_scalar(lr)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn adam_single(
        &mut self,
        name: &str,
        g: &Array,
        w: &Array,
        lr: f32,
        (b1, b2): (f32, f32),
        eps: f32,
        bias_correction: bool,
        t: u64,
    ) -> Result<Array> {
        let state = self.moments(name, g, 2)?;
        let m = state[0].mul_scalar(b1)?.add(&g.mul_scalar(1.0 - b1)?)?;
        let v = state[1]
            .mul_scalar(b2)?
            .add(&g.square()?.mul_scalar(1.0 - b2)?)?;
        state[0] = m.clone();
        state[1] = v.clone();
        if bias_correction {
            let t = t.min(i32::MAX as u64) as i32;
            let c1 = lr / (1.0 - b1.powi(t));
            let c2 = 1.0 / (1.0 - b2.powi(t)).sqrt();
            let denom = v.sqrt()?.mul_scalar(c2)?.add_scalar(eps)?;
            w.subtract(&m.mul_scalar(c1)?.divide(&denom)?)
        } else {
            let denom = v.sqrt()?.add_scalar(eps)?;
            w.subtract(&m.mul_scalar(lr)?.divide(&denom)?)
        }
    }

    /// Every array of the state (to evaluate them together with the
    /// parameters).
    pub fn state_arrays(&self) -> Vec<&Array> {
        self.state.values().flatten().collect()
    }
}

/// Scales all gradients down so their global L2 norm is at most
/// `max_norm` (mlx's `clip_grad_norm`); returns them and the norm before
/// clipping.
pub fn clip_grad_norm(
    grads: &BTreeMap<String, Array>,
    max_norm: f32,
) -> Result<(BTreeMap<String, Array>, Array)> {
    if max_norm < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "max_norm must be at least 0, got {max_norm}"
        )));
    }
    let mut sq = Array::scalar(0.0f32);
    for g in grads.values() {
        sq = sq.add(&g.square()?.sum(&[], false)?)?;
    }
    let norm = sq.sqrt()?;
    let factor = Array::scalar(max_norm)
        .divide(&norm.add_scalar(1e-6)?)?
        .minimum(&Array::scalar(1.0f32))?;
    let clipped = grads
        .iter()
        .map(|(k, g)| Ok((k.clone(), g.multiply(&factor)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok((clipped, norm))
}
