//! The supported architectures, one file each, behind one trait.

mod gemma3_text;
mod llama;
mod qwen3;

use std::path::Path;

use inference::ComputeDtype;

use crate::llm::cache::KvCache;
use crate::llm::config::Config;
use crate::llm::dtype::DtypeChoice;
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

/// Builds the architecture named by `config.model_type` from `dir`'s
/// weights, computing in the default dtype ([`ComputeDtype::Auto`]).
pub fn load(dir: &Path, config: &Config, config_path: &Path) -> Result<Box<dyn Architecture>> {
    Ok(load_as(dir, config, config_path, ComputeDtype::Auto)?.0)
}

/// [`load`] computing in the type `dtype` resolves to; also says which
/// type the weights are stored in and which one the model computes in.
pub fn load_as(
    dir: &Path,
    config: &Config,
    config_path: &Path,
    dtype: ComputeDtype,
) -> Result<(Box<dyn Architecture>, DtypeChoice)> {
    let strip = (config.model_type == "gemma3_text").then_some("language_model.");
    let mut weights = Weights::load(dir, config, strip)?;
    let choice = weights.apply_compute_dtype(dtype)?;
    let model: Box<dyn Architecture> = match config.model_type.as_str() {
        "llama" => Box::new(llama::load(config, &mut weights)?),
        "qwen3" => Box::new(qwen3::load(config, &mut weights)?),
        "gemma3_text" => Box::new(gemma3_text::Gemma3Text::load(config, &mut weights)?),
        other => {
            return Err(Error::UnsupportedModel {
                path: config_path.to_path_buf(),
                model_type: other.to_string(),
            })
        }
    };
    Ok((model, choice))
}
