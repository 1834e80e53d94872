//! The one error type of this crate.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to the Python bridge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Python process could not be started.
    #[error("cannot start `{python}`: {source}")]
    Spawn {
        /// The interpreter tried.
        python: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The process ended (killed, crashed) while an answer was due.
    #[error("the mlx_lm process exited unexpectedly{status}; its last output:\n{stderr}")]
    Died {
        /// ` (exit status ...)` when known.
        status: String,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// A line from the process was not the JSON expected.
    #[error(
        "the mlx_lm process sent an invalid line ({problem}): {line:?}; its last output:\n{stderr}"
    )]
    Protocol {
        /// The offending line (truncated).
        line: String,
        /// What is wrong with it.
        problem: String,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// mlx_lm raised an exception.
    #[error("mlx_lm: {message}")]
    Python {
        /// The exception, as Python printed it.
        message: String,
    },
    /// The model directory could not be loaded.
    #[error("{path}: {message}")]
    Load {
        /// The directory.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Writing to the process failed.
    #[error("cannot write to the mlx_lm process: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Error> for inference::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Load { path, message } => inference::Error::InvalidModel { path, message },
            other => inference::Error::from_backend(crate::BACKEND_NAME, other),
        }
    }
}
