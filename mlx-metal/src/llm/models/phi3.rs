//! Phi-3: fused `qkv_proj` and `gate_up_proj`, RoPE over a
//! `partial_rotary_factor` of each head, and `su` / `longrope` scaling
//! (mlx_lm applies the long factors). Mirrors mlx_lm's `models/phi3.py`.

use serde::Deserialize;
use serde_json::Value;

use crate::llm::config::Config;
use crate::llm::weights::Weights;
use crate::nn::activation::Activation;
use crate::nn::{
    Attention, AttentionConfig, Decoder, DecoderShape, Heads, Mlp, QkNorm, QkvLayout, Rope,
};
use crate::{Error, Result};

use super::Architecture;

/// `config.json` of a Phi-3 model, with mlx_lm's defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Args {
    /// Width of the residual stream.
    pub hidden_size: i32,
    /// Transformer blocks.
    pub num_hidden_layers: i32,
    /// Width of the MLP.
    pub intermediate_size: i32,
    /// Query heads.
    pub num_attention_heads: i32,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f32,
    /// Vocabulary size.
    pub vocab_size: i32,
    /// Key/value heads (default: as many as query heads).
    pub num_key_value_heads: Option<i32>,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    /// Rotate adjacent pairs instead of halves.
    #[serde(default)]
    pub rope_traditional: bool,
    /// `{"type": "su" | "longrope" | "linear", "long_factor", "short_factor", "factor"}`.
    pub rope_scaling: Option<Value>,
    /// Share of each head that is rotated.
    #[serde(default = "one")]
    pub partial_rotary_factor: f32,
    /// Context length after extension.
    #[serde(default = "default_max")]
    pub max_position_embeddings: i32,
    /// Context length before extension.
    #[serde(default = "default_original")]
    pub original_max_position_embeddings: i32,
    /// Output layer shares the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_theta() -> f32 {
    10000.0
}
fn one() -> f32 {
    1.0
}
fn default_max() -> i32 {
    131072
}
fn default_original() -> i32 {
    4096
}

/// The rotary embedding the config asks for.
fn rope(args: &Args, dims: i32, config: &Config) -> Result<Rope> {
    let bad = |message: String| Error::File {
        path: config.path.clone(),
        message,
    };
    let Some(scaling) = args.rope_scaling.as_ref().filter(|v| !v.is_null()) else {
        return Ok(Rope::new(dims, args.rope_theta, args.rope_traditional, 1.0));
    };
    let kind = scaling.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "su" | "longrope" => {
            let long: Vec<f32> = scaling
                .get("long_factor")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect())
                .ok_or_else(|| {
                    bad("key `rope_scaling.long_factor` must be a list of numbers".into())
                })?;
            Rope::long_rope(
                dims,
                args.rope_theta,
                &long,
                args.max_position_embeddings as f32,
                args.original_max_position_embeddings as f32,
            )
            .map_err(|e| bad(e.to_string()))
        }
        "linear" => {
            let factor = scaling
                .get("factor")
                .and_then(Value::as_f64)
                .ok_or_else(|| bad("key `rope_scaling.factor` must be a number".into()))?;
            Ok(Rope::new(
                dims,
                args.rope_theta,
                args.rope_traditional,
                1.0 / factor as f32,
            ))
        }
        other => Err(bad(format!(
            "key `rope_scaling.type`: `{other}` is not supported (su, longrope, linear are)"
        ))),
    }
}

/// Loads a Phi-3 model.
pub fn load(config: &Config, w: &mut Weights) -> Result<Box<dyn Architecture>> {
    let args: Args = config.parse()?;
    let head_dim = args.hidden_size / args.num_attention_heads.max(1);
    let rope_dims = (head_dim as f32 * args.partial_rotary_factor) as i32;
    let attention = AttentionConfig {
        heads: Heads {
            hidden: args.hidden_size,
            heads: args.num_attention_heads,
            kv_heads: args.num_key_value_heads.unwrap_or(args.num_attention_heads),
            head_dim,
        },
        layout: QkvLayout::Fused,
        qkv_bias: false,
        o_bias: false,
        qk_norm: QkNorm::None,
        eps: args.rms_norm_eps,
        rope: rope(&args, rope_dims, config)?,
        scale: (head_dim as f32).powf(-0.5),
        softcap: None,
    };
    if args.tie_word_embeddings {
        w.discard(|k| k.starts_with("lm_head."));
    }
    let shape = DecoderShape {
        layers: args.num_hidden_layers,
        hidden: args.hidden_size,
        vocab: args.vocab_size,
        eps: args.rms_norm_eps,
        tied: args.tie_word_embeddings,
    };
    let decoder = Decoder::load(w, shape, |w, prefix, _| {
        Ok((
            Attention::load(w, &format!("{prefix}.self_attn"), &attention)?,
            Mlp::load_fused(
                w,
                &format!("{prefix}.mlp"),
                args.hidden_size,
                args.intermediate_size,
                Activation::Silu,
            )?,
            None,
        ))
    })?;
    Ok(Box::new(decoder))
}
