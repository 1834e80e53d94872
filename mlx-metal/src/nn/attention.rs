//! Multi-head attention with grouped key/value heads: separate or fused
//! q/k/v projections, biases where a family has them, optional per-head
//! q/k norms, a RoPE variant, and optional attention-logit soft-capping.

use crate::fast::scaled_dot_product_attention;
use crate::llm::weights::Weights;
use crate::nn::cache::{KvCache, Mask};
use crate::nn::joined::Joined;
use crate::nn::params::{join, Module, Visitor};
use crate::nn::{Linear, RmsNorm, Rope};
use crate::{Array, Dtype, Result};

/// Head counts and widths.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Model width.
    pub hidden: i32,
    /// Query heads.
    pub heads: i32,
    /// Key/value heads.
    pub kv_heads: i32,
    /// Width of one head.
    pub head_dim: i32,
}

/// How a checkpoint stores the q/k/v projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvLayout {
    /// `q_proj`, `k_proj`, `v_proj`.
    Separate,
    /// One `qkv_proj` whose output rows are q, then k, then v (Phi-3).
    Fused,
}

/// Per-head RMS norms on queries and keys, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// None (Llama, Qwen2, Mistral, Phi-3).
    None,
    /// Scaling by `w` (Qwen3).
    Plain,
    /// Scaling by `1 + w` (Gemma 3).
    OffsetOne,
}

/// Everything that shapes an attention block besides its weights; each
/// family fills it from its own config.
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    /// Head counts and widths.
    pub heads: Heads,
    /// How q/k/v are stored.
    pub layout: QkvLayout,
    /// Biases on q/k/v.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Per-head q/k norms.
    pub qk_norm: QkNorm,
    /// Epsilon of the q/k norms.
    pub eps: f32,
    /// Rotary embedding.
    pub rope: Rope,
    /// Multiplier of `q k^T`.
    pub scale: f32,
    /// `cap * tanh(scores / cap)` on the attention logits (Gemma 2).
    pub softcap: Option<f32>,
}

#[derive(Debug, Clone)]
enum Qkv {
    /// Stored apart; joined into one product while nothing replaces them.
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
        joined: Option<Box<Joined>>,
    },
    Fused(Linear),
}

impl Qkv {
    /// Separate projections, joined when they can be.
    fn separate(mut q: Linear, mut k: Linear, mut v: Linear) -> Result<Qkv> {
        let joined = Joined::join(&mut [&mut q, &mut k, &mut v])?.map(Box::new);
        Ok(Qkv::Separate { q, k, v, joined })
    }
}

/// An attention block.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Qkv,
    o_proj: Linear,
    /// `o_proj` with its weight kept transposed, while nothing replaces it.
    o_prepared: Option<Joined>,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    rope: Rope,
    heads: Heads,
    scale: f32,
    softcap: Option<f32>,
}

impl Attention {
    /// Loads `prefix.{q,k,v,o}_proj` (or `prefix.qkv_proj`) and the q/k norms.
    /// On a tensor-parallel load ([`Weights::read_shares`]) the
    /// projections hold this rank's share already.
    pub fn load(w: &mut Weights, prefix: &str, c: &AttentionConfig) -> Result<Attention> {
        use crate::nn::shard::Split::{Inputs, Outputs};
        let Heads {
            hidden,
            heads,
            kv_heads,
            head_dim,
        } = c.heads;
        let (q_out, kv_out) = (heads * head_dim, kv_heads * head_dim);
        let qkv = match c.layout {
            QkvLayout::Separate => Qkv::separate(
                w.linear_share(
                    &format!("{prefix}.q_proj"),
                    hidden,
                    q_out,
                    c.qkv_bias,
                    Outputs,
                )?,
                w.linear_share(
                    &format!("{prefix}.k_proj"),
                    hidden,
                    kv_out,
                    c.qkv_bias,
                    Outputs,
                )?,
                w.linear_share(
                    &format!("{prefix}.v_proj"),
                    hidden,
                    kv_out,
                    c.qkv_bias,
                    Outputs,
                )?,
            )?,
            QkvLayout::Fused => Qkv::Fused(w.linear(
                &format!("{prefix}.qkv_proj"),
                hidden,
                q_out + 2 * kv_out,
                c.qkv_bias,
            )?),
        };
        let norm = |w: &mut Weights, name: &str| -> Result<Option<RmsNorm>> {
            let p = format!("{prefix}.{name}");
            match c.qk_norm {
                QkNorm::None => Ok(None),
                QkNorm::Plain => w.rms_norm(&p, head_dim, c.eps).map(Some),
                QkNorm::OffsetOne => w.rms_norm_offset_one(&p, head_dim, c.eps).map(Some),
            }
        };
        let o_proj =
            w.linear_share(&format!("{prefix}.o_proj"), q_out, hidden, c.o_bias, Inputs)?;
        Ok(Attention {
            qkv,
            o_prepared: Joined::single(&o_proj)?,
            o_proj,
            q_norm: norm(w, "q_norm")?,
            k_norm: norm(w, "k_norm")?,
            rope: c.rope.clone(),
            heads: c.heads,
            scale: c.scale,
            softcap: c.softcap,
        })
    }

    /// `x`: `[B, L, hidden]` → `[B, L, hidden]`, or `[B, hidden]` (one
    /// position per row) → `[B, hidden]`, reading and extending `cache`.
    pub fn forward(&self, x: &Array, mask: &Mask, cache: &mut KvCache) -> Result<Array> {
        let dims = x.shape();
        let rows = dims.len() == 2;
        let (b, l) = if rows {
            (dims[0], 1)
        } else {
            (dims[0], dims[1])
        };
        let Heads {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.heads;
        let (q, k, v) = match &self.qkv {
            Qkv::Separate {
                joined: Some(j), ..
            } => {
                let [q, k, v]: [Array; 3] = j
                    .forward(x)?
                    .try_into()
                    .map_err(|_| crate::Error::InvalidArgument("qkv split".into()))?;
                (q, k, v)
            }
            Qkv::Separate { q, k, v, .. } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            Qkv::Fused(qkv) => {
                let q_end = heads * head_dim;
                let parts = qkv
                    .forward(x)?
                    .split_at(&[q_end, q_end + kv_heads * head_dim], -1)?;
                let [q, k, v]: [Array; 3] = parts
                    .try_into()
                    .map_err(|_| crate::Error::InvalidArgument("qkv split".into()))?;
                (q, k, v)
            }
        };
        // `[B, L, n * head_dim]` → `[B, n, L, head_dim]`. With one position
        // (decoding) that is a reshape alone: one operation fewer per
        // tensor in a step's graph, the same values.
        let heads_of = |t: Array, n: i32, norm: &Option<RmsNorm>| -> Result<Array> {
            let t = match l {
                1 => t.reshape(&[b, n, 1, head_dim])?,
                _ => t.reshape(&[b, l, n, head_dim])?,
            };
            let t = match norm {
                Some(norm) => norm.forward(&t)?,
                None => t,
            };
            match l {
                1 => Ok(t),
                _ => t.transpose_axes(&[0, 2, 1, 3]),
            }
        };
        let q = heads_of(q, heads, &self.q_norm)?;
        let k = heads_of(k, kv_heads, &self.k_norm)?;
        let v = heads_of(v, kv_heads, &None)?;
        let positions = cache.positions()?;
        let q = self.rope.apply(&q, &positions)?;
        let k = self.rope.apply(&k, &positions)?;
        let (k, v) = cache.update_and_fetch(&k, &v)?;
        let o = match self.softcap {
            None => scaled_dot_product_attention(&q, &k, &v, self.scale, mask.as_attention())?,
            Some(cap) => self.softcapped(&q, &k, &v, mask, cap)?,
        };
        let o = match l {
            1 if rows => o.reshape(&[b, heads * head_dim])?,
            1 => o.reshape(&[b, 1, heads * head_dim])?,
            _ => o
                .transpose_axes(&[0, 2, 1, 3])?
                .reshape(&[b, l, heads * head_dim])?,
        };
        match &self.o_prepared {
            Some(o_proj) => o_proj.product(&o),
            None => self.o_proj.forward(&o),
        }
    }

    /// Keeps rank `rank`'s share of the heads for tensor parallelism over
    /// `size` ranks (mlx_lm's `shard`): q/k/v keep the rows of the rank's
    /// query and key/value heads, `o_proj` the matching input columns (the
    /// block then sums the ranks' outputs).
    pub fn shard(&mut self, rank: i32, size: i32) -> Result<()> {
        use crate::nn::shard::{shard_linear, Split};
        let Heads {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.heads;
        if heads % size != 0 || kv_heads % size != 0 {
            return Err(crate::Error::InvalidArgument(format!(
                "{heads} query and {kv_heads} key/value heads cannot be split evenly over {size} ranks"
            )));
        }
        let Qkv::Separate { q, k, v, .. } = &self.qkv else {
            return Err(crate::Error::Unsupported(
                "tensor parallelism over a fused qkv_proj".into(),
            ));
        };
        let (q_out, kv_out) = (heads * head_dim, kv_heads * head_dim);
        self.qkv = Qkv::separate(
            shard_linear(q, Split::Outputs, rank, size, q_out)?,
            shard_linear(k, Split::Outputs, rank, size, kv_out)?,
            shard_linear(v, Split::Outputs, rank, size, kv_out)?,
        )?;
        self.o_proj = shard_linear(&self.o_proj, Split::Inputs, rank, size, q_out)?;
        self.o_prepared = Joined::single(&self.o_proj)?;
        self.heads.heads = heads / size;
        self.heads.kv_heads = kv_heads / size;
        Ok(())
    }

    /// Attention with `cap * tanh(scores / cap)` on the logits, written out
    /// (the fused kernel has no soft-capping), as mlx_lm's Gemma 2.
    fn softcapped(&self, q: &Array, k: &Array, v: &Array, mask: &Mask, cap: f32) -> Result<Array> {
        let Heads {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.heads;
        let (b, l) = (q.dim(0)?, q.dim(2)?);
        let repeats = heads / kv_heads;
        let mut q = q.mul_scalar(self.scale)?;
        let (mut k, mut v) = (k.clone(), v.clone());
        if repeats > 1 {
            q = q.reshape(&[b, kv_heads, repeats, l, head_dim])?;
            k = k.expand_dims(&[2])?;
            v = v.expand_dims(&[2])?;
        }
        let scores = q.matmul(&k.swap_axes(-1, -2)?)?;
        let mut scores = scores.mul_scalar(1.0 / cap)?.tanh()?.mul_scalar(cap)?;
        match mask {
            Mask::None => {}
            Mask::Causal => {
                let n = scores.dim(-1)?;
                let keep = crate::nn::cache::causal_mask(l, n - l, None)?;
                scores = masked(&scores, &keep)?;
            }
            Mask::Array(keep) => {
                // A batch mask `[B, 1, n, keys]` gains the axis of the
                // grouped query heads.
                let keep = if repeats > 1 && keep.ndim() == 4 {
                    keep.expand_dims(&[2])?
                } else {
                    keep.clone()
                };
                scores = masked(&scores, &keep)?
            }
        }
        let out = scores.softmax(&[-1], true)?.matmul(&v)?;
        if repeats > 1 {
            out.reshape(&[b, heads, l, head_dim])
        } else {
            Ok(out)
        }
    }
}

/// `scores` where `keep` is true, the dtype's lowest value elsewhere.
fn masked(scores: &Array, keep: &Array) -> Result<Array> {
    let low = match scores.dtype() {
        Dtype::Float16 => -65504.0f32,
        Dtype::Bfloat16 => -3.389_531_4e38,
        _ => f32::MIN,
    };
    let fill = Array::scalar(low).astype(scores.dtype())?;
    keep.select(scores, &fill)
}

impl Module for Attention {
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        match &mut self.qkv {
            Qkv::Separate {
                q,
                k,
                v: vp,
                joined,
            } => {
                q.visit(&join(prefix, "q_proj"), v)?;
                k.visit(&join(prefix, "k_proj"), v)?;
                vp.visit(&join(prefix, "v_proj"), v)?;
                Joined::drop_if_replaced(joined, &[q, k, vp]);
            }
            Qkv::Fused(qkv) => qkv.visit(&join(prefix, "qkv_proj"), v)?,
        }
        self.o_proj.visit(&join(prefix, "o_proj"), v)?;
        Joined::drop_if_replaced(&mut self.o_prepared, &[&self.o_proj]);
        if let Some(n) = &mut self.q_norm {
            n.visit(&join(prefix, "q_norm"), v)?;
        }
        if let Some(n) = &mut self.k_norm {
            n.visit(&join(prefix, "k_norm"), v)?;
        }
        Ok(())
    }
}
