//! Qwen2 / Qwen2.5: Llama's layout with biases on q, k and v (not o),
//! RoPE base 1,000,000 by default, tied or separate output layer. Mirrors
//! mlx_lm's `models/qwen2.py`.

use serde::Deserialize;
use serde_json::Value;

use crate::llm::config::Config;
use crate::llm::weights::Weights;
use crate::nn::QkNorm;
use crate::Result;

use super::llama::{decoder, sanitize};
use super::Architecture;

/// `config.json` of a Qwen2 model, with mlx_lm's defaults.
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
    /// Key/value heads.
    pub num_key_value_heads: i32,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    /// Rotate adjacent pairs instead of halves.
    #[serde(default)]
    pub rope_traditional: bool,
    /// Hugging Face `rope_scaling`.
    pub rope_scaling: Option<Value>,
    /// Output layer shares the embedding table.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn default_theta() -> f32 {
    1_000_000.0
}

fn yes() -> bool {
    true
}

/// Loads a Qwen2 model.
pub fn load(config: &Config, w: &mut Weights) -> Result<Box<dyn Architecture>> {
    let a: Args = config.parse()?;
    let args = super::llama::Args {
        hidden_size: a.hidden_size,
        num_hidden_layers: a.num_hidden_layers,
        intermediate_size: a.intermediate_size,
        num_attention_heads: a.num_attention_heads,
        rms_norm_eps: a.rms_norm_eps,
        vocab_size: a.vocab_size,
        head_dim: None,
        num_key_value_heads: Some(a.num_key_value_heads),
        attention_bias: true,
        mlp_bias: false,
        rope_theta: a.rope_theta,
        rope_traditional: a.rope_traditional,
        rope_scaling: a.rope_scaling,
        tie_word_embeddings: a.tie_word_embeddings,
        layer_types: None,
        sliding_window: None,
    };
    sanitize(&args, w);
    let windows = vec![None; args.num_hidden_layers.max(0) as usize];
    Ok(Box::new(decoder(
        &args,
        &windows,
        w,
        true,
        false,
        QkNorm::None,
    )?))
}
