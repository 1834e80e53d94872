//! Which model directory to use when `--model` is not given.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// `--model`, else `MLX_INFER_MODEL`, else the first text model in the
/// Hugging Face cache (saying which on stderr).
pub fn resolve(model: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(m) = model {
        return Ok(m);
    }
    if let Some(m) = std::env::var_os("MLX_INFER_MODEL").filter(|m| !m.is_empty()) {
        return Ok(PathBuf::from(m));
    }
    if let Some(m) = inference::discover::first_cached_model() {
        eprintln!(
            "using {} (from the Hugging Face cache; pass --model to choose)",
            m.display()
        );
        return Ok(m);
    }
    bail!(
        "no model given: pass --model DIR, set MLX_INFER_MODEL, or put a model in the Hugging Face cache ($HF_HOME/hub or ~/.cache/huggingface/hub)"
    )
}
