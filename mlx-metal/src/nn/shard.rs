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

/// Which part of each tensor of a linear layer `W [out, in]` one rank
/// keeps: the range of `weight` along `axis` (in packed columns for a
/// quantised input split), of its scales and biases (in groups), and of
/// the bias vector (output splits only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    /// 0 for an output split, 1 for an input split.
    pub axis: i32,
    /// The weight's range along `axis`.
    pub weight: (i32, i32),
    /// The quantisation scales' and biases' range along `axis`.
    pub groups: (i32, i32),
    /// The bias vector's range, when the layer has one.
    pub bias: Option<(i32, i32)>,
}

/// Rank `rank`'s [`Share`] of a layer mapping `inp` to `out` features
/// split `split` over `size` ranks; `quant` is `(group_size, bits)` of a
/// quantised layer. Refuses splits that are uneven, that do not fall on
/// quantisation groups, or a row-parallel layer with a bias.
pub(crate) fn share(
    split: Split,
    out: i32,
    inp: i32,
    quant: Option<(i32, i32)>,
    has_bias: bool,
    rank: i32,
    size: i32,
) -> Result<Share> {
    match split {
        Split::Outputs => {
            let rows = part(out, rank, size, "an output dimension")?;
            Ok(Share {
                axis: 0,
                weight: rows,
                groups: rows,
                bias: has_bias.then_some(rows),
            })
        }
        Split::Inputs => {
            if has_bias {
                return Err(Error::Unsupported(
                    "tensor parallelism over a row-parallel layer with a bias".into(),
                ));
            }
            let (start, end) = part(inp, rank, size, "an input dimension")?;
            let Some((group_size, bits)) = quant else {
                return Ok(Share {
                    axis: 1,
                    weight: (start, end),
                    groups: (start, end),
                    bias: None,
                });
            };
            let width = end - start;
            if width % group_size != 0 || (width * bits) % 32 != 0 {
                return Err(Error::InvalidArgument(format!(
                    "a quantised input dimension of {inp} split over {size} ranks \
                     ({width} each) does not fall on its groups of {group_size}"
                )));
            }
            let packed = |e: i32| e * bits / 32;
            Ok(Share {
                axis: 1,
                weight: (packed(start), packed(end)),
                groups: (start / group_size, end / group_size),
                bias: None,
            })
        }
    }
}

/// This rank's share of `layer`, split along `split`; `whole` is the
/// layer's full size along that dimension. A layer already that size
/// divided by `size` was read as this rank's share
/// ([`Weights::linear_share`](crate::llm::weights::Weights::linear_share))
/// and is kept as it is. Adapters are refused (attach them after
/// sharding); so are the splits `share` refuses.
pub fn shard_linear(
    layer: &Linear,
    split: Split,
    rank: i32,
    size: i32,
    whole: i32,
) -> Result<Linear> {
    let (out, inp) = layer.dims()?;
    let have = match split {
        Split::Outputs => out,
        Split::Inputs => inp,
    };
    if size > 1 && have * size == whole {
        return Ok(layer.clone());
    }
    if have != whole {
        return Err(Error::InvalidArgument(format!(
            "a layer {have} wide along its split, where {whole} (or its share over {size} ranks) was expected"
        )));
    }
    let adapted = || {
        Error::Unsupported(
            "tensor parallelism over a layer with an adapter (shard before attaching)".into(),
        )
    };
    let quant = match layer {
        Linear::Dense { .. } => None,
        Linear::Quantized { weight: q, .. } => Some((q.group_size, q.bits)),
        Linear::Lora(_) | Linear::Adapters(_) => return Err(adapted()),
    };
    let sh = share(split, out, inp, quant, layer.bias().is_some(), rank, size)?;
    let bias = |b: &Option<Array>| -> Result<Option<Array>> {
        match (b, sh.bias) {
            (Some(b), Some(range)) => Ok(Some(slice(b, 0, range)?)),
            _ => Ok(None),
        }
    };
    match layer {
        Linear::Dense { weight, bias: b } => Ok(Linear::Dense {
            weight: slice(weight, sh.axis, sh.weight)?,
            bias: bias(b)?,
        }),
        Linear::Quantized { weight: q, bias: b } => Ok(Linear::Quantized {
            weight: QuantizedWeight {
                weight: slice(&q.weight, sh.axis, sh.weight)?,
                scales: slice(&q.scales, sh.axis, sh.groups)?,
                biases: slice(&q.biases, sh.axis, sh.groups)?,
                ..q.clone()
            },
            bias: bias(b)?,
        }),
        Linear::Lora(_) | Linear::Adapters(_) => Err(adapted()),
    }
}
