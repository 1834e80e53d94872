//! `cargo xtask bench train`: LoRA training tokens/s and peak memory of
//! mlx_lm (`mlx_lm.tuner.trainer.train`) and `mlx-infer train` on the same
//! model, data, batch size, rank and blocks, in one run, the sides taking
//! turns; medians of `--runs`, reported as ratios. `--grad-checkpoint`
//! adds both sides with gradient checkpointing (peak memory against
//! without).
//!
//! The data is written here: `--examples` lines of English text longer
//! than `--seq-len` tokens, truncated to it, so every batch is exactly
//! `--seq-len` wide on both sides. Tokens/s is each side's own report over
//! the second half of `--iters` (the first half warms up).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bench::{build_libmlx, median};
use crate::build_mlx::cache_root;
use crate::process::{root, run_visible, RemoveOnDrop};

/// Options of `cargo xtask bench train`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Model directory (default: SmolLM2-135M-Instruct in bfloat16, made
    /// once from the default model into the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Data folder with train.jsonl (default: English text written here).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Training iterations per run (reports cover the second half).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// Adapted blocks, from the last (-1: all).
    #[arg(long, default_value_t = 16, allow_negative_numbers = true)]
    pub num_layers: i32,
    /// Tokens per row (the written data is truncated to it).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Lines of written data.
    #[arg(long, default_value_t = 32)]
    pub examples: usize,
    /// Also time both sides with gradient checkpointing.
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// Compute dtype of both sides (`auto`: float32 for half-precision
    /// weights on a CPU, as mlx-infer's default; `model`: as stored).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Timed runs per side, alternating; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Use this mlx-infer binary instead of building one (e.g. a copied
    /// CUDA build).
    #[arg(long)]
    pub cli: Option<PathBuf>,
    /// Run mlx_lm with this Python (default: the fixtures' environment).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

/// A file of this repository: under the folder this program was built in,
/// else under the current directory (a copied binary run in a checkout
/// elsewhere, as on the GPU machine).
fn repo_file(rel: &str) -> PathBuf {
    let built = root().join(rel);
    if built.is_file() {
        built
    } else {
        PathBuf::from(rel)
    }
}

/// Writes `examples` lines of text, each about `4 * seq_len / 3` tokens.
fn write_data(dir: &Path, examples: usize, seq_len: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let sentences = crate::bench_batch::sentences(examples * (seq_len / 12 + 2));
    let per_line = seq_len / 12 + 2;
    let lines: Vec<String> = sentences
        .chunks(per_line)
        .take(examples)
        .map(|c| serde_json::json!({"text": c.join(" ")}).to_string())
        .collect();
    std::fs::write(dir.join("train.jsonl"), lines.join("\n") + "\n")?;
    Ok(())
}

/// One measurement.
#[derive(Debug, Clone)]
struct Run {
    tokens_per_second: f64,
    peak_gb: f64,
}

struct Side {
    label: String,
    command: Box<dyn Fn() -> Command>,
    runs: Vec<Run>,
}

fn last_json(out: &[u8], what: &str) -> Result<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .with_context(|| format!("{what} printed no JSON"))
}

fn measure(side: &Side) -> Result<Run> {
    eprintln!("  running {} ...", side.label);
    let out = (side.command)()
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", side.label))?;
    if !out.status.success() {
        bail!("{} failed ({})", side.label, out.status);
    }
    // mlx-infer prints one JSON line per report; the last train report counts.
    let text = String::from_utf8_lossy(&out.stdout);
    let report = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("type").is_none() || v["type"] == "train")
        .map(Ok)
        .unwrap_or_else(|| last_json(&out.stdout, &side.label))?;
    let num = |k: &str| {
        report[k]
            .as_f64()
            .with_context(|| format!("{}: no `{k}` in {report}", side.label))
    };
    let run = Run {
        tokens_per_second: num("tokens_per_second")?,
        peak_gb: num("peak_memory_gb")?,
    };
    eprintln!(
        "    {}: {:.1} tok/s, peak {:.3} GB",
        side.label, run.tokens_per_second, run.peak_gb
    );
    Ok(run)
}

/// Runs `cargo xtask bench train`.
pub fn run(opts: &Options) -> Result<()> {
    if opts.runs == 0 || opts.iters < 2 || opts.batch_size == 0 || opts.seq_len < 2 {
        bail!("--runs, --batch-size must be at least 1, --iters and --seq-len at least 2");
    }
    let cli = match &opts.cli {
        Some(c) => c.clone(),
        None => {
            crate::build_mlx::run(&crate::build_mlx::Options::default())?;
            let mut build = crate::process::cargo();
            build.args(["build", "--quiet", "--release", "-p", "mlx-infer-cli"]);
            run_visible(build, "cargo build --release")?;
            root().join("target/release/mlx-infer")
        }
    };
    let python = match &opts.python {
        Some(p) => p.clone(),
        None => crate::fixtures::python_env()?,
    };
    let model = match &opts.model {
        Some(m) => m.clone(),
        None => crate::bench_batch::default_model(&cli)?,
    };
    let data = match &opts.data {
        Some(d) => d.clone(),
        None => {
            let d = cache_root()?.join(format!(
                "bench-train-data-{}x{}",
                opts.examples, opts.seq_len
            ));
            write_data(&d, opts.examples, opts.seq_len)?;
            d
        }
    };
    let scratch =
        RemoveOnDrop(std::env::temp_dir().join(format!("bench-train-{}", std::process::id())));
    let script = repo_file("xtask/python/bench_train_mlx_lm.py");
    let libmlx = if opts.cli.is_some() {
        None
    } else {
        build_libmlx()?
    };
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();

    let mut sides = Vec::new();
    let checkpoints: &[bool] = if opts.grad_checkpoint {
        &[false, true]
    } else {
        &[false]
    };
    for &ckpt in checkpoints {
        let suffix = if ckpt { ", grad checkpoint" } else { "" };
        let (py, script, m_model, m_data, dtype, libmlx, cores) = (
            python.clone(),
            script.clone(),
            model.clone(),
            data.clone(),
            opts.dtype.clone(),
            libmlx.clone(),
            cores.clone(),
        );
        let (iters, batch, rank, layers, len) = (
            opts.iters,
            opts.batch_size,
            opts.rank,
            opts.num_layers,
            opts.seq_len,
        );
        sides.push(Side {
            label: format!("mlx_lm{suffix}"),
            command: Box::new(move || {
                let mut cmd = Command::new(&py);
                cmd.arg(&script)
                    .arg(&m_model)
                    .arg(&m_data)
                    .args([iters, batch, rank].map(|n| n.to_string()))
                    .arg(layers.to_string())
                    .arg(len.to_string())
                    .arg(if ckpt { "1" } else { "0" })
                    .arg(&dtype);
                if let Some(lib) = &libmlx {
                    // this build's MLX, and OpenBLAS sized as the native side sizes it
                    cmd.env("LD_PRELOAD", lib)
                        .env("OPENBLAS_NUM_THREADS", &cores);
                }
                cmd
            }),
            runs: Vec::new(),
        });
        let (cli, n_model, n_data, dtype, out) = (
            cli.clone(),
            model.clone(),
            data.clone(),
            opts.dtype.clone(),
            scratch.0.join(if ckpt { "ckpt" } else { "plain" }),
        );
        sides.push(Side {
            label: format!("mlx-infer{suffix}"),
            command: Box::new(move || {
                let _ = std::fs::remove_dir_all(&out);
                let mut cmd = Command::new(&cli);
                cmd.args(["train", "--json", "--model"])
                    .arg(&n_model)
                    .arg("--data")
                    .arg(&n_data)
                    .arg("--adapter-path")
                    .arg(&out)
                    .args(["--iters", &iters.to_string()])
                    .args(["--batch-size", &batch.to_string()])
                    .args(["--rank", &rank.to_string()])
                    .args(["--num-layers", &layers.to_string()])
                    .args(["--max-seq-length", &len.to_string()])
                    .args(["--steps-per-report", &(iters / 2).max(1).to_string()])
                    .args([
                        "--steps-per-eval",
                        "1000000000",
                        "--save-every",
                        "1000000000",
                    ])
                    .args(["--dtype", &dtype]);
                if ckpt {
                    cmd.arg("--grad-checkpoint");
                }
                cmd
            }),
            runs: Vec::new(),
        });
    }

    let n = sides.len();
    for round in 0..opts.runs {
        eprintln!("round {} of {}", round + 1, opts.runs);
        for i in 0..n {
            let side = &mut sides[(round + i) % n];
            let run = measure(side)?;
            side.runs.push(run);
        }
    }
    drop(scratch);

    let summary: Vec<(String, f64, f64)> = sides
        .iter()
        .map(|s| {
            (
                s.label.clone(),
                median(s.runs.iter().map(|r| r.tokens_per_second).collect()),
                median(s.runs.iter().map(|r| r.peak_gb).collect()),
            )
        })
        .collect();
    println!(
        "\nmodel {} | data {} | {} iters, batch {}, rank {}, {} blocks, {} tokens/row, dtype {} | medians of {} alternating rounds",
        model.display(),
        data.display(),
        opts.iters,
        opts.batch_size,
        opts.rank,
        opts.num_layers,
        opts.seq_len,
        opts.dtype,
        opts.runs
    );
    println!("{:<34} {:>12} {:>12}", "", "train tok/s", "peak GB");
    for (label, tps, peak) in &summary {
        println!("{label:<34} {tps:>12.1} {peak:>12.3}");
    }
    for pair in summary.chunks(2) {
        let (theirs, ours) = (&pair[0], &pair[1]);
        println!(
            "{:<34} {:>11.2}x {:>11.2}x",
            format!("{} / {}", ours.0, theirs.0),
            ours.1 / theirs.1,
            ours.2 / theirs.2
        );
    }
    if summary.len() == 4 {
        for (plain, ckpt) in [(&summary[1], &summary[3]), (&summary[0], &summary[2])] {
            println!(
                "{:<34} {:>12} {:>11.2}x",
                format!("{} / without", ckpt.0),
                "",
                ckpt.2 / plain.2
            );
        }
    }
    Ok(())
}
