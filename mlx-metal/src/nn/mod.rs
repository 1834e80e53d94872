//! Layers built from the ops: linear (dense or quantised), embedding, RMS
//! norm and rotary position embedding.

mod embedding;
mod linear;
mod norm;
mod rope;

pub use embedding::Embedding;
pub use linear::Linear;
pub use norm::RmsNorm;
pub use rope::Rope;
