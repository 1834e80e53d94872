//! `config.json`: the fields every model shares (type, vocabulary,
//! quantisation, special ids) and, for each family, its own typed
//! arguments parsed from the same file with [`Config::parse`].

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// Affine quantisation settings (`"quantization": {"group_size", "bits"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct QuantConfig {
    /// Elements per group.
    pub group_size: i32,
    /// Bits per element.
    pub bits: i32,
}

/// What every family's `config.json` holds; the family-specific keys are
/// read with [`Config::parse`].
#[derive(Debug, Clone)]
pub struct Config {
    /// `llama`, `qwen3`, `gemma3_text` (a `gemma3` config is normalised to
    /// its `text_config`), ...
    pub model_type: String,
    /// Vocabulary size, when given.
    pub vocab_size: Option<i32>,
    /// Width of the residual stream, when given.
    pub hidden_size: Option<i32>,
    /// MLX quantisation block.
    pub quantization: Option<Value>,
    /// End-of-sequence id(s).
    pub eos_token_id: Option<Value>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<Value>,
    /// The whole (normalised) JSON.
    pub raw: Value,
    /// Where it came from, for errors.
    pub path: PathBuf,
}

/// The shared fields, as serde reads them.
#[derive(Deserialize)]
struct Common {
    model_type: String,
    vocab_size: Option<i32>,
    hidden_size: Option<i32>,
    quantization: Option<Value>,
    eos_token_id: Option<Value>,
    bos_token_id: Option<Value>,
}

impl Config {
    /// Reads and normalises `dir/config.json`.
    pub fn load(dir: &Path) -> Result<(Config, PathBuf)> {
        let path = dir.join("config.json");
        let err = |message: String| Error::File {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::NotFound {
                "missing (a model directory needs config.json)".into()
            } else {
                e.to_string()
            })
        })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        Ok((Config::from_value(value, &path)?, path))
    }

    /// A config from its JSON form (as config.json holds it, or as built
    /// from a GGUF file's metadata); `path` names the source in errors.
    /// A `gemma3` config becomes its `text_config`; Transformers 5's
    /// `rope_parameters` fill `rope_theta` and `rope_scaling`.
    pub fn from_value(mut value: Value, path: &Path) -> Result<Config> {
        let err = |message: String| Error::File {
            path: path.to_path_buf(),
            message,
        };
        if !value.is_object() {
            return Err(err("not a JSON object".into()));
        }
        if value.get("model_type").and_then(Value::as_str) == Some("gemma3") {
            let mut text_cfg = value
                .get("text_config")
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default()));
            let obj = text_cfg
                .as_object_mut()
                .ok_or_else(|| err("`text_config` is not an object".into()))?;
            obj.insert("model_type".into(), Value::String("gemma3_text".into()));
            for key in ["quantization", "eos_token_id", "bos_token_id", "vocab_size"] {
                if let Some(v) = value.get(key) {
                    obj.entry(key).or_insert(v.clone());
                }
            }
            obj.entry("vocab_size").or_insert(Value::from(262208));
            value = text_cfg;
        }
        if let Some(params) = value.get("rope_parameters").cloned() {
            let obj = value.as_object_mut().expect("checked above");
            if let Some(theta) = params.get("rope_theta") {
                obj.entry("rope_theta").or_insert(theta.clone());
            }
            if obj.get("rope_scaling").is_none_or(Value::is_null) {
                obj.insert("rope_scaling".into(), params);
            }
        }
        let common: Common = parse_value(&value, path)?;
        let config = Config {
            model_type: common.model_type,
            vocab_size: common.vocab_size,
            hidden_size: common.hidden_size,
            quantization: common.quantization,
            eos_token_id: common.eos_token_id,
            bos_token_id: common.bos_token_id,
            raw: value,
            path: path.to_path_buf(),
        };
        crate::llm::validate::check(&config)?;
        Ok(config)
    }

    /// A family's typed arguments from the same JSON; a missing or
    /// mistyped key is an error naming the file and the key.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        parse_value(&self.raw, &self.path)
    }

    /// The model-wide quantisation, if any.
    pub fn quant(&self) -> Result<Option<QuantConfig>> {
        match &self.quantization {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let group_size = v.get("group_size").and_then(Value::as_i64);
                let bits = v.get("bits").and_then(Value::as_i64);
                match (group_size, bits) {
                    (Some(g), Some(b)) => Ok(Some(QuantConfig {
                        group_size: g as i32,
                        bits: b as i32,
                    })),
                    _ => Err(Error::File {
                        path: self.path.clone(),
                        message: "`quantization` needs integer `group_size` and `bits`".into(),
                    }),
                }
            }
        }
    }

    /// Per-layer quantisation override for the module at `path`
    /// (`"model.layers.0.mlp.down_proj": {"group_size", "bits"}`), or
    /// `Some(None)` when that module is explicitly left unquantised.
    pub fn quant_override(&self, path: &str) -> Option<Option<QuantConfig>> {
        let v = self.quantization.as_ref()?.get(path)?;
        if v == &Value::Bool(false) {
            return Some(None);
        }
        serde_json::from_value::<QuantConfig>(v.clone())
            .ok()
            .map(Some)
    }

    /// End-of-sequence ids listed in the config (one id or a list).
    pub fn eos_ids(&self) -> Vec<u32> {
        ids(self.eos_token_id.as_ref())
    }

    /// Beginning-of-sequence id, if listed.
    pub fn bos_id(&self) -> Option<u32> {
        ids(self.bos_token_id.as_ref()).first().copied()
    }
}

/// Deserialises `value`, naming `path` and the offending key on failure.
fn parse_value<T: DeserializeOwned>(value: &Value, path: &Path) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        Error::File {
            path: path.to_path_buf(),
            message: if key == "." {
                inner
            } else {
                format!("key `{key}`: {inner}")
            },
        }
    })
}

/// Ids from a JSON number or list of numbers.
pub fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}
