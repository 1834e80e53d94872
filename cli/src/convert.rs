//! `mlx-infer convert`: a GGUF file as a standard MLX model directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// `mlx-infer convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The GGUF file to convert.
    #[arg(long)]
    gguf: PathBuf,
    /// The directory to write (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
}

/// Writes config.json, model.safetensors, tokenizer.json and
/// tokenizer_config.json to `--out`.
#[cfg(feature = "metal")]
pub fn run(args: &ConvertArgs) -> Result<i32> {
    mlx_metal::llm::gguf::convert(&args.gguf, &args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(0)
}

/// Without the native backend there is nothing to read GGUF tensors with.
#[cfg(not(feature = "metal"))]
pub fn run(args: &ConvertArgs) -> Result<i32> {
    let _ = args;
    anyhow::bail!("convert needs the native backend: build with `--features metal` after `cargo xtask build-mlx`")
}
