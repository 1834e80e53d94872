//! Learning-rate schedules as mlx's `optimizers.schedulers`, and mlx_lm's
//! warm-up joining (`build_schedule`).

use crate::{Error, Result};

/// A learning rate as a function of the optimiser step (0 for the first
/// update, as mlx evaluates schedules before counting the step).
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// The same rate at every step.
    Constant(f32),
    /// `init + (end - init) * min(step, steps) / steps`.
    Linear {
        /// Rate at step 0.
        init: f32,
        /// Rate from `steps` on.
        end: f32,
        /// Length of the ramp.
        steps: u64,
    },
    /// `end + (init - end) * (1 + cos(pi * min(step, decay_steps) /
    /// decay_steps)) / 2`.
    Cosine {
        /// Rate at step 0.
        init: f32,
        /// Steps to decay over.
        decay_steps: u64,
        /// Final rate.
        end: f32,
    },
    /// A linear warm-up from `init` to `inner`'s first rate over `steps`
    /// steps, then `inner` (restarted at step 0) from step `steps + 1`, as
    /// mlx_lm's `build_schedule` joins them.
    Warmup {
        /// Rate at step 0.
        init: f32,
        /// Warm-up steps.
        steps: u64,
        /// The schedule after warm-up.
        inner: Box<Schedule>,
    },
}

impl Schedule {
    /// A cosine decay from `init` to `end` over `decay_steps`.
    pub fn cosine(init: f32, decay_steps: u64, end: f32) -> Result<Schedule> {
        if decay_steps < 1 {
            return Err(Error::InvalidArgument(
                "cosine decay needs at least 1 step".into(),
            ));
        }
        Ok(Schedule::Cosine {
            init,
            decay_steps,
            end,
        })
    }

    /// `self` after a linear warm-up of `steps` steps starting at `init`.
    pub fn with_warmup(self, steps: u64, init: f32) -> Schedule {
        if steps == 0 {
            return self;
        }
        Schedule::Warmup {
            init,
            steps,
            inner: Box::new(self),
        }
    }

    /// The rate at `step`.
    pub fn at(&self, step: u64) -> f32 {
        match self {
            Schedule::Constant(lr) => *lr,
            Schedule::Linear { init, end, steps } => {
                let s = step.min(*steps) as f32;
                s * ((end - init) / *steps as f32) + init
            }
            Schedule::Cosine {
                init,
                decay_steps,
                end,
            } => {
                let s = step.min(*decay_steps) as f32;
                let decay = 0.5 * (1.0 + (std::f32::consts::PI / *decay_steps as f32 * s).cos());
                end + decay * (init - end)
            }
            Schedule::Warmup { init, steps, inner } => {
                if step < steps + 1 {
                    Schedule::Linear {
                        init: *init,
                        end: inner.at(0),
                        steps: *steps,
                    }
                    .at(step)
                } else {
                    inner.at(step - steps - 1)
                }
            }
        }
    }
}
