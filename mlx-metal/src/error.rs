//! The one error type of this crate.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the MLX layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// MLX itself reported a failure; the text is MLX's own message.
    #[error("MLX: {0}")]
    Mlx(String),
    /// An argument was rejected before reaching MLX.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A feature this model or layer does not have.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A Rust closure run by MLX (under `compile`, `vjp`, ...) failed or
    /// panicked; the text says how.
    #[error("closure failed: {0}")]
    Closure(String),
    /// The model's architecture is not one this crate runs.
    #[error(
        "{path}: model_type `{model_type}` is not supported natively (supported: {supported})"
    )]
    UnsupportedModel {
        /// The config.json naming it.
        path: PathBuf,
        /// The `model_type` found.
        model_type: String,
        /// The ones that are, comma separated.
        supported: String,
    },
    /// The model's logits held NaN or infinity (broken weights or
    /// config): generation stops instead of sampling garbage.
    #[error("the model produced non-finite logits (NaN or infinity) {0}; its weights or config.json are likely broken")]
    NonFinite(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A training dataset file is missing, malformed or unusable; `line`
    /// (1-based) names the offending JSON line when there is one.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Dataset {
        /// The file (or folder) at fault.
        path: PathBuf,
        /// The 1-based line, when one line is at fault.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// Training produced a loss that is NaN or infinite; nothing of that
    /// step was applied.
    #[error("the training loss became {value} at iteration {iteration}; stopped without applying that step (lower the learning rate?)")]
    NonFiniteLoss {
        /// The 1-based iteration.
        iteration: usize,
        /// The loss as printed (`NaN`, `inf`).
        value: String,
    },
}

impl From<Error> for inference::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::File { path, message } => inference::Error::InvalidModel { path, message },
            Error::InvalidArgument(m) => inference::Error::InvalidArgument(m),
            e @ Error::Dataset { .. } => inference::Error::InvalidArgument(e.to_string()),
            e @ Error::UnsupportedModel { .. } => inference::Error::Unsupported(e.to_string()),
            Error::Unsupported(m) => inference::Error::Unsupported(m),
            other => inference::Error::from_backend(crate::backend_name(), other),
        }
    }
}
