//! The model families, one file each, behind one trait. Adding a family
//! means adding its file and one line to [`FAMILIES`].

mod gemma2;
mod gemma3_text;
mod llama;
mod mistral;
mod phi3;
mod qwen2;
mod qwen3;

use std::path::Path;

use inference::ComputeDtype;

use crate::llm::config::Config;
use crate::llm::dtype::DtypeChoice;
use crate::llm::weights::Weights;
use crate::nn::cache::KvCache;
use crate::nn::Module;
use crate::{Array, Error, Result};

/// A decoder-only language model. The same code runs one sequence or a
/// batch: the caches decide (see [`KvCache::batch`]).
pub trait Architecture: Send {
    /// Final hidden states `[B, L, hidden]` (after the last norm) for token
    /// ids `[B, L]`, reading and extending `caches` (one per layer).
    fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array>;

    /// The output layer: logits `[..., vocab]` of hidden states.
    fn logits(&self, hidden: &Array) -> Result<Array>;

    /// Logits `[B, L, vocab]` for token ids `[B, L]`.
    fn forward(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
        self.logits(&self.hidden(tokens, caches)?)
    }

    /// Reads prompt tokens `[B, L]` into `caches` and returns the arrays
    /// to evaluate for it: the caches' state and, when the blocks are
    /// spread over a pipeline (where the last stages feed no cache of the
    /// first ranks), the last position's final hidden state, so every rank
    /// takes part in the hand-over.
    fn prefill(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Vec<Array>> {
        let h = self.hidden(tokens, caches)?;
        let mut out: Vec<Array> = caches.iter().flat_map(|c| c.state()).cloned().collect();
        if self.pipelined() {
            let n = h.dim(1)?;
            out.push(h.slice_axis(1, n - 1, n)?);
        }
        Ok(out)
    }

    /// Whether the blocks are spread over the ranks of a pipeline.
    fn pipelined(&self) -> bool {
        false
    }

    /// Whether the blocks are spread over the ranks of a group (tensor or
    /// pipeline parallelism).
    fn spread(&self) -> bool {
        false
    }

    /// Fresh caches, one per layer.
    fn make_caches(&self) -> Vec<KvCache>;

    /// Fresh batch caches for rows left-padded by `left_padding`, one per
    /// layer (sliding-window layers keep their window).
    fn make_batch_caches(&self, left_padding: &[i32]) -> Vec<KvCache> {
        self.make_caches()
            .iter()
            .map(|c| KvCache::batch(left_padding, c.window()))
            .collect()
    }

    /// Number of transformer blocks.
    fn num_layers(&self) -> usize;

    /// The parameter tree, named as mlx_lm names it
    /// (`model.layers.N.self_attn.q_proj.weight`, ...).
    fn module(&mut self) -> &mut dyn Module;

    /// Runs every block of uncached (training) passes under MLX's gradient
    /// checkpoint, with the parameters `names` lists as its inputs; `None`
    /// turns it off. Families that do not support it refuse.
    fn set_checkpoint(&mut self, names: Option<std::collections::BTreeSet<String>>) -> Result<()> {
        match names {
            None => Ok(()),
            Some(_) => Err(Error::InvalidArgument(
                "gradient checkpointing is not supported for this architecture".into(),
            )),
        }
    }

    /// Spreads the blocks over the ranks of `group`: tensor parallelism
    /// (mlx_lm's `shard()`: each rank keeps its share of the attention
    /// heads and MLP units and the ranks sum each block's outputs) or
    /// pipeline parallelism (each rank keeps a run of whole blocks). Every
    /// rank must then run the same forward passes. Families that cannot be
    /// spread answer [`Unsupported`](Error::Unsupported).
    fn parallelize(
        &mut self,
        group: crate::distributed::Group,
        kind: crate::nn::ParallelKind,
    ) -> Result<()> {
        let _ = (group, kind);
        Err(Error::Unsupported(
            "parallel inference is not supported for this architecture".into(),
        ))
    }

    /// Logits `[B, L, vocab]` of whole sequences `[B, L]` with no cache
    /// kept (training and evaluation): causal attention over each row.
    fn forward_uncached(&self, tokens: &Array) -> Result<Array> {
        let rows = vec![0; tokens.dim(0)?.max(0) as usize];
        let mut caches: Vec<KvCache> = self
            .make_caches()
            .iter()
            .map(|c| KvCache::batch_transient(&rows, c.window()))
            .collect();
        self.forward(tokens, &mut caches)
    }
}

/// Builds a family's model from its config and weights.
pub type Loader = fn(&Config, &mut Weights) -> Result<Box<dyn Architecture>>;

/// Every `model_type` this crate runs natively, with its loader.
pub const FAMILIES: &[(&str, Loader)] = &[
    ("llama", llama::load),
    ("mistral", mistral::load),
    ("qwen2", qwen2::load),
    ("qwen3", qwen3::load),
    ("phi3", phi3::load),
    ("gemma2", gemma2::load),
    ("gemma3_text", gemma3_text::load),
];

/// The `model_type`s this crate runs natively (`gemma3` is read as its
/// `text_config`).
pub fn supported() -> Vec<&'static str> {
    let mut names: Vec<&str> = FAMILIES.iter().map(|(n, _)| *n).collect();
    names.push("gemma3");
    names
}

/// Whether `model_type` runs natively.
pub fn is_supported(model_type: &str) -> bool {
    supported().contains(&model_type)
}

/// Builds the architecture named by `config.model_type` from `dir`'s
/// weights, computing in the default dtype ([`ComputeDtype::Auto`]).
pub fn load(dir: &Path, config: &Config, config_path: &Path) -> Result<Box<dyn Architecture>> {
    Ok(load_as(dir, config, config_path, ComputeDtype::Auto)?.0)
}

/// [`load`] computing in the type `dtype` resolves to; also says which
/// type the weights are stored in and which one the model computes in.
pub fn load_as(
    dir: &Path,
    config: &Config,
    config_path: &Path,
    dtype: ComputeDtype,
) -> Result<(Box<dyn Architecture>, DtypeChoice)> {
    load_share(dir, config, config_path, dtype, None)
}

/// [`load_as`]; with `share = Some((rank, size))`, the layers that tensor
/// parallelism splits hold rank `rank`'s share of `size`, read from the
/// files alone (see [`Weights::read_shares`]); the model's
/// [`parallelize`](Architecture::parallelize) then keeps them as they are.
pub fn load_share(
    dir: &Path,
    config: &Config,
    config_path: &Path,
    dtype: ComputeDtype,
    share: Option<(i32, i32)>,
) -> Result<(Box<dyn Architecture>, DtypeChoice)> {
    if !is_supported(&config.model_type) {
        return Err(unsupported(config, config_path));
    }
    let strip = (config.model_type == "gemma3_text").then_some("language_model.");
    let mut weights = Weights::load(dir, config, strip)?;
    if let Some((rank, size)) = share {
        weights.read_shares(rank, size);
    }
    build_as(config, config_path, &mut weights, dtype)
}

fn unsupported(config: &Config, config_path: &Path) -> Error {
    Error::UnsupportedModel {
        path: config_path.to_path_buf(),
        model_type: config.model_type.clone(),
        supported: supported().join(", "),
    }
}

/// Builds the architecture named by `config.model_type` from `weights`,
/// computing in the default dtype; `config_path` names the config in errors.
pub fn build(
    config: &Config,
    config_path: &Path,
    weights: &mut Weights,
) -> Result<Box<dyn Architecture>> {
    Ok(build_as(config, config_path, weights, ComputeDtype::Auto)?.0)
}

/// [`build`] computing in the type `dtype` resolves to (applied to the
/// weights here, for directories and GGUF files alike); also says which
/// type the weights are stored in and which one the model computes in.
pub fn build_as(
    config: &Config,
    config_path: &Path,
    weights: &mut Weights,
    dtype: ComputeDtype,
) -> Result<(Box<dyn Architecture>, DtypeChoice)> {
    let (_, loader) = FAMILIES
        .iter()
        .find(|(name, _)| *name == config.model_type)
        .ok_or_else(|| unsupported(config, config_path))?;
    let choice = weights.apply_compute_dtype(dtype)?;
    let arch = loader(config, weights)?;
    weights.check_all_used()?;
    Ok((arch, choice))
}
