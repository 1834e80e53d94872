//! Layers built from the ops — linear (dense or quantised), embedding, RMS
//! norm, rotary embeddings, attention, gated MLP, the pre-norm decoder — and
//! the KV caches they read. Model families are assembled from these in
//! `llm::models`; nothing here knows a family.

pub mod activation;
mod attention;
pub mod cache;
mod decoder;
mod embedding;
mod joined;
mod linear;
pub mod lora;
mod mlp;
mod norm;
pub mod parallel;
pub mod params;
mod rope;
pub mod shard;

pub use attention::{Attention, AttentionConfig, Heads, QkNorm, QkvLayout};
pub use decoder::{
    caches_for, checkpointed, window_masks, Block, Decoder, DecoderShape, PreNormBlock,
};
pub use embedding::Embedding;
pub(crate) use linear::agree_on_product_form;
pub use linear::Linear;
pub use lora::{LoraLinear, LoraParams};
pub use mlp::Mlp;
pub use norm::RmsNorm;
pub use parallel::{Parallel, ParallelKind};
pub use params::{Module, Trainable, Visitor};
pub use rope::{Positions, Rope};
