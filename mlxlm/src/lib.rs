//! The `mlxlm` backend: the `inference` API served by Python's `mlx_lm`.
//!
//! A bridge script shipped inside this crate runs in a Python subprocess
//! (`MLXLM_PYTHON`, else `python3`) and speaks JSON lines over stdin/stdout:
//! load, generate (one message per token, then the stop reason and
//! metrics), chat (the model's own template, via mlx_lm's tokenizer),
//! cancel and close. It is the reference implementation the native backend
//! is checked against, and a fallback wherever mlx_lm is installed.
//!
//! ```no_run
//! use inference::{GenerateOptions, LoadOptions};
//!
//! let mut model = inference::load_model_with("fixtures/qwen3", LoadOptions::default().backend("mlxlm"))?;
//! let text = model.generate("Hello", &GenerateOptions::default().max_tokens(8)).collect_text()?;
//! # Ok::<(), inference::Error>(())
//! ```
//!
//! If the process dies, answers garbage or raises, the stream ends with an
//! [`Error`] carrying the last lines of its stderr; dropping the model ends
//! the process and reaps it.

#![warn(missing_docs)]

mod backend;
mod bridge;
mod error;
mod model;
mod python;

pub use backend::{ensure_registered, MlxLmBackend};
pub use error::{Error, Result};
pub use model::MlxLmModel;
pub use python::{python_command, python_status, PythonMlx};

/// The name this backend registers under.
pub const BACKEND_NAME: &str = "mlxlm";
