//! Language models on MLX: configuration, weights, the supported
//! architectures, tokenizer, chat templates, sampling and the
//! generation loop.

pub mod batch;
pub mod chat_template;
pub mod compiled_decode;
pub mod config;
pub mod dtype;
pub mod engine;
pub mod generate;
pub mod gguf;
mod model;
pub mod models;
pub mod profile;
pub mod sampler;
pub mod tokenizer;
pub mod validate;
pub mod weights;

pub use model::NativeModel;

use std::path::Path;

/// Refuses to write a model directory into `out` when it is a non-empty
/// directory or not a directory at all: nothing the user has is
/// overwritten. (A missing or empty directory is fine.)
pub(crate) fn check_new_output_dir(out: &Path) -> crate::Result<()> {
    let bad = |message: &str| crate::Error::File {
        path: out.to_path_buf(),
        message: message.into(),
    };
    match std::fs::read_dir(out).map(|mut d| d.next().is_some()) {
        Ok(true) => Err(bad(
            "already exists and is not empty; choose a new output directory",
        )),
        Err(_) if out.exists() => Err(bad("exists and is not a directory")),
        _ => Ok(()),
    }
}
