//! `y = x W^T + b`, with W dense or affine-quantised.

use std::sync::OnceLock;

use crate::nn::lora::{LoraLinear, MultiLora};
use crate::nn::params::{join, Module, Visitor};
use crate::{Array, Device, DeviceType, Dtype, Error, QuantizedWeight, Result};

/// True when MLX computes on the CPU by default (asked once).
fn on_cpu() -> bool {
    static CPU: OnceLock<bool> = OnceLock::new();
    *CPU.get_or_init(|| {
        Device::default_device()
            .and_then(|d| d.kind())
            .is_ok_and(|k| k == DeviceType::Cpu)
    })
}

/// `x @ w^T` as `w @ x^T` when that is faster, else `None`.
///
/// On the CPU, MLX hands float32 products to BLAS. For a single row (the
/// decode step) OpenBLAS computes `w @ x^T` — a matrix-vector product
/// streaming `w`'s rows — about 1.5x faster than `x @ w^T`, which packs `w`
/// as a GEMM operand (measured on the 2-core CI machine with 40 distinct
/// 3072x1024 matrices: 7.5 against 4.6 GB/s); so a single float32 row takes
/// that form there. Half-precision products do not go through BLAS and
/// are slower that way, and GPUs have their own matrix-vector kernels for
/// either form, so everything else stays `x @ w^T`.
pub(crate) fn row_times_transposed(x: &Array, w: &Array) -> Result<Option<Array>> {
    let shape = x.shape();
    let inp = shape.last().copied().unwrap_or(0);
    if w.dtype() != Dtype::Float32
        || x.dtype() != Dtype::Float32
        || inp <= 0
        || x.size() != inp as usize
        || w.ndim() != 2
        || !on_cpu()
    {
        return Ok(None);
    }
    let mut out_shape = shape;
    if let Some(last) = out_shape.last_mut() {
        *last = w.shape()[0];
    }
    let y = w.matmul(&x.reshape(&[inp, 1])?)?.reshape(&out_shape)?;
    Ok(Some(y))
}

/// A linear layer. Weights are `[out, in]` as in Hugging Face and MLX.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Dense weights (any float dtype) and an optional bias.
    Dense {
        /// `[out, in]`.
        weight: Array,
        /// `[out]`.
        bias: Option<Array>,
    },
    /// Quantised weights and an optional bias.
    Quantized {
        /// Packed weights with scales and biases.
        weight: QuantizedWeight,
        /// `[out]`.
        bias: Option<Array>,
    },
    /// A base layer with a low-rank adapter (LoRA / DoRA).
    Lora(Box<LoraLinear>),
    /// A base layer with per-row adapters (the serving engine's
    /// per-request adapters).
    Adapters(Box<MultiLora>),
}

impl Linear {
    /// Applies the layer to `x` (`[..., in]` → `[..., out]`).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            Linear::Dense { weight, bias } => {
                if let Some(y) = row_times_transposed(x, weight)? {
                    return match bias {
                        Some(b) => y.add(b),
                        None => Ok(y),
                    };
                }
                let wt = weight.transpose()?;
                match bias {
                    Some(b) => x.addmm(b, &wt, 1.0, 1.0),
                    None => x.matmul(&wt),
                }
            }
            Linear::Quantized { weight, bias } => {
                let y = x.quantized_matmul(weight, true)?;
                match bias {
                    Some(b) => y.add(b),
                    None => Ok(y),
                }
            }
            Linear::Lora(l) => l.forward(x),
            Linear::Adapters(m) => m.forward(x),
        }
    }

    /// `(out, in)` feature counts.
    pub fn dims(&self) -> Result<(i32, i32)> {
        match self {
            Linear::Dense { weight, .. } => Ok((weight.dim(0)?, weight.dim(1)?)),
            Linear::Quantized { weight, .. } => Ok((
                weight.weight.dim(0)?,
                weight.weight.dim(1)? * 32 / weight.bits,
            )),
            Linear::Lora(l) => l.base.dims(),
            Linear::Adapters(m) => m.base.dims(),
        }
    }

    /// The weight as a dense `[out, in]` matrix (dequantised if needed).
    pub fn dense_weight(&self) -> Result<Array> {
        match self {
            Linear::Dense { weight, .. } => Ok(weight.clone()),
            Linear::Quantized { weight, .. } => weight.dequantize(),
            Linear::Lora(_) => Err(Error::InvalidArgument(
                "a LoRA layer has no single weight; fuse it first".into(),
            )),
            Linear::Adapters(_) => Err(Error::InvalidArgument(
                "a layer with per-request adapters has no single weight".into(),
            )),
        }
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Array> {
        match self {
            Linear::Dense { bias, .. } | Linear::Quantized { bias, .. } => bias.as_ref(),
            Linear::Lora(l) => l.base.bias(),
            Linear::Adapters(m) => m.base.bias(),
        }
    }
}

impl Module for Linear {
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        if v.linear(prefix, self)? {
            return Ok(());
        }
        match self {
            Linear::Dense { weight, bias } => {
                v.array(&join(prefix, "weight"), weight)?;
                if let Some(b) = bias {
                    v.array(&join(prefix, "bias"), b)?;
                }
            }
            Linear::Quantized { weight, bias } => {
                v.array(&join(prefix, "weight"), &mut weight.weight)?;
                v.array(&join(prefix, "scales"), &mut weight.scales)?;
                v.array(&join(prefix, "biases"), &mut weight.biases)?;
                if let Some(b) = bias {
                    v.array(&join(prefix, "bias"), b)?;
                }
            }
            Linear::Lora(l) => l.visit(prefix, v)?,
            Linear::Adapters(m) => m.base.visit(prefix, v)?,
        }
        Ok(())
    }
}
