//! The HTTP routes and what they share: reading a JSON body within the
//! size limit, resolving the model name, submitting a request and waiting
//! for its start.

pub mod anthropic;
pub mod models;
pub mod openai;

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use inference::{EngineRequest, GenerateOptions, StopReason, MAX_TOP_LOGPROBS};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine_thread::{Event, Status};
use crate::{App, ServerError};

/// Reads the body (at most `--max-body` bytes) and parses it as `T`.
pub async fn read_json<T: DeserializeOwned>(app: &App, body: Body) -> Result<T, ServerError> {
    let limit = app.config.max_body;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ServerError::TooLarge(limit))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ServerError::bad(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ServerError::bad("the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ServerError::bad(format!("invalid request: {e}")))
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One string.
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The sampling fields every route shares.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    /// Softmax temperature (default 1).
    pub temperature: Option<f64>,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Top-k (extension).
    pub top_k: Option<u64>,
    /// Min-p (extension).
    pub min_p: Option<f64>,
    /// Repetition penalty (extension).
    pub repetition_penalty: Option<f64>,
    /// Seed.
    pub seed: Option<i64>,
}

/// The generation options for a request: `max_tokens` checked against the
/// cap and the model's context length (defaulting to the smaller of
/// them), sampling values checked.
pub fn options(
    app: &App,
    max_tokens: Option<u64>,
    max_tokens_param: &str,
    sampling: &Sampling,
    stop: Vec<String>,
) -> Result<GenerateOptions, ServerError> {
    let context = app.shared.info().and_then(|i| i.context_length);
    let cap = app.config.max_tokens;
    let max_tokens = match max_tokens {
        Some(0) => {
            return Err(ServerError::bad_param(
                max_tokens_param,
                format!("{max_tokens_param} must be at least 1"),
            ))
        }
        Some(n) => {
            if let Some(c) = context.filter(|c| n > *c as u64) {
                return Err(ServerError::bad_param(
                    max_tokens_param,
                    format!(
                        "{max_tokens_param} is {n}, over the model's context length of {c} tokens"
                    ),
                ));
            }
            if n > cap as u64 {
                return Err(ServerError::bad_param(
                    max_tokens_param,
                    format!("{max_tokens_param} is {n}, over this server's limit of {cap} (--max-tokens)"),
                ));
            }
            n as usize
        }
        None => context.map_or(cap, |c| c.min(cap)),
    };
    let mut o = GenerateOptions::default()
        .max_tokens(max_tokens)
        .temperature(sampling.temperature.unwrap_or(1.0) as f32)
        .top_p(sampling.top_p.unwrap_or(1.0) as f32)
        .min_p(sampling.min_p.unwrap_or(0.0) as f32);
    if let Some(k) = sampling.top_k {
        o = o.top_k(k as usize);
    }
    if let Some(r) = sampling.repetition_penalty {
        o = o.repetition_penalty(r as f32);
    }
    if let Some(s) = sampling.seed {
        o = o.seed(s as u64);
    }
    o.stop = stop;
    o.validate()?;
    Ok(o)
}

/// Checks `top` against [`MAX_TOP_LOGPROBS`] and that the model runs with
/// a batching engine (which reports logprobs).
pub fn check_logprobs(app: &App, param: &str, top: u64) -> Result<usize, ServerError> {
    if top > MAX_TOP_LOGPROBS as u64 {
        return Err(ServerError::bad_param(
            param,
            format!("{param} is {top}, over the maximum of {MAX_TOP_LOGPROBS}"),
        ));
    }
    if !app.shared.batching() {
        return Err(ServerError::bad_param(
            "logprobs",
            "logprobs need a batching engine, which this model's backend lacks",
        ));
    }
    Ok(top as usize)
}

/// Resolves the request's `model` (this model's id, `default`, or an
/// adapter's name) and `adapter` fields to the adapter to use.
pub fn resolve_model(
    app: &App,
    model: Option<&str>,
    adapter: Option<&str>,
) -> Result<Option<String>, ServerError> {
    let known = |name: &str| app.config.adapters.iter().any(|(n, _)| n == name);
    let mut chosen = None;
    if let Some(m) = model {
        if known(m) && m != app.config.model_id {
            chosen = Some(m.to_string());
        } else if m != app.config.model_id && m != "default" && !m.is_empty() {
            return Err(ServerError::NotFound(format!(
                "the model `{m}` does not exist (this server serves `{}`)",
                app.config.model_id
            )));
        }
    }
    if let Some(a) = adapter {
        if !known(a) {
            return Err(ServerError::NotFound(format!(
                "the adapter `{a}` does not exist"
            )));
        }
        chosen = Some(a.to_string());
    }
    if chosen.is_some() && !app.shared.batching() {
        return Err(ServerError::bad_param(
            "adapter",
            "per-request adapters need a batching engine, which this model's backend lacks",
        ));
    }
    Ok(chosen)
}

/// Submits `request` and waits for its start: the HTTP status is decided
/// then (a request refused by the engine is answered with its error).
pub async fn start(
    app: &App,
    request: EngineRequest,
) -> Result<(Event, UnboundedReceiver<Event>), ServerError> {
    match app.shared.status() {
        Status::Ready => {}
        Status::Loading => {
            return Err(ServerError::Unavailable(
                "the model is loading; retry shortly".into(),
            ))
        }
        Status::Failed(e) => {
            return Err(ServerError::Unavailable(format!(
                "the model failed to load: {e}"
            )))
        }
    }
    if app.shutting_down.load(Ordering::SeqCst) {
        return Err(ServerError::Unavailable(
            "the server is shutting down".into(),
        ));
    }
    let mut rx = app.submitter.submit(request)?;
    match rx.recv().await {
        Some(Event::Failed(e)) => Err(e),
        Some(first) => Ok((first, rx)),
        None => Err(ServerError::Internal("the engine stopped".into())),
    }
}

/// Everything a non-streaming answer needs.
#[derive(Debug, Default)]
pub struct Collected {
    /// The text.
    pub text: String,
    /// Each token with its logprobs, when asked for.
    pub tokens: Vec<(inference::Token, Option<inference::TokenLogprobs>)>,
    /// Why it ended.
    pub reason: Option<StopReason>,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Cached prompt tokens.
    pub cached_tokens: usize,
}

/// Reads events until the request ends.
pub async fn collect(
    first: Event,
    mut rx: UnboundedReceiver<Event>,
) -> Result<Collected, ServerError> {
    let mut c = Collected::default();
    let mut event = first;
    loop {
        match event {
            Event::Started {
                prompt_tokens,
                cached_tokens,
            } => {
                c.prompt_tokens = prompt_tokens;
                c.cached_tokens = cached_tokens;
            }
            Event::Token { token, logprobs } => {
                c.text.push_str(&token.text);
                c.tokens.push((token, logprobs));
            }
            Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                c.reason = Some(reason);
                c.prompt_tokens = prompt_tokens;
                c.completion_tokens = completion_tokens;
                c.cached_tokens = cached_tokens;
                return Ok(c);
            }
            Event::Failed(e) => return Err(e),
        }
        event = rx
            .recv()
            .await
            .ok_or_else(|| ServerError::Internal("the engine stopped".into()))?;
    }
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(reason: Option<StopReason>) -> &'static str {
    match reason {
        Some(StopReason::MaxTokens) => "length",
        _ => "stop",
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh id with `prefix`.
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}{:x}{n:04x}", t & 0xffff_ffff_ffff)
}
