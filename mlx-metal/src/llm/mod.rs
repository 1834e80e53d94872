//! Language models on MLX: configuration, weights, the supported
//! architectures, tokenizer, chat templates, sampling and the
//! generation loop.

pub mod batch;
pub mod chat_template;
pub mod config;
pub mod dtype;
pub mod generate;
pub mod gguf;
mod model;
pub mod models;
pub mod sampler;
pub mod tokenizer;
pub mod validate;
pub mod weights;

pub use model::NativeModel;
