//! Backend-agnostic API for running local language models.
//!
//! A *backend* (MLX in-process, a Python `mlx_lm` bridge, ...) registers
//! itself with [`inventory`]; [`load_model`] picks the highest-priority
//! available backend that accepts a model directory and returns a
//! [`TextModel`] that streams [`Token`]s.
//!
//! ```no_run
//! use inference::{BatchOptions, ClassifyOptions, GenerateOptions, Input, Message};
//!
//! let mut model = inference::load_model("models/gemma-3-1b-it")?;
//! let opts = GenerateOptions::default().max_tokens(128).temperature(0.7);
//! for token in model.generate("Why is the sky blue?", &opts) {
//!     print!("{}", token?.text);
//! }
//! let reply = model.chat(&[Message::user("Hi")], &opts).collect_text()?;
//!
//! // Many inputs at once: next-token classification and batch generation.
//! let inputs: Vec<Input> = vec!["I loved it. Sentiment:".into(), "Awful. Sentiment:".into()];
//! let labels = ClassifyOptions::default().labels([" positive", " negative"]);
//! for c in model.classify(&inputs, &labels)? {
//!     println!("{}: {:?}", c.index, c.label);
//! }
//! let done = model
//!     .generate_batch(&inputs, &opts, &BatchOptions::default().batch_size(32))
//!     .collect_completions()?;
//! println!("{reply}\n{:?}", model.metrics());
//! # Ok::<(), inference::Error>(())
//! ```

#![warn(missing_docs)]

mod backend;
mod batch;
mod config_check;
pub mod discover;
mod engine;
mod error;
pub mod gguf;
mod message;
mod model;
mod options;
mod registry;
mod request;
mod stop;
mod stream;

pub use backend::{native_backend_name, Backend, BackendRegistration, BackendStatus};
pub use batch::{
    BatchEvent, BatchOptions, BatchStream, Classification, ClassifyOptions, Completion, Input,
    TokenScore,
};
pub use config_check::check_config;
pub use engine::{
    Engine, EngineEvent, EngineOptions, EngineRequest, RequestId, TokenLogprobs, MAX_TOP_LOGPROBS,
};
pub use error::{Error, Result};
pub use message::{Message, Role};
pub use model::{Metrics, ModelInfo, TextModel};
pub use options::{ComputeDtype, Distributed, GenerateOptions, LoadOptions, Parallelism};
pub use registry::{backends, load_model, load_model_with, select_backend};
pub use request::{check_context, check_messages, check_prompt};
pub use stop::StopStrings;
pub use stream::{StopReason, Token, TokenSource, TokenStream};

/// Re-exported so backends can `inventory::submit!` a [`BackendRegistration`].
pub use inventory;
/// Re-exported so callers can build a cancellation token without naming the crate.
pub use tokio_util::sync::CancellationToken;
