//! Safe Rust over Apple's MLX array framework, and the `metal` / `mlx`
//! inference backend built on it.
//!
//! The core layer wraps mlx-c: [`Array`] owns an MLX array and frees it on
//! drop, ops are methods returning `Result<Array>`, every MLX failure comes
//! back as an [`Error`] carrying MLX's own message (an mlx-c error handler
//! is installed once per process; nothing aborts).
//!
//! ```
//! use mlx_metal::{Array, Dtype};
//!
//! let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
//! let b = a.matmul(&a.transpose()?)?;
//! assert_eq!(b.to_vec::<f32>()?, vec![5.0, 11.0, 11.0, 25.0]);
//! assert_eq!(b.dtype(), Dtype::Float32);
//! # Ok::<(), mlx_metal::Error>(())
//! ```
//!
//! On Linux MLX runs on the CPU (or CUDA with MLX's CUDA build) and the
//! backend registers as `mlx`; on macOS with Apple silicon it registers as
//! `metal`. Only the device choice and the Metal-only calls differ.

#![warn(missing_docs)]

mod array;
mod backend;
mod blas;
mod closure;
mod compile;
mod device;
pub mod distributed;
mod dtype;
mod error;
pub mod fast;
pub mod graph;
mod io;
pub mod llm;
mod memory;
pub mod nn;
mod ops;
pub mod random;
mod runtime;
mod status;
pub mod train;
mod transforms;
mod vector;

pub use array::{Array, Element};
pub use backend::{ensure_registered, MlxBackend};
pub use blas::{blas_in_use, blas_info, exit, BlasInfo, BlasKind};
pub use compile::{compile, compile_borrowing, with_compiled, Compiled, CompiledBorrowing};
pub use device::{Device, DeviceType, Stream};
pub use dtype::Dtype;
pub use error::{Error, Result};
pub use io::{load_gguf_tensors, load_safetensors, save_safetensors, Safetensors};
pub use memory::{
    active_memory, cache_memory, clear_cache, memory_limit, peak_memory, reset_peak_memory,
    set_cache_limit, set_memory_limit,
};
pub use ops::QuantizedWeight;
pub use runtime::{backend_name, gpu_available, metal_available, mlx_version};
pub use transforms::{
    async_eval, checkpoint, eval, value_and_grad, value_and_grad_of, vjp, ArrayFn, Checkpointed,
    ValueAndGrad,
};
