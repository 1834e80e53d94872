//! Continuous batching for servers: requests join and leave a running
//! batch between steps, each with its own sampling settings, stop state and
//! adapter.
//!
//! An [`Engine`] is driven by one thread that owns the model: it
//! [`submit`](Engine::submit)s requests as they arrive,
//! [`cancel`](Engine::cancel)s those whose client went away, and calls
//! [`step`](Engine::step) in a loop; every step admits waiting requests
//! (prefilling at most [`EngineOptions::prefill_step_size`] prompt tokens so
//! running streams are not stalled), decodes one token for every running
//! row and reports what happened as [`EngineEvent`]s.
//!
//! ```no_run
//! use inference::{EngineEvent, EngineOptions, EngineRequest, GenerateOptions, Input};
//!
//! # fn main() -> inference::Result<()> {
//! let mut model = inference::load_model("fixtures/qwen3")?;
//! let mut engine = model.engine(&EngineOptions::default())?;
//! engine.submit(1, EngineRequest::new(Input::from("Hello"), GenerateOptions::default().max_tokens(8)))?;
//! while engine.pending() > 0 {
//!     for event in engine.step()? {
//!         if let EngineEvent::Token { token, .. } = event {
//!             print!("{}", token.text);
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;

use crate::{GenerateOptions, Input, StopReason, Token, TokenScore};

/// The caller's name for a request, unique among those in flight.
pub type RequestId = u64;

/// The most alternatives a request may ask for per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One request to an [`Engine`]. Serialisable (without the options'
/// cancellation token), so that a request can be sent to another process.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct EngineRequest {
    /// A raw prompt or a conversation (rendered with the chat template).
    pub input: Input,
    /// Sampling, `max_tokens`, stop strings and seed for this request
    /// alone. Its `cancel` token is not used: call
    /// [`Engine::cancel`] instead.
    pub options: GenerateOptions,
    /// The name of one of [`EngineOptions::adapters`]; `None` runs the
    /// model as loaded.
    pub adapter: Option<String>,
    /// `Some(k)`: each token carries its log-probability and the `k` most
    /// likely alternatives (`k` ≤ [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<usize>,
}

impl EngineRequest {
    /// A request for `input` with `options`, no adapter, no logprobs.
    pub fn new(input: Input, options: GenerateOptions) -> EngineRequest {
        EngineRequest {
            input,
            options,
            adapter: None,
            logprobs: None,
        }
    }

    /// Set [`adapter`](Self::adapter).
    pub fn adapter(mut self, name: impl Into<String>) -> Self {
        self.adapter = Some(name.into());
        self
    }

    /// Set [`logprobs`](Self::logprobs).
    pub fn logprobs(mut self, top: usize) -> Self {
        self.logprobs = Some(top);
        self
    }
}

/// How an [`Engine`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineOptions {
    /// Most rows decoding at once.
    pub max_batch: usize,
    /// Most prompt tokens prefilled in one step, all admitted rows
    /// together; a longer prompt is prefilled over several steps while the
    /// running rows keep decoding.
    pub prefill_step_size: usize,
    /// Most prompt prefixes whose KV caches are kept for reuse (least
    /// recently used dropped first); 0 turns the prefix cache off.
    pub prompt_cache_size: usize,
    /// Adapters a request may name, as `(name, directory)`: each directory
    /// holds `adapters.safetensors` and `adapter_config.json`.
    pub adapters: Vec<(String, PathBuf)>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_batch: 32,
            prefill_step_size: 512,
            prompt_cache_size: 10,
            adapters: Vec::new(),
        }
    }
}

impl EngineOptions {
    /// Set [`max_batch`](Self::max_batch).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Set [`prefill_step_size`](Self::prefill_step_size).
    pub fn prefill_step_size(mut self, n: usize) -> Self {
        self.prefill_step_size = n;
        self
    }

    /// Set [`prompt_cache_size`](Self::prompt_cache_size).
    pub fn prompt_cache_size(mut self, n: usize) -> Self {
        self.prompt_cache_size = n;
        self
    }

    /// Adds an adapter requests may name.
    pub fn adapter(mut self, name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        self.adapters.push((name.into(), dir.into()));
        self
    }

    /// Checks the values, naming the first one at fault.
    pub fn validate(&self) -> crate::Result<()> {
        if self.max_batch == 0 {
            return Err(crate::Error::InvalidArgument(
                "max_batch must be at least 1".into(),
            ));
        }
        if self.prefill_step_size == 0 {
            return Err(crate::Error::InvalidArgument(
                "prefill_step_size must be at least 1".into(),
            ));
        }
        for (i, (name, _)) in self.adapters.iter().enumerate() {
            if name.is_empty() {
                return Err(crate::Error::InvalidArgument(format!(
                    "adapter {i} has an empty name"
                )));
            }
            if self.adapters[..i].iter().any(|(n, _)| n == name) {
                return Err(crate::Error::InvalidArgument(format!(
                    "adapter name `{name}` is given twice"
                )));
            }
        }
        Ok(())
    }
}

/// A token's log-probability and the most likely alternatives at its
/// position (most likely first).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TokenLogprobs {
    /// The chosen token's natural-log probability.
    pub logprob: f64,
    /// The top alternatives, as many as the request asked for.
    pub top: Vec<TokenScore>,
}

impl TokenLogprobs {
    /// The chosen token's logprob and the alternatives.
    pub fn new(logprob: f64, top: Vec<TokenScore>) -> TokenLogprobs {
        TokenLogprobs { logprob, top }
    }
}

/// What one [`Engine::step`] did for one request.
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineEvent {
    /// The request's prompt was read and its first token is being sampled;
    /// `cached_tokens` of the prompt came from the prefix cache.
    Started {
        /// The request.
        id: RequestId,
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Prompt tokens whose KV cache was reused.
        cached_tokens: usize,
    },
    /// The request produced text (tokens held back while a stop string may
    /// be forming arrive later, or not at all when it formed).
    Token {
        /// The request.
        id: RequestId,
        /// The token.
        token: Token,
        /// Its logprobs, when the request asked for them.
        logprobs: Option<TokenLogprobs>,
    },
    /// The request finished; no more events for it.
    Done {
        /// The request.
        id: RequestId,
        /// Why it ended ([`StopReason::Cancelled`] after
        /// [`Engine::cancel`]).
        reason: StopReason,
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens generated (the stop string's and EOS not counted).
        completion_tokens: usize,
        /// Prompt tokens whose KV cache was reused.
        cached_tokens: usize,
    },
    /// The request failed on its own (for example non-finite logits in its
    /// row); the others go on. No more events for it.
    Failed {
        /// The request.
        id: RequestId,
        /// What went wrong.
        error: crate::Error,
    },
}

impl EngineEvent {
    /// The request the event is about.
    pub fn id(&self) -> RequestId {
        match self {
            EngineEvent::Started { id, .. }
            | EngineEvent::Token { id, .. }
            | EngineEvent::Done { id, .. }
            | EngineEvent::Failed { id, .. } => *id,
        }
    }
}

/// A running batch that requests join and leave between steps. Made by
/// [`TextModel::engine`](crate::TextModel::engine) and driven by one
/// thread: [`submit`](Engine::submit) requests as they arrive,
/// [`cancel`](Engine::cancel) those whose client left, and
/// [`step`](Engine::step) while [`pending`](Engine::pending) is above 0.
pub trait Engine {
    /// Queues a request and returns its prompt's token count. A bad
    /// request (invalid options, unknown adapter, empty or over-long
    /// prompt, `max_tokens` past the context) is refused here with the
    /// reason and nothing is queued; the engine goes on serving the others.
    fn submit(&mut self, id: RequestId, request: EngineRequest) -> crate::Result<usize>;

    /// Ends a request at the next step, freeing its row; it then reports
    /// [`EngineEvent::Done`] with [`StopReason::Cancelled`]. Unknown or
    /// finished ids are ignored.
    fn cancel(&mut self, id: RequestId);

    /// Admits waiting requests, decodes one token for every running row and
    /// returns what happened. An `Err` means the engine itself can no
    /// longer run (every request in it is lost); per-request failures come
    /// as [`EngineEvent::Failed`].
    fn step(&mut self) -> crate::Result<Vec<EngineEvent>>;

    /// Requests running or waiting.
    fn pending(&self) -> usize;

    /// Requests decoding now (the batch size of the next step).
    fn running(&self) -> usize;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_refuse_zero_and_duplicate_names() {
        assert!(EngineOptions::default().validate().is_ok());
        assert!(EngineOptions::default().max_batch(0).validate().is_err());
        assert!(EngineOptions::default()
            .prefill_step_size(0)
            .validate()
            .is_err());
        let twice = EngineOptions::default().adapter("a", "x").adapter("a", "y");
        let err = twice.validate().unwrap_err().to_string();
        assert!(err.contains("`a` is given twice"), "{err}");
    }

    #[test]
    fn every_event_names_its_request() {
        let events = [
            EngineEvent::Started {
                id: 3,
                prompt_tokens: 1,
                cached_tokens: 0,
            },
            EngineEvent::Token {
                id: 4,
                token: Token::new(1, "a"),
                logprobs: None,
            },
            EngineEvent::Done {
                id: 5,
                reason: StopReason::Eos,
                prompt_tokens: 1,
                completion_tokens: 0,
                cached_tokens: 0,
            },
            EngineEvent::Failed {
                id: 6,
                error: crate::Error::InvalidArgument("x".into()),
            },
        ];
        let ids: Vec<_> = events.iter().map(EngineEvent::id).collect();
        assert_eq!(ids, [3, 4, 5, 6]);
    }
}
