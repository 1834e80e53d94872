//! Which layers get adapters and what is trainable, as mlx_lm's
//! `linear_to_lora_layers` and `train_model` decide it.

use serde::{Deserialize, Serialize};

use crate::llm::models::Architecture;
use crate::nn::params::{Trainable, Visitor};
use crate::nn::{Linear, LoraLinear, LoraParams};
use crate::{Array, Dtype, Error, Result};

/// `--fine-tune-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FineTuneType {
    /// Low-rank adapters on the chosen linears.
    #[default]
    Lora,
    /// LoRA plus a learned per-row magnitude (DoRA).
    Dora,
    /// Every floating-point parameter of the last `num_layers` blocks.
    Full,
}

impl std::str::FromStr for FineTuneType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lora" => Ok(FineTuneType::Lora),
            "dora" => Ok(FineTuneType::Dora),
            "full" => Ok(FineTuneType::Full),
            other => Err(Error::InvalidArgument(format!(
                "unknown fine-tune type `{other}` (lora, dora, full)"
            ))),
        }
    }
}

impl std::fmt::Display for FineTuneType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FineTuneType::Lora => "lora",
            FineTuneType::Dora => "dora",
            FineTuneType::Full => "full",
        })
    }
}

/// mlx_lm's `lora_parameters` block of `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraParameters {
    /// Rank.
    pub rank: i32,
    /// Multiplier of the low-rank update.
    pub scale: f32,
    /// Dropout on the adapter input.
    #[serde(default)]
    pub dropout: f32,
    /// Linears (names relative to a block, e.g. `self_attn.q_proj`) that
    /// get adapters; `None`: every linear of the block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

impl Default for LoraParameters {
    fn default() -> Self {
        let d = LoraParams::default();
        LoraParameters {
            rank: d.rank,
            scale: d.scale,
            dropout: d.dropout,
            keys: None,
        }
    }
}

/// What an adapter is: the part of `adapter_config.json` that shapes the
/// model (the rest records how it was trained).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// LoRA, DoRA or full.
    #[serde(default)]
    pub fine_tune_type: FineTuneType,
    /// Adapted blocks, counted from the last; `-1` (or 0): all.
    pub num_layers: i32,
    /// Rank, scale, dropout, keys (absent for full fine-tuning).
    #[serde(default)]
    pub lora_parameters: Option<LoraParameters>,
}

impl Default for AdapterConfig {
    /// mlx_lm's defaults: LoRA, 16 blocks, rank 8, scale 20, dropout 0.
    fn default() -> Self {
        AdapterConfig {
            fine_tune_type: FineTuneType::Lora,
            num_layers: 16,
            lora_parameters: Some(LoraParameters::default()),
        }
    }
}

/// The index of the first adapted block among `n` for `num_layers`
/// (Python's `layers[-max(num_layers, 0):]`: 0 and negatives mean all).
pub fn first_adapted(n: usize, num_layers: i32) -> usize {
    if num_layers <= 0 {
        0
    } else {
        n.saturating_sub(num_layers as usize)
    }
}

/// Splits `model.layers.N.rest` into `(N, rest)`.
pub fn block_of(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

struct Attach<'a> {
    first: usize,
    keys: Option<&'a [String]>,
    params: LoraParams,
    dora: bool,
    attached: usize,
}

impl Visitor for Attach<'_> {
    fn array(&mut self, _: &str, _: &mut Array) -> Result<()> {
        Ok(())
    }

    fn linear(&mut self, name: &str, layer: &mut Linear) -> Result<bool> {
        let Some((block, rest)) = block_of(name) else {
            return Ok(false);
        };
        let wanted =
            block >= self.first && self.keys.is_none_or(|keys| keys.iter().any(|k| k == rest));
        if !wanted || matches!(layer, Linear::Lora(_)) {
            return Ok(false);
        }
        let base = std::mem::replace(
            layer,
            Linear::Dense {
                weight: Array::scalar(0.0f32),
                bias: None,
            },
        );
        *layer = Linear::Lora(Box::new(LoraLinear::new(base, self.params, self.dora)?));
        self.attached += 1;
        Ok(true)
    }
}

/// Attaches adapters to `arch` as `config` says and returns what is
/// trainable: the adapter weights (`lora_a`, `lora_b`, DoRA's `m`) for
/// LoRA/DoRA, every floating-point parameter of the last `num_layers`
/// blocks for full fine-tuning. New adapter weights come from MLX's global
/// random state (seed it with [`crate::random::seed`]). A `num_layers`
/// above the model's block count adapts every block, as mlx_lm's loader
/// does (training checks it: see [`check_num_layers`]).
pub fn attach(arch: &mut dyn Architecture, config: &AdapterConfig) -> Result<Trainable> {
    let n = arch.num_layers();
    let first = first_adapted(n, config.num_layers);
    let mut trainable = Trainable::none();
    match config.fine_tune_type {
        FineTuneType::Full => {
            let float_names = crate::nn::params::named(arch.module(), "")?
                .into_iter()
                .filter(|(_, a)| a.dtype().is_float())
                .map(|(k, _)| k)
                .collect::<std::collections::BTreeSet<_>>();
            trainable.unfreeze(arch.module(), |name| {
                float_names.contains(name)
                    && block_of(name).is_some_and(|(b, rest)| {
                        b >= first && !rest.ends_with(".scales") && !rest.ends_with(".biases")
                    })
            })?;
        }
        FineTuneType::Lora | FineTuneType::Dora => {
            let lp = config.lora_parameters.clone().unwrap_or_default();
            let mut v = Attach {
                first,
                keys: lp.keys.as_deref(),
                params: LoraParams {
                    rank: lp.rank,
                    scale: lp.scale,
                    dropout: lp.dropout,
                },
                dora: config.fine_tune_type == FineTuneType::Dora,
                attached: 0,
            };
            arch.module().visit("", &mut v)?;
            if v.attached == 0 {
                return Err(Error::InvalidArgument(
                    "no linear layer matched the adapter keys".into(),
                ));
            }
            trainable.unfreeze(arch.module(), is_adapter_leaf)?;
        }
    }
    Ok(trainable)
}

/// Whether `name` is an adapter weight (`lora_a`, `lora_b` or DoRA's `m`),
/// as mlx_lm's `load_adapters` decides.
pub fn is_adapter_leaf(name: &str) -> bool {
    matches!(name.rsplit('.').next(), Some("lora_a" | "lora_b" | "m"))
}

struct SetTraining(bool);

impl Visitor for SetTraining {
    fn array(&mut self, _: &str, _: &mut Array) -> Result<()> {
        Ok(())
    }

    fn linear(&mut self, _: &str, layer: &mut Linear) -> Result<bool> {
        if let Linear::Lora(l) = layer {
            l.training = self.0;
        }
        Ok(false)
    }
}

struct FindDropout(bool);

impl Visitor for FindDropout {
    fn array(&mut self, _: &str, _: &mut Array) -> Result<()> {
        Ok(())
    }

    fn linear(&mut self, _: &str, layer: &mut Linear) -> Result<bool> {
        if let Linear::Lora(l) = layer {
            self.0 |= l.dropout > 0.0;
        }
        Ok(false)
    }
}

/// Whether any adapter of `arch` has dropout (a random mask per step).
pub fn uses_dropout(arch: &mut dyn Architecture) -> Result<bool> {
    let mut find = FindDropout(false);
    arch.module().visit("", &mut find)?;
    Ok(find.0)
}

/// Turns adapter dropout on (training) or off (evaluation, generation).
pub fn set_training(arch: &mut dyn Architecture, training: bool) -> Result<()> {
    arch.module().visit("", &mut SetTraining(training))
}

/// Refuses to train more blocks than `arch` has (as mlx_lm's `train_model`).
pub fn check_num_layers(arch: &dyn Architecture, num_layers: i32) -> Result<()> {
    let n = arch.num_layers();
    if num_layers > n as i32 {
        return Err(Error::InvalidArgument(format!(
            "asked to train {num_layers} layers but the model has only {n}"
        )));
    }
    Ok(())
}

/// Casts every trainable parameter to `dtype` (the type training updates
/// and the optimiser state are kept in; float32 by default, whatever the
/// base weights' type).
pub fn cast_trainable(
    arch: &mut dyn Architecture,
    trainable: &Trainable,
    dtype: Dtype,
) -> Result<()> {
    let cast = trainable
        .parameters(arch.module())?
        .into_iter()
        .filter(|(_, a)| a.dtype() != dtype)
        .map(|(k, a)| Ok((k, a.astype(dtype)?)))
        .collect::<Result<std::collections::BTreeMap<_, _>>>()?;
    crate::nn::params::update(arch.module(), "", &cast)
}

/// Turns gradient checkpointing of every block on or off: each block's
/// activations are recomputed in the backward pass instead of kept, with
/// the parameters `trainable` names as the checkpoint's inputs.
pub fn set_grad_checkpoint(
    arch: &mut dyn Architecture,
    trainable: Option<&Trainable>,
) -> Result<()> {
    let names = trainable.map(|t| t.names().map(str::to_string).collect());
    arch.set_checkpoint(names)
}
