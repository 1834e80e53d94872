//! `cargo xtask bench`: mlx_lm and the native backend on the same model, in
//! one run, on this machine's MLX; prints prompt and decode tokens per
//! second for both and their ratios.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::build_mlx::{cache_root, run_logged};
use crate::process::{root, run_visible};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Model directory (default: a Qwen3-0.6B-shaped bf16 model with random
    /// weights, made once in the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Tokens generated per run (greedy).
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Timed runs per side (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Sentences in the prompt ("The quick brown fox jumps over the lazy dog.").
    #[arg(long, default_value_t = 4)]
    pub prompt_sentences: usize,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    prompt_tokens: u64,
    generated: u64,
    prompt_tps: f64,
    generation_tps: f64,
    peak: f64,
}

fn parse_runs(stdout: &str, what: &str) -> Result<Vec<Run>> {
    let runs: Vec<Run> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).with_context(|| format!("{what} printed {l:?}"))?;
            let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
            Ok(Run {
                prompt_tokens: num("prompt_tokens") as u64,
                generated: num("generated_tokens") as u64,
                prompt_tps: num("prompt_tps"),
                generation_tps: num("generation_tps"),
                peak: num("peak_memory_bytes"),
            })
        })
        .collect::<Result<_>>()?;
    if runs.is_empty() {
        bail!("{what} reported no runs");
    }
    Ok(runs)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn summarize(runs: &[Run]) -> Run {
    Run {
        prompt_tokens: runs[0].prompt_tokens,
        generated: runs[0].generated,
        prompt_tps: median(runs.iter().map(|r| r.prompt_tps).collect()),
        generation_tps: median(runs.iter().map(|r| r.generation_tps).collect()),
        peak: median(runs.iter().map(|r| r.peak).collect()),
    }
}

/// Runs `cmd` with `prompt` on stdin; returns its stdout.
fn timed(mut cmd: Command, prompt: &str, what: &str) -> Result<String> {
    eprintln!("  running {what} ...");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(prompt.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn default_model(python: &Path) -> Result<PathBuf> {
    let dir = cache_root()?.join("bench-qwen3-0.6b-bf16");
    if dir.join("model.safetensors").is_file() {
        return Ok(dir);
    }
    let fixtures = crate::fixtures::run()?;
    let mut cmd = Command::new(python);
    cmd.arg(root().join("xtask/python/make_bench_model.py"))
        .arg(fixtures.join("qwen3"))
        .arg(&dir);
    run_logged(
        cmd,
        "make the Qwen3-0.6B-shaped bf16 bench model",
        &cache_root()?.join("bench-model.log"),
    )?;
    Ok(dir)
}

/// Runs `cargo xtask bench`.
pub fn run(opts: &Options) -> Result<()> {
    crate::build_mlx::run(&crate::build_mlx::Options::default())?;
    let python = crate::fixtures::python_env()?;
    let model = match &opts.model {
        Some(m) => m.clone(),
        None => default_model(&python)?,
    };
    let mut build = crate::process::cargo();
    build.args(["build", "--quiet", "--release", "-p", "mlx-infer-cli"]);
    run_visible(build, "cargo build --release")?;
    let cli = root().join("target/release/mlx-infer");
    let prompt =
        "The quick brown fox jumps over the lazy dog. ".repeat(opts.prompt_sentences.max(1));
    let runs = opts.runs.max(1).to_string();
    let max = opts.max_tokens.to_string();

    let mut reference = Command::new(&python);
    reference
        .arg(root().join("xtask/python/bench_mlx_lm.py"))
        .arg(&model)
        .args([&max, &runs]);
    let reference = summarize(&parse_runs(
        &timed(reference, &prompt, "mlx_lm")?,
        "mlx_lm",
    )?);

    let native_name = inference::native_backend_name();
    let mut native = Command::new(&cli);
    native
        .args(["bench", "--backend", native_name, "--model"])
        .arg(&model)
        .args(["--max-tokens", &max, "--runs", &runs]);
    let native = summarize(&parse_runs(
        &timed(native, &prompt, "mlx-infer bench")?,
        "mlx-infer",
    )?);

    if reference.prompt_tokens != native.prompt_tokens {
        bail!(
            "prompt lengths differ: mlx_lm {} tokens, mlx-infer {} tokens",
            reference.prompt_tokens,
            native.prompt_tokens
        );
    }
    println!(
        "\nmodel {} | prompt {} tokens | {} generated (mlx_lm {}) | median of {} runs",
        model.display(),
        native.prompt_tokens,
        native.generated,
        reference.generated,
        runs
    );
    println!(
        "{:<18} {:>14} {:>14} {:>12}",
        "", "prompt tok/s", "decode tok/s", "peak MB"
    );
    for (name, r) in [
        ("mlx_lm", reference),
        (&format!("mlx-infer ({native_name})")[..], native),
    ] {
        println!(
            "{:<18} {:>14.2} {:>14.2} {:>12.0}",
            name,
            r.prompt_tps,
            r.generation_tps,
            r.peak / 1e6
        );
    }
    println!(
        "{:<18} {:>13.2}x {:>13.2}x",
        "ratio",
        native.prompt_tps / reference.prompt_tps,
        native.generation_tps / reference.generation_tps
    );
    Ok(())
}
