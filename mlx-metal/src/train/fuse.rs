//! Merging an adapter into the base weights and writing the result as a
//! model directory, as `mlx_lm.fuse` does: every adapted linear becomes
//! `W + scale * b^T a^T` (DoRA: rows rescaled to the learned magnitude),
//! requantised with the base layer's settings, or everything dequantised
//! with `dequantize`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::llm::models::Architecture;
use crate::nn::params::{self, Visitor};
use crate::nn::{Embedding, Linear};
use crate::{load_safetensors, save_safetensors, Array, Error, Result};

struct Fuse {
    dequantize: bool,
    fused: usize,
}

impl Visitor for Fuse {
    fn array(&mut self, _: &str, _: &mut Array) -> Result<()> {
        Ok(())
    }

    fn linear(&mut self, _: &str, layer: &mut Linear) -> Result<bool> {
        let replacement = match layer {
            Linear::Lora(l) => {
                self.fused += 1;
                l.fuse(self.dequantize)?
            }
            Linear::Quantized { weight, bias } if self.dequantize => Linear::Dense {
                weight: weight.dequantize()?,
                bias: bias.clone(),
            },
            _ => return Ok(true),
        };
        *layer = replacement;
        Ok(true)
    }

    fn embedding(&mut self, _: &str, table: &mut Embedding) -> Result<bool> {
        if let (true, Embedding::Quantized(q)) = (self.dequantize, &*table) {
            *table = Embedding::Dense(q.dequantize()?);
        }
        Ok(true)
    }
}

/// Merges every adapter of `arch` into its linear layer (and, with
/// `dequantize`, turns every quantised layer dense). Returns how many
/// adapters were merged.
pub fn fuse(arch: &mut dyn Architecture, dequantize: bool) -> Result<usize> {
    let mut v = Fuse {
        dequantize,
        fused: 0,
    };
    arch.module().visit("", &mut v)?;
    Ok(v.fused)
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Files of a model directory copied as they are (tokenizer, templates,
/// generation settings).
const COPIED: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// Writes the (fused) model `arch`, loaded from directory `base`, as a new
/// model directory `out`: `model.safetensors` holds the base's tensors with
/// the model's current parameters in place of theirs (quantisation
/// tensors of layers made dense are dropped), `config.json` loses its
/// `quantization` blocks when `dequantized`, tokenizer files are copied.
/// `out` must not exist or be empty; it appears only when complete.
pub fn write_model_dir(
    arch: &mut dyn Architecture,
    base: &Path,
    out: &Path,
    dequantized: bool,
) -> Result<()> {
    if !base.is_dir() {
        return Err(bad(
            base,
            "fusing reads a model directory (convert a GGUF file first with `mlx-infer convert`)",
        ));
    }
    crate::llm::check_new_output_dir(out)?;
    let current = params::named(arch.module(), "")?;
    let mut tensors: BTreeMap<String, Array> = BTreeMap::new();
    for entry in std::fs::read_dir(base).map_err(|e| bad(base, e.to_string()))? {
        let path = entry.map_err(|e| bad(base, e.to_string()))?.path();
        if path.extension().is_some_and(|x| x == "safetensors") {
            tensors.extend(load_safetensors(&path)?.tensors);
        }
    }
    // Layers now dense lose their quantisation tensors.
    tensors.retain(|name, _| {
        let Some(layer) = name
            .strip_suffix(".scales")
            .or_else(|| name.strip_suffix(".biases"))
        else {
            return true;
        };
        !current.contains_key(&format!("{layer}.weight")) || current.contains_key(name)
    });
    tensors.extend(current);

    let mut config: serde_json::Value = {
        let p = base.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| bad(&p, e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| bad(&p, format!("invalid JSON: {e}")))?
    };
    if dequantized {
        if let Some(map) = config.as_object_mut() {
            map.remove("quantization");
            map.remove("quantization_config");
        }
    }

    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let staging = out.with_file_name(format!(".{name}.fusing-{}", std::process::id()));
    let write = || -> Result<()> {
        std::fs::create_dir_all(&staging).map_err(|e| bad(&staging, e.to_string()))?;
        let map: HashMap<String, Array> = tensors.into_iter().collect();
        let metadata = HashMap::from([("format".to_string(), "mlx".to_string())]);
        save_safetensors(staging.join("model.safetensors"), &map, &metadata)?;
        let text = serde_json::to_string_pretty(&config).expect("a JSON value");
        let p = staging.join("config.json");
        std::fs::write(&p, text + "\n").map_err(|e| bad(&p, e.to_string()))?;
        for f in COPIED {
            let from = base.join(f);
            if from.is_file() {
                std::fs::copy(&from, staging.join(f)).map_err(|e| bad(&from, e.to_string()))?;
            }
        }
        if out.exists() {
            std::fs::remove_dir(out).map_err(|e| bad(out, e.to_string()))?;
        }
        std::fs::rename(&staging, out).map_err(|e| bad(out, e.to_string()))
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}
