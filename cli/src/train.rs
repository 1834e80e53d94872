//! `mlx-infer train`: LoRA / DoRA / full fine-tuning on a data folder, the
//! adapter written in mlx_lm's layout (`adapters.safetensors` +
//! `adapter_config.json`).

use std::path::PathBuf;

use clap::Args;
use inference::ComputeDtype;

/// `mlx-infer train`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Model directory or .gguf file to fine-tune.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder with train.jsonl (and valid.jsonl, test.jsonl): `{"text"}`,
    /// `{"prompt","completion"}` or `{"messages"}` lines.
    #[arg(long)]
    pub data: PathBuf,
    /// Folder to write the adapter to (adapters.safetensors, adapter_config.json, checkpoints).
    #[arg(long)]
    pub adapter_path: PathBuf,
    /// Training iterations (batches).
    #[arg(long, default_value_t = 1000)]
    pub iters: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Blocks to adapt, counted from the last; -1 for all.
    #[arg(long, default_value_t = 16, allow_negative_numbers = true)]
    pub num_layers: i32,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: i32,
    /// LoRA scale (multiplier of the low-rank update).
    #[arg(long, default_value_t = 20.0)]
    pub scale: f32,
    /// Dropout on the adapter input.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-5)]
    pub learning_rate: f64,
    /// Optimiser.
    #[arg(long, default_value = "adam", value_parser = ["adam", "adamw", "sgd"])]
    pub optimizer: String,
    /// Seed of the adapter initialisation and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Leave prompts out of the loss (prompt/completion and chat data).
    #[arg(long)]
    pub mask_prompt: bool,
    /// Recompute each block's activations in the backward pass to save memory.
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// What to train.
    #[arg(long, default_value = "lora", value_parser = ["lora", "dora", "full"])]
    pub fine_tune_type: String,
    /// Longer examples are truncated to this many tokens (with a warning).
    #[arg(long, default_value_t = 2048)]
    pub max_seq_length: usize,
    /// Report the training loss every N iterations.
    #[arg(long, default_value_t = 10)]
    pub steps_per_report: usize,
    /// Compute the validation loss every N iterations.
    #[arg(long, default_value_t = 200)]
    pub steps_per_eval: usize,
    /// Validation batches per evaluation; -1 for the whole validation set.
    #[arg(long, default_value_t = 25, allow_negative_numbers = true)]
    pub val_batches: i64,
    /// Save the adapter every N iterations (and at the end).
    #[arg(long, default_value_t = 100)]
    pub save_every: usize,
    /// Sum gradients over N batches per update.
    #[arg(long, default_value_t = 1)]
    pub grad_accumulation_steps: usize,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip_grad_norm: Option<f32>,
    /// Linear learning-rate warm-up over N iterations.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Cosine-decay the learning rate to 0 over the iterations (after warm-up).
    #[arg(long)]
    pub cosine_decay: bool,
    /// Start from the adapter weights in this safetensors file.
    #[arg(long)]
    pub resume_adapter_file: Option<PathBuf>,
    /// Type the base weights compute in (`auto`, `model`, `float32`, `bfloat16`, `float16`).
    #[arg(long, default_value = "auto", value_parser = crate::loading::dtype_parser())]
    pub dtype: ComputeDtype,
    /// Type of the trained weights and the optimiser state.
    #[arg(long, default_value = "float32", value_parser = ["float32", "bfloat16", "float16"])]
    pub train_dtype: String,
    /// One JSON object per line on stdout for every report, no progress bar.
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "metal")]
pub use native::run;

/// Without the native backend there is nothing to train with.
#[cfg(not(feature = "metal"))]
pub fn run(args: TrainArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("train needs the native backend: build with `--features metal` after `cargo xtask build-mlx`")
}

#[cfg(feature = "metal")]
mod native {
    use std::collections::BTreeMap;
    use std::io::{IsTerminal, Write};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use anyhow::{Context, Result};
    use indicatif::{ProgressBar, ProgressStyle};
    use mlx_metal::llm::NativeModel;
    use mlx_metal::train::adapter;
    use mlx_metal::train::data::Encoder;
    use mlx_metal::train::finetune::{self, AdapterConfig, FineTuneType, LoraParameters};
    use mlx_metal::train::optim::Optimizer;
    use mlx_metal::train::schedule::Schedule;
    use mlx_metal::train::trainer::{self, Hooks, Report};
    use mlx_metal::{Array, Dtype};
    use serde_json::json;

    use super::TrainArgs;
    use crate::generate::INTERRUPTED;

    /// Reports to the terminal (or JSON lines) and saves adapters.
    struct Cli {
        dir: PathBuf,
        json: bool,
        bar: Option<ProgressBar>,
        stop: Arc<AtomicBool>,
        warned: bool,
    }

    impl Cli {
        fn line(&self, text: String) {
            match &self.bar {
                Some(bar) => bar.println(text),
                None => eprintln!("{text}"),
            }
        }

        fn emit(&self, v: serde_json::Value) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{v}");
            let _ = out.flush();
        }
    }

    impl Hooks for Cli {
        fn report(&mut self, report: &Report) {
            match report {
                Report::Iteration(_) => {
                    if let Some(bar) = &self.bar {
                        bar.inc(1);
                    }
                }
                Report::Truncated {
                    longest,
                    max_seq_length,
                } => {
                    if self.json {
                        self.emit(json!({"type": "warning", "message": "truncated", "longest": longest, "max_seq_length": max_seq_length}));
                    } else if !self.warned {
                        self.line(format!(
                            "warning: some sequences are longer than {max_seq_length} tokens; the longest ({longest}) is truncated to {max_seq_length}. Consider pre-splitting your data."
                        ));
                    }
                    self.warned = true;
                }
                Report::Val {
                    iteration,
                    val_loss,
                    val_time,
                } => {
                    if self.json {
                        self.emit(json!({"type": "val", "iteration": iteration, "val_loss": val_loss, "val_time": val_time}));
                    } else {
                        self.line(format!(
                            "Iter {iteration}: Val loss {val_loss:.3}, Val took {val_time:.3}s"
                        ));
                    }
                }
                Report::Train {
                    iteration,
                    train_loss,
                    learning_rate,
                    iterations_per_second,
                    tokens_per_second,
                    trained_tokens,
                    peak_memory_gb,
                } => {
                    if self.json {
                        self.emit(json!({
                            "type": "train", "iteration": iteration, "train_loss": train_loss,
                            "learning_rate": learning_rate, "iterations_per_second": iterations_per_second,
                            "tokens_per_second": tokens_per_second, "trained_tokens": trained_tokens,
                            "peak_memory_gb": peak_memory_gb,
                        }));
                    } else {
                        self.line(format!(
                            "Iter {iteration}: Train loss {train_loss:.3}, Learning Rate {learning_rate:.3e}, It/sec {iterations_per_second:.3}, Tokens/sec {tokens_per_second:.1}, Trained Tokens {trained_tokens}, Peak mem {peak_memory_gb:.3} GB"
                        ));
                    }
                }
            }
        }

        fn save(
            &mut self,
            iteration: Option<usize>,
            weights: &BTreeMap<String, Array>,
        ) -> mlx_metal::Result<()> {
            let main = self.dir.join(adapter::WEIGHTS_FILE);
            adapter::save_weights(&main, weights)?;
            let saved = match iteration {
                Some(it) => {
                    let p = adapter::checkpoint_path(&self.dir, it);
                    adapter::save_weights(&p, weights)?;
                    p
                }
                None => main,
            };
            if self.json {
                self.emit(json!({"type": "save", "iteration": iteration, "path": saved}));
            } else {
                self.line(format!("saved adapter weights to {}", saved.display()));
            }
            Ok(())
        }

        fn stop_requested(&self) -> bool {
            self.stop.load(Ordering::SeqCst)
        }
    }

    fn dtype_of(name: &str) -> Dtype {
        match name {
            "bfloat16" => Dtype::Bfloat16,
            "float16" => Dtype::Float16,
            _ => Dtype::Float32,
        }
    }

    /// The `adapter_config.json` mlx_lm writes: the shaping keys and the
    /// training arguments, sorted.
    fn config_json(args: &TrainArgs, shape: &AdapterConfig) -> serde_json::Value {
        let mut v = serde_json::to_value(shape).expect("serialisable");
        let extra = json!({
            "model": args.model, "data": args.data, "adapter_path": args.adapter_path,
            "train": true, "iters": args.iters, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate, "optimizer": args.optimizer,
            "seed": args.seed, "mask_prompt": args.mask_prompt,
            "grad_checkpoint": args.grad_checkpoint, "max_seq_length": args.max_seq_length,
            "steps_per_report": args.steps_per_report, "steps_per_eval": args.steps_per_eval,
            "val_batches": args.val_batches, "save_every": args.save_every,
            "grad_accumulation_steps": args.grad_accumulation_steps,
            "resume_adapter_file": args.resume_adapter_file,
            "lr_schedule": serde_json::Value::Null, "test": false, "test_batches": 500,
            "train_dtype": args.train_dtype,
        });
        let (map, extra) = (v.as_object_mut().expect("an object"), extra);
        for (k, x) in extra.as_object().expect("an object") {
            map.insert(k.clone(), x.clone());
        }
        // Sorted keys, as mlx_lm's save_config writes them.
        let sorted: BTreeMap<String, serde_json::Value> = map.clone().into_iter().collect();
        serde_json::to_value(sorted).expect("serialisable")
    }

    fn schedule(args: &TrainArgs) -> Result<Schedule> {
        let base = if args.cosine_decay {
            let steps = (args.iters as u64).saturating_sub(args.warmup).max(1);
            Schedule::cosine(args.learning_rate as f32, steps, 0.0)?
        } else {
            Schedule::Constant(args.learning_rate as f32)
        };
        Ok(base.with_warmup(args.warmup, 0.0))
    }

    fn refuse_file_as_dir(path: &Path) -> Result<()> {
        if path.exists() && !path.is_dir() {
            anyhow::bail!("{}: exists and is not a folder", path.display());
        }
        Ok(())
    }

    /// Runs `mlx-infer train`.
    pub fn run(args: TrainArgs) -> Result<i32> {
        refuse_file_as_dir(&args.adapter_path)?;
        let mut model = NativeModel::load_with_dtype(&args.model, args.dtype)?;
        eprintln!(
            "{}",
            crate::loading::summary(inference::TextModel::info(&model))
        );
        let kind: FineTuneType = args.fine_tune_type.parse()?;
        let shape = AdapterConfig {
            fine_tune_type: kind,
            num_layers: args.num_layers,
            lora_parameters: (kind != FineTuneType::Full).then_some(LoraParameters {
                rank: args.rank,
                scale: args.scale,
                dropout: args.dropout,
                keys: None,
            }),
        };
        let data = Encoder {
            tokenizer: model.tokenizer(),
            template: model.chat_template(),
            mask_prompt: args.mask_prompt,
        }
        .load_dir(&args.data)?;
        finetune::check_num_layers(model.architecture(), args.num_layers)?;
        mlx_metal::random::seed(args.seed)?;
        let arch = model.architecture_mut();
        let trainable = finetune::attach(arch, &shape)?;
        finetune::cast_trainable(arch, &trainable, dtype_of(&args.train_dtype))?;
        if args.grad_checkpoint {
            finetune::set_grad_checkpoint(arch, Some(&trainable))?;
        }
        if let Some(file) = &args.resume_adapter_file {
            let full = kind == FineTuneType::Full;
            adapter::load_weights_into(arch, file, &|n| {
                trainable.contains(n) && (full || finetune::is_adapter_leaf(n))
            })?;
            eprintln!("resuming from {}", file.display());
        }
        // Materialise the weights (casts included) before timing starts.
        let all = mlx_metal::nn::params::named(arch.module(), "")?;
        mlx_metal::eval(&all.values().collect::<Vec<_>>())?;
        drop(all);
        let n_train: usize = trainable
            .parameters(arch.module())?
            .values()
            .map(Array::size)
            .sum();
        eprintln!(
            "training {} tensors ({:.3}M parameters) on {} examples",
            trainable.len(),
            n_train as f64 / 1e6,
            data.train.examples.len()
        );
        adapter::save_config(&args.adapter_path, &config_json(&args, &shape))?;

        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
        let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(args.iters as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed_precise}<{eta}]")
                    .expect("a valid template"),
            );
            bar
        });
        let mut hooks = Cli {
            dir: args.adapter_path.clone(),
            json: args.json,
            bar,
            stop: Arc::clone(&stop),
            warned: false,
        };
        let mut opt = Optimizer::by_name(&args.optimizer, args.learning_rate as f32)?;
        opt.schedule = schedule(&args)?;
        let targs = trainer::TrainArgs {
            iters: args.iters,
            batch_size: args.batch_size,
            max_seq_length: args.max_seq_length,
            steps_per_report: args.steps_per_report,
            steps_per_eval: args.steps_per_eval,
            val_batches: usize::try_from(args.val_batches).ok(),
            save_every: args.save_every,
            grad_accumulation_steps: args.grad_accumulation_steps,
            clip_grad_norm: args.clip_grad_norm,
            seed: args.seed,
            compile: true,
        };
        let outcome = trainer::train(
            arch,
            &trainable,
            &mut opt,
            &data.train,
            data.valid.as_ref(),
            &targs,
            &mut hooks,
        );
        if let Some(bar) = &hooks.bar {
            bar.finish_and_clear();
        }
        let outcome = outcome?;
        if outcome.stopped {
            eprintln!(
                "interrupted after {} iterations; the adapter is saved in {}",
                outcome.iterations,
                args.adapter_path.display()
            );
            return Ok(INTERRUPTED);
        }
        if let Some(test) = &data.test {
            let loss = trainer::evaluate(arch, test, args.batch_size, None, args.max_seq_length)?;
            if args.json {
                hooks.emit(json!({"type": "test", "test_loss": loss}));
            } else {
                eprintln!("Test loss {loss:.3}, Test ppl {:.3}", loss.exp());
            }
        }
        Ok(0)
    }
}
