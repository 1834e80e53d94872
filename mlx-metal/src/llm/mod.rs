//! Language models on MLX: configuration, weights, the supported
//! architectures, KV caches, tokenizer, chat templates, sampling and the
//! generation loop.

pub mod cache;
pub mod config;
mod fused;
pub mod layers;
pub mod models;
pub mod weights;
