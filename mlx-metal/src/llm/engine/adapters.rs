//! Per-request adapters: every adapter of [`EngineOptions::adapters`]
//! (mlx_lm's layout, LoRA only) is read once and its `lora_a`/`lora_b`
//! pairs are attached to the model's linear layers as one [`MultiLora`]
//! per adapted layer, which adds each adapter's update to the rows that
//! chose it. The model is not copied; a request without an adapter runs
//! the model as loaded.
//!
//! [`EngineOptions::adapters`]: inference::EngineOptions::adapters

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::llm::models::Architecture;
use crate::nn::lora::{AdapterRows, LoraDelta, MultiLora};
use crate::nn::params::Visitor;
use crate::nn::Linear;
use crate::train::adapter::{read_config, WEIGHTS_FILE};
use crate::train::finetune::FineTuneType;
use crate::{load_safetensors, Array, Dtype, Error, Result};

/// One adapter's updates, by layer name (`model.layers.3.self_attn.q_proj`).
type Deltas = BTreeMap<String, LoraDelta>;

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads the LoRA adapter in `dir`.
fn read(dir: &Path) -> Result<Deltas> {
    let (config, _) = read_config(dir)?;
    let config_path = dir.join(crate::train::adapter::CONFIG_FILE);
    if config.fine_tune_type != FineTuneType::Lora {
        return Err(bad(
            &config_path,
            format!(
                "per-request adapters must be LoRA, this one is {:?} (fuse it into the model instead)",
                config.fine_tune_type
            ),
        ));
    }
    let scale = config
        .lora_parameters
        .as_ref()
        .map(|p| p.scale)
        .ok_or_else(|| bad(&config_path, "key `lora_parameters` is missing"))?;
    let path = dir.join(WEIGHTS_FILE);
    let tensors = load_safetensors(&path)?.tensors;
    let mut halves: BTreeMap<String, (Option<Array>, Option<Array>)> = BTreeMap::new();
    for (name, array) in tensors {
        let array = array.astype(Dtype::Float32)?;
        let slot = halves.entry(
            name.rsplit_once('.')
                .map(|(layer, _)| layer.to_string())
                .unwrap_or_default(),
        );
        match name.rsplit('.').next() {
            Some("lora_a") => slot.or_default().0 = Some(array),
            Some("lora_b") => slot.or_default().1 = Some(array),
            _ => return Err(bad(&path, format!("`{name}` is not a LoRA parameter"))),
        }
    }
    halves
        .into_iter()
        .map(|(layer, pair)| match pair {
            (Some(lora_a), Some(lora_b)) => Ok((
                layer,
                LoraDelta {
                    lora_a,
                    lora_b,
                    scale,
                },
            )),
            _ => Err(bad(
                &path,
                format!("`{layer}` needs both lora_a and lora_b"),
            )),
        })
        .collect()
}

/// Puts adapters on the layers they name (undoing a previous engine's).
struct Install<'a> {
    adapters: &'a [Deltas],
    rows: AdapterRows,
    used: Vec<BTreeSet<String>>,
    /// Per adapter index, what is wrong.
    errors: Vec<(usize, String)>,
}

impl Visitor for Install<'_> {
    fn array(&mut self, _: &str, _: &mut Array) -> Result<()> {
        Ok(())
    }

    fn linear(&mut self, name: &str, layer: &mut Linear) -> Result<bool> {
        if let Linear::Adapters(m) = layer {
            *layer = m.base.clone();
        }
        let deltas: Vec<Option<LoraDelta>> =
            self.adapters.iter().map(|a| a.get(name).cloned()).collect();
        if deltas.iter().all(Option::is_none) {
            return Ok(true);
        }
        let (out, inp) = layer.dims()?;
        for (j, d) in deltas.iter().enumerate() {
            let Some(d) = d else { continue };
            self.used[j].insert(name.to_string());
            let (a, b) = (d.lora_a.shape(), d.lora_b.shape());
            if a.len() != 2 || b.len() != 2 || a[0] != inp || b[1] != out || a[1] != b[0] {
                self.errors.push((
                    j,
                    format!(
                        "`{name}` has lora_a {a:?} and lora_b {b:?}, the layer is {inp} -> {out}"
                    ),
                ));
            }
        }
        *layer = Linear::Adapters(Box::new(MultiLora {
            base: layer.clone(),
            adapters: deltas,
            rows: self.rows.clone(),
        }));
        Ok(true)
    }
}

/// Attaches the adapters in `dirs` (named as given) to `arch` and returns
/// the row selection their layers share; with no adapters, removes those a
/// previous engine attached and returns `None`.
pub(crate) fn install(
    arch: &mut dyn Architecture,
    dirs: &[(String, PathBuf)],
) -> Result<Option<AdapterRows>> {
    let adapters = dirs
        .iter()
        .map(|(name, dir)| {
            read(dir).map_err(|e| Error::InvalidArgument(format!("adapter `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let rows = AdapterRows::default();
    let mut v = Install {
        adapters: &adapters,
        rows: rows.clone(),
        used: vec![BTreeSet::new(); adapters.len()],
        errors: Vec::new(),
    };
    arch.module().visit("", &mut v)?;
    for (j, a) in adapters.iter().enumerate() {
        for layer in a.keys().filter(|l| !v.used[j].contains(*l)) {
            v.errors
                .push((j, format!("`{layer}` is not a linear layer of this model")));
        }
    }
    if !v.errors.is_empty() {
        let message = v
            .errors
            .iter()
            .map(|(j, e)| format!("adapter `{}`: {e}", dirs[*j].0))
            .collect::<Vec<_>>()
            .join("; ");
        // Leave the model as loaded.
        let mut undo = Install {
            adapters: &[],
            rows: AdapterRows::default(),
            used: Vec::new(),
            errors: Vec::new(),
        };
        arch.module().visit("", &mut undo)?;
        return Err(Error::InvalidArgument(message));
    }
    Ok((!adapters.is_empty()).then_some(rows))
}
