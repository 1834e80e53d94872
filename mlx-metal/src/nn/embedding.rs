//! Token embeddings, dense or quantised, usable as a tied output layer.

use crate::nn::params::{join, Module, Visitor};
use crate::{Array, QuantizedWeight, Result};

/// A `[vocab, dim]` embedding table.
#[derive(Debug, Clone)]
pub enum Embedding {
    /// Dense table.
    Dense(Array),
    /// Quantised table (rows are dequantised on lookup).
    Quantized(QuantizedWeight),
}

impl Embedding {
    /// Looks up `ids` (any shape) → `[..., dim]`.
    pub fn forward(&self, ids: &Array) -> Result<Array> {
        match self {
            Embedding::Dense(w) => w.take(ids, 0),
            Embedding::Quantized(q) => {
                let rows = QuantizedWeight {
                    weight: q.weight.take(ids, 0)?,
                    scales: q.scales.take(ids, 0)?,
                    biases: q.biases.take(ids, 0)?,
                    group_size: q.group_size,
                    bits: q.bits,
                };
                rows.dequantize()
            }
        }
    }

    /// `x @ table^T`: the output layer of models with tied embeddings.
    pub fn as_linear(&self, x: &Array) -> Result<Array> {
        match self {
            Embedding::Dense(w) => match super::linear::row_times_transposed(x, w)? {
                Some(y) => Ok(y),
                None => x.matmul(&w.transpose()?),
            },
            Embedding::Quantized(q) => x.quantized_matmul(q, true),
        }
    }

    /// The dtype activations should use (the table's, or its scales').
    pub fn dtype(&self) -> crate::Dtype {
        match self {
            Embedding::Dense(w) => w.dtype(),
            Embedding::Quantized(q) => q.scales.dtype(),
        }
    }
}

impl Module for Embedding {
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        if v.embedding(prefix, self)? {
            return Ok(());
        }
        match self {
            Embedding::Dense(w) => v.array(&join(prefix, "weight"), w),
            Embedding::Quantized(q) => {
                v.array(&join(prefix, "weight"), &mut q.weight)?;
                v.array(&join(prefix, "scales"), &mut q.scales)?;
                v.array(&join(prefix, "biases"), &mut q.biases)
            }
        }
    }
}
