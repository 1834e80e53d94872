//! Tensor parallelism, as mlx_lm's `shard`: a linear layer keeps one
//! rank's share of its output rows (column-parallel: q/k/v, gate/up) or of
//! its input columns (row-parallel: o/down, whose outputs the ranks then
//! sum).

use crate::nn::Linear;
use crate::{Array, Error, QuantizedWeight, Result};

/// Which dimension of `W [out, in]` is split across the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Each rank computes a slice of the outputs (`all-to-sharded`).
    Outputs,
    /// Each rank reads a slice of the inputs and produces a partial sum
    /// of the outputs (`sharded-to-all`).
    Inputs,
}

/// `[start, end)` of part `rank` of `n` split into `size` parts.
fn part(n: i32, rank: i32, size: i32, what: &str) -> Result<(i32, i32)> {
    if size < 1 || rank < 0 || rank >= size {
        return Err(Error::InvalidArgument(format!(
            "rank {rank} of {size} ranks"
        )));
    }
    if n % size != 0 {
        return Err(Error::InvalidArgument(format!(
            "{what} of {n} cannot be split evenly over {size} ranks"
        )));
    }
    let k = n / size;
    Ok((rank * k, (rank + 1) * k))
}

/// This rank's `[start, end)` of `a` along `axis`, in a buffer of its
/// own. A slice is a view that keeps the whole tensor's buffer alive, so
/// the rank would hold every weight in full; the copy is made (and the
/// whole tensor read) now, while `a` is still held, so MLX cannot hand the
/// whole buffer to the copy, and the caller's dropping `a` frees it.
fn slice(a: &Array, axis: i32, (start, end): (i32, i32)) -> Result<Array> {
    let view = a.slice_axis(axis, start, end)?;
    let one = Array::scalar(1.0f32).astype(a.dtype())?;
    let own = view.multiply(&one)?;
    own.eval()?;
    Ok(own)
}

/// This rank's share of `layer`, split along `split`. A row-parallel
/// layer with a bias, and adapters (attach them after sharding), are
/// refused.
pub fn shard_linear(layer: &Linear, split: Split, rank: i32, size: i32) -> Result<Linear> {
    let (out, inp) = layer.dims()?;
    if split == Split::Inputs && layer.bias().is_some() {
        return Err(Error::Unsupported(
            "tensor parallelism over a row-parallel layer with a bias".into(),
        ));
    }
    match layer {
        Linear::Dense { weight, bias } => Ok(match split {
            Split::Outputs => {
                let rows = part(out, rank, size, "an output dimension")?;
                Linear::Dense {
                    weight: slice(weight, 0, rows)?,
                    bias: bias.as_ref().map(|b| slice(b, 0, rows)).transpose()?,
                }
            }
            Split::Inputs => Linear::Dense {
                weight: slice(weight, 1, part(inp, rank, size, "an input dimension")?)?,
                bias: None,
            },
        }),
        Linear::Quantized { weight: q, bias } => {
            let sharded = match split {
                Split::Outputs => {
                    let rows = part(out, rank, size, "an output dimension")?;
                    QuantizedWeight {
                        weight: slice(&q.weight, 0, rows)?,
                        scales: slice(&q.scales, 0, rows)?,
                        biases: slice(&q.biases, 0, rows)?,
                        ..q.clone()
                    }
                }
                Split::Inputs => {
                    let (start, end) = part(inp, rank, size, "an input dimension")?;
                    let width = end - start;
                    if width % q.group_size != 0 || (width * q.bits) % 32 != 0 {
                        return Err(Error::InvalidArgument(format!(
                            "a quantised input dimension of {inp} split over {size} ranks \
                             ({width} each) does not fall on its groups of {}",
                            q.group_size
                        )));
                    }
                    let packed = |e: i32| e * q.bits / 32;
                    let groups = |e: i32| e / q.group_size;
                    QuantizedWeight {
                        weight: slice(&q.weight, 1, (packed(start), packed(end)))?,
                        scales: slice(&q.scales, 1, (groups(start), groups(end)))?,
                        biases: slice(&q.biases, 1, (groups(start), groups(end)))?,
                        ..q.clone()
                    }
                }
            };
            let bias = match (split, bias) {
                (Split::Outputs, Some(b)) => {
                    Some(slice(b, 0, part(out, rank, size, "an output dimension")?)?)
                }
                _ => None,
            };
            Ok(Linear::Quantized {
                weight: sharded,
                bias,
            })
        }
        Linear::Lora(_) | Linear::Adapters(_) => Err(Error::Unsupported(
            "tensor parallelism over a layer with an adapter (shard before attaching)".into(),
        )),
    }
}
