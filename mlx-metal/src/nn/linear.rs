//! `y = x W^T + b`, with W dense or affine-quantised.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use crate::nn::lora::{LoraLinear, MultiLora};
use crate::nn::params::{join, Module, Visitor};
use crate::{Array, Dtype, Error, QuantizedWeight, Result};

/// True when MLX computes on the CPU by default (asked once).
fn on_cpu() -> bool {
    static CPU: OnceLock<bool> = OnceLock::new();
    *CPU.get_or_init(|| crate::llm::dtype::default_device_is_cpu().unwrap_or(false))
}

/// `x @ w^T` as `w @ x^T` when that is faster, else `None`.
///
/// On the CPU, MLX hands float32 products to BLAS. For a single row (the
/// decode step) OpenBLAS can compute `w @ x^T` — a matrix-vector product
/// streaming `w`'s rows — or `x @ w^T`, a GEMM with one row. Which is faster
/// depends on the kernels OpenBLAS picks for the CPU: on one 2-core CI
/// machine the matrix-vector form was about 1.5x faster (40 distinct
/// 3072x1024 matrices: 7.5 against 4.6 GB/s), on another (OpenBLAS's
/// SkylakeX kernels) about 1.2x slower. So the process measures both once
/// ([`matvec_is_faster`]) and takes the faster. Half-precision products do
/// not go through BLAS, and GPUs have their own matrix-vector kernels for
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
        || !matvec_is_faster()
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

/// Whether a single float32 row times a transposed matrix is faster here
/// as a matrix-vector product (`w @ x^T`) than as a one-row GEMM: measured
/// once per process, on the first such product, over 32 distinct 1024x1024
/// matrices (128 MB, more than the caches hold, as a model's weights are),
/// three alternating passes of each form. About 0.1 to 0.3 s.
fn matvec_is_faster() -> bool {
    match FASTER.load(Ordering::SeqCst) {
        UNKNOWN if crate::closure::tracing() => {
            // nothing may be evaluated inside a trace: the one-row GEMM
            // until an eager product has measured
            false
        }
        UNKNOWN => {
            let faster = measure_matvec().unwrap_or(false);
            // a choice another thread (or `agree_on_product_form`) made
            // first stands
            let _ =
                FASTER.compare_exchange(UNKNOWN, faster as u8, Ordering::SeqCst, Ordering::SeqCst);
            FASTER.load(Ordering::SeqCst) == 1
        }
        known => known == 1,
    }
}

/// [`matvec_is_faster`]'s answer: 0 false, 1 true, [`UNKNOWN`] not yet measured.
static FASTER: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 2;

/// Makes every rank of `group` use rank 0's product form for single rows
/// (measured there): a layer that stays whole on every rank (the output
/// layer) then gives the same logits everywhere, so the ranks cannot pick
/// different tokens where two are nearly tied. Nothing to agree on off
/// the CPU. Every rank must call it at the same point.
pub(crate) fn agree_on_product_form(group: &crate::distributed::Group) -> Result<()> {
    if !on_cpu() {
        return Ok(());
    }
    let mine = matvec_is_faster();
    let leader = group.broadcast_bytes(&[mine as u8])?;
    FASTER.store(u8::from(leader.first() == Some(&1)), Ordering::SeqCst);
    Ok(())
}

fn measure_matvec() -> Result<bool> {
    use std::time::{Duration, Instant};
    const N: i32 = 1024;
    let base = Array::arange(0.0, (N * N) as f64, 1.0, Dtype::Float32)?
        .mul_scalar(1.0 / (N * N) as f32)?
        .reshape(&[N, N])?;
    let ws = (0..32)
        .map(|i| base.add(&Array::scalar(i as f32)))
        .collect::<Result<Vec<Array>>>()?;
    crate::eval(&ws.iter().collect::<Vec<_>>())?;
    let x = Array::arange(0.0, N as f64, 1.0, Dtype::Float32)?.reshape(&[1, N])?;
    let xt = x.reshape(&[N, 1])?;
    crate::eval(&[&x, &xt])?;
    let pass = |matvec: bool| -> Result<Duration> {
        let start = Instant::now();
        for w in &ws {
            let y = if matvec {
                w.matmul(&xt)?
            } else {
                x.matmul(&w.transpose()?)?
            };
            crate::eval(&[&y])?;
        }
        Ok(start.elapsed())
    };
    let (mut matvec, mut gemm) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        matvec += pass(true)?;
        gemm += pass(false)?;
    }
    Ok(matvec < gemm)
}

/// `x @ weight^T + bias`; `weight_t`, when given, is `weight^T` made
/// beforehand (a view), which spares the product's graph a transpose.
pub(crate) fn dense_product(
    x: &Array,
    weight: &Array,
    weight_t: Option<&Array>,
    bias: Option<&Array>,
) -> Result<Array> {
    if let Some(y) = row_times_transposed(x, weight)? {
        return match bias {
            Some(b) => y.add(b),
            None => Ok(y),
        };
    }
    let made;
    let wt = match weight_t {
        Some(wt) => wt,
        None => {
            made = weight.transpose()?;
            &made
        }
    };
    match bias {
        Some(b) => x.addmm(b, wt, 1.0, 1.0),
        None => x.matmul(wt),
    }
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
            Linear::Dense { weight, bias } => dense_product(x, weight, None, bias.as_ref()),
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

#[cfg(test)]
mod tests {
    use super::{measure_matvec, row_times_transposed, Linear};
    use crate::{Array, Dtype};

    #[test]
    fn both_single_row_forms_give_the_same_product_and_the_choice_is_measured() {
        // the measurement runs (whichever form wins on this machine)
        measure_matvec().unwrap();
        let w = Array::arange(0.0, 48.0, 1.0, Dtype::Float32)
            .unwrap()
            .reshape(&[6, 8])
            .unwrap();
        let x = Array::arange(0.0, 8.0, 1.0, Dtype::Float32)
            .unwrap()
            .reshape(&[1, 1, 8])
            .unwrap();
        let gemm = x.matmul(&w.transpose().unwrap()).unwrap();
        let chosen = Linear::Dense {
            weight: w.clone(),
            bias: None,
        }
        .forward(&x)
        .unwrap();
        assert_eq!(chosen.shape(), vec![1, 1, 6]);
        assert_eq!(
            chosen.to_vec::<f32>().unwrap(),
            gemm.to_vec::<f32>().unwrap()
        );
        if let Some(matvec) = row_times_transposed(&x, &w).unwrap() {
            assert_eq!(
                matvec.to_vec::<f32>().unwrap(),
                gemm.to_vec::<f32>().unwrap()
            );
        }
    }
}
