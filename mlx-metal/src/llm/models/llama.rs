//! Llama (2, 3, 3.1, 3.2, SmolLM): RMS norms, grouped-query attention,
//! SwiGLU MLP, RoPE with optional `linear` / `llama3` scaling, sliding
//! windows on the layers `layer_types` marks. Mirrors mlx_lm's
//! `models/llama.py`.

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

/// `config.json` of a Llama model, with mlx_lm's defaults.
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
    /// Per-head width (default `hidden_size / num_attention_heads`).
    pub head_dim: Option<i32>,
    /// Key/value heads (default: as many as query heads).
    pub num_key_value_heads: Option<i32>,
    /// Biases on q/k/v/o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP.
    #[serde(default)]
    pub mlp_bias: bool,
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
    /// `full_attention` / `sliding_attention` per layer.
    pub layer_types: Option<Vec<String>>,
    /// Window of the sliding layers.
    pub sliding_window: Option<i32>,
}

fn default_theta() -> f32 {
    10000.0
}

fn yes() -> bool {
    true
}

impl Args {
    /// Per-head width.
    pub fn head_dim(&self) -> i32 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The window of each layer (`None`: full attention).
    pub fn windows(&self, config: &Config) -> Result<Vec<Option<i32>>> {
        let n = self.num_hidden_layers.max(0) as usize;
        let Some(types) = &self.layer_types else {
            return Ok(vec![None; n]);
        };
        if types.len() != n {
            return Err(Error::File {
                path: config.path.clone(),
                message: format!(
                    "key `layer_types` lists {} layers, num_hidden_layers is {n}",
                    types.len()
                ),
            });
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(None),
                "sliding_attention" => self.sliding_window.map(Some).ok_or_else(|| Error::File {
                    path: config.path.clone(),
                    message: "key `sliding_window` is needed by `sliding_attention` layers".into(),
                }),
                other => Err(Error::File {
                    path: config.path.clone(),
                    message: format!("key `layer_types`: unknown layer type `{other}`"),
                }),
            })
            .collect()
    }
}

/// Drops what the model does not use: precomputed rotary frequencies and a
/// duplicate output layer when tied.
pub fn sanitize(args: &Args, w: &mut Weights) {
    w.discard(|k| k.contains("self_attn.rotary_emb.inv_freq"));
    if args.tie_word_embeddings {
        w.discard(|k| k.starts_with("lm_head."));
    }
}

/// Builds the pre-norm decoder of a Llama-shaped model: `qkv_bias` /
/// `o_bias` and `qk_norm` are what the families built on it differ in.
pub fn decoder(
    args: &Args,
    windows: &[Option<i32>],
    w: &mut Weights,
    qkv_bias: bool,
    o_bias: bool,
    qk_norm: QkNorm,
) -> Result<Decoder> {
    let head_dim = args.head_dim();
    let attention = AttentionConfig {
        heads: Heads {
            hidden: args.hidden_size,
            heads: args.num_attention_heads,
            kv_heads: args.num_key_value_heads.unwrap_or(args.num_attention_heads),
            head_dim,
        },
        layout: QkvLayout::Separate,
        qkv_bias,
        o_bias,
        qk_norm,
        eps: args.rms_norm_eps,
        rope: Rope::from_config(
            head_dim,
            args.rope_theta,
            args.rope_traditional,
            args.rope_scaling.as_ref(),
        )?,
        scale: (head_dim as f32).powf(-0.5),
        softcap: None,
    };
    let shape = DecoderShape {
        layers: args.num_hidden_layers,
        hidden: args.hidden_size,
        vocab: args.vocab_size,
        eps: args.rms_norm_eps,
        tied: args.tie_word_embeddings,
    };
    Decoder::load(w, shape, |w, prefix, i| {
        Ok((
            Attention::load(w, &format!("{prefix}.self_attn"), &attention)?,
            Mlp::load(
                w,
                &format!("{prefix}.mlp"),
                args.hidden_size,
                args.intermediate_size,
                args.mlp_bias,
                Activation::Silu,
            )?,
            windows[i as usize],
        ))
    })
}

/// Loads a Llama model.
pub fn load(config: &Config, w: &mut Weights) -> Result<Box<dyn Architecture>> {
    let args: Args = config.parse()?;
    let windows = args.windows(config)?;
    sanitize(&args, w);
    let bias = args.attention_bias;
    Ok(Box::new(decoder(
        &args,
        &windows,
        w,
        bias,
        bias,
        QkNorm::None,
    )?))
}
