//! Language models on MLX: configuration, weights, the supported
//! architectures, KV caches, tokenizer, chat templates, sampling and the
//! generation loop.

pub mod cache;
pub mod chat_template;
pub mod config;
pub mod dtype;
mod fused;
pub mod generate;
pub mod layers;
mod model;
pub mod models;
pub mod sampler;
pub mod tokenizer;
pub mod weights;

pub use model::NativeModel;
