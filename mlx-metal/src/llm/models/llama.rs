//! Llama (2, 3, 3.1, 3.2): RMSNorm, grouped-query attention, SwiGLU MLP,
//! RoPE with optional Llama-3 frequency scaling.

use crate::llm::config::Config;
use crate::llm::layers::{AttentionShape, Decoder, DecoderSpec, QkNorm};
use crate::llm::weights::Weights;
use crate::nn::Rope;
use crate::{Error, Result};

/// Builds a Llama model from `config` and the weights.
pub fn load(c: &Config, w: &mut Weights) -> Result<Decoder> {
    if c.layer_types
        .as_ref()
        .is_some_and(|t| t.iter().any(|x| x != "full_attention"))
    {
        return Err(Error::InvalidArgument(
            "llama with sliding-window layers is not supported".into(),
        ));
    }
    let hidden = c.need(c.hidden_size, "hidden_size")?;
    let heads = c.need(c.num_attention_heads, "num_attention_heads")?;
    let head_dim = c.head_dim.unwrap_or(hidden / heads);
    w.discard(|k| k.contains("self_attn.rotary_emb.inv_freq"));
    let spec = DecoderSpec {
        shape: AttentionShape {
            hidden,
            heads,
            kv_heads: c.num_key_value_heads.unwrap_or(heads),
            head_dim,
        },
        layers: c.need(c.num_hidden_layers, "num_hidden_layers")?,
        intermediate: c.need(c.intermediate_size, "intermediate_size")?,
        vocab: c.need(c.vocab_size, "vocab_size")?,
        eps: c.rms_norm_eps.unwrap_or(1e-5),
        attention_bias: c.attention_bias,
        mlp_bias: c.mlp_bias,
        qk_norm: QkNorm::None,
        rope: Rope::from_config(
            head_dim,
            c.rope_theta.unwrap_or(10000.0),
            c.rope_traditional,
            c.rope_scaling.as_ref(),
        )?,
        tied: c.tie_word_embeddings.unwrap_or(true),
    };
    Decoder::load(w, &spec)
}
