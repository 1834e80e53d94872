//! Gemma 2: four `(1 + w)` RMS norms per block, embeddings scaled by
//! `sqrt(hidden)`, gelu-tanh MLP, attention-logit soft-capping (so the
//! attention is written out), final-logit soft-capping,
//! `query_pre_attn_scalar`, and a sliding window on every other layer.
//! Mirrors mlx_lm's `models/gemma2.py`, which attends over the whole
//! context on every layer: the two agree while the context fits the window
//! (4096 positions by default).

use serde::Deserialize;

use crate::llm::config::Config;
use crate::llm::weights::Weights;
use crate::nn::cache::KvCache;
use crate::nn::{AttentionConfig, Heads, QkNorm, QkvLayout, Rope};
use crate::{Array, Result};

use super::gemma3_text::{softcap, GemmaBlocks};
use super::Architecture;

/// `config.json` of a Gemma 2 model, with mlx_lm's defaults.
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
    /// Per-head width.
    pub head_dim: i32,
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
    /// Cap of the attention logits.
    #[serde(default = "default_attn_cap")]
    pub attn_logit_softcapping: f32,
    /// Cap of the output logits.
    #[serde(default = "default_final_cap")]
    pub final_logit_softcapping: f32,
    /// Attention scale is `query_pre_attn_scalar^-0.5`.
    #[serde(default = "default_scalar")]
    pub query_pre_attn_scalar: f32,
    /// Window of the sliding layers (the even ones).
    #[serde(default = "default_window")]
    pub sliding_window: i32,
}

fn default_theta() -> f32 {
    10000.0
}
fn default_attn_cap() -> f32 {
    50.0
}
fn default_final_cap() -> f32 {
    30.0
}
fn default_scalar() -> f32 {
    144.0
}
fn default_window() -> i32 {
    4096
}

/// A Gemma 2 model.
pub struct Gemma2 {
    blocks: GemmaBlocks,
    final_cap: f32,
}

/// Loads a Gemma 2 model.
pub fn load(config: &Config, w: &mut Weights) -> Result<Box<dyn Architecture>> {
    let args: Args = config.parse()?;
    let attention = AttentionConfig {
        heads: Heads {
            hidden: args.hidden_size,
            heads: args.num_attention_heads,
            kv_heads: args.num_key_value_heads,
            head_dim: args.head_dim,
        },
        layout: QkvLayout::Separate,
        qkv_bias: false,
        o_bias: false,
        qk_norm: QkNorm::None,
        eps: args.rms_norm_eps,
        rope: Rope::new(args.head_dim, args.rope_theta, args.rope_traditional, 1.0),
        scale: args.query_pre_attn_scalar.powf(-0.5),
        softcap: Some(args.attn_logit_softcapping),
    };
    let blocks = GemmaBlocks::load(
        w,
        false,
        args.num_hidden_layers,
        args.hidden_size,
        args.intermediate_size,
        args.vocab_size,
        args.rms_norm_eps,
        |i| {
            let sliding = i % 2 == 0;
            (attention.clone(), sliding.then_some(args.sliding_window))
        },
    )?;
    Ok(Box::new(Gemma2 {
        blocks,
        final_cap: args.final_logit_softcapping,
    }))
}

impl Architecture for Gemma2 {
    fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
        let h = self.blocks.embed.forward(tokens)?;
        let factor = Array::scalar((self.blocks.hidden as f32).sqrt()).astype(h.dtype())?;
        self.blocks.forward(h.multiply(&factor)?, caches)
    }

    fn pipelined(&self) -> bool {
        matches!(
            self.blocks.parallel,
            Some(crate::nn::Parallel::Pipeline { .. })
        )
    }

    fn spread(&self) -> bool {
        self.blocks.parallel.is_some()
    }

    fn parallelize(
        &mut self,
        group: crate::distributed::Group,
        kind: crate::nn::ParallelKind,
    ) -> Result<()> {
        self.blocks.parallelize(group, kind)
    }

    fn set_checkpoint(&mut self, names: Option<std::collections::BTreeSet<String>>) -> Result<()> {
        self.blocks.checkpoint = names;
        Ok(())
    }

    fn logits(&self, h: &Array) -> Result<Array> {
        softcap(&self.blocks.embed.as_linear(h)?, self.final_cap)
    }

    fn make_caches(&self) -> Vec<KvCache> {
        self.blocks.make_caches()
    }

    fn num_layers(&self) -> usize {
        self.blocks.blocks.len()
    }

    fn module(&mut self) -> &mut dyn crate::nn::Module {
        self
    }
}

impl crate::nn::Module for Gemma2 {
    fn visit(&mut self, prefix: &str, v: &mut dyn crate::nn::Visitor) -> Result<()> {
        self.blocks.visit(prefix, v)
    }
}
