//! `cargo xtask bench serve`: `mlx_lm.server` (from the managed venv; it
//! batches) and `mlx-infer serve` on the same model and machine, driven by
//! the same async streaming client (`xtask/python/bench_serve.py`) at
//! several concurrency levels, alternating between the servers; prints
//! aggregate generation tok/s and p50/p95 time to first token, with ratios.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::median;
use crate::process::{root, run_visible};

/// Options of `cargo xtask bench serve`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Model directory (default: SmolLM2-135M-Instruct in bfloat16, as for `bench batch`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Concurrent streaming clients, comma separated.
    #[arg(long, default_value = "1,8,32")]
    pub concurrency: String,
    /// Requests per level, per client (at least 1 each).
    #[arg(long, default_value_t = 2)]
    pub requests_per_client: usize,
    /// Tokens per completion.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Timed runs per level and server, alternating; medians are reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Use the debug build of mlx-infer (no release build; for a quick
    /// check that the bench works, not for figures).
    #[arg(long)]
    pub debug: bool,
    /// Run this mlx-infer binary instead of building one (e.g. on a
    /// machine without a Rust toolchain, such as the GPU device).
    #[arg(long)]
    pub cli: Option<PathBuf>,
    /// Run mlx_lm and the client with this Python (default: the managed
    /// environment).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Run mlx_lm.server on this build's libmlx.so (with OpenBLAS) instead
    /// of the one pip installed, as `cargo xtask bench` does for its
    /// same-build line.
    #[arg(long)]
    pub same_build: bool,
    /// The dtype mlx-infer computes in (`--dtype` of serve).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

/// A server process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `GET url` answers 200 (through the venv's Python, which
/// has an HTTP client), or fails after two minutes.
fn wait_ready(python: &Path, url: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let probe = format!(
        "import urllib.request,sys\ntry:\n    sys.exit(0 if urllib.request.urlopen('{url}', timeout=2).status == 200 else 1)\nexcept Exception:\n    sys.exit(1)"
    );
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited ({status}) before it was ready");
        }
        if Command::new(python)
            .args(["-c", &probe])
            .status()?
            .success()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("{url} did not answer within two minutes")
}

fn start_mlx_lm(python: &Path, model: &Path, preload: Option<&Path>) -> Result<(Server, String)> {
    let port = free_port()?;
    let mut cmd = Command::new(python);
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
    }
    // The CUDA graph cache mlx-infer gives itself (on a GPU, MLX's default
    // of 400 graphs kills mlx_lm.server's generation thread under a
    // changing batch); nothing on a CPU.
    if std::env::var_os("MLX_CUDA_GRAPH_CACHE_SIZE").is_none() {
        cmd.env("MLX_CUDA_GRAPH_CACHE_SIZE", "4096");
    }
    let child = cmd
        .args(["-m", "mlx_lm", "server", "--model"])
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--log-level", "WARNING"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start mlx_lm.server")?;
    let mut server = Server(child);
    wait_ready(
        python,
        &format!("http://127.0.0.1:{port}/v1/models"),
        &mut server.0,
    )?;
    Ok((server, format!("http://127.0.0.1:{port}/v1")))
}

fn start_mlx_infer(
    python: &Path,
    cli: &Path,
    model: &Path,
    max_batch: usize,
    dtype: &str,
) -> Result<(Server, String)> {
    let mut child = Command::new(cli)
        .args([
            "serve",
            "--port",
            "0",
            "--dtype",
            dtype,
            "--max-batch",
            &max_batch.to_string(),
            "--model",
        ])
        .arg(model)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start mlx-infer serve")?;
    let stderr = child.stderr.take().expect("piped");
    let mut server = Server(child);
    let mut lines = BufReader::new(stderr).lines();
    let port = loop {
        let line = lines
            .next()
            .context("mlx-infer serve exited before listening")??;
        if let Some(addr) = line.strip_prefix("listening on http://") {
            break addr.rsplit(':').next().unwrap_or_default().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    wait_ready(
        python,
        &format!("http://127.0.0.1:{port}/health"),
        &mut server.0,
    )?;
    Ok((server, format!("http://127.0.0.1:{port}/v1")))
}

/// One level against one server: the client's JSON line.
fn drive(
    python: &Path,
    base: &str,
    model: &str,
    conc: usize,
    total: usize,
    max: usize,
) -> Result<Value> {
    let out = Command::new(python)
        .arg(root().join("xtask/python/bench_serve.py"))
        .args([
            base,
            model,
            &conc.to_string(),
            &total.to_string(),
            &max.to_string(),
        ])
        .output()
        .context("cannot run the bench client")?;
    if !out.status.success() {
        bail!(
            "the bench client failed against {base}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("the bench client printed no result")
}

/// Runs `cargo xtask bench serve`.
pub fn run(opts: &Options) -> Result<()> {
    let levels: Vec<usize> = opts
        .concurrency
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .context("--concurrency: comma-separated numbers")?;
    if levels.is_empty()
        || levels.contains(&0)
        || opts.runs == 0
        || opts.max_tokens == 0
        || opts.requests_per_client == 0
    {
        bail!("--concurrency levels, --runs, --max-tokens and --requests-per-client must be at least 1");
    }
    let python = match &opts.python {
        Some(p) => p.clone(),
        None => {
            crate::build_mlx::run(&crate::build_mlx::Options::default())?;
            crate::fixtures::python_env()?
        }
    };
    let cli = match &opts.cli {
        Some(c) => c.clone(),
        None => {
            let mut build = crate::process::cargo();
            build.args(["build", "--quiet", "-p", "mlx-infer-cli"]);
            if !opts.debug {
                build.arg("--release");
            }
            run_visible(build, "cargo build")?;
            root().join(if opts.debug {
                "target/debug/mlx-infer"
            } else {
                "target/release/mlx-infer"
            })
        }
    };
    let preload = if opts.same_build {
        Some(
            crate::bench::build_libmlx()?
                .context("no libmlx.so of this build (run cargo xtask build-mlx)")?,
        )
    } else {
        None
    };
    let model = match &opts.model {
        Some(m) => m.clone(),
        None => crate::bench_batch::default_model(&cli)?,
    };
    let max_level = levels.iter().copied().max().unwrap_or(1);
    eprintln!(
        "starting mlx_lm.server and mlx-infer serve on {}",
        model.display()
    );
    let (_ref_server, ref_base) = start_mlx_lm(&python, &model, preload.as_deref())?;
    let (_our_server, our_base) = start_mlx_infer(&python, &cli, &model, max_level, &opts.dtype)?;
    // mlx_lm.server names the model by its path; mlx-infer by its folder name.
    let names = [
        model.to_string_lossy().into_owned(),
        model
            .file_name()
            .map_or("default".into(), |n| n.to_string_lossy().into_owned()),
    ];

    println!(
        "\nserve on {}: {} tokens per request, {} requests per client; medians of {} runs",
        model.display(),
        opts.max_tokens,
        opts.requests_per_client,
        opts.runs
    );
    println!("| streams | mlx_lm tok/s | mlx-infer tok/s | ratio | mlx_lm TTFT p50 / p95 (ms) | mlx-infer TTFT p50 / p95 (ms) | TTFT p50 ratio |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &conc in &levels {
        let total = conc * opts.requests_per_client;
        let mut sides: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
        for run in 0..opts.runs {
            for (i, base) in [&ref_base, &our_base].into_iter().enumerate() {
                eprintln!(
                    "  {conc} streams, run {}/{}: {}",
                    run + 1,
                    opts.runs,
                    ["mlx_lm", "mlx-infer"][i]
                );
                sides[i].push(drive(
                    &python,
                    base,
                    &names[i],
                    conc,
                    total,
                    opts.max_tokens,
                )?);
            }
        }
        let med = |i: usize, key: &str| {
            median(
                sides[i]
                    .iter()
                    .map(|v| v[key].as_f64().unwrap_or(0.0))
                    .collect(),
            )
        };
        let (rt, ot) = (med(0, "tok_per_s"), med(1, "tok_per_s"));
        let (r50, o50) = (med(0, "ttft_p50") * 1e3, med(1, "ttft_p50") * 1e3);
        println!(
            "| {conc} | {rt:.1} | {ot:.1} | {:.2}x | {r50:.0} / {:.0} | {o50:.0} / {:.0} | {:.2}x |",
            ot / rt.max(1e-9),
            med(0, "ttft_p95") * 1e3,
            med(1, "ttft_p95") * 1e3,
            o50 / r50.max(1e-9),
        );
    }
    Ok(())
}
