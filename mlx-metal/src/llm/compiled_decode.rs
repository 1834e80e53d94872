//! The single-sequence decode step as one compiled MLX graph.
//!
//! After the prompt, the caches are laid out as fixed caches
//! ([`KvCache::into_fixed`]) of a capacity rounded up to [`GROW`]
//! positions, and one step (embedding, every block, the output layer) is
//! compiled with the token, the position and the caches' buffers as its
//! inputs. The position is an array, so the shapes stay the same from one
//! token to the next: MLX traces the step once, fuses its element-wise
//! ops, and replays the graph for every later token. When the capacity is
//! reached it grows by [`GROW`] positions and the step is traced once
//! more for the new shapes.
//!
//! `MLX_INFER_DECODE=compiled` picks it; the default (`eager`) is the
//! per-step graph. Not on the CPU by default: MLX builds each fused kernel
//! with the system's C++ compiler the first time it is seen, seconds that
//! a short generation never wins back. Not on a GPU either: there it ran
//! at 0.65x the per-step graph (its graph has more nodes, attention reads
//! every slot through a mask, and fused kernels cost more to launch; see
//! docs/performance.md).

use crate::llm::models::Architecture;
use crate::nn::cache::{grow_fixed, Kv, KvCache};
use crate::{compile_borrowing, Array, CompiledBorrowing, Error, Result};

/// Positions the fixed caches grow by (each growth traces the step again).
pub const GROW: i32 = 256;

/// How single-token decode steps are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeMode {
    /// A new graph built through the model for every token.
    Eager,
    /// One compiled graph replayed for every token.
    Compiled,
}

impl DecodeMode {
    /// `MLX_INFER_DECODE` (`compiled` or `eager`, the default). An
    /// unknown value is an error naming it.
    pub fn from_env() -> Result<DecodeMode> {
        match std::env::var("MLX_INFER_DECODE") {
            Ok(v) => match v.as_str() {
                "compiled" => Ok(DecodeMode::Compiled),
                "eager" => Ok(DecodeMode::Eager),
                other => Err(Error::InvalidArgument(format!(
                    "MLX_INFER_DECODE={other:?}: expected `compiled` or `eager`"
                ))),
            },
            Err(_) => Ok(DecodeMode::Eager),
        }
    }
}

/// A sequence's decode steps through one compiled graph.
pub struct CompiledDecode<'a> {
    step: CompiledBorrowing<'a>,
    /// Keys and values of every layer, in layer order.
    buffers: Vec<Kv>,
    windows: Vec<Option<i32>>,
    /// Tokens processed (the next one goes to this position).
    offset: i32,
    /// Positions the full-attention buffers hold.
    capacity: i32,
}

impl<'a> CompiledDecode<'a> {
    /// Takes over `caches` (single-sequence caches that have read the
    /// prompt) for decoding with `model`, which must not be spread over a
    /// group.
    pub fn new(model: &'a dyn Architecture, caches: Vec<KvCache>) -> Result<CompiledDecode<'a>> {
        let offset = caches
            .first()
            .and_then(KvCache::offset)
            .ok_or_else(|| Error::InvalidArgument("no single-sequence cache to decode".into()))?;
        let capacity = round_up(offset + 1, GROW);
        let windows: Vec<Option<i32>> = caches.iter().map(KvCache::window).collect();
        let buffers = caches
            .into_iter()
            .map(|cache| cache.into_fixed(capacity))
            .collect::<Result<Vec<Kv>>>()?;
        let traced_windows = windows.clone();
        // Inputs: the token `[1, 1]`, the position (int32 scalar), then the
        // buffers; outputs: the logits `[1, vocab]`, then the new buffers.
        let step = move |x: &[Array]| -> Result<Vec<Array>> {
            let (token, offset) = (&x[0], &x[1]);
            let mut caches: Vec<KvCache> = x[2..]
                .chunks(2)
                .zip(&traced_windows)
                .map(|(kv, w)| KvCache::fixed(kv[0].clone(), kv[1].clone(), offset.clone(), *w))
                .collect();
            let h = model.hidden(token, &mut caches)?;
            let mut out = vec![model.logits(&h)?.squeeze(&[1])?];
            for cache in caches {
                let (k, v) = cache.into_kv()?;
                out.push(k);
                out.push(v);
            }
            Ok(out)
        };
        Ok(CompiledDecode {
            step: compile_borrowing(Box::new(step), false)?,
            buffers,
            windows,
            offset,
            capacity,
        })
    }

    /// Builds the step that reads `token` (one id, any integer dtype) and
    /// returns its logits `[1, vocab]` (lazy).
    pub fn step(&mut self, token: &Array) -> Result<Array> {
        if self.offset >= self.capacity {
            self.grow()?;
        }
        let mut inputs = Vec::with_capacity(2 + 2 * self.buffers.len());
        inputs.push(token.reshape(&[1, 1])?);
        inputs.push(Array::scalar(self.offset));
        inputs.extend(self.buffers.drain(..).flat_map(|(k, v)| [k, v]));
        let out = self.step.call(&inputs)?;
        drop(inputs);
        if out.len() != 1 + self.windows.len() * 2 {
            return Err(Error::Closure(format!(
                "the compiled decode step gave {} outputs for {} layers",
                out.len(),
                self.windows.len()
            )));
        }
        let mut out = out.into_iter();
        let logits = out.next().expect("checked above");
        while let (Some(k), Some(v)) = (out.next(), out.next()) {
            self.buffers.push((k, v));
        }
        self.offset += 1;
        Ok(logits)
    }

    /// Tokens processed so far.
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// Adds [`GROW`] positions to the full-attention buffers (and to
    /// window buffers still shorter than their window).
    fn grow(&mut self) -> Result<()> {
        let capacity = self.capacity + GROW;
        for (kv, window) in self.buffers.iter_mut().zip(&self.windows) {
            *kv = grow_fixed(kv.clone(), *window, capacity)?;
        }
        self.capacity = capacity;
        Ok(())
    }
}

fn round_up(n: i32, step: i32) -> i32 {
    (n + step - 1) / step * step
}
