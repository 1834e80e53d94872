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
        let factors = self.next_factors().to_arrays();
        let mut out = BTreeMap::new();
        for (name, g) in grads {
            let w = params.get(name).ok_or_else(|| {
                Error::InvalidArgument(format!("gradient for unknown parameter `{name}`"))
            })?;
            self.ensure_state(name, w)?;
            let state = self.state.get(name).expect("made above");
            let (new, state) = update_one(&self.rule, g, w, state, &factors)?;
            self.state.insert(name.clone(), state);
            out.insert(name.clone(), new);
        }
        Ok(out)
    }

    /// The step-dependent factors of the next update ([`update_one`]'s
    /// `factors`: learning rate, bias corrections, weight-decay factor) as
    /// float32 scalars. Advances the step.
    pub fn next_factors(&mut self) -> Factors {
        let lr = self.schedule.at(self.step);
        self.step += 1;
        let t = self.step.min(i32::MAX as u64) as i32;
        let (c1, c2, decay) = match self.rule {
            Rule::Adam {
                betas: (b1, b2),
                weight_decay,
                ..
            } => (
                lr / (1.0 - b1.powi(t)),
                1.0 / (1.0 - b2.powi(t)).sqrt(),
                1.0 - lr * weight_decay,
            ),
            Rule::Sgd { .. } => (lr, 1.0, 1.0),
        };
        Factors { lr, c1, c2, decay }
    }

    /// How many state arrays each parameter has under this rule.
    pub fn state_len(&self) -> usize {
        match self.rule {
            Rule::Adam { .. } => 2,
            Rule::Sgd { momentum, .. } if momentum > 0.0 => 1,
            Rule::Sgd { .. } => 0,
        }
    }

    /// Creates the zero state of `name` (shaped and typed as `w`) unless it
    /// exists.
    pub fn ensure_state(&mut self, name: &str, w: &Array) -> Result<()> {
        if !self.state.contains_key(name) {
            let zeros = (0..self.state_len())
                .map(|_| Array::zeros(&w.shape(), w.dtype()))
                .collect::<Result<Vec<_>>>()?;
            self.state.insert(name.to_string(), zeros);
        }
        Ok(())
    }

    /// The state of `name` (empty when it has none yet).
    pub fn state_of(&self, name: &str) -> &[Array] {
        self.state.get(name).map_or(&[], Vec::as_slice)
    }

    /// Replaces the state of `name`.
    pub fn set_state(&mut self, name: &str, state: Vec<Array>) {
        self.state.insert(name.to_string(), state);
    }

    /// Every array of the state (to evaluate them together with the
    /// parameters).
    pub fn state_arrays(&self) -> Vec<&Array> {
        self.state.values().flatten().collect()
    }
}

/// The step-dependent factors of one update, computed on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Factors {
    /// The learning rate.
    pub lr: f32,
    /// Adam: `lr / (1 - beta1^t)`; SGD: `lr`.
    pub c1: f32,
    /// Adam: `1 / sqrt(1 - beta2^t)`; SGD: 1.
    pub c2: f32,
    /// Adam: the decoupled weight-decay factor `1 - lr * weight_decay`.
    pub decay: f32,
}

impl Factors {
    /// The four factors as float32 scalars (inputs of a compiled step).
    pub fn to_arrays(self) -> Vec<Array> {
        [self.lr, self.c1, self.c2, self.decay]
            .into_iter()
            .map(Array::scalar)
            .collect()
    }
}

/// `a * f`, with the scalar `f` cast to `a`'s dtype (as `mul_scalar`).
fn scale(a: &Array, f: &Array) -> Result<Array> {
    a.multiply(&f.astype(a.dtype())?)
}

/// One parameter's update under `rule`: its new value and new state.
/// `factors` are [`Factors::to_arrays`] (scalars, so a compiled step can
/// take them as inputs). The same function serves the eager and the
/// compiled training step.
pub fn update_one(
    rule: &Rule,
    g: &Array,
    w: &Array,
    state: &[Array],
    factors: &[Array],
) -> Result<(Array, Vec<Array>)> {
    let [lr, c1, c2, decay] = factors else {
        return Err(Error::InvalidArgument(format!(
            "an update needs 4 factors, got {}",
            factors.len()
        )));
    };
    match *rule {
        Rule::Sgd {
            momentum,
            weight_decay,
            dampening,
            nesterov,
        } => {
            let mut g = g.clone();
            if weight_decay != 0.0 {
                g = g.add(&w.mul_scalar(weight_decay)?)?;
            }
            if momentum <= 0.0 {
                return Ok((w.subtract(&scale(&g, lr)?)?, Vec::new()));
            }
            let v0 = state.first().ok_or_else(|| {
                Error::InvalidArgument("SGD with momentum needs its state".into())
            })?;
            let mut v = v0.mul_scalar(momentum)?;
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
            Ok((w.subtract(&scale(&update, lr)?)?, vec![v]))
        }
        Rule::Adam {
            betas: (b1, b2),
            eps,
            weight_decay,
            bias_correction,
        } => {
            let [m0, v0] = state else {
                return Err(Error::InvalidArgument("Adam needs two state arrays".into()));
            };
            let w = if weight_decay != 0.0 {
                scale(w, decay)?
            } else {
                w.clone()
            };
            let m = m0.mul_scalar(b1)?.add(&g.mul_scalar(1.0 - b1)?)?;
            let v = v0.mul_scalar(b2)?.add(&g.square()?.mul_scalar(1.0 - b2)?)?;
            let new = if bias_correction {
                let denom = scale(&v.sqrt()?, c2)?.add_scalar(eps)?;
                w.subtract(&scale(&m, c1)?.divide(&denom)?)?
            } else {
                let denom = v.sqrt()?.add_scalar(eps)?;
                w.subtract(&scale(&m, lr)?.divide(&denom)?)?
            };
            Ok((new, vec![m, v]))
        }
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
