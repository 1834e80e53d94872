//! `cargo xtask`: builds the native stack and runs the project's checks.
//!
//! - `cargo xtask build-mlx [--cuda 12|13]`: MLX and mlx-c into `dist/`.
//! - `cargo xtask test [ARGS]`: build-mlx, then `cargo test --workspace`.

mod build_mlx;
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
        Command::Test { args } => {
            build_mlx::run(&build_mlx::Options::default())?;
            let mut cmd = process::cargo();
            cmd.args(["test", "--workspace"]).args(args);
            process::run_visible(cmd, "cargo test")
        }
    }
}
