//! Qwen3 (dense): Llama's layout with RMS norms on each query and key head
//! and an explicit `head_dim`.

use crate::llm::config::Config;
use crate::llm::layers::{AttentionShape, Decoder, DecoderSpec, QkNorm};
use crate::llm::weights::Weights;
use crate::nn::Rope;
use crate::{Error, Result};

/// Builds a Qwen3 model from `config` and the weights.
pub fn load(c: &Config, w: &mut Weights) -> Result<Decoder> {
    let head_dim = c.need(c.head_dim, "head_dim")?;
    let theta = c
        .rope_theta
        .ok_or_else(|| Error::InvalidArgument("config.json lacks `rope_theta`".into()))?;
    let spec = DecoderSpec {
        shape: AttentionShape {
            hidden: c.need(c.hidden_size, "hidden_size")?,
            heads: c.need(c.num_attention_heads, "num_attention_heads")?,
            kv_heads: c.need(c.num_key_value_heads, "num_key_value_heads")?,
            head_dim,
        },
        layers: c.need(c.num_hidden_layers, "num_hidden_layers")?,
        intermediate: c.need(c.intermediate_size, "intermediate_size")?,
        vocab: c.need(c.vocab_size, "vocab_size")?,
        eps: c.rms_norm_eps.unwrap_or(1e-6),
        attention_bias: false,
        mlp_bias: false,
        qk_norm: QkNorm::Plain,
        rope: Rope::from_config(head_dim, theta, false, c.rope_scaling.as_ref())?,
        tied: c.need(c.tie_word_embeddings.map(i32::from), "tie_word_embeddings")? != 0,
    };
    Decoder::load(w, &spec)
}
