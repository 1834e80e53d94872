//! `mlx-infer`: run local language models from the command line.

mod backends;
mod batch;
mod bench;
mod convert;
mod distributed;
mod fuse;
mod generate;
mod inputs;
mod launch;
mod linked;
mod loading;
mod model_path;
mod models;
mod serve;
mod train;

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
    /// Stream a completion of a prompt (from --prompt or stdin).
    Generate(generate::GenerateArgs),
    /// Chat with a model using its own chat template.
    Chat(generate::ChatArgs),
    /// The next-token distribution after each input line (labels, top-k), batched.
    Classify(batch::ClassifyArgs),
    /// A completion for each input line, generated in batches.
    Batch(batch::BatchArgs),
    /// Time prompt processing and generation (one JSON line per run).
    Bench(bench::BenchArgs),
    /// Write a GGUF file as an MLX model directory (config.json, model.safetensors, tokenizer).
    Convert(convert::ConvertArgs),
    /// List the models on this machine (Hugging Face cache, default model, ollama) and their backend.
    #[command(alias = "discover")]
    Models(models::ModelsArgs),
    /// Merge a fine-tuned adapter into a model's weights; writes a model directory.
    Fuse(fuse::FuseArgs),
    /// Serve the model over HTTP: OpenAI- and Anthropic-compatible, with continuous batching.
    Serve(serve::ServeArgs),
    /// Fine-tune a model (LoRA, DoRA or full) on a folder of JSONL data; writes an adapter.
    Train(train::TrainArgs),
    /// Run an mlx-infer command as N local processes of a distributed group (ring over loopback).
    Launch(launch::LaunchArgs),
}

/// Prints the libraries' warnings (e.g. a prompt beyond the model's
/// context length) on stderr.
struct Warnings;

impl log::Log for Warnings {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("warning: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// CUDA graphs MLX's CUDA backend may keep. Its default, 400, is an error
/// (not a slowdown) once exceeded, and a serving batch whose shape changes
/// as requests join and leave needs more; users who set the variable keep
/// their value.
const CUDA_GRAPH_CACHE_SIZE: &str = "4096";

fn main() {
    // Set before any thread starts and before MLX reads it.
    if std::env::var_os("MLX_CUDA_GRAPH_CACHE_SIZE").is_none() {
        std::env::set_var("MLX_CUDA_GRAPH_CACHE_SIZE", CUDA_GRAPH_CACHE_SIZE);
    }
    linked::ensure_linked();
    static WARNINGS: Warnings = Warnings;
    if log::set_logger(&WARNINGS).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Backends => backends::run(&mut std::io::stdout()),
        Command::Generate(args) => generate::generate(args),
        Command::Chat(args) => generate::chat(args),
        Command::Classify(args) => batch::classify(args),
        Command::Batch(args) => batch::batch(args),
        Command::Bench(args) => bench::run(args),
        Command::Convert(args) => convert::run(&args),
        Command::Models(args) => models::run(&args, &mut std::io::stdout()),
        Command::Train(args) => train::run(args),
        Command::Launch(args) => launch::run(args),
        Command::Fuse(args) => fuse::run(&args),
        Command::Serve(args) => serve::run(args),
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    match result {
        Ok(code) => linked::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            linked::exit(1);
        }
    }
}
