//! Gemma 3 (text): sliding-window and global layers by pattern with their
//! own RoPE bases, four `(1 + w)` RMS norms per block, embeddings scaled by
//! `sqrt(hidden)` rounded to bfloat16, `query_pre_attn_scalar`, q/k norms,
//! gelu-tanh MLP, logit soft-capping when the config sets it. Mirrors
//! mlx_lm's `models/gemma3_text.py`. The blocks are shared with Gemma 2.

use half::bf16;
use serde::Deserialize;
use serde_json::Value;

use crate::llm::config::Config;
use crate::llm::weights::Weights;
use crate::nn::activation::Activation;
use std::collections::BTreeSet;

use crate::distributed::Group;
use crate::nn::cache::{KvCache, Mask};
use crate::nn::parallel::{run_blocks, spread, Parallel, ParallelKind};
use crate::nn::params::{join, Module, Visitor};
use crate::nn::{
    caches_for, Attention, AttentionConfig, Block, Embedding, Heads, Linear, Mlp, QkNorm,
    QkvLayout, RmsNorm, Rope,
};
use crate::{Array, Dtype, Result};

use super::Architecture;

/// `config.json` of a Gemma 3 text model, with mlx_lm's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
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
    /// RoPE base of the global layers.
    pub rope_theta: f32,
    /// RoPE base of the sliding-window layers.
    pub rope_local_base_freq: f32,
    /// Attention scale is `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f32,
    /// Window of the local layers.
    pub sliding_window: i32,
    /// Every n-th layer is global.
    pub sliding_window_pattern: i32,
    /// Hugging Face `rope_scaling` of the global layers.
    pub rope_scaling: Option<Value>,
    /// Soft-cap of the output logits, when set.
    pub final_logit_softcapping: Option<f32>,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            hidden_size: 1152,
            num_hidden_layers: 26,
            intermediate_size: 6912,
            num_attention_heads: 4,
            head_dim: 256,
            rms_norm_eps: 1e-6,
            vocab_size: 262144,
            num_key_value_heads: 1,
            rope_theta: 1_000_000.0,
            rope_local_base_freq: 10_000.0,
            query_pre_attn_scalar: 256.0,
            sliding_window: 512,
            sliding_window_pattern: 6,
            rope_scaling: None,
            final_logit_softcapping: None,
        }
    }
}

/// A Gemma block: attention and MLP, each between two `(1 + w)` norms.
#[derive(Debug, Clone)]
pub struct GemmaBlock {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    pre_ff_norm: RmsNorm,
    post_ff_norm: RmsNorm,
    window: Option<i32>,
    /// Float16 residual sums taken in float32 and clipped (Gemma 3).
    clip_f16: bool,
}

impl GemmaBlock {
    /// The block, with `sum` applied to the attention and MLP outputs
    /// before their post-norms (the ranks' sum when sharded).
    fn apply(
        &self,
        h: &Array,
        mask: &Mask,
        cache: &mut KvCache,
        sum: impl Fn(Array) -> Result<Array>,
    ) -> Result<Array> {
        let r = sum(self
            .attn
            .forward(&self.input_norm.forward(h)?, mask, cache)?)?;
        let h = residual(h, &self.post_attn_norm.forward(&r)?, self.clip_f16)?;
        let r = sum(self.mlp.forward(&self.pre_ff_norm.forward(&h)?)?)?;
        residual(&h, &self.post_ff_norm.forward(&r)?, self.clip_f16)
    }
}

impl Block for GemmaBlock {
    fn forward(&self, h: &Array, mask: &Mask, cache: &mut KvCache) -> Result<Array> {
        self.apply(h, mask, cache, Ok)
    }

    fn forward_parallel(
        &self,
        h: &Array,
        mask: &Mask,
        cache: &mut KvCache,
        group: &Group,
    ) -> Result<Array> {
        self.apply(h, mask, cache, |x| group.all_sum(&x))
    }

    fn shard(&mut self, rank: i32, size: i32) -> Result<()> {
        self.attn.shard(rank, size)?;
        self.mlp.shard(rank, size)
    }

    fn window(&self) -> Option<i32> {
        self.window
    }
}

impl Module for GemmaBlock {
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        self.attn.visit(&join(prefix, "self_attn"), v)?;
        self.mlp.visit(&join(prefix, "mlp"), v)?;
        self.input_norm.visit(&join(prefix, "input_layernorm"), v)?;
        self.post_attn_norm
            .visit(&join(prefix, "post_attention_layernorm"), v)?;
        self.pre_ff_norm
            .visit(&join(prefix, "pre_feedforward_layernorm"), v)?;
        self.post_ff_norm
            .visit(&join(prefix, "post_feedforward_layernorm"), v)
    }
}

/// Embedding, Gemma blocks and the final norm (Gemma 2 and 3).
pub struct GemmaBlocks {
    /// Token embedding (also the output layer unless `lm_head` is set).
    pub embed: Embedding,
    /// The blocks.
    pub blocks: Vec<GemmaBlock>,
    norm: RmsNorm,
    /// Model width.
    pub hidden: i32,
    /// When set, uncached forward passes (training) run each block under
    /// MLX's gradient checkpoint with the parameters named here as its
    /// inputs.
    pub checkpoint: Option<BTreeSet<String>>,
    /// Set when the blocks are spread over the ranks of a group.
    pub parallel: Option<Parallel>,
}

/// `x + y`; with `clip_f16` in float16 the sum is taken in float32 and
/// clipped to the f16 range, as Gemma 3 needs.
fn residual(x: &Array, y: &Array, clip_f16: bool) -> Result<Array> {
    if !clip_f16 || x.dtype() != Dtype::Float16 {
        return x.add(y);
    }
    let bound = Array::scalar(65504.0f32);
    let sum = x.astype(Dtype::Float32)?.add(&y.astype(Dtype::Float32)?)?;
    sum.minimum(&bound)?
        .maximum(&bound.negative()?)?
        .astype(Dtype::Float16)
}

/// `cap * tanh(x / cap)`.
pub fn softcap(x: &Array, cap: f32) -> Result<Array> {
    x.mul_scalar(1.0 / cap)?.tanh()?.mul_scalar(cap)
}

impl GemmaBlocks {
    /// Loads `model.embed_tokens`, the blocks (attention config and window
    /// of layer `i` from `layer(i)`) and `model.norm`; `clip_f16` as
    /// Gemma 3's residuals need.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &mut Weights,
        clip_f16: bool,
        layers: i32,
        hidden: i32,
        inter: i32,
        vocab: i32,
        eps: f32,
        layer: impl Fn(i32) -> (AttentionConfig, Option<i32>),
    ) -> Result<GemmaBlocks> {
        let embed = w.embedding("model.embed_tokens", vocab, hidden)?;
        let mut blocks = Vec::with_capacity(layers.max(0) as usize);
        for i in 0..layers {
            let p = format!("model.layers.{i}");
            let (attention, window) = layer(i);
            let norm = |w: &mut Weights, name: &str| {
                w.rms_norm_offset_one(&format!("{p}.{name}"), hidden, eps)
            };
            blocks.push(GemmaBlock {
                attn: Attention::load(w, &format!("{p}.self_attn"), &attention)?,
                mlp: Mlp::load(
                    w,
                    &format!("{p}.mlp"),
                    hidden,
                    inter,
                    false,
                    Activation::GeluApprox,
                )?,
                input_norm: norm(w, "input_layernorm")?,
                post_attn_norm: norm(w, "post_attention_layernorm")?,
                pre_ff_norm: norm(w, "pre_feedforward_layernorm")?,
                post_ff_norm: norm(w, "post_feedforward_layernorm")?,
                window,
                clip_f16,
            });
        }
        Ok(GemmaBlocks {
            embed,
            blocks,
            norm: w.rms_norm_offset_one("model.norm", hidden, eps)?,
            hidden,
            checkpoint: None,
            parallel: None,
        })
    }

    /// Runs the (already scaled) embeddings `h` through the blocks and the
    /// final norm.
    pub fn forward(&self, h: Array, caches: &mut [KvCache]) -> Result<Array> {
        let h = run_blocks(
            &self.blocks,
            h,
            caches,
            self.parallel.as_ref(),
            self.checkpoint.as_ref(),
        )?;
        self.norm.forward(&h)
    }

    /// Spreads the blocks over `group` (see
    /// [`Architecture::parallelize`]).
    pub fn parallelize(&mut self, group: Group, kind: ParallelKind) -> Result<()> {
        if self.parallel.is_some() {
            return Err(crate::Error::InvalidArgument(
                "the model is already spread over a group".into(),
            ));
        }
        if self.checkpoint.is_some() {
            return Err(crate::Error::Unsupported(
                "gradient checkpointing of a parallel model".into(),
            ));
        }
        self.parallel = Some(spread(&mut self.blocks, group, kind, Block::shard)?);
        Ok(())
    }

    /// One cache per block: rotating for windowed blocks.
    pub fn make_caches(&self) -> Vec<KvCache> {
        caches_for(self.blocks.iter().map(|b| b.window))
    }
}

/// A Gemma 3 text model.
pub struct Gemma3Text {
    blocks: GemmaBlocks,
    lm_head: Option<Linear>,
    softcap: Option<f32>,
}

/// Drops the vision tower of a multimodal checkpoint (the prefix
/// `language_model.` is stripped when the weights are read).
pub fn sanitize(w: &mut Weights) {
    w.discard(|k| k.starts_with("vision_tower") || k.starts_with("multi_modal_projector"));
}

/// Loads a Gemma 3 text model.
pub fn load(config: &Config, w: &mut Weights) -> Result<Box<dyn Architecture>> {
    let a: Args = config.parse()?;
    sanitize(w);
    let heads = Heads {
        hidden: a.hidden_size,
        heads: a.num_attention_heads,
        kv_heads: a.num_key_value_heads,
        head_dim: a.head_dim,
    };
    let global_rope = Rope::from_config(a.head_dim, a.rope_theta, false, a.rope_scaling.as_ref())?;
    let local_rope = Rope::new(a.head_dim, a.rope_local_base_freq, false, 1.0);
    let pattern = a.sliding_window_pattern.max(1);
    let blocks = GemmaBlocks::load(
        w,
        true,
        a.num_hidden_layers,
        a.hidden_size,
        a.intermediate_size,
        a.vocab_size,
        a.rms_norm_eps,
        |i| {
            let sliding = (i + 1) % pattern != 0;
            let attention = AttentionConfig {
                heads,
                layout: QkvLayout::Separate,
                qkv_bias: false,
                o_bias: false,
                qk_norm: QkNorm::OffsetOne,
                eps: a.rms_norm_eps,
                rope: if sliding {
                    local_rope.clone()
                } else {
                    global_rope.clone()
                },
                scale: a.query_pre_attn_scalar.powf(-0.5),
                softcap: None,
            };
            (attention, sliding.then_some(a.sliding_window))
        },
    )?;
    // Tied unless the weights carry an output layer.
    let lm_head = if w.has("lm_head.weight") {
        Some(w.linear("lm_head", a.hidden_size, a.vocab_size, false)?)
    } else {
        None
    };
    Ok(Box::new(Gemma3Text {
        blocks,
        lm_head,
        softcap: a.final_logit_softcapping,
    }))
}

impl Architecture for Gemma3Text {
    fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
        let h = self.blocks.embed.forward(tokens)?;
        // sqrt(hidden) rounded to bfloat16, as the reference does
        let factor = bf16::from_f32((self.blocks.hidden as f32).sqrt());
        let h = h.multiply(&Array::scalar(factor).astype(h.dtype())?)?;
        self.blocks.forward(h, caches)
    }

    fn set_checkpoint(&mut self, names: Option<BTreeSet<String>>) -> Result<()> {
        self.blocks.checkpoint = names;
        Ok(())
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

    fn parallelize(&mut self, group: Group, kind: ParallelKind) -> Result<()> {
        self.blocks.parallelize(group, kind)
    }

    fn logits(&self, h: &Array) -> Result<Array> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(h)?,
            None => self.blocks.embed.as_linear(h)?,
        };
        match self.softcap {
            Some(cap) => softcap(&logits, cap),
            None => Ok(logits),
        }
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

impl Module for GemmaBlocks {
    /// Names as mlx_lm's (`model.embed_tokens`, `model.layers.N`, ...).
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        let model = join(prefix, "model");
        self.embed.visit(&join(&model, "embed_tokens"), v)?;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            b.visit(&format!("{model}.layers.{i}"), v)?;
        }
        self.norm.visit(&join(&model, "norm"), v)
    }
}

impl Module for Gemma3Text {
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        self.blocks.visit(prefix, v)?;
        if let Some(head) = &mut self.lm_head {
            head.visit(&join(prefix, "lm_head"), v)?;
        }
        Ok(())
    }
}
