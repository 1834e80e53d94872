//! The training loop, as mlx_lm's `trainer.train`: batches from the
//! training set (looping), validation loss at the first iteration, every
//! `steps_per_eval` and at the last, a report every `steps_per_report`,
//! adapter checkpoints every `save_every`, gradient accumulation and
//! clipping. The caller's [`Hooks`] see the reports, save the weights and
//! can ask the loop to stop (Ctrl-C).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use crate::llm::models::Architecture;
use crate::nn::params::{self, Trainable};
use crate::train::data::{Batches, Dataset};
use crate::train::finetune::{self, set_training};
use crate::train::loss::{default_loss, loss_and_grads};
use crate::train::optim::{clip_grad_norm, Optimizer};
use crate::train::step::StepLayout;
use crate::{eval, with_compiled, Array, Compiled, Error, Result};

/// How to train (mlx_lm's `TrainingArgs`, same defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainArgs {
    /// Iterations (batches).
    pub iters: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// Longer rows are truncated to this many tokens.
    pub max_seq_length: usize,
    /// Report the training loss every this many iterations.
    pub steps_per_report: usize,
    /// Compute the validation loss every this many iterations.
    pub steps_per_eval: usize,
    /// Validation batches per evaluation; `None`: the whole set.
    pub val_batches: Option<usize>,
    /// Save a checkpoint every this many iterations.
    pub save_every: usize,
    /// Sum gradients over this many batches per update.
    pub grad_accumulation_steps: usize,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f32>,
    /// Seed of the batch order.
    pub seed: u64,
    /// Compile the whole update (loss, gradients, clipping, optimiser)
    /// into one MLX graph per batch shape, as mlx_lm does. Used when there
    /// is no gradient accumulation and no adapter dropout; otherwise the
    /// step runs op by op.
    pub compile: bool,
}

impl Default for TrainArgs {
    fn default() -> Self {
        TrainArgs {
            iters: 1000,
            batch_size: 4,
            max_seq_length: 2048,
            steps_per_report: 10,
            steps_per_eval: 200,
            val_batches: Some(25),
            save_every: 100,
            grad_accumulation_steps: 1,
            clip_grad_norm: None,
            seed: 0,
            compile: true,
        }
    }
}

impl TrainArgs {
    fn check(&self) -> Result<()> {
        let positive = [
            ("iters", self.iters),
            ("batch size", self.batch_size),
            ("steps per report", self.steps_per_report),
            ("steps per eval", self.steps_per_eval),
            ("save every", self.save_every),
            ("gradient accumulation steps", self.grad_accumulation_steps),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::InvalidArgument(format!("{name} must be at least 1")));
            }
        }
        if self.max_seq_length < 2 {
            return Err(Error::InvalidArgument(
                "max sequence length must be at least 2".into(),
            ));
        }
        Ok(())
    }
}

/// What the loop tells its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Training loss over the iterations since the last report.
    Train {
        /// The 1-based iteration.
        iteration: usize,
        /// Mean loss of the batches since the last report.
        train_loss: f32,
        /// The learning rate of the next update.
        learning_rate: f32,
        /// Iterations per second since the last report.
        iterations_per_second: f64,
        /// Loss tokens per second since the last report.
        tokens_per_second: f64,
        /// Loss tokens so far.
        trained_tokens: u64,
        /// Peak MLX memory so far, in GB.
        peak_memory_gb: f64,
    },
    /// Validation loss.
    Val {
        /// The iteration it was computed before (0 for the start).
        iteration: usize,
        /// Token-weighted mean loss.
        val_loss: f32,
        /// Seconds it took.
        val_time: f64,
    },
    /// A batch had rows longer than `max_seq_length`; they were truncated.
    Truncated {
        /// The longest row of the batch.
        longest: usize,
        /// The limit.
        max_seq_length: usize,
    },
    /// One iteration finished (for progress bars).
    Iteration(usize),
}

/// The caller's side of the loop.
pub trait Hooks {
    /// Sees every report.
    fn report(&mut self, report: &Report);

    /// Saves the trainable weights: a checkpoint at `Some(iteration)`, the
    /// final (or last good) weights at `None`.
    fn save(&mut self, iteration: Option<usize>, weights: &BTreeMap<String, Array>) -> Result<()>;

    /// Checked before each iteration; `true` ends the loop (the final
    /// weights are still saved).
    fn stop_requested(&self) -> bool {
        false
    }
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Iterations completed.
    pub iterations: usize,
    /// Stopped early at the caller's request.
    pub stopped: bool,
}

/// Token-weighted mean loss of up to `num_batches` batches of `ds` (all
/// when `None`).
pub fn evaluate(
    arch: &mut dyn Architecture,
    ds: &Dataset,
    batch_size: usize,
    num_batches: Option<usize>,
    max_seq_length: usize,
) -> Result<f32> {
    set_training(arch, false)?;
    let batches = Batches::new(ds, batch_size, max_seq_length, false, 0)?;
    let mut total = 0.0f64;
    let mut tokens = 0i64;
    for batch in batches.take(num_batches.unwrap_or(usize::MAX)) {
        let batch = batch?;
        let (loss, ntoks) = default_loss(&*arch, &batch.tokens, &batch.lengths)?;
        eval(&[&loss, &ntoks])?;
        let n = ntoks.item::<i32>()? as i64;
        total += loss.item::<f32>()? as f64 * n as f64;
        tokens += n;
    }
    if tokens == 0 {
        return Err(Error::Dataset {
            path: ds.path.clone(),
            line: None,
            message: "no tokens to evaluate (all masked?)".into(),
        });
    }
    Ok((total / tokens as f64) as f32)
}

fn add_grads(
    acc: Option<BTreeMap<String, Array>>,
    g: BTreeMap<String, Array>,
) -> Result<BTreeMap<String, Array>> {
    match acc {
        None => Ok(g),
        Some(acc) => acc
            .into_iter()
            .map(|(k, a)| {
                let b = &g[&k];
                Ok((k, a.add(b)?))
            })
            .collect(),
    }
}

/// Trains the `trainable` parameters of `arch` on `train` with `opt`.
///
/// ```no_run
/// use std::collections::BTreeMap;
/// use mlx_metal::llm::NativeModel;
/// use mlx_metal::train::{data::Encoder, finetune, optim::Optimizer, trainer};
///
/// struct Print;
/// impl trainer::Hooks for Print {
///     fn report(&mut self, r: &trainer::Report) { println!("{r:?}") }
///     fn save(&mut self, _: Option<usize>, w: &BTreeMap<String, mlx_metal::Array>) -> mlx_metal::Result<()> {
///         mlx_metal::train::adapter::save_weights("adapters/adapters.safetensors".as_ref(), w)
///     }
/// }
///
/// let mut model = NativeModel::load("models/smollm2".as_ref())?;
/// let enc = Encoder { tokenizer: model.tokenizer(), template: model.chat_template(), mask_prompt: false };
/// let data = enc.load_dir("data".as_ref())?;
/// let trainable = finetune::attach(model.architecture_mut(), &Default::default())?;
/// let args = trainer::TrainArgs { iters: 100, ..Default::default() };
/// trainer::train(model.architecture_mut(), &trainable, &mut Optimizer::adam(1e-5),
///                &data.train, data.valid.as_ref(), &args, &mut Print)?;
/// # Ok::<(), mlx_metal::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn train(
    arch: &mut dyn Architecture,
    trainable: &Trainable,
    opt: &mut Optimizer,
    train: &Dataset,
    valid: Option<&Dataset>,
    args: &TrainArgs,
    hooks: &mut dyn Hooks,
) -> Result<Outcome> {
    args.check()?;
    let compiled =
        args.compile && args.grad_accumulation_steps == 1 && !finetune::uses_dropout(arch)?;
    let names: Vec<String> = trainable.parameters(arch.module())?.into_keys().collect();
    let layout = StepLayout {
        names,
        state_len: opt.state_len(),
        rule: opt.rule,
        clip: args.clip_grad_norm,
    };
    let cell = RefCell::new(arch);
    let run = Loop {
        arch: &cell,
        trainable,
        train,
        valid,
        args,
    };
    if !compiled {
        return run.run(opt, hooks, None);
    }
    let step = layout.closure(&cell);
    with_compiled(&step, false, |c| run.run(opt, hooks, Some((&layout, c))))?
}

/// The loop's fixed inputs.
struct Loop<'a, 'm> {
    arch: &'a RefCell<&'m mut dyn Architecture>,
    trainable: &'a Trainable,
    train: &'a Dataset,
    valid: Option<&'a Dataset>,
    args: &'a TrainArgs,
}

/// What one iteration computed: its loss and tokens, and the new
/// parameters when it updated them.
struct Iteration {
    loss: Array,
    ntoks: Array,
    updated: Option<BTreeMap<String, Array>>,
}

impl Loop<'_, '_> {
    fn params(&self) -> Result<BTreeMap<String, Array>> {
        self.trainable.parameters(self.arch.borrow_mut().module())
    }

    /// One update through the compiled step.
    fn compiled_step(
        &self,
        opt: &mut Optimizer,
        layout: &StepLayout,
        compiled: &Compiled,
        batch: &Array,
        lengths: &Array,
        current: &BTreeMap<String, Array>,
    ) -> Result<Iteration> {
        for (name, w) in current {
            opt.ensure_state(name, w)?;
        }
        let factors = opt.next_factors().to_arrays();
        let inputs = layout.inputs(
            current,
            |name| opt.state_of(name).to_vec(),
            factors,
            batch,
            lengths,
        )?;
        let out = layout.outputs(compiled.call(&inputs)?)?;
        for (name, state) in out.state {
            opt.set_state(&name, state);
        }
        Ok(Iteration {
            loss: out.loss,
            ntoks: out.ntoks,
            updated: Some(out.params),
        })
    }

    /// One iteration op by op (gradient accumulation, dropout).
    fn eager_step(
        &self,
        opt: &mut Optimizer,
        it: usize,
        accum: &mut Option<BTreeMap<String, Array>>,
        batch: &Array,
        lengths: &Array,
        current: &BTreeMap<String, Array>,
    ) -> Result<Iteration> {
        let step = {
            let mut arch = self.arch.borrow_mut();
            loss_and_grads(&mut **arch, self.trainable, batch, lengths)?
        };
        let grads = add_grads(accum.take(), step.grads)?;
        let mut updated = None;
        if it.is_multiple_of(self.args.grad_accumulation_steps) {
            let mut g = grads;
            if self.args.grad_accumulation_steps > 1 {
                let k = 1.0 / self.args.grad_accumulation_steps as f32;
                g = g
                    .into_iter()
                    .map(|(n, a)| Ok((n, a.mul_scalar(k)?)))
                    .collect::<Result<_>>()?;
            }
            if let Some(max) = self.args.clip_grad_norm {
                g = clip_grad_norm(&g, max)?.0;
            }
            updated = Some(opt.apply(&g, current)?);
        } else {
            *accum = Some(grads);
        }
        Ok(Iteration {
            loss: step.loss,
            ntoks: step.ntoks,
            updated,
        })
    }

    fn run(
        &self,
        opt: &mut Optimizer,
        hooks: &mut dyn Hooks,
        compiled: Option<(&StepLayout, &Compiled)>,
    ) -> Result<Outcome> {
        let args = self.args;
        let mut batches = Batches::new(
            self.train,
            args.batch_size,
            args.max_seq_length,
            true,
            args.seed,
        )?;
        if let Some(v) = self.valid {
            // Fail early on a validation set smaller than one batch.
            Batches::new(v, args.batch_size, args.max_seq_length, false, 0)?;
        }
        crate::reset_peak_memory()?;
        let mut losses = 0.0f64;
        let mut n_tokens = 0u64;
        let mut steps = 0usize;
        let mut trained_tokens = 0u64;
        let mut train_time = 0.0f64;
        let mut accum: Option<BTreeMap<String, Array>> = None;
        let mut done = 0;
        let mut stopped = false;
        for it in 1..=args.iters {
            if hooks.stop_requested() {
                stopped = true;
                break;
            }
            if let Some(v) = self.valid {
                if it == 1 || it % args.steps_per_eval == 0 || it == args.iters {
                    let tic = Instant::now();
                    let val_loss = evaluate(
                        &mut **self.arch.borrow_mut(),
                        v,
                        args.batch_size,
                        args.val_batches,
                        args.max_seq_length,
                    )?;
                    hooks.report(&Report::Val {
                        iteration: it - 1,
                        val_loss,
                        val_time: tic.elapsed().as_secs_f64(),
                    });
                }
            }
            set_training(&mut **self.arch.borrow_mut(), true)?;
            let tic = Instant::now();
            let batch = batches.next().expect("repeating batches never end")?;
            if let Some(longest) = batch.truncated_from {
                hooks.report(&Report::Truncated {
                    longest,
                    max_seq_length: args.max_seq_length,
                });
            }
            let current = self.params()?;
            let step = match compiled {
                Some((layout, c)) => {
                    self.compiled_step(opt, layout, c, &batch.tokens, &batch.lengths, &current)
                }
                None => {
                    self.eager_step(opt, it, &mut accum, &batch.tokens, &batch.lengths, &current)
                }
            };
            // A trace leaves placeholders in the model: put the real
            // parameters back before anything else reads them.
            params::update(self.arch.borrow_mut().module(), "", &current)?;
            let step = step?;
            let mut pending: Vec<&Array> = vec![&step.loss, &step.ntoks];
            if let Some(u) = &step.updated {
                pending.extend(u.values());
                pending.extend(opt.state_arrays());
            }
            if let Some(a) = &accum {
                pending.extend(a.values());
            }
            eval(&pending)?;
            let loss = step.loss.item::<f32>()?;
            if !loss.is_finite() {
                set_training(&mut **self.arch.borrow_mut(), false)?;
                hooks.save(None, &current)?;
                return Err(Error::NonFiniteLoss {
                    iteration: it,
                    value: loss.to_string(),
                });
            }
            if let Some(u) = &step.updated {
                params::update(self.arch.borrow_mut().module(), "", u)?;
            }
            losses += loss as f64;
            n_tokens += step.ntoks.item::<i32>()? as u64;
            steps += 1;
            train_time += tic.elapsed().as_secs_f64();
            done = it;
            hooks.report(&Report::Iteration(it));

            if it % args.steps_per_report == 0 || it == args.iters {
                trained_tokens += n_tokens;
                hooks.report(&Report::Train {
                    iteration: it,
                    train_loss: (losses / steps as f64) as f32,
                    learning_rate: opt.learning_rate(),
                    iterations_per_second: steps as f64 / train_time.max(1e-9),
                    tokens_per_second: n_tokens as f64 / train_time.max(1e-9),
                    trained_tokens,
                    peak_memory_gb: crate::peak_memory()? as f64 / 1e9,
                });
                losses = 0.0;
                n_tokens = 0;
                steps = 0;
                train_time = 0.0;
            }
            if it % args.save_every == 0 {
                hooks.save(Some(it), &self.params()?)?;
            }
        }
        set_training(&mut **self.arch.borrow_mut(), false)?;
        hooks.save(None, &self.params()?)?;
        Ok(Outcome {
            iterations: done,
            stopped,
        })
    }
}
