//! The one error type of the `inference` API.

use std::path::PathBuf;

/// Result alias used throughout the `inference` API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when choosing a backend, loading a model or
/// generating. Backend crates convert their own errors into this type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model directory is missing, unreadable or malformed.
    #[error("{path}: {message}")]
    InvalidModel {
        /// The file or directory at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// No registered backend could load the directory.
    #[error("no backend can load {path}: {reasons}")]
    NoBackend {
        /// The model directory.
        path: PathBuf,
        /// One `name: reason` entry per backend, joined by `; `.
        reasons: String,
    },
    /// A backend was asked for by name but none has that name.
    #[error("unknown backend `{name}` (registered: {registered})")]
    UnknownBackend {
        /// The name asked for.
        name: String,
        /// The registered names, comma separated.
        registered: String,
    },
    /// A backend was asked for by name but cannot run here.
    #[error("backend `{name}` is not available: {reason}")]
    BackendUnavailable {
        /// The backend's name.
        name: String,
        /// Why it cannot run.
        reason: String,
    },
    /// The backend does not support this model or feature (yet).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A failure inside a backend (native library, subprocess, ...).
    #[error("{backend}: {message}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// The backend's own message.
        message: String,
        /// The backend's own error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The prompt is longer than the limit the caller set
    /// ([`GenerateOptions::max_context`](crate::GenerateOptions::max_context)).
    #[error("the prompt has {prompt_tokens} tokens, over the context limit of {limit}")]
    ContextExceeded {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// Invalid options or arguments.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An I/O failure on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidModel`].
    pub fn invalid_model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::InvalidModel {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Backend`].
    pub fn backend(backend: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Backend {
            backend: backend.into(),
            message: message.into(),
            source: None,
        }
    }

    /// A backend failure carrying the backend's own error as its source.
    pub fn from_backend(
        backend: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend {
            backend: backend.into(),
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}
