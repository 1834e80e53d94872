//! `mlx-infer serve`: the OpenAI- and Anthropic-compatible HTTP server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use inference::{ComputeDtype, LoadOptions};
use mlx_infer_server::{parse_adapters, ServerConfig};

use crate::distributed::DistributedArgs;

/// `mlx-infer serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model directory or .gguf file (default: as for `generate`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Force a backend (`mlx`, `metal`, `mlxlm`); default: the best available.
    #[arg(long)]
    backend: Option<String>,
    /// Floating-point type to compute in (see `generate --help`).
    #[arg(long, default_value = "auto", value_parser = crate::loading::dtype_parser())]
    dtype: ComputeDtype,
    /// Apply the fine-tuned adapter in this folder to every request.
    #[arg(long)]
    adapter_path: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most requests decoding at once.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Most requests waiting for a row; more are answered 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Most tokens a request may ask for (more is a 400); the default for
    /// requests that name none (capped by the model's context length).
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// Most prompt tokens prefilled in one batching step.
    #[arg(long, default_value_t = 512)]
    prefill_step_size: usize,
    /// Most prompt prefixes whose KV caches are kept for reuse (0: off).
    #[arg(long, default_value_t = 10)]
    prompt_cache_size: usize,
    /// Adapters requests may name (`"adapter": NAME` or `"model": NAME`), as NAME=DIR,...
    #[arg(long)]
    adapters: Option<String>,
    /// Require `Authorization: Bearer KEY` (or `x-api-key: KEY`) on /v1/* (default: MLX_INFER_API_KEY).
    #[arg(long, env = "MLX_INFER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body: usize,
    /// Seconds running streams may go on after SIGTERM / Ctrl-C before they are cancelled.
    #[arg(long, default_value_t = 10.0)]
    shutdown_grace: f64,
    #[command(flatten)]
    distributed: DistributedArgs,
}

/// Runs `mlx-infer serve`.
pub fn run(args: ServeArgs) -> Result<i32> {
    let dir = crate::model_path::resolve(args.model)?;
    let mut config = ServerConfig::default();
    config.host = args.host;
    config.port = args.port;
    config.max_batch = args.max_batch;
    config.max_queue = args.max_queue;
    config.max_tokens = args.max_tokens;
    config.prefill_step_size = args.prefill_step_size;
    config.prompt_cache_size = args.prompt_cache_size;
    config.adapters = match &args.adapters {
        Some(spec) => parse_adapters(spec)?,
        None => Vec::new(),
    };
    config.api_key = args.api_key.filter(|k| !k.is_empty());
    config.max_body = args.max_body;
    config.shutdown_grace = Duration::from_secs_f64(args.shutdown_grace.max(0.0));
    config.model_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    config.validate()?;
    let mut opts = LoadOptions::default().dtype(args.dtype);
    opts.backend = args.backend;
    opts.adapter_path = args.adapter_path;
    opts.distributed = args.distributed.load_option()?;
    if args.distributed.follower()? {
        return follow(&dir, opts, &config);
    }
    let loader = Box::new(move || {
        let model = inference::load_model_with(&dir, opts)?;
        eprintln!("{}", crate::loading::summary(model.info()));
        Ok(model)
    });
    mlx_infer_server::serve_blocking(config, loader)?;
    eprintln!("stopped");
    Ok(0)
}

/// A rank other than 0 of `serve --distributed`: loads its share of the
/// model and runs the batch rank 0 leads until rank 0 stops serving.
/// Ctrl-C from a terminal, or SIGTERM sent to the whole process group
/// (as service managers do), reaches every rank: this one leaves the
/// decision to rank 0, which finishes its streams and then ends the others
/// (a rank 0 that dies ends them with an error).
fn follow(dir: &std::path::Path, opts: LoadOptions, config: &ServerConfig) -> Result<i32> {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let ignored = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        signal_hook::flag::register(signal, ignored).context("cannot watch for signals")?;
    }
    let mut model = inference::load_model_with(dir, opts)?;
    let mut engine = model.engine(&config.engine_options())?;
    while engine.pending() > 0 {
        engine.step()?;
    }
    Ok(0)
}
