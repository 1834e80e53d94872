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
    /// Dequantise and store every weight in this type (`float32`, `bfloat16`
    /// or `float16`); by default quantised weights stay quantised.
    #[arg(long, value_parser = ["float32", "bfloat16", "float16"])]
    dtype: Option<String>,
}

/// Writes config.json, model.safetensors, tokenizer.json and
/// tokenizer_config.json to `--out`.
#[cfg(feature = "metal")]
pub fn run(args: &ConvertArgs) -> Result<i32> {
    let dtype = match args.dtype.as_deref() {
        None => None,
        Some("float32") => Some(mlx_metal::Dtype::Float32),
        Some("float16") => Some(mlx_metal::Dtype::Float16),
        _ => Some(mlx_metal::Dtype::Bfloat16),
    };
    mlx_metal::llm::gguf::convert_to(&args.gguf, &args.out, dtype)?;
    eprintln!("wrote {}", args.out.display());
    Ok(0)
}

/// Without the native backend there is nothing to read GGUF tensors with.
#[cfg(not(feature = "metal"))]
pub fn run(args: &ConvertArgs) -> Result<i32> {
    let _ = args;
    anyhow::bail!("convert needs the native backend: build with `--features metal` after `cargo xtask build-mlx`")
}
