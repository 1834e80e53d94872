//! Adapters on disk in mlx_lm's layout: a folder with
//! `adapters.safetensors` (the trainable parameters under the model's own
//! names, e.g. `model.layers.3.self_attn.q_proj.lora_a`) and
//! `adapter_config.json` (`fine_tune_type`, `num_layers`,
//! `lora_parameters` and the training arguments). Files are written to a
//! temporary name and renamed, so a reader never sees half a file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::llm::models::Architecture;
use crate::nn::params::{self, Trainable};
use crate::train::finetune::{self, AdapterConfig, FineTuneType};
use crate::{load_safetensors, save_safetensors, Array, Error, Result};

/// Name of the weights file in an adapter folder.
pub const WEIGHTS_FILE: &str = "adapters.safetensors";
/// Name of the config file in an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";

fn file_err(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes `path` through `write` on a temporary sibling, then renames it
/// into place.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| file_err(path, "not a file name"))?
        .to_string_lossy();
    // The temporary name keeps the extension (MLX appends `.safetensors` to
    // names without it).
    let tmp = path.with_file_name(format!(".tmp-{}-{name}", std::process::id()));
    let outcome = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| file_err(path, format!("cannot write: {e}")))
    });
    if outcome.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    outcome
}

/// Saves `weights` as a safetensors file at `path` (atomically), with the
/// metadata mlx writes (`format: mlx`).
pub fn save_weights(path: &Path, weights: &BTreeMap<String, Array>) -> Result<()> {
    let tensors: HashMap<String, Array> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let metadata = HashMap::from([("format".to_string(), "mlx".to_string())]);
    write_atomically(path, |tmp| save_safetensors(tmp, &tensors, &metadata))
}

/// Writes `config` (an object; keys are written sorted, as mlx_lm does) to
/// `dir/adapter_config.json`, creating `dir`.
pub fn save_config(dir: &Path, config: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, format!("cannot create: {e}")))?;
    let path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(config)
        .map_err(|e| file_err(&path, format!("cannot serialise: {e}")))?;
    write_atomically(&path, |tmp| {
        std::fs::write(tmp, text + "\n").map_err(|e| file_err(tmp, format!("cannot write: {e}")))
    })
}

/// The trainable parameters of `arch` (what `adapters.safetensors` holds).
pub fn trainable_weights(
    arch: &mut dyn Architecture,
    trainable: &Trainable,
) -> Result<BTreeMap<String, Array>> {
    trainable.parameters(arch.module())
}

/// Reads `dir/adapter_config.json`: the shaping part and the whole object.
pub fn read_config(dir: &Path) -> Result<(AdapterConfig, serde_json::Value)> {
    if !dir.is_dir() {
        return Err(file_err(dir, "adapter folder does not exist"));
    }
    let path = dir.join(CONFIG_FILE);
    let text =
        std::fs::read_to_string(&path).map_err(|e| file_err(&path, format!("cannot read: {e}")))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| file_err(&path, format!("invalid JSON: {e}")))?;
    let config: AdapterConfig = serde_json::from_value(raw.clone())
        .map_err(|e| file_err(&path, format!("not an adapter config: {e}")))?;
    if config.fine_tune_type != FineTuneType::Full && config.lora_parameters.is_none() {
        return Err(file_err(&path, "key `lora_parameters` is missing"));
    }
    Ok((config, raw))
}

/// Loads `path` (an adapter weights file) into `arch`, which must already
/// carry the adapter layers: every tensor must name a parameter that
/// `allowed` accepts, with the parameter's shape.
pub fn load_weights_into(
    arch: &mut dyn Architecture,
    path: &Path,
    allowed: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let weights = load_safetensors(path)?.tensors;
    let model = params::named_where(arch.module(), "", allowed)?;
    let mut errors = Vec::new();
    for (name, w) in &weights {
        match model.get(name) {
            None => errors.push(format!("`{name}` is not an adapter parameter of this model")),
            Some(p) if p.shape() != w.shape() => errors.push(format!(
                "`{name}` has shape {:?} but the model's parameter has {:?} (another rank or model?)",
                w.shape(),
                p.shape()
            )),
            Some(_) => {}
        }
    }
    if !errors.is_empty() {
        errors.sort();
        return Err(file_err(
            path,
            format!("incompatible adapter: {}", errors.join("; ")),
        ));
    }
    let values: BTreeMap<String, Array> = weights
        .into_iter()
        .map(|(k, v)| {
            let dtype = model[&k].dtype();
            Ok((
                k,
                if v.dtype() == dtype {
                    v
                } else {
                    v.astype(dtype)?
                },
            ))
        })
        .collect::<Result<_>>()?;
    params::update(arch.module(), "", &values)
}

/// Attaches the adapter in `dir` (mlx_lm layout) to `arch`: builds the
/// adapter layers `adapter_config.json` describes and loads
/// `adapters.safetensors` into them. Returns what is trainable (to resume
/// training) and the config.
///
/// ```no_run
/// use mlx_metal::llm::NativeModel;
///
/// let mut model = NativeModel::load("models/smollm2".as_ref())?;
/// mlx_metal::train::adapter::load(model.architecture_mut(), "adapters".as_ref())?;
/// # Ok::<(), mlx_metal::Error>(())
/// ```
pub fn load(arch: &mut dyn Architecture, dir: &Path) -> Result<(Trainable, AdapterConfig)> {
    let (config, _) = read_config(dir)?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(file_err(&weights, "adapter weights are missing"));
    }
    let trainable = finetune::attach(arch, &config).map_err(|e| match e {
        Error::InvalidArgument(m) => file_err(&dir.join(CONFIG_FILE), m),
        other => other,
    })?;
    let full = config.fine_tune_type == FineTuneType::Full;
    load_weights_into(arch, &weights, &|n| full || finetune::is_adapter_leaf(n))?;
    Ok((trainable, config))
}

/// The path of the checkpoint saved at iteration `it` in `dir`
/// (`0000100_adapters.safetensors`, as mlx_lm names them).
pub fn checkpoint_path(dir: &Path, it: usize) -> PathBuf {
    dir.join(format!("{it:07}_{WEIGHTS_FILE}"))
}
