//! How the server runs: address, limits, adapters, API key.

use std::path::PathBuf;
use std::time::Duration;

use crate::ServerError;

/// Settings of one server. [`Default`] gives the documented defaults of
/// `mlx-infer serve`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The address to listen on.
    pub host: String,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// Most requests decoding at once (with a batching engine).
    pub max_batch: usize,
    /// Most requests waiting for a row; one more is answered 429.
    pub max_queue: usize,
    /// Most tokens a request may ask for (`max_tokens` above it is a 400);
    /// also the default when a request names none (capped by the model's
    /// context length).
    pub max_tokens: usize,
    /// Most prompt tokens prefilled in one engine step.
    pub prefill_step_size: usize,
    /// Most prompt prefixes kept for reuse by the engine.
    pub prompt_cache_size: usize,
    /// Adapters requests may name, as `(name, directory)`.
    pub adapters: Vec<(String, PathBuf)>,
    /// When set, requests to `/v1/*` must carry `Authorization: Bearer KEY`
    /// (or `x-api-key: KEY`).
    pub api_key: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// How long running streams may go on after a shutdown signal before
    /// they are cancelled.
    pub shutdown_grace: Duration,
    /// The name `/v1/models` lists and requests use (besides `default`).
    pub model_id: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            max_batch: 32,
            max_queue: 256,
            max_tokens: 4096,
            prefill_step_size: 512,
            prompt_cache_size: 10,
            adapters: Vec::new(),
            api_key: None,
            max_body: 4 << 20,
            shutdown_grace: Duration::from_secs(10),
            model_id: "default".into(),
        }
    }
}

impl ServerConfig {
    /// Checks the values, naming the first one at fault.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: &str| Err(ServerError::bad(m));
        if self.max_batch == 0 {
            return bad("--max-batch must be at least 1");
        }
        if self.max_queue == 0 {
            return bad("--max-queue must be at least 1");
        }
        if self.max_tokens == 0 {
            return bad("--max-tokens must be at least 1");
        }
        if self.prefill_step_size == 0 {
            return bad("--prefill-step-size must be at least 1");
        }
        if self.api_key.as_deref() == Some("") {
            return bad("--api-key must not be empty");
        }
        self.engine_options().validate()?;
        Ok(())
    }

    /// The engine options these settings give.
    pub fn engine_options(&self) -> inference::EngineOptions {
        let mut o = inference::EngineOptions::default()
            .max_batch(self.max_batch)
            .prefill_step_size(self.prefill_step_size)
            .prompt_cache_size(self.prompt_cache_size);
        for (name, dir) in &self.adapters {
            o = o.adapter(name.clone(), dir.clone());
        }
        o
    }
}

/// Parses `NAME=DIR,NAME=DIR,...` (the `--adapters` value).
///
/// ```
/// let a = mlx_infer_server::parse_adapters("fr=adapters/fr,de=adapters/de").unwrap();
/// assert_eq!(a[1].0, "de");
/// assert!(mlx_infer_server::parse_adapters("fr").is_err());
/// ```
pub fn parse_adapters(spec: &str) -> Result<Vec<(String, PathBuf)>, ServerError> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, dir) = part
            .split_once('=')
            .ok_or_else(|| ServerError::bad(format!("adapter `{part}` is not NAME=DIR")))?;
        if name.trim().is_empty() || dir.trim().is_empty() {
            return Err(ServerError::bad(format!(
                "adapter `{part}` is not NAME=DIR"
            )));
        }
        out.push((name.trim().to_string(), PathBuf::from(dir.trim())));
    }
    Ok(out)
}
