//! The model trait and what it reports.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{
    BatchEvent, BatchOptions, BatchStream, Classification, ClassifyOptions, Completion,
    GenerateOptions, Input, Message, StopReason, TokenStream,
};

/// What a loaded model is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelInfo {
    /// The backend serving it.
    pub backend: String,
    /// `model_type` from config.json (`llama`, `qwen3`, `gemma3_text`, ...).
    pub architecture: String,
    /// The model directory.
    pub path: PathBuf,
    /// Vocabulary size, when known.
    pub vocab_size: Option<usize>,
    /// Number of transformer layers, when known.
    pub num_layers: Option<usize>,
    /// Hidden size, when known.
    pub hidden_size: Option<usize>,
    /// Quantisation bits, when the weights are quantised.
    pub quantization_bits: Option<u32>,
    /// The floating-point type of the weights as stored (`bfloat16`,
    /// `float16`, `float32`; for quantised weights, their scales'), when
    /// known.
    pub weights_dtype: Option<String>,
    /// The floating-point type the model computes in, after
    /// [`LoadOptions::dtype`](crate::LoadOptions::dtype), when known.
    pub compute_dtype: Option<String>,
    /// The BLAS library behind the backend's CPU matrix products (e.g.
    /// `OpenBLAS 0.3.21, 2 threads`), when known.
    pub blas: Option<String>,
    /// The context length the model was trained for
    /// (`max_position_embeddings`), when known.
    pub context_length: Option<usize>,
    /// The adapter folder applied on top of the weights, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_path: Option<PathBuf>,
}

impl ModelInfo {
    /// What `backend` knows of the `architecture` model at `path`; the
    /// optional figures start unknown.
    pub fn new(
        backend: impl Into<String>,
        architecture: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> ModelInfo {
        ModelInfo {
            backend: backend.into(),
            architecture: architecture.into(),
            path: path.into(),
            ..Default::default()
        }
    }
}

/// Figures from the most recent generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metrics {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Prompt processing speed, tokens per second.
    pub prompt_tps: f64,
    /// Generation speed, tokens per second.
    pub generation_tps: f64,
    /// Peak memory used by the backend, in bytes.
    pub peak_memory_bytes: u64,
    /// The model's context length, when known (see
    /// [`over_context`](Self::over_context)).
    pub context_length: Option<usize>,
}

impl Metrics {
    /// True when the prompt and the generated tokens together went beyond
    /// the model's context length.
    pub fn over_context(&self) -> bool {
        self.context_length
            .is_some_and(|c| self.prompt_tokens + self.generated_tokens > c)
    }
}

/// A loaded text model. Resources are freed on drop; [`close`](Self::close)
/// does the same and reports errors.
pub trait TextModel: Send {
    /// What was loaded.
    fn info(&self) -> &ModelInfo;

    /// Streams a completion of a raw prompt (special tokens added as the
    /// tokenizer's post-processor says).
    fn generate<'a>(&'a mut self, prompt: &str, opts: &GenerateOptions) -> TokenStream<'a>;

    /// Streams the reply to a conversation rendered with the model's own
    /// chat template.
    fn chat<'a>(&'a mut self, messages: &[Message], opts: &GenerateOptions) -> TokenStream<'a>;

    /// The next-token distribution after each input: the top token, the
    /// top-k and label probabilities as `opts` asks, in input order.
    /// Backends that cannot batch answer one input at a time; the default
    /// answers [`Unsupported`](crate::Error::Unsupported).
    fn classify(
        &mut self,
        inputs: &[Input],
        opts: &ClassifyOptions,
    ) -> crate::Result<Vec<Classification>> {
        let _ = (inputs, opts);
        Err(crate::Error::Unsupported(format!(
            "the {} backend cannot classify",
            self.info().backend
        )))
    }

    /// Completions of many inputs, streamed as `(index, token)` events as
    /// rows produce them and a [`Completion`] as each row stops. The
    /// default generates one input after the other.
    fn generate_batch<'a>(
        &'a mut self,
        inputs: &[Input],
        opts: &GenerateOptions,
        batch: &BatchOptions,
    ) -> BatchStream<'a> {
        let _ = batch;
        let mut events = Vec::new();
        for (index, input) in inputs.iter().enumerate() {
            let mut stream = match input {
                Input::Prompt(p) => self.generate(p, opts),
                Input::Chat(m) => self.chat(m, opts),
            };
            let mut ids = Vec::new();
            let mut text = String::new();
            for token in stream.by_ref() {
                match token {
                    Ok(token) => {
                        ids.push(token.id);
                        text.push_str(&token.text);
                        events.push(Ok(BatchEvent::Token { index, token }));
                    }
                    Err(e) => {
                        events.push(Err(e));
                        return BatchStream::new(events.into_iter());
                    }
                }
            }
            let reason = stream.stop_reason().unwrap_or(StopReason::MaxTokens);
            drop(stream);
            let prompt_tokens = self.metrics().prompt_tokens;
            events.push(Ok(BatchEvent::Done(Completion::new(
                index,
                ids,
                text,
                reason,
                prompt_tokens,
            ))));
        }
        BatchStream::new(events.into_iter())
    }

    /// A continuous-batching engine over this model, for servers: requests
    /// join and leave the running batch between steps (see
    /// [`Engine`](crate::Engine)). Backends that cannot batch answer
    /// [`Unsupported`](crate::Error::Unsupported); callers then serve one
    /// request at a time with [`generate`](Self::generate) and
    /// [`chat`](Self::chat).
    fn engine<'a>(
        &'a mut self,
        opts: &crate::EngineOptions,
    ) -> crate::Result<Box<dyn crate::Engine + 'a>> {
        let _ = opts;
        Err(crate::Error::Unsupported(format!(
            "the {} backend has no batching engine",
            self.info().backend
        )))
    }

    /// Figures from the most recent generation.
    fn metrics(&self) -> Metrics;

    /// Frees the model's resources now, reporting any failure.
    fn close(self: Box<Self>) -> crate::Result<()> {
        Ok(())
    }
}
