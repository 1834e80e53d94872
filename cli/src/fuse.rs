//! `mlx-infer fuse`: a model directory with an adapter merged into its
//! weights (as `mlx_lm.fuse`).

use std::path::PathBuf;

use clap::Args;

/// `mlx-infer fuse`.
#[derive(Args, Debug)]
pub struct FuseArgs {
    /// The base model directory.
    #[arg(long)]
    model: PathBuf,
    /// The adapter folder (adapters.safetensors + adapter_config.json).
    #[arg(long)]
    adapter_path: PathBuf,
    /// The directory to write (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Write every quantised layer dense (and drop the `quantization` block).
    #[arg(long)]
    dequantize: bool,
}

/// Loads the model with its adapter, merges it and writes `--out`.
#[cfg(feature = "metal")]
pub fn run(args: &FuseArgs) -> anyhow::Result<i32> {
    use mlx_metal::llm::NativeModel;
    use mlx_metal::train::fuse;

    if !args.model.is_dir() {
        anyhow::bail!(
            "{}: fuse reads a model directory (convert a GGUF file first with `mlx-infer convert`)",
            args.model.display()
        );
    }
    let mut model = NativeModel::load_with_dtype(&args.model, inference::ComputeDtype::Model)?;
    model.load_adapter(&args.adapter_path)?;
    let n = fuse::fuse(model.architecture_mut(), args.dequantize)?;
    fuse::write_model_dir(
        model.architecture_mut(),
        &args.model,
        &args.out,
        args.dequantize,
    )?;
    eprintln!("merged {n} adapters; wrote {}", args.out.display());
    Ok(0)
}

/// Without the native backend there is nothing to fuse with.
#[cfg(not(feature = "metal"))]
pub fn run(args: &FuseArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("fuse needs the native backend: build with `--features metal` after `cargo xtask build-mlx`")
}
