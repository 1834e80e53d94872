//! Checks a model's `config.json` before anything is allocated from it,
//! shared by every backend (the native one also checks the vocabulary
//! against its tokenizer).

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// Integer keys that count something, with the largest value accepted.
/// The bounds are far above any published model and far below what would
/// make a single allocation absurd.
const COUNTS: &[(&str, i64)] = &[
    ("num_hidden_layers", 1024),
    ("num_attention_heads", 1024),
    ("num_key_value_heads", 1024),
    ("hidden_size", 1 << 18),
    ("intermediate_size", 1 << 20),
    ("vocab_size", 1 << 24),
    ("head_dim", 1 << 14),
    ("max_position_embeddings", i32::MAX as i64),
    ("original_max_position_embeddings", i32::MAX as i64),
    ("sliding_window", i32::MAX as i64),
    ("sliding_window_pattern", 1024),
    ("query_pre_attn_scalar", 1 << 20),
];

/// Floating-point keys that must be positive and finite when present.
const POSITIVE: &[&str] = &[
    "rope_theta",
    "rope_local_base_freq",
    "rms_norm_eps",
    "layer_norm_eps",
    "attn_logit_softcapping",
    "final_logit_softcapping",
];

/// Group sizes MLX's affine quantisation supports.
pub const GROUP_SIZES: [i64; 3] = [32, 64, 128];
/// Bit widths MLX's affine quantisation supports.
pub const BITS: [i64; 6] = [2, 3, 4, 5, 6, 8];
/// Quantisation modes MLX knows; only `affine` runs here.
const MODES: [&str; 4] = ["affine", "mxfp4", "nvfp4", "mxfp8"];

/// Checks a model's `config.json` (its JSON, read from `path`) before
/// anything is built from it: counts positive and bounded, heads dividing
/// the width, key/value heads dividing the heads, positive RoPE bases,
/// epsilons and soft caps, and a quantisation MLX supports. A Gemma 3
/// `text_config` is checked too. Errors name `path` and the key.
///
/// ```
/// use std::path::Path;
/// let ok = serde_json::json!({"num_hidden_layers": 2, "rope_theta": 10000.0});
/// assert!(inference::check_config(&ok, Path::new("config.json")).is_ok());
/// let bad = serde_json::json!({"num_hidden_layers": 0});
/// let e = inference::check_config(&bad, Path::new("config.json")).unwrap_err();
/// assert!(e.to_string().contains("num_hidden_layers"));
/// ```
pub fn check_config(raw: &Value, path: &Path) -> Result<()> {
    if let Some(text) = raw.get("text_config").filter(|t| t.is_object()) {
        check_config(text, path)?;
    }
    let bad = |message: String| Error::invalid_model(path, message);
    for &(key, max) in COUNTS {
        match raw.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_i64() {
                Some(n) if (1..=max).contains(&n) => {}
                Some(n) => {
                    return Err(bad(format!(
                        "key `{key}`: {n} is out of range (must be between 1 and {max})"
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "key `{key}`: expected a positive integer, found {v}"
                    )))
                }
            },
        }
    }
    for &key in POSITIVE {
        match raw.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => {}
                _ => {
                    return Err(bad(format!(
                        "key `{key}`: expected a positive number, found {v}"
                    )))
                }
            },
        }
    }
    let int = |key: &str| raw.get(key).and_then(Value::as_i64);
    if let (Some(hidden), Some(heads)) = (int("hidden_size"), int("num_attention_heads")) {
        if int("head_dim").is_none() && hidden % heads != 0 {
            return Err(bad(format!(
                "key `num_attention_heads`: {heads} heads do not divide `hidden_size` {hidden} (and there is no `head_dim`)"
            )));
        }
    }
    if let (Some(heads), Some(kv)) = (int("num_attention_heads"), int("num_key_value_heads")) {
        if heads % kv != 0 {
            return Err(bad(format!(
                "key `num_key_value_heads`: {kv} key/value heads do not divide the {heads} attention heads"
            )));
        }
    }
    check_quantization(raw.get("quantization"), path)
}

/// Checks the `quantization` block and its per-module overrides.
fn check_quantization(quantization: Option<&Value>, path: &Path) -> Result<()> {
    let bad = |message: String| Error::invalid_model(path, message);
    let q = match quantization {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(q)) => q,
        Some(other) => {
            return Err(bad(format!(
                "key `quantization`: expected an object, found {other}"
            )))
        }
    };
    check_quant_entry(q, "quantization").map_err(bad)?;
    for (module, v) in q {
        match v {
            Value::Object(o) => {
                check_quant_entry(o, &format!("quantization.{module}")).map_err(bad)?
            }
            Value::Bool(false) => {}
            _ => {}
        }
    }
    Ok(())
}

/// Checks one `{group_size, bits, mode}` entry; `key` names it in the
/// message.
fn check_quant_entry(
    q: &serde_json::Map<String, Value>,
    key: &str,
) -> std::result::Result<(), String> {
    let int = |name: &str| -> std::result::Result<Option<i64>, String> {
        match q.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("key `{key}.{name}`: expected an integer, found {v}")),
        }
    };
    if let Some(g) = int("group_size")? {
        if !GROUP_SIZES.contains(&g) {
            return Err(format!(
                "key `{key}.group_size`: {g} is not supported (MLX supports {GROUP_SIZES:?})"
            ));
        }
    }
    if let Some(b) = int("bits")? {
        if !BITS.contains(&b) {
            return Err(format!(
                "key `{key}.bits`: {b} is not supported (MLX supports {BITS:?})"
            ));
        }
    }
    match q.get("mode") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == "affine" => {}
        Some(Value::String(m)) if MODES.contains(&m.as_str()) => {
            return Err(format!(
                "key `{key}.mode`: `{m}` quantisation is not supported; only `affine` is"
            ))
        }
        Some(v) => {
            return Err(format!(
                "key `{key}.mode`: unknown quantisation mode {v} (MLX knows {})",
                MODES.join(", ")
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;

    fn config(v: Value) -> Result<()> {
        check_config(&v, Path::new("/m/config.json"))
    }

    fn base() -> Value {
        json!({
            "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
            "vocab_size": 100, "rms_norm_eps": 1e-5, "rope_theta": 10000.0
        })
    }

    fn message(edit: impl FnOnce(&mut Value)) -> String {
        let mut v = base();
        edit(&mut v);
        config(v).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_sane_config_passes() {
        assert!(config(base()).is_ok());
    }

    #[test]
    fn counts_must_be_positive_and_bounded() {
        for (key, value) in [
            ("num_hidden_layers", json!(0)),
            ("num_hidden_layers", json!(-3)),
            ("num_hidden_layers", json!(1_000_000_000)),
            ("num_attention_heads", json!(0)),
            ("intermediate_size", json!(1_000_000_000_000i64)),
            ("vocab_size", json!(1.5)),
        ] {
            let m = message(|v| v[key] = value.clone());
            assert!(
                m.contains("/m/config.json") && m.contains(key),
                "{key}={value}: {m}"
            );
        }
    }

    #[test]
    fn heads_must_divide() {
        let m = message(|v| v["num_attention_heads"] = json!(3));
        assert!(m.contains("do not divide `hidden_size`"), "{m}");
        let m = message(|v| v["num_key_value_heads"] = json!(3));
        assert!(m.contains("num_key_value_heads"), "{m}");
        // an explicit head_dim frees the width
        let mut v = base();
        v["num_attention_heads"] = json!(3);
        v["num_key_value_heads"] = json!(1);
        v["head_dim"] = json!(32);
        assert!(config(v).is_ok());
    }

    #[test]
    fn bases_and_epsilons_must_be_positive() {
        for (key, value) in [("rope_theta", json!(0)), ("rms_norm_eps", json!(-1))] {
            let m = message(|v| v[key] = value.clone());
            assert!(m.contains(key) && m.contains("positive"), "{m}");
        }
    }

    #[test]
    fn quantisation_must_be_supported() {
        for (q, needle) in [
            (json!({"group_size": 0, "bits": 4}), "group_size"),
            (json!({"group_size": 64, "bits": 9}), "bits"),
            (
                json!({"group_size": 64, "bits": 4, "mode": "banana"}),
                "banana",
            ),
            (
                json!({"group_size": 64, "bits": 4, "mode": "mxfp4"}),
                "only `affine`",
            ),
            (
                json!({"group_size": 64, "bits": 4, "model.layers.0.mlp": {"group_size": 64, "bits": 7}}),
                "quantization.model.layers.0.mlp.bits",
            ),
        ] {
            let m = message(|v| v["quantization"] = q.clone());
            assert!(m.contains(needle), "{q}: {m}");
        }
        let ok = message(|v| {
            v["quantization"] =
                json!({"group_size": 32, "bits": 8, "mode": "affine", "lm_head": false})
        });
        assert_eq!(ok, "");
    }
}
