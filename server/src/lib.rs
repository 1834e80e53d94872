//! `mlx-infer serve`: an OpenAI- and Anthropic-compatible HTTP server over
//! one model, with continuous batching.
//!
//! The server binds first and answers 503 while an engine thread loads the
//! model; that thread then owns the model and serves every request through
//! the model's batching [`inference::Engine`] — requests join and leave the
//! running batch between steps — or, for backends without one, one request
//! at a time. HTTP handlers talk to it over a bounded submit queue (full:
//! 429) and a channel per request; a client that disconnects frees its row
//! at the next step.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `POST /v1/messages` (Anthropic), `GET /v1/models`, `GET /health`,
//! `GET /metrics` (Prometheus). See `docs/serving.md`.
//!
//! ```no_run
//! use mlx_infer_server::{serve, ServerConfig};
//!
//! # async fn run() -> Result<(), mlx_infer_server::ServerError> {
//! let mut config = ServerConfig::default();
//! config.port = 0; // any free port; the address is printed on stderr
//! config.model_id = "qwen3".into();
//! serve(config, Box::new(|| inference::load_model("fixtures/qwen3"))).await
//! # }
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod app;
mod config;
pub mod engine_thread;
mod errors;
pub mod metrics;
mod routes;
mod sse;

pub use app::{router, serve, serve_blocking, serve_on, App};
pub use config::{parse_adapters, ServerConfig};
pub use engine_thread::ModelLoader;
pub use errors::{ApiError, Dialect, ServerError};
