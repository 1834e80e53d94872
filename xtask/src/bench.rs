//! `cargo xtask bench`: mlx_lm and the native backend on the same model, in
//! one run, alternating; prints prompt and decode tokens per second (medians)
//! and two ratios: against mlx_lm as pip installs it, and against mlx_lm on
//! this project's MLX build with the same compute dtype, so that the gain
//! from the build (BLAS) and the gain from the Rust code are separate lines.

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
    /// Rounds; each runs every side once (a fresh process: load, one
    /// warm-up, one timed generation), the sides taking turns. Medians are
    /// reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Sentences in the prompt ("The quick brown fox jumps over the lazy dog.").
    #[arg(long, default_value_t = 4)]
    pub prompt_sentences: usize,
}

/// Checks the options before anything is built or started.
fn validate(opts: &Options) -> Result<()> {
    for (flag, value) in [
        ("--runs", opts.runs),
        ("--max-tokens", opts.max_tokens),
        ("--prompt-sentences", opts.prompt_sentences),
    ] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if let Some(m) = &opts.model {
        if m.is_file() {
            bail!("--model {} is a file; pass a model directory", m.display());
        }
        if !m.is_dir() {
            bail!("--model {}: no such directory", m.display());
        }
        if !m.join("config.json").is_file() {
            bail!(
                "--model {}: no config.json (not a model directory)",
                m.display()
            );
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
struct Run {
    prompt_tokens: u64,
    generated: u64,
    prompt_tps: f64,
    generation_tps: f64,
    peak: f64,
    compute_dtype: String,
    blas: String,
}

fn parse_runs(stdout: &str, what: &str) -> Result<Vec<Run>> {
    let runs: Vec<Run> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).with_context(|| format!("{what} printed {l:?}"))?;
            let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
            let text = |k: &str| {
                v.get(k)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            Ok(Run {
                prompt_tokens: num("prompt_tokens") as u64,
                generated: num("generated_tokens") as u64,
                prompt_tps: num("prompt_tps"),
                generation_tps: num("generation_tps"),
                peak: num("peak_memory_bytes"),
                compute_dtype: text("compute_dtype"),
                blas: text("blas"),
            })
        })
        .collect::<Result<_>>()?;
    if runs.is_empty() {
        bail!("{what} reported no runs");
    }
    Ok(runs)
}

/// The median (the mean of the two middle values for an even count).
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn summarize(runs: &[Run]) -> Run {
    Run {
        prompt_tps: median(runs.iter().map(|r| r.prompt_tps).collect()),
        generation_tps: median(runs.iter().map(|r| r.generation_tps).collect()),
        peak: median(runs.iter().map(|r| r.peak).collect()),
        ..runs[0].clone()
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

/// This build's `libmlx` (from `dist/paths.txt`), which the same-build
/// mlx_lm side preloads so that Python's MLX bindings run on it (and on
/// the BLAS build-mlx gave it). `None` where that is not done (macOS: the
/// pip wheel already uses Accelerate).
pub(crate) fn build_libmlx() -> Result<Option<PathBuf>> {
    if !cfg!(target_os = "linux") {
        return Ok(None);
    }
    let paths = root().join("dist/paths.txt");
    let text = std::fs::read_to_string(&paths)
        .with_context(|| format!("cannot read {}", paths.display()))?;
    let lib = text
        .lines()
        .find_map(|l| l.strip_prefix("mlx_lib="))
        .map(|d| PathBuf::from(d).join("libmlx.so"))
        .with_context(|| format!("{} names no mlx_lib", paths.display()))?;
    if !lib.is_file() {
        bail!("{} (from {}) is missing", lib.display(), paths.display());
    }
    Ok(Some(lib))
}

/// One side of the comparison.
struct Side {
    label: &'static str,
    command: Box<dyn Fn() -> Command>,
    runs: Vec<Run>,
}

/// Runs `cargo xtask bench`.
pub fn run(opts: &Options) -> Result<()> {
    validate(opts)?;
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
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(opts.prompt_sentences);
    let max = opts.max_tokens.to_string();
    let script = root().join("xtask/python/bench_mlx_lm.py");
    let libmlx = build_libmlx()?;
    let native_name = inference::native_backend_name();
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();

    let mlx_lm = |dtype: &'static str, preload: Option<PathBuf>| {
        let (python, script, model, max, cores) = (
            python.clone(),
            script.clone(),
            model.clone(),
            max.clone(),
            cores.clone(),
        );
        Box::new(move || {
            let mut cmd = Command::new(&python);
            cmd.arg(&script).arg(&model).args([&max, "1", dtype]);
            if let Some(lib) = &preload {
                // this build's MLX, and OpenBLAS sized as the native side sizes it
                cmd.env("LD_PRELOAD", lib)
                    .env("OPENBLAS_NUM_THREADS", &cores);
            }
            cmd
        }) as Box<dyn Fn() -> Command>
    };
    let native = {
        let (cli, model, max) = (cli.clone(), model.clone(), max.clone());
        Box::new(move || {
            let mut cmd = Command::new(&cli);
            cmd.args(["bench", "--backend", native_name, "--model"])
                .arg(&model)
                .args(["--max-tokens", &max, "--runs", "1"]);
            cmd
        }) as Box<dyn Fn() -> Command>
    };
    let mut sides = [
        Side {
            label: "mlx_lm as pip installs it",
            command: mlx_lm("model", None),
            runs: Vec::new(),
        },
        Side {
            label: "mlx_lm on this build",
            command: mlx_lm("auto", libmlx),
            runs: Vec::new(),
        },
        Side {
            label: "mlx-infer, defaults",
            command: native,
            runs: Vec::new(),
        },
    ];

    let load_before = load_average();
    for round in 0..opts.runs {
        eprintln!("round {} of {}", round + 1, opts.runs);
        // the sides take turns, starting one later each round
        for i in 0..sides.len() {
            let side = &mut sides[(round + i) % 3];
            let out = timed((side.command)(), &prompt, side.label)?;
            let runs = parse_runs(&out, side.label)?;
            for r in &runs {
                eprintln!(
                    "    {}: prompt {:.2} tok/s, decode {:.2} tok/s",
                    side.label, r.prompt_tps, r.generation_tps
                );
            }
            side.runs.extend(runs);
        }
    }
    let load_after = load_average();
    let [pip, same, ours] = sides.map(|s| (s.label, summarize(&s.runs)));

    if pip.1.prompt_tokens != ours.1.prompt_tokens || same.1.prompt_tokens != ours.1.prompt_tokens {
        bail!(
            "prompt lengths differ: mlx_lm {} and {} tokens, mlx-infer {} tokens",
            pip.1.prompt_tokens,
            same.1.prompt_tokens,
            ours.1.prompt_tokens
        );
    }
    println!(
        "\nmodel {} | prompt {} tokens | {} generated (mlx_lm {}) | medians of {} alternating rounds",
        model.display(),
        ours.1.prompt_tokens,
        ours.1.generated,
        pip.1.generated,
        opts.runs
    );
    println!(
        "{:<36} {:>13} {:>13} {:>9}  compute / BLAS",
        "", "prompt tok/s", "decode tok/s", "peak MB"
    );
    for (label, r) in [&pip, &same, &ours] {
        println!(
            "{:<36} {:>13.2} {:>13.2} {:>9.0}  {} / {}",
            label,
            r.prompt_tps,
            r.generation_tps,
            r.peak / 1e6,
            r.compute_dtype,
            r.blas
        );
    }
    for (label, base) in [
        ("mlx-infer / mlx_lm as pip installs it", &pip.1),
        ("mlx-infer / mlx_lm on this build", &same.1),
    ] {
        println!(
            "{:<36} {:>12.2}x {:>12.2}x",
            label,
            ours.1.prompt_tps / base.prompt_tps,
            ours.1.generation_tps / base.generation_tps
        );
    }
    if let (Some(before), Some(after)) = (load_before, load_after) {
        println!(
            "load average (1 min) {before} before, {after} after, on {cores} cores \
             (other work on the machine slows the multi-threaded BLAS sides most)"
        );
    }
    Ok(())
}

/// The 1-minute load average (Linux), to tell a busy machine's figures.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            model: None,
            max_tokens: 32,
            runs: 3,
            prompt_sentences: 4,
        }
    }

    #[test]
    fn bad_arguments_are_one_line_errors_naming_the_flag() {
        assert!(validate(&opts()).is_ok());
        let err = |o: Options| validate(&o).unwrap_err().to_string();
        assert_eq!(
            err(Options { runs: 0, ..opts() }),
            "--runs must be at least 1"
        );
        assert_eq!(
            err(Options {
                max_tokens: 0,
                ..opts()
            }),
            "--max-tokens must be at least 1"
        );
        assert_eq!(
            err(Options {
                prompt_sentences: 0,
                ..opts()
            }),
            "--prompt-sentences must be at least 1"
        );
        assert_eq!(
            err(Options {
                model: Some("/no/such/model".into()),
                ..opts()
            }),
            "--model /no/such/model: no such directory"
        );
        let file = test_support::ScratchFile::with_contents("xtask-bench-file", "not a model");
        let e = err(Options {
            model: Some(file.to_path_buf()),
            ..opts()
        });
        assert_eq!(
            e,
            format!(
                "--model {} is a file; pass a model directory",
                file.display()
            )
        );
        let empty = test_support::ScratchDir::new("xtask-bench-dir");
        let e = err(Options {
            model: Some(empty.to_path_buf()),
            ..opts()
        });
        assert!(e.contains("no config.json"), "{e}");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
    }

    #[test]
    fn runs_are_read_from_json_lines() {
        let out = "loading...\n{\"prompt_tokens\": 10, \"generated_tokens\": 4, \"prompt_tps\": 5.0, \"generation_tps\": 2.0, \"peak_memory_bytes\": 100, \"compute_dtype\": \"float32\", \"blas\": \"OpenBLAS 0.3.21\"}\n";
        let runs = parse_runs(out, "x").unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].prompt_tokens, 10);
        assert_eq!(runs[0].compute_dtype, "float32");
        assert!(parse_runs("nothing", "x").is_err());
    }
}
