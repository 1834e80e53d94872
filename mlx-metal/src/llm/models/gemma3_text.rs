//! Gemma 3 (text): sliding-window and global layers by pattern with their
//! own RoPE bases, four `(1 + w)` RMS norms per block, embeddings scaled by
//! `sqrt(hidden)`, `query_pre_attn_scalar`, gelu-tanh MLP, and logit
//! soft-capping when the config sets it.

use half::bf16;

use crate::llm::cache::{KvCache, Mask};
use crate::llm::config::Config;
use crate::llm::layers::{Activation, Attention, AttentionShape, AttentionSpec, Mlp, QkNorm};
use crate::llm::weights::Weights;
use crate::nn::{Embedding, Linear, RmsNorm, Rope};
use crate::{Array, Dtype, Result};

use super::Architecture;

struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    pre_ff_norm: RmsNorm,
    post_ff_norm: RmsNorm,
    sliding: bool,
}

/// A Gemma 3 text model.
pub struct Gemma3Text {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    hidden: i32,
    window: i32,
    softcap: Option<f32>,
}

/// `x + y`; in float16 the sum is taken in float32 and clipped to the f16
/// range, as Gemma needs.
fn residual(x: &Array, y: &Array) -> Result<Array> {
    if x.dtype() != Dtype::Float16 {
        return x.add(y);
    }
    let bound = Array::scalar(65504.0f32);
    let sum = x.astype(Dtype::Float32)?.add(&y.astype(Dtype::Float32)?)?;
    sum.minimum(&bound)?
        .maximum(&bound.negative()?)?
        .astype(Dtype::Float16)
}

impl Gemma3Text {
    /// Builds the model from `config` and the weights.
    pub fn load(c: &Config, w: &mut Weights) -> Result<Gemma3Text> {
        let hidden = c.hidden_size.unwrap_or(1152);
        let heads = c.num_attention_heads.unwrap_or(4);
        let shape = AttentionShape {
            hidden,
            heads,
            kv_heads: c.num_key_value_heads.unwrap_or(1),
            head_dim: c.head_dim.unwrap_or(256),
        };
        let layers = c.num_hidden_layers.unwrap_or(26);
        let inter = c.intermediate_size.unwrap_or(6912);
        let vocab = c.vocab_size.unwrap_or(262144);
        let eps = c.rms_norm_eps.unwrap_or(1e-6);
        let pattern = c.sliding_window_pattern.unwrap_or(6);
        let scale = c.query_pre_attn_scalar.unwrap_or(256.0).powf(-0.5);
        let local_rope = Rope::new(
            shape.head_dim,
            c.rope_local_base_freq.unwrap_or(10000.0),
            false,
            1.0,
        );
        let global_rope = Rope::from_config(
            shape.head_dim,
            c.rope_theta.unwrap_or(1_000_000.0),
            false,
            c.rope_scaling.as_ref(),
        )?;
        w.discard(|k| k.starts_with("vision_tower") || k.starts_with("multi_modal_projector"));
        let embed = w.embedding("model.embed_tokens", vocab, hidden)?;
        let mut blocks = Vec::with_capacity(layers as usize);
        for i in 0..layers {
            let p = format!("model.layers.{i}");
            let sliding = (i + 1) % pattern != 0;
            let spec = AttentionSpec {
                shape,
                bias: false,
                qk_norm: QkNorm::OffsetOne,
                eps,
                rope: if sliding {
                    local_rope.clone()
                } else {
                    global_rope.clone()
                },
                scale,
            };
            blocks.push(Block {
                attn: Attention::load(w, &format!("{p}.self_attn"), &spec)?,
                mlp: Mlp::load(
                    w,
                    &format!("{p}.mlp"),
                    hidden,
                    inter,
                    false,
                    Activation::GeluApprox,
                )?,
                input_norm: w.rms_norm_offset_one(&format!("{p}.input_layernorm"), hidden, eps)?,
                post_attn_norm: w.rms_norm_offset_one(
                    &format!("{p}.post_attention_layernorm"),
                    hidden,
                    eps,
                )?,
                pre_ff_norm: w.rms_norm_offset_one(
                    &format!("{p}.pre_feedforward_layernorm"),
                    hidden,
                    eps,
                )?,
                post_ff_norm: w.rms_norm_offset_one(
                    &format!("{p}.post_feedforward_layernorm"),
                    hidden,
                    eps,
                )?,
                sliding,
            });
        }
        let norm = w.rms_norm_offset_one("model.norm", hidden, eps)?;
        // Gemma ties the output layer unless the weights carry one.
        let lm_head = if w.has("lm_head.weight") {
            Some(w.linear("lm_head", hidden, vocab, false)?)
        } else {
            None
        };
        Ok(Gemma3Text {
            embed,
            blocks,
            norm,
            lm_head,
            hidden,
            window: c.sliding_window.unwrap_or(512),
            softcap: c.final_logit_softcapping,
        })
    }
}

impl Architecture for Gemma3Text {
    fn forward(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
        let h = self.embed.forward(tokens)?;
        // sqrt(hidden) rounded to bfloat16, as the reference implementation does
        let factor = bf16::from_f32((self.hidden as f32).sqrt());
        let mut h = h.multiply(&Array::scalar(factor).astype(h.dtype())?)?;
        let n = tokens.dim(1)?;
        // masks come from the first cache of each kind, before this step's update
        let first = |sliding: bool| self.blocks.iter().position(|b| b.sliding == sliding);
        let global_mask = match first(false) {
            Some(i) => caches[i].make_mask(n, None)?,
            None => Mask::None,
        };
        let local_mask = match first(true) {
            Some(i) => caches[i].make_mask(n, Some(self.window))?,
            None => Mask::None,
        };
        for (b, cache) in self.blocks.iter().zip(caches.iter_mut()) {
            let mask = if b.sliding { &local_mask } else { &global_mask };
            let r = b.attn.forward(&b.input_norm.forward(&h)?, mask, cache)?;
            h = residual(&h, &b.post_attn_norm.forward(&r)?)?;
            let r = b.mlp.forward(&b.pre_ff_norm.forward(&h)?)?;
            h = residual(&h, &b.post_ff_norm.forward(&r)?)?;
        }
        let h = self.norm.forward(&h)?;
        let logits = match &self.lm_head {
            Some(head) => head.forward(&h)?,
            None => self.embed.as_linear(&h)?,
        };
        match self.softcap {
            Some(cap) => logits.mul_scalar(1.0 / cap)?.tanh()?.mul_scalar(cap),
            None => Ok(logits),
        }
    }

    fn make_caches(&self) -> Vec<KvCache> {
        self.blocks
            .iter()
            .map(|b| {
                if b.sliding {
                    KvCache::rotating(self.window)
                } else {
                    KvCache::standard()
                }
            })
            .collect()
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }
}
