//! `cargo xtask bench classify` and `cargo xtask bench batch`: mlx_lm and
//! mlx-infer on the same model and the same sentences, in one run,
//! alternating, medians of `--runs`.
//!
//! - classify: sentences/s of mlx_lm's `batch_generate(max_tokens=1)`, of a
//!   raw batched forward written against mlx_lm's model, and of
//!   `mlx-infer classify`;
//! - batch: generated tokens/s (all rows, wall clock from the first prompt
//!   token) of mlx_lm's `batch_generate` and of `mlx-infer batch`, greedy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bench::median;
use crate::build_mlx::cache_root;
use crate::process::{root, run_visible, RemoveOnDrop};

/// Options of `cargo xtask bench classify|batch`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Model directory (default: SmolLM2-135M-Instruct in bfloat16, made
    /// once from the default model into the cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Sentences (about 16 tokens each).
    #[arg(long, default_value_t = 256)]
    pub sentences: usize,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokens per completion (batch only).
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Timed runs per side, alternating; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// What is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Next-token distributions.
    Classify,
    /// Greedy completions.
    Batch,
}

/// `count` English sentences of about 16 tokens, the same every run.
pub fn sentences(count: usize) -> Vec<String> {
    const SUBJECTS: &[&str] = &[
        "The old farmer",
        "A young engineer",
        "My neighbour's cat",
        "The city council",
        "Our small team",
        "The quiet student",
        "A travelling musician",
        "The new manager",
    ];
    const VERBS: &[&str] = &[
        "carefully repaired",
        "quickly forgot",
        "proudly presented",
        "slowly painted",
        "happily shared",
        "angrily rejected",
        "finally finished",
        "secretly admired",
    ];
    const OBJECTS: &[&str] = &[
        "the broken wooden fence",
        "a long report about rivers",
        "the red kite on the hill",
        "an old map of the harbour",
        "the results of the spring survey",
        "a plan for the village library",
        "the recipe for apple bread",
        "the lights in the hall",
    ];
    const ENDS: &[&str] = &[
        "before the rain began.",
        "after a very long day.",
        "in front of everyone.",
        "without saying a word.",
        "on a cold Monday morning.",
        "while the others slept.",
    ];
    (0..count)
        .map(|i| {
            format!(
                "{} {} {} {}",
                SUBJECTS[i % SUBJECTS.len()],
                VERBS[(i / 8) % VERBS.len()],
                OBJECTS[(i / 64 + i) % OBJECTS.len()],
                ENDS[(i / 3) % ENDS.len()]
            )
        })
        .collect()
}

/// The default bench model: the default GGUF as a bfloat16 MLX directory
/// (mlx_lm cannot read GGUF; half precision, as most checkpoints ship).
pub(crate) fn default_model(cli: &Path) -> Result<PathBuf> {
    let dir = cache_root()?.join("models/SmolLM2-135M-Instruct-bf16");
    if dir.join("model.safetensors").is_file() {
        return Ok(dir);
    }
    let gguf = crate::default_model::run()?;
    let mut cmd = Command::new(cli);
    cmd.args(["convert", "--dtype", "bfloat16", "--gguf"])
        .arg(gguf)
        .arg("--out")
        .arg(&dir);
    run_visible(cmd, "mlx-infer convert")?;
    Ok(dir)
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Runs `cargo xtask bench classify` or `cargo xtask bench batch`.
pub fn run(mode: Mode, opts: &Options) -> Result<()> {
    if opts.runs == 0 || opts.sentences == 0 || opts.batch_size == 0 {
        bail!("--runs, --sentences and --batch-size must be at least 1");
    }
    if mode == Mode::Batch && opts.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    if let Some(m) = &opts.model {
        if !m.is_dir() {
            bail!("--model {}: not a model directory", m.display());
        }
    }
    crate::build_mlx::run(&crate::build_mlx::Options::default())?;
    let python = crate::fixtures::python_env()?;
    let mut build = crate::process::cargo();
    build.args(["build", "--quiet", "--release", "-p", "mlx-infer-cli"]);
    run_visible(build, "cargo build --release")?;
    let cli = root().join("target/release/mlx-infer");
    let model = match &opts.model {
        Some(m) => m.clone(),
        None => default_model(&cli)?,
    };
    let file = RemoveOnDrop(
        std::env::temp_dir().join(format!("mlx-infer-bench-{}.txt", std::process::id())),
    );
    std::fs::write(&file.0, sentences(opts.sentences).join("\n") + "\n")?;
    let (batch, max) = (opts.batch_size.to_string(), opts.max_tokens.to_string());
    let mode_name = if mode == Mode::Classify {
        "classify"
    } else {
        "batch"
    };

    let mut results: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for run in 0..opts.runs {
        eprintln!("  run {}/{}: mlx_lm ...", run + 1, opts.runs);
        let out = Command::new(&python)
            .arg(root().join("xtask/python/bench_batch.py"))
            .arg(&model)
            .args([mode_name])
            .arg(&file.0)
            .args([&batch, &max])
            .output()
            .context("cannot run the mlx_lm side")?;
        if !out.status.success() {
            bail!("mlx_lm failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        for v in json_lines(&out.stdout) {
            let way = v["way"].as_str().unwrap_or("?").to_string();
            let rate = if mode == Mode::Classify {
                v["sentences_per_s"].as_f64()
            } else {
                v["generation_tps"].as_f64()
            };
            let entry = results.entry(way).or_default();
            entry.0.push(rate.unwrap_or(0.0));
            entry.1.push(v["peak_memory_bytes"].as_f64().unwrap_or(0.0));
        }
        eprintln!("  run {}/{}: mlx-infer ...", run + 1, opts.runs);
        let mut cmd = Command::new(&cli);
        cmd.arg(mode_name)
            .arg("--model")
            .arg(&model)
            .arg("--input")
            .arg(&file.0);
        cmd.args(["--json", "--batch-size", &batch]);
        if mode == Mode::Batch {
            cmd.args(["--max-tokens", &max]);
        }
        let out = cmd.output().context("cannot run mlx-infer")?;
        if !out.status.success() {
            bail!("mlx-infer failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let done = json_lines(&out.stdout)
            .into_iter()
            .find(|v| v["done"] == true)
            .context("mlx-infer printed no summary")?;
        let num = |k: &str| done[k].as_f64().unwrap_or(0.0);
        let rate = if mode == Mode::Classify {
            num("inputs_per_s")
        } else {
            // all generated tokens over the wall clock since the start
            let secs = num("prompt_tokens") / num("prompt_tps").max(1e-9)
                + num("generated_tokens") / num("generation_tps").max(1e-9);
            num("generated_tokens") / secs.max(1e-9)
        };
        let entry = results.entry("mlx-infer".into()).or_default();
        entry.0.push(rate);
        entry.1.push(num("peak_memory_bytes"));
    }
    drop(file);

    let unit = if mode == Mode::Classify {
        "sentences/s"
    } else {
        "generated tok/s"
    };
    println!(
        "\n{} on {}: {} sentences, batch {}{}; medians of {} runs",
        mode_name,
        model.display(),
        opts.sentences,
        opts.batch_size,
        if mode == Mode::Batch {
            format!(", {} tokens each", opts.max_tokens)
        } else {
            String::new()
        },
        opts.runs
    );
    println!("| side | {unit} | peak MB |\n|------|---:|---:|");
    let ours = results
        .get("mlx-infer")
        .map(|r| median(r.0.clone()))
        .unwrap_or(0.0);
    for (way, (rates, peaks)) in &results {
        println!(
            "| {way} | {:.1} | {:.0} |",
            median(rates.clone()),
            median(peaks.clone()) / 1e6
        );
    }
    for (way, (rates, _)) in results.iter().filter(|(w, _)| w.as_str() != "mlx-infer") {
        println!(
            "mlx-infer / {way}: {:.2}x",
            ours / median(rates.clone()).max(1e-9)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_repeatable_and_varied() {
        let a = sentences(64);
        assert_eq!(a, sentences(64));
        let distinct: std::collections::HashSet<&String> = a.iter().collect();
        assert_eq!(distinct.len(), 64);
        assert!(a.iter().all(|s| s.split(' ').count() >= 10));
    }
}
