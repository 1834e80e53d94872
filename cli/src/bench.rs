//! `mlx-infer bench`: load a model once, warm up, then time generations.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use inference::{ComputeDtype, GenerateOptions, LoadOptions};
use serde_json::json;

/// `mlx-infer bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model directory or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Backend to time (default: the best available).
    #[arg(long)]
    backend: Option<String>,
    /// Floating-point type to compute in (`auto`, `model`, `float32`,
    /// `bfloat16`, `float16`; see `generate --help`).
    #[arg(long, default_value = "auto", value_parser = crate::loading::dtype_parser())]
    dtype: ComputeDtype,
    /// Tokens to generate per run (greedy).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    max_tokens: u64,
    /// Timed runs after one warm-up.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// The prompt (default: read from stdin).
    #[arg(long)]
    prompt: Option<String>,
}

/// Runs `mlx-infer bench`: one JSON line per timed run.
pub fn run(args: BenchArgs) -> Result<i32> {
    let prompt = match args.prompt {
        Some(p) => p,
        None if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the prompt")?;
            text
        }
        None => bail!("no prompt: pass --prompt TEXT or pipe it on stdin"),
    };
    inference::check_prompt(&prompt)?;
    let mut opts = LoadOptions::default().dtype(args.dtype);
    opts.backend = args.backend.clone();
    let mut model = inference::load_model_with(&args.model, opts)?;
    eprintln!("{}", crate::loading::summary(model.info()));
    let warm = GenerateOptions::default().max_tokens(4);
    model.generate(&prompt, &warm).collect_text()?;
    let opts = GenerateOptions::default().max_tokens(args.max_tokens as usize);
    for _ in 0..args.runs {
        model.generate(&prompt, &opts).collect_text()?;
        let m = model.metrics();
        println!(
            "{}",
            json!({
                "backend": model.info().backend,
                "compute_dtype": model.info().compute_dtype,
                "blas": model.info().blas,
                "prompt_tokens": m.prompt_tokens,
                "generated_tokens": m.generated_tokens,
                "prompt_tps": m.prompt_tps,
                "generation_tps": m.generation_tps,
                "peak_memory_bytes": m.peak_memory_bytes,
            })
        );
    }
    Ok(0)
}
