//! `mlx-infer`: run local language models from the command line.

mod backends;
mod linked;

use clap::{Parser, Subcommand};

/// Run local language models on MLX.
#[derive(Parser)]
#[command(name = "mlx-infer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the backends built into this program and whether they can run here.
    Backends,
}

fn main() {
    linked::ensure_linked();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Backends => backends::run(&mut std::io::stdout()),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
