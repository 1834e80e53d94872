//! The attention and MLP blocks the supported architectures share.

use crate::fast::scaled_dot_product_attention;
use crate::llm::cache::{KvCache, Mask};
use crate::llm::weights::Weights;
use crate::nn::{Linear, RmsNorm, Rope};
use crate::{Array, Result};

/// Shapes of an attention block.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Model width.
    pub hidden: i32,
    /// Query heads.
    pub heads: i32,
    /// Key/value heads.
    pub kv_heads: i32,
    /// Width of one head.
    pub head_dim: i32,
}

/// Multi-head attention with grouped KV heads, RoPE and optional per-head
/// q/k RMS norms.
#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    rope: Rope,
    shape: AttentionShape,
    scale: f32,
}

/// How the q/k norms of an attention block are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// No q/k norms (Llama).
    None,
    /// Norms scaling by `w` (Qwen3).
    Plain,
    /// Norms scaling by `1 + w` (Gemma 3).
    OffsetOne,
}

/// Everything that configures an attention block besides its weights.
#[derive(Debug, Clone)]
pub struct AttentionSpec {
    /// Head counts and widths.
    pub shape: AttentionShape,
    /// Biases on q/k/v/o.
    pub bias: bool,
    /// Per-head q/k norms.
    pub qk_norm: QkNorm,
    /// Epsilon of the q/k norms.
    pub eps: f32,
    /// Rotary embedding.
    pub rope: Rope,
    /// Multiplier of `q k^T`.
    pub scale: f32,
}

impl Attention {
    /// Loads `prefix.{q,k,v,o}_proj` (and `q_norm`/`k_norm`).
    pub fn load(w: &mut Weights, prefix: &str, spec: &AttentionSpec) -> Result<Attention> {
        let AttentionSpec {
            shape,
            bias,
            qk_norm,
            eps,
            ..
        } = *spec;
        let AttentionShape {
            hidden,
            heads,
            kv_heads,
            head_dim,
        } = shape;
        let norm = |w: &mut Weights, name: &str| -> Result<Option<RmsNorm>> {
            let p = format!("{prefix}.{name}");
            match qk_norm {
                QkNorm::None => Ok(None),
                QkNorm::Plain => w.rms_norm(&p, head_dim, eps).map(Some),
                QkNorm::OffsetOne => w.rms_norm_offset_one(&p, head_dim, eps).map(Some),
            }
        };
        Ok(Attention {
            q_proj: w.linear(&format!("{prefix}.q_proj"), hidden, heads * head_dim, bias)?,
            k_proj: w.linear(
                &format!("{prefix}.k_proj"),
                hidden,
                kv_heads * head_dim,
                bias,
            )?,
            v_proj: w.linear(
                &format!("{prefix}.v_proj"),
                hidden,
                kv_heads * head_dim,
                bias,
            )?,
            o_proj: w.linear(&format!("{prefix}.o_proj"), heads * head_dim, hidden, bias)?,
            q_norm: norm(w, "q_norm")?,
            k_norm: norm(w, "k_norm")?,
            rope: spec.rope.clone(),
            shape,
            scale: spec.scale,
        })
    }

    /// `x`: `[B, L, hidden]` → `[B, L, hidden]`, updating `cache`.
    pub fn forward(&self, x: &Array, mask: &Mask, cache: &mut KvCache) -> Result<Array> {
        let dims = x.shape();
        let (b, l) = (dims[0], dims[1]);
        let AttentionShape {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.shape;
        let heads_of = |t: Array, n: i32, norm: &Option<RmsNorm>| -> Result<Array> {
            let t = t.reshape(&[b, l, n, head_dim])?;
            let t = match norm {
                Some(norm) => norm.forward(&t)?,
                None => t,
            };
            t.transpose_axes(&[0, 2, 1, 3])
        };
        let q = heads_of(self.q_proj.forward(x)?, heads, &self.q_norm)?;
        let k = heads_of(self.k_proj.forward(x)?, kv_heads, &self.k_norm)?;
        let v = heads_of(self.v_proj.forward(x)?, kv_heads, &None)?;
        let offset = cache.offset();
        let q = self.rope.forward(&q, offset)?;
        let k = self.rope.forward(&k, offset)?;
        let (k, v) = cache.update_and_fetch(&k, &v)?;
        let o = scaled_dot_product_attention(&q, &k, &v, self.scale, mask.as_attention())?;
        let o = o
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b, l, heads * head_dim])?;
        self.o_proj.forward(&o)
    }
}

/// The gate activation of a gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (Llama, Qwen).
    Silu,
    /// `gelu_tanh(gate) * up` (Gemma).
    GeluApprox,
}

/// `down(act(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    activation: Activation,
}

impl Mlp {
    /// Loads `prefix.{gate,up,down}_proj`.
    pub fn load(
        w: &mut Weights,
        prefix: &str,
        hidden: i32,
        inter: i32,
        bias: bool,
        activation: Activation,
    ) -> Result<Mlp> {
        Ok(Mlp {
            gate_proj: w.linear(&format!("{prefix}.gate_proj"), hidden, inter, bias)?,
            up_proj: w.linear(&format!("{prefix}.up_proj"), hidden, inter, bias)?,
            down_proj: w.linear(&format!("{prefix}.down_proj"), inter, hidden, bias)?,
            activation,
        })
    }

    /// Applies the block.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        let h = crate::llm::fused::gated(self.activation, &gate, &up)?;
        self.down_proj.forward(&h)
    }
}

/// What differs between the pre-norm decoders (Llama, Qwen3).
#[derive(Debug, Clone)]
pub struct DecoderSpec {
    /// Attention shapes.
    pub shape: AttentionShape,
    /// Transformer blocks.
    pub layers: i32,
    /// MLP width.
    pub intermediate: i32,
    /// Vocabulary size.
    pub vocab: i32,
    /// RMS norm epsilon.
    pub eps: f32,
    /// Biases on q/k/v/o.
    pub attention_bias: bool,
    /// Biases on the MLP.
    pub mlp_bias: bool,
    /// Per-head q/k norms.
    pub qk_norm: QkNorm,
    /// Rotary embedding.
    pub rope: Rope,
    /// Output layer shares the embedding table.
    pub tied: bool,
}

struct PreNormBlock {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_attn_norm: RmsNorm,
}

/// A stack of pre-norm blocks (`h += attn(norm(h)); h += mlp(norm(h))`)
/// between an embedding and an output layer, Hugging Face weight names.
pub struct Decoder {
    embed: crate::nn::Embedding,
    blocks: Vec<PreNormBlock>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
}

impl Decoder {
    /// Loads the decoder described by `spec`.
    pub fn load(w: &mut Weights, spec: &DecoderSpec) -> Result<Decoder> {
        let hidden = spec.shape.hidden;
        let attention = AttentionSpec {
            shape: spec.shape,
            bias: spec.attention_bias,
            qk_norm: spec.qk_norm,
            eps: spec.eps,
            rope: spec.rope.clone(),
            scale: (spec.shape.head_dim as f32).powf(-0.5),
        };
        let embed = w.embedding("model.embed_tokens", spec.vocab, hidden)?;
        let mut blocks = Vec::with_capacity(spec.layers as usize);
        for i in 0..spec.layers {
            let p = format!("model.layers.{i}");
            blocks.push(PreNormBlock {
                attn: Attention::load(w, &format!("{p}.self_attn"), &attention)?,
                mlp: Mlp::load(
                    w,
                    &format!("{p}.mlp"),
                    hidden,
                    spec.intermediate,
                    spec.mlp_bias,
                    Activation::Silu,
                )?,
                input_norm: w.rms_norm(&format!("{p}.input_layernorm"), hidden, spec.eps)?,
                post_attn_norm: w.rms_norm(
                    &format!("{p}.post_attention_layernorm"),
                    hidden,
                    spec.eps,
                )?,
            });
        }
        let norm = w.rms_norm("model.norm", hidden, spec.eps)?;
        let lm_head = if spec.tied {
            w.discard(|k| k.starts_with("lm_head."));
            None
        } else {
            Some(w.linear("lm_head", hidden, spec.vocab, false)?)
        };
        Ok(Decoder {
            embed,
            blocks,
            norm,
            lm_head,
        })
    }
}

impl crate::llm::models::Architecture for Decoder {
    fn forward(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
        let mut h = self.embed.forward(tokens)?;
        let mask = caches[0].make_mask(tokens.dim(1)?, None)?;
        for (b, cache) in self.blocks.iter().zip(caches.iter_mut()) {
            h = h.add(&b.attn.forward(&b.input_norm.forward(&h)?, &mask, cache)?)?;
            h = h.add(&b.mlp.forward(&b.post_attn_norm.forward(&h)?)?)?;
        }
        let h = self.norm.forward(&h)?;
        match &self.lm_head {
            Some(head) => head.forward(&h),
            None => self.embed.as_linear(&h),
        }
    }

    fn make_caches(&self) -> Vec<KvCache> {
        self.blocks.iter().map(|_| KvCache::standard()).collect()
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }
}
