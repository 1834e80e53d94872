//! `config.json`: the fields the supported architectures read.

use std::path::{Path, PathBuf};

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

/// The parts of a Hugging Face / MLX `config.json` the models use. Fields an
/// architecture needs but the file lacks get that architecture's defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `llama`, `qwen3`, `gemma3_text` (or `gemma3`, normalised on load).
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: Option<i32>,
    /// Transformer blocks.
    pub num_hidden_layers: Option<i32>,
    /// Width of the MLP.
    pub intermediate_size: Option<i32>,
    /// Query heads.
    pub num_attention_heads: Option<i32>,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: Option<i32>,
    /// Per-head width when not `hidden_size / heads`.
    pub head_dim: Option<i32>,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: Option<f32>,
    /// Vocabulary size.
    pub vocab_size: Option<i32>,
    /// RoPE base.
    pub rope_theta: Option<f32>,
    /// Hugging Face `rope_scaling`.
    pub rope_scaling: Option<Value>,
    /// Transformers 5 nests `rope_theta` and scaling here.
    pub rope_parameters: Option<Value>,
    /// Rotate adjacent pairs instead of halves.
    #[serde(default)]
    pub rope_traditional: bool,
    /// Output layer shares the embedding table.
    pub tie_word_embeddings: Option<bool>,
    /// Biases on q/k/v/o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Gemma 3: RoPE base of the sliding-window layers.
    pub rope_local_base_freq: Option<f32>,
    /// Gemma 3: attention scale is `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: Option<f32>,
    /// Gemma 3: window of the local layers.
    pub sliding_window: Option<i32>,
    /// Gemma 3: every n-th layer is global.
    pub sliding_window_pattern: Option<i32>,
    /// Soft-cap of the final logits, when set.
    pub final_logit_softcapping: Option<f32>,
    /// Per-layer kinds (`full_attention`, `sliding_attention`).
    pub layer_types: Option<Vec<String>>,
    /// MLX quantisation.
    pub quantization: Option<Value>,
    /// End-of-sequence id(s).
    pub eos_token_id: Option<Value>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<Value>,
}

impl Config {
    /// Reads and normalises `dir/config.json` (a `gemma3` config's
    /// `text_config` becomes a `gemma3_text` config).
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
    pub fn from_value(mut value: Value, path: &Path) -> Result<Config> {
        let err = |message: String| Error::File {
            path: path.to_path_buf(),
            message,
        };
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
        let mut config: Config = serde_json::from_value(value).map_err(|e| err(format!("{e}")))?;
        if let Some(params) = config.rope_parameters.clone() {
            if config.rope_theta.is_none() {
                config.rope_theta = params
                    .get("rope_theta")
                    .and_then(Value::as_f64)
                    .map(|v| v as f32);
            }
            if config.rope_scaling.is_none() {
                config.rope_scaling = Some(params);
            }
        }
        Ok(config)
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
                    _ => Err(Error::InvalidArgument(
                        "`quantization` needs integer `group_size` and `bits`".into(),
                    )),
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

    /// A required integer field, or an error naming it.
    pub fn need(&self, value: Option<i32>, key: &str) -> Result<i32> {
        value.ok_or_else(|| Error::InvalidArgument(format!("config.json lacks `{key}`")))
    }
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
