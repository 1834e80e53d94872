//! The supported architectures, one file each, behind one trait.

mod gemma3_text;
mod llama;
mod qwen3;

use std::path::Path;

use crate::llm::cache::KvCache;
use crate::llm::config::Config;
use crate::llm::weights::Weights;
use crate::{Array, Error, Result};

/// A decoder-only language model.
pub trait Architecture: Send {
    /// Logits `[B, L, vocab]` for token ids `[B, L]`, reading and extending
    /// `caches` (one per layer).
    fn forward(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array>;

    /// Fresh caches, one per layer.
    fn make_caches(&self) -> Vec<KvCache>;

    /// Number of transformer blocks.
    fn num_layers(&self) -> usize;
}

/// The `model_type`s this crate runs natively.
pub const SUPPORTED: &[&str] = &["llama", "qwen3", "gemma3_text", "gemma3"];

/// Builds the architecture named by `config.model_type` from `dir`'s weights.
pub fn load(dir: &Path, config: &Config, config_path: &Path) -> Result<Box<dyn Architecture>> {
    let strip = (config.model_type == "gemma3_text").then_some("language_model.");
    let mut weights = Weights::load(dir, config, strip)?;
    build(config, config_path, &mut weights)
}

/// Builds the architecture named by `config.model_type` from `weights`;
/// `config_path` names the config in errors.
pub fn build(
    config: &Config,
    config_path: &Path,
    weights: &mut Weights,
) -> Result<Box<dyn Architecture>> {
    let model: Box<dyn Architecture> = match config.model_type.as_str() {
        "llama" => Box::new(llama::load(config, weights)?),
        "qwen3" => Box::new(qwen3::load(config, weights)?),
        "gemma3_text" => Box::new(gemma3_text::Gemma3Text::load(config, weights)?),
        other => {
            return Err(Error::UnsupportedModel {
                path: config_path.to_path_buf(),
                model_type: other.to_string(),
            })
        }
    };
    Ok(model)
}
