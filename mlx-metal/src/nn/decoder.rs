//! The pre-norm decoder most families share (`h += attn(norm(h));
//! h += mlp(norm(h))`) between an embedding and an output layer. Families
//! build its blocks from their own configs; nothing here depends on one.

use crate::llm::weights::Weights;
use crate::nn::cache::{KvCache, Mask};
use std::collections::{BTreeMap, BTreeSet};

use crate::distributed::Group;
use crate::nn::parallel::{run_blocks, spread, Parallel, ParallelKind};
use crate::nn::params::{self, join, Module, Visitor};
use crate::nn::{Attention, Embedding, Linear, Mlp, RmsNorm};
use crate::{checkpoint, Array, Result};

/// One pre-norm transformer block.
#[derive(Debug, Clone)]
pub struct PreNormBlock {
    /// Self-attention.
    pub attn: Attention,
    /// The MLP.
    pub mlp: Mlp,
    /// Norm before attention (`input_layernorm`).
    pub input_norm: RmsNorm,
    /// Norm before the MLP (`post_attention_layernorm`).
    pub post_attn_norm: RmsNorm,
    /// Attends over a sliding window of this many positions.
    pub window: Option<i32>,
}

/// A transformer block that [`checkpointed`] can wrap: cloneable, with
/// named parameters, applied to hidden states with a mask and a cache.
pub trait Block: Module + Clone + 'static {
    /// Applies the block.
    fn forward(&self, h: &Array, mask: &Mask, cache: &mut KvCache) -> Result<Array>;

    /// Applies a block sharded by [`shard`](Self::shard): the ranks of
    /// `group` sum their attention and MLP outputs.
    fn forward_parallel(
        &self,
        h: &Array,
        mask: &Mask,
        cache: &mut KvCache,
        group: &Group,
    ) -> Result<Array>;

    /// Keeps rank `rank`'s share of the heads and MLP units of `size`.
    fn shard(&mut self, rank: i32, size: i32) -> Result<()>;

    /// The block's sliding window, if any.
    fn window(&self) -> Option<i32>;
}

impl Block for PreNormBlock {
    fn forward(&self, h: &Array, mask: &Mask, cache: &mut KvCache) -> Result<Array> {
        PreNormBlock::forward(self, h, mask, cache)
    }

    fn forward_parallel(
        &self,
        h: &Array,
        mask: &Mask,
        cache: &mut KvCache,
        group: &Group,
    ) -> Result<Array> {
        let a = self
            .attn
            .forward(&self.input_norm.forward(h)?, mask, cache)?;
        let h = h.add(&group.all_sum(&a)?)?;
        let m = self.mlp.forward(&self.post_attn_norm.forward(&h)?)?;
        h.add(&group.all_sum(&m)?)
    }

    fn shard(&mut self, rank: i32, size: i32) -> Result<()> {
        self.attn.shard(rank, size)?;
        self.mlp.shard(rank, size)
    }

    fn window(&self) -> Option<i32> {
        self.window
    }
}

impl PreNormBlock {
    /// Applies the block.
    pub fn forward(&self, h: &Array, mask: &Mask, cache: &mut KvCache) -> Result<Array> {
        let h = h.add(
            &self
                .attn
                .forward(&self.input_norm.forward(h)?, mask, cache)?,
        )?;
        h.add(&self.mlp.forward(&self.post_attn_norm.forward(&h)?)?)
    }
}

/// The sizes [`Decoder::load`] needs.
#[derive(Debug, Clone, Copy)]
pub struct DecoderShape {
    /// Number of blocks.
    pub layers: i32,
    /// Model width.
    pub hidden: i32,
    /// Vocabulary size.
    pub vocab: i32,
    /// Epsilon of the RMS norms.
    pub eps: f32,
    /// Output layer tied to the embedding.
    pub tied: bool,
}

/// Embedding, pre-norm blocks, final norm and output layer (the embedding
/// itself when tied).
#[derive(Debug)]
pub struct Decoder {
    /// Token embedding.
    pub embed: Embedding,
    /// The blocks.
    pub blocks: Vec<PreNormBlock>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Separate output layer, `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    /// When set, uncached forward passes (training) run each block under
    /// MLX's gradient checkpoint with the parameters named here as its
    /// inputs.
    pub checkpoint: Option<BTreeSet<String>>,
    /// Set when the blocks are spread over the ranks of a group.
    pub parallel: Option<Parallel>,
}

impl Decoder {
    /// Loads `model.embed_tokens`, `layers` blocks under `model.layers.N`
    /// (`input_layernorm`, `post_attention_layernorm`, and the attention and
    /// MLP that `block` loads for layer `N` from prefix `model.layers.N`),
    /// `model.norm` and, unless `tied`, `lm_head`.
    pub fn load(
        w: &mut Weights,
        shape: DecoderShape,
        mut block: impl FnMut(&mut Weights, &str, i32) -> Result<(Attention, Mlp, Option<i32>)>,
    ) -> Result<Decoder> {
        let DecoderShape {
            layers,
            hidden,
            vocab,
            eps,
            tied,
        } = shape;
        let embed = w.embedding("model.embed_tokens", vocab, hidden)?;
        let mut blocks = Vec::with_capacity(layers.max(0) as usize);
        for i in 0..layers {
            let p = format!("model.layers.{i}");
            let (attn, mlp, window) = block(w, &p, i)?;
            blocks.push(PreNormBlock {
                attn,
                mlp,
                input_norm: w.rms_norm(&format!("{p}.input_layernorm"), hidden, eps)?,
                post_attn_norm: w.rms_norm(
                    &format!("{p}.post_attention_layernorm"),
                    hidden,
                    eps,
                )?,
                window,
            });
        }
        let norm = w.rms_norm("model.norm", hidden, eps)?;
        let lm_head = if tied {
            None
        } else {
            Some(w.linear("lm_head", hidden, vocab, false)?)
        };
        Ok(Decoder {
            embed,
            blocks,
            norm,
            lm_head,
            checkpoint: None,
            parallel: None,
        })
    }

    /// Final hidden states `[B, L, hidden]` for ids `[B, L]`.
    pub fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
        let h = self.embed.forward(tokens)?;
        let h = run_blocks(
            &self.blocks,
            h,
            caches,
            self.parallel.as_ref(),
            self.checkpoint.as_ref(),
        )?;
        self.norm.forward(&h)
    }

    /// The output layer.
    pub fn logits(&self, h: &Array) -> Result<Array> {
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => self.embed.as_linear(h),
        }
    }

    /// One cache per block: rotating for windowed blocks.
    pub fn make_caches(&self) -> Vec<KvCache> {
        caches_for(self.blocks.iter().map(|b| b.window))
    }
}

/// Block `i` applied to `h` under MLX's gradient checkpoint: the block's
/// parameters that `names` lists are inputs of the checkpointed function
/// (so their gradients flow), everything else is a constant of it.
pub fn checkpointed<B: Block>(
    b: &B,
    i: usize,
    h: &Array,
    mask: &Mask,
    names: &BTreeSet<String>,
) -> Result<Array> {
    let prefix = format!("model.layers.{i}");
    let mut block = b.clone();
    let (keys, values): (Vec<String>, Vec<Array>) =
        params::named_where(&mut block, &prefix, &|n| names.contains(n))?
            .into_iter()
            .unzip();
    let rows = vec![0; h.dim(0)?.max(0) as usize];
    let mask = mask.clone();
    let f = move |x: &[Array]| -> Result<Vec<Array>> {
        let mut block = block.clone();
        let values: BTreeMap<String, Array> =
            keys.iter().cloned().zip(x[1..].iter().cloned()).collect();
        params::update(&mut block, &prefix, &values)?;
        let mut cache = KvCache::batch_transient(&rows, block.window());
        Ok(vec![Block::forward(&block, &x[0], &mask, &mut cache)?])
    };
    let mut inputs = vec![h.clone()];
    inputs.extend(values);
    let out = checkpoint(f)?.apply(&inputs)?;
    out.into_iter()
        .next()
        .ok_or_else(|| crate::Error::Closure("a checkpointed block returned nothing".into()))
}

/// Fresh caches for layers with these windows.
pub fn caches_for(windows: impl Iterator<Item = Option<i32>>) -> Vec<KvCache> {
    windows
        .map(|w| match w {
            Some(w) => KvCache::rotating(w),
            None => KvCache::standard(),
        })
        .collect()
}

/// The mask of each layer for `n` new queries: one per kind of layer (full
/// or each window), made from the first cache of that kind before this
/// step's update, as mlx_lm does.
pub fn window_masks(
    windows: impl Iterator<Item = Option<i32>>,
    caches: &[KvCache],
    n: i32,
) -> Result<Vec<Mask>> {
    let windows: Vec<Option<i32>> = windows.collect();
    let mut made: Vec<(Option<i32>, Mask)> = Vec::new();
    let mut out = Vec::with_capacity(windows.len());
    for (i, w) in windows.iter().enumerate() {
        let mask = match made.iter().find(|(mw, _)| mw == w) {
            Some((_, m)) => m.clone(),
            None => {
                let m = caches[i].make_mask(n, *w)?;
                made.push((*w, m.clone()));
                m
            }
        };
        out.push(mask);
    }
    Ok(out)
}

impl Module for PreNormBlock {
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        self.attn.visit(&join(prefix, "self_attn"), v)?;
        self.mlp.visit(&join(prefix, "mlp"), v)?;
        self.input_norm.visit(&join(prefix, "input_layernorm"), v)?;
        self.post_attn_norm
            .visit(&join(prefix, "post_attention_layernorm"), v)
    }
}

impl Module for Decoder {
    /// Names as mlx_lm's: `model.embed_tokens`, `model.layers.N`,
    /// `model.norm`, `lm_head` (under `prefix`, normally empty).
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()> {
        let model = join(prefix, "model");
        self.embed.visit(&join(&model, "embed_tokens"), v)?;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            b.visit(&format!("{model}.layers.{i}"), v)?;
        }
        self.norm.visit(&join(&model, "norm"), v)?;
        if let Some(head) = &mut self.lm_head {
            head.visit(&join(prefix, "lm_head"), v)?;
        }
        Ok(())
    }
}

impl crate::llm::models::Architecture for Decoder {
    fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
        Decoder::hidden(self, tokens, caches)
    }

    fn logits(&self, h: &Array) -> Result<Array> {
        Decoder::logits(self, h)
    }

    fn make_caches(&self) -> Vec<KvCache> {
        Decoder::make_caches(self)
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    fn module(&mut self) -> &mut dyn Module {
        self
    }

    fn set_checkpoint(&mut self, names: Option<BTreeSet<String>>) -> Result<()> {
        if names.is_some() && self.parallel.is_some() {
            return Err(crate::Error::Unsupported(
                "gradient checkpointing of a tensor-parallel model".into(),
            ));
        }
        self.checkpoint = names;
        Ok(())
    }

    fn pipelined(&self) -> bool {
        matches!(self.parallel, Some(crate::nn::Parallel::Pipeline { .. }))
    }

    fn spread(&self) -> bool {
        self.parallel.is_some()
    }

    fn parallelize(&mut self, group: Group, kind: ParallelKind) -> Result<()> {
        if self.parallel.is_some() {
            return Err(crate::Error::InvalidArgument(
                "the model is already spread over a group".into(),
            ));
        }
        self.parallel = Some(spread(&mut self.blocks, group, kind, Block::shard)?);
        Ok(())
    }
}
