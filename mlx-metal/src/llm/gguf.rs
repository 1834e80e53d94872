//! GGUF model files (llama.cpp's format): the header is validated by
//! [`inference::gguf`], the tensors are read by MLX, and both are turned into
//! what a model directory holds — a `config.json`, Hugging Face tensor names
//! and a `tokenizer.json` — so a `.gguf` file ends in the same model structs
//! as a directory, and `mlx-infer convert` can write that directory out.
//!
//! llama.cpp's converter changes three things that are undone here:
//! - for `llama`, the rows of `attn_q`/`attn_k` are permuted so that its
//!   interleaved RoPE works; they are put back in Hugging Face order, so the
//!   model uses the usual half-split RoPE;
//! - for `gemma3`, every RMS norm weight has 1 added; it is subtracted;
//! - the tokenizer lives in `tokenizer.ggml.*` metadata; it is rebuilt as a
//!   `tokenizers` byte-level BPE with the pre-tokenizer `tokenizer.ggml.pre`
//!   names.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use inference::gguf::{Gguf, Value as Meta};
use serde_json::{json, Map, Value};

use crate::llm::config::Config;
use crate::{load_gguf_tensors, Array, Dtype, Error, Result};

/// GGUF architectures the native backend runs, with the `model_type` each
/// becomes.
pub const ARCHITECTURES: &[(&str, &str)] = &[
    ("llama", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("phi3", "phi3"),
    ("gemma2", "gemma2"),
    ("gemma3", "gemma3_text"),
];

/// Tensor types MLX reads from GGUF without changing them: floats stay as
/// they are, the three quantisations become MLX 4/8-bit with groups of 32.
pub const TENSOR_TYPES: &[&str] = &["F32", "F16", "Q4_0", "Q4_1", "Q8_0"];

/// MLX's quantisation group size for GGUF's block formats.
const GROUP_SIZE: i64 = 32;

/// A GGUF model turned into the pieces of a model directory.
pub struct GgufModel {
    /// `config.json` as a JSON value (with a `quantization` block when the
    /// weights are quantised).
    pub config_json: Value,
    /// The same, parsed.
    pub config: Config,
    /// Tensors under Hugging Face names (quantised ones as MLX triples).
    pub tensors: HashMap<String, Array>,
    /// `tokenizer.json`.
    pub tokenizer_json: Value,
    /// `tokenizer_config.json` (special tokens, chat template).
    pub tokenizer_config: Value,
}

/// The `model_type` a GGUF architecture maps to, if the native backend runs it.
pub fn model_type(architecture: &str) -> Option<&'static str> {
    ARCHITECTURES
        .iter()
        .find(|(a, _)| *a == architecture)
        .map(|&(_, m)| m)
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl From<inference::Error> for Error {
    fn from(e: inference::Error) -> Self {
        match e {
            inference::Error::InvalidModel { path, message } => Error::File { path, message },
            inference::Error::Io { path, source } => Error::File {
                path,
                message: source.to_string(),
            },
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}

/// Reads the GGUF header of `path` and checks that the native backend can
/// run it (known architecture, tensor types MLX reads), without loading
/// any tensor.
pub fn inspect(path: &Path) -> Result<Gguf> {
    let gguf = Gguf::open(path)?;
    let arch = gguf.architecture()?;
    if model_type(arch).is_none() {
        let known: Vec<&str> = ARCHITECTURES.iter().map(|(a, _)| *a).collect();
        return Err(bad(
            path,
            format!(
                "GGUF architecture `{arch}` (general.architecture) is not supported natively (supported: {})",
                known.join(", ")
            ),
        ));
    }
    if let Some(t) = gguf
        .tensors
        .iter()
        .find(|t| !TENSOR_TYPES.contains(&t.kind.name))
    {
        return Err(bad(
            path,
            format!(
                "tensor `{}` is {}; the native backend reads GGUF tensors of type {}",
                t.name,
                t.kind.name,
                TENSOR_TYPES.join(", ")
            ),
        ));
    }
    Ok(gguf)
}

/// Loads the GGUF file at `path`: header checks, config, tensors (renamed,
/// with llama.cpp's changes undone) and tokenizer.
pub fn load(path: &Path) -> Result<GgufModel> {
    let gguf = inspect(path)?;
    let arch = gguf.architecture()?.to_string();
    let mut config_json = config_of(&gguf, &arch)?;
    let raw = load_gguf_tensors(path)?;
    let mut tensors = HashMap::with_capacity(raw.len());
    let mut rope_freqs = None;
    let mut long_factors = None;
    for (name, array) in raw {
        if name == "rope_freqs.weight" {
            rope_freqs = Some(array);
            continue;
        }
        // Phi-3's LongRoPE factors (the short ones are unused, as in mlx_lm).
        if name == "rope_factors_long.weight" {
            long_factors = Some(array);
            continue;
        }
        if name == "rope_factors_short.weight" {
            continue;
        }
        let hf = hf_name(&name, &arch).ok_or_else(|| {
            bad(
                path,
                format!("tensor `{name}` is not part of a `{arch}` model"),
            )
        })?;
        tensors.insert(hf, array);
    }
    if let Some(freqs) = rope_freqs {
        config_json["rope_scaling"] = llama3_scaling(&gguf, &config_json, &freqs)?;
    }
    if let Some(long) = long_factors {
        let long = long.astype(Dtype::Float32)?.to_vec::<f32>()?;
        config_json["rope_scaling"] = json!({"type": "longrope", "long_factor": long});
    }
    let heads = config_json["num_attention_heads"].as_i64().unwrap_or(1);
    let kv_heads = config_json["num_key_value_heads"].as_i64().unwrap_or(heads);
    let head_dim = config_json["head_dim"].as_i64().unwrap_or(1);
    for (name, array) in tensors.iter_mut() {
        if arch == "llama" {
            let n = if name.contains(".self_attn.q_proj.") {
                Some(heads)
            } else if name.contains(".self_attn.k_proj.") {
                Some(kv_heads)
            } else {
                None
            };
            if let Some(n) = n {
                *array = unpermute_rows(array, n as i32, head_dim as i32)
                    .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?;
            }
        }
        if arch.starts_with("gemma") && name.ends_with("norm.weight") {
            *array = array
                .astype(Dtype::Float32)?
                .add_scalar(-1.0)?
                .astype(array.dtype())?;
        }
    }
    if let Some(q) = quantization_of(&tensors) {
        config_json["quantization"] = q;
    }
    let config = Config::from_value(config_json.clone(), path)?;
    let (tokenizer_json, tokenizer_config) = tokenizer_of(&gguf)?;
    Ok(GgufModel {
        config_json,
        config,
        tensors,
        tokenizer_json,
        tokenizer_config,
    })
}

/// `config.json` for the architecture, from the `ARCH.*` metadata keys.
fn config_of(g: &Gguf, arch: &str) -> Result<Value> {
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<i64> {
        let v = g.u64(&key(k))?;
        i64::try_from(v)
            .ok()
            .filter(|&v| v > 0 && v <= i32::MAX as i64)
            .ok_or_else(|| bad(&g.path, format!("metadata key `{}` is {v}", key(k))))
    };
    let opt_int = |k: &str| -> Result<Option<i64>> {
        match g.get(&key(k)) {
            None => Ok(None),
            Some(_) => int(k).map(Some),
        }
    };
    let hidden = int("embedding_length")?;
    let heads = int("attention.head_count")?;
    let kv_heads = opt_int("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = opt_int("attention.key_length")?.unwrap_or(hidden / heads.max(1));
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let vocab = match g.tensor("token_embd.weight") {
        Some(t) => t.shape()[0] as i64,
        None => {
            return Err(bad(
                &g.path,
                "tensor `token_embd.weight` (the embedding table) is missing",
            ))
        }
    };
    if (tokens.len() as i64) > vocab {
        return Err(bad(
            &g.path,
            format!(
                "tokenizer.ggml.tokens lists {} tokens but token_embd.weight has only {vocab} rows",
                tokens.len()
            ),
        ));
    }
    let mut c = Map::new();
    c.insert("model_type".into(), json!(model_type(arch)));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("num_hidden_layers".into(), json!(int("block_count")?));
    c.insert(
        "intermediate_size".into(),
        json!(int("feed_forward_length")?),
    );
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert(
        "rms_norm_eps".into(),
        json!(g.f64(&key("attention.layer_norm_rms_epsilon"))?),
    );
    c.insert(
        "tie_word_embeddings".into(),
        json!(g.tensor("output.weight").is_none()),
    );
    if let Some(ctx) = opt_int("context_length")? {
        c.insert("max_position_embeddings".into(), json!(ctx));
    }
    let theta = match g.get(&key("rope.freq_base")) {
        Some(_) => g.f64(&key("rope.freq_base"))?,
        None if arch == "gemma3" => 1_000_000.0,
        None if arch == "qwen2" => 1_000_000.0,
        None => 10_000.0,
    };
    c.insert("rope_theta".into(), json!(theta));
    match g.get(&key("rope.scaling.type")).map(|v| v.as_str()) {
        None | Some(Some("none")) => {}
        Some(Some("linear")) => {
            c.insert(
                "rope_scaling".into(),
                json!({"type": "linear", "factor": g.f64(&key("rope.scaling.factor"))?}),
            );
        }
        Some(other) => {
            return Err(bad(
                &g.path,
                format!(
                    "RoPE scaling {other:?} ({}) is not supported",
                    key("rope.scaling.type")
                ),
            ))
        }
    }
    for (meta, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ] {
        if let Some(id) = g.get(meta).and_then(Meta::as_u64) {
            c.insert(field.into(), json!(id));
        }
    }
    if arch == "phi3" {
        let rotated = opt_int("rope.dimension_count")?.unwrap_or(head_dim);
        c.insert(
            "partial_rotary_factor".into(),
            json!(rotated as f64 / head_dim as f64),
        );
        if let Some(n) = opt_int("rope.scaling.original_context_length")? {
            c.insert("original_max_position_embeddings".into(), json!(n));
        }
    }
    if arch == "gemma2" {
        for (meta, field) in [
            ("attn_logit_softcapping", "attn_logit_softcapping"),
            ("final_logit_softcapping", "final_logit_softcapping"),
        ] {
            if g.get(&key(meta)).is_some() {
                c.insert(field.into(), json!(g.f64(&key(meta))?));
            }
        }
        if let Some(w) = opt_int("attention.sliding_window")? {
            c.insert("sliding_window".into(), json!(w));
        }
        c.insert("query_pre_attn_scalar".into(), json!(head_dim));
    }
    if arch == "gemma3" {
        if let Some(w) = opt_int("attention.sliding_window")? {
            c.insert("sliding_window".into(), json!(w));
        }
        // llama.cpp fixes these for Gemma 3 rather than storing them (a
        // pattern key is read when a writer sets one).
        let pattern = opt_int("attention.sliding_window_pattern")?.unwrap_or(6);
        c.insert("sliding_window_pattern".into(), json!(pattern));
        c.insert("rope_local_base_freq".into(), json!(10_000.0));
        c.insert("query_pre_attn_scalar".into(), json!(head_dim));
    }
    Ok(Value::Object(c))
}

/// The Hugging Face name of a GGUF tensor (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`), or `None` when the
/// architecture has no such tensor.
pub fn hf_name(name: &str, arch: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias" | "scales" | "biases") {
        return None;
    }
    let top = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(top) = top {
        return Some(format!("{top}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    layer.parse::<u32>().ok()?;
    let gemma = arch.starts_with("gemma");
    let module = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_qkv" if arch == "phi3" => "self_attn.qkv_proj",
        "ffn_up" if arch == "phi3" => "mlp.gate_up_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" if arch != "llama" => "self_attn.q_norm",
        "attn_k_norm" if arch != "llama" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" if gemma => "post_attention_layernorm",
        "post_ffw_norm" if gemma => "post_feedforward_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.{suffix}"))
}

/// Undoes llama.cpp's row permutation of a q or k projection (`heads` heads
/// of `head_dim` rows): its row `h*d + 2i + j` is Hugging Face's row
/// `h*d + j*d/2 + i`. Works on packed quantised rows, scales and biases
/// alike, since quantisation groups run along the rows.
fn unpermute_rows(a: &Array, heads: i32, head_dim: i32) -> Result<Array> {
    let rows = a.dim(0)?;
    if heads <= 0 || head_dim % 2 != 0 || rows != heads * head_dim {
        return Err(Error::InvalidArgument(format!(
            "{rows} rows do not make {heads} heads of {head_dim}"
        )));
    }
    let half = head_dim / 2;
    let index: Vec<i32> = (0..rows)
        .map(|r| {
            let (h, within) = (r / head_dim, r % head_dim);
            let (j, i) = (within / half, within % half);
            h * head_dim + 2 * i + j
        })
        .collect();
    a.take(&Array::from_vec(&index)?, 0)
}

/// Llama 3's RoPE scaling, recognised from llama.cpp's `rope_freqs.weight`
/// (per-frequency divisors it computes from `rope_scaling`): the
/// `rope_scaling` entry whose divisors match the tensor.
fn llama3_scaling(g: &Gguf, config: &Value, freqs: &Array) -> Result<Value> {
    let factors = freqs.astype(Dtype::Float32)?.to_vec::<f32>()?;
    let base = config["rope_theta"].as_f64().unwrap_or(10_000.0);
    let dims = config["head_dim"].as_i64().unwrap_or(0);
    let factor = factors.iter().copied().fold(1.0f32, f32::max) as f64;
    let old = g
        .get("llama.rope.scaling.original_context_length")
        .and_then(Meta::as_u64)
        .unwrap_or(8192) as f64;
    let (low, high) = (1.0, 4.0);
    let expected: Vec<f64> = (0..dims / 2)
        .map(|i| {
            let freq = base.powf(-2.0 * i as f64 / dims as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect();
    let matches = expected.len() == factors.len()
        && expected
            .iter()
            .zip(&factors)
            .all(|(e, &f)| (e - f as f64).abs() <= 1e-3 * e.abs().max(1.0));
    if !matches {
        return Err(bad(
            &g.path,
            "tensor `rope_freqs.weight` holds RoPE frequency factors that are not Llama 3's scaling",
        ));
    }
    Ok(json!({
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": old,
    }))
}

/// The `quantization` block for MLX-quantised tensors (`NAME.scales`
/// beside a uint32 `NAME.weight`): the most common bit width as the default,
/// per-module entries for the others. `None` when nothing is quantised.
fn quantization_of(tensors: &HashMap<String, Array>) -> Option<Value> {
    let mut bits: BTreeMap<String, i64> = BTreeMap::new();
    for (name, scales) in tensors {
        let Some(module) = name.strip_suffix(".scales") else {
            continue;
        };
        let Some(weight) = tensors.get(&format!("{module}.weight")) else {
            continue;
        };
        let (packed, groups) = (weight.shape(), scales.shape());
        if let (Some(&p), Some(&s)) = (packed.last(), groups.last()) {
            if s > 0 {
                bits.insert(module.to_string(), (p / s) as i64);
            }
        }
    }
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for b in bits.values() {
        *counts.entry(*b).or_default() += 1;
    }
    let (&default, _) = counts.iter().max_by_key(|(b, n)| (**n, **b))?;
    let mut q = Map::new();
    q.insert("group_size".into(), json!(GROUP_SIZE));
    q.insert("bits".into(), json!(default));
    for (module, b) in bits {
        if b != default {
            q.insert(module, json!({"group_size": GROUP_SIZE, "bits": b}));
        }
    }
    Some(Value::Object(q))
}

/// The pre-tokenizer regular expressions llama.cpp uses for each
/// `tokenizer.ggml.pre` value (before the byte-level mapping).
fn pre_tokenizer(pre: &str) -> Option<Value> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    let steps = match pre {
        // ByteLevel's own regex is GPT-2's.
        "gpt2" | "default" => vec![byte_level(true)],
        "smollm" => vec![
            json!({"type": "Digits", "individual_digits": true}),
            byte_level(true),
        ],
        "llama-bpe" | "llama3" => vec![split(LLAMA3), byte_level(false)],
        "qwen2" => vec![split(QWEN2), byte_level(false)],
        _ => return None,
    };
    Some(json!({"type": "Sequence", "pretokenizers": steps}))
}

/// `tokenizer.json` and `tokenizer_config.json` from `tokenizer.ggml.*`.
fn tokenizer_of(g: &Gguf) -> Result<(Value, Value)> {
    let model = g.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(bad(
            &g.path,
            format!(
                "tokenizer.ggml.model `{model}` is not supported (only byte-level BPE, `gpt2`, is)"
            ),
        ));
    }
    let pre_name = match g.get("tokenizer.ggml.pre") {
        None => "default",
        Some(_) => g.str("tokenizer.ggml.pre")?,
    };
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        bad(
            &g.path,
            format!(
                "tokenizer.ggml.pre `{pre_name}` is not supported (supported: gpt2, smollm, llama-bpe, qwen2)"
            ),
        )
    })?;
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let merges = g.strings("tokenizer.ggml.merges")?;
    let types = match g.get("tokenizer.ggml.token_type") {
        Some(_) => g.ints("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(bad(
            &g.path,
            format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            ),
        ));
    }
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (&tok, &kind)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(tok.to_string(), json!(id)).is_some() {
            return Err(bad(
                &g.path,
                format!("tokenizer.ggml.tokens lists {tok:?} twice"),
            ));
        }
        // 3: control, 4: user-defined (llama.cpp's token types).
        if kind == 3 || kind == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": kind == 3,
            }));
        }
    }
    let token_at = |key: &str| -> Result<Option<String>> {
        match g.get(key) {
            None => Ok(None),
            Some(v) => {
                let id = v.as_u64().filter(|&i| (i as usize) < tokens.len());
                match id {
                    Some(i) => Ok(Some(tokens[i as usize].to_string())),
                    None => Err(bad(
                        &g.path,
                        format!(
                            "metadata key `{key}` ({v:?}) is not a token id below {}",
                            tokens.len()
                        ),
                    )),
                }
            }
        }
    };
    let bos = token_at("tokenizer.ggml.bos_token_id")?;
    let eos = token_at("tokenizer.ggml.eos_token_id")?;
    let pad = token_at("tokenizer.ggml.padding_token_id")?;
    let add_bos = g
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Meta::as_bool)
        .unwrap_or(false);
    let post = match (&bos, add_bos) {
        (Some(b), true) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b.clone(): {"id": b, "ids": [vocab[b.as_str()]], "tokens": [b]}},
        }),
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let mut cfg = Map::new();
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    cfg.insert("add_bos_token".into(), json!(add_bos));
    for (field, tok) in [("bos_token", bos), ("eos_token", eos), ("pad_token", pad)] {
        if let Some(t) = tok {
            cfg.insert(field.into(), json!(t));
        }
    }
    if let Some(t) = g.get("tokenizer.chat_template") {
        let t = t
            .as_str()
            .ok_or_else(|| bad(&g.path, "tokenizer.chat_template is not a string"))?;
        cfg.insert("chat_template".into(), json!(t));
    }
    Ok((tokenizer, Value::Object(cfg)))
}

/// Writes the GGUF file `gguf` as a standard MLX model directory `out`
/// (config.json with its `quantization` block, model.safetensors,
/// tokenizer.json, tokenizer_config.json with the chat template), which
/// `mlx_lm.load` opens. `out` must not exist or be empty: nothing is
/// overwritten. The files are written into a sibling folder first and
/// moved into place at the end.
///
/// ```no_run
/// use std::path::Path;
/// mlx_metal::llm::gguf::convert(Path::new("model.Q4_1.gguf"), Path::new("model-mlx"))?;
/// # Ok::<(), mlx_metal::Error>(())
/// ```
pub fn convert(gguf: &Path, out: &Path) -> Result<()> {
    convert_to(gguf, out, None)
}

/// [`convert`], with every weight in `dtype` when given: quantised tensors
/// are dequantised and the `quantization` block dropped, float tensors cast.
pub fn convert_to(gguf: &Path, out: &Path, dtype: Option<Dtype>) -> Result<()> {
    super::check_new_output_dir(out)?;
    let mut model = load(gguf)?;
    if let Some(dtype) = dtype {
        dense(&mut model, dtype)?;
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let staging = out.with_file_name(format!(".{name}.converting-{}", std::process::id()));
    let result = write_dir(&model, &staging).and_then(|()| {
        if out.exists() {
            std::fs::remove_dir(out).map_err(|e| bad(out, e.to_string()))?;
        }
        std::fs::rename(&staging, out).map_err(|e| bad(out, e.to_string()))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Dequantises every MLX-quantised triple and casts all float tensors to
/// `dtype`.
fn dense(model: &mut GgufModel, dtype: Dtype) -> Result<()> {
    let modules: Vec<String> = model
        .tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".scales").map(str::to_string))
        .collect();
    for module in modules {
        let take = |t: &mut HashMap<String, Array>, s: &str| {
            t.remove(&format!("{module}.{s}"))
                .ok_or_else(|| Error::InvalidArgument(format!("`{module}.{s}` is missing")))
        };
        let weight = take(&mut model.tensors, "weight")?;
        let scales = take(&mut model.tensors, "scales")?;
        let biases = take(&mut model.tensors, "biases")?;
        let bits = weight.dim(-1)? / scales.dim(-1)?;
        let q = crate::QuantizedWeight {
            weight,
            scales,
            biases,
            group_size: GROUP_SIZE as i32,
            bits,
        };
        model
            .tensors
            .insert(format!("{module}.weight"), q.dequantize()?);
    }
    for t in model.tensors.values_mut() {
        *t = t.astype(dtype)?;
    }
    if let Some(c) = model.config_json.as_object_mut() {
        c.remove("quantization");
    }
    model.config = Config::from_value(model.config_json.clone(), &model.config.path)?;
    Ok(())
}

fn write_dir(model: &GgufModel, dir: &Path) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| bad(path, e.to_string());
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let write_json = |file: &str, value: &Value| -> Result<()> {
        let path = dir.join(file);
        let text = serde_json::to_string_pretty(value).map_err(|e| bad(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| io(&path, e))
    };
    write_json("config.json", &model.config_json)?;
    write_json("tokenizer.json", &model.tokenizer_json)?;
    write_json("tokenizer_config.json", &model.tokenizer_config)?;
    let metadata = HashMap::from([("format".to_string(), "mlx".to_string())]);
    crate::save_safetensors(dir.join("model.safetensors"), &model.tensors, &metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{PreTokenizedString, PreTokenizer, PreTokenizerWrapper};

    /// The pieces `pre` cuts `text` into (in byte-level form: `Ġ` is a space).
    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let p: PreTokenizerWrapper = serde_json::from_value(pre_tokenizer(pre).unwrap()).unwrap();
        let mut s = PreTokenizedString::from(text);
        p.pre_tokenize(&mut s).unwrap();
        s.get_splits(
            tokenizers::OffsetReferential::Original,
            tokenizers::OffsetType::Byte,
        )
        .into_iter()
        .map(|(piece, _, _)| piece.to_string())
        .collect()
    }

    #[test]
    fn each_pre_tokenizer_splits_digits_its_own_way() {
        let text = "Year 12345, it's";
        assert_eq!(pieces("gpt2", text), ["Year", "Ġ12345", ",", "Ġit", "'s"]);
        assert_eq!(
            pieces("smollm", text),
            ["Year", "Ġ", "1", "2", "3", "4", "5", ",", "Ġit", "'s"]
        );
        assert_eq!(
            pieces("llama-bpe", text),
            ["Year", "Ġ", "123", "45", ",", "Ġit", "'s"]
        );
        assert_eq!(
            pieces("qwen2", text),
            ["Year", "Ġ", "1", "2", "3", "4", "5", ",", "Ġit", "'s"]
        );
        assert!(pre_tokenizer("bloom").is_none());
    }

    #[test]
    fn tensor_names_map_per_architecture() {
        assert_eq!(
            hf_name("blk.3.attn_q.scales", "llama").as_deref(),
            Some("model.layers.3.self_attn.q_proj.scales")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", "llama").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", "gemma3").as_deref(),
            Some("model.layers.0.pre_feedforward_layernorm.weight")
        );
        assert_eq!(
            hf_name("blk.1.attn_k_norm.weight", "qwen3").as_deref(),
            Some("model.layers.1.self_attn.k_norm.weight")
        );
        assert_eq!(hf_name("blk.1.attn_k_norm.weight", "llama"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight", "llama"), None);
        assert_eq!(
            hf_name("token_embd.weight", "qwen3").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_name("output.weight", "llama").as_deref(),
            Some("lm_head.weight")
        );
    }

    #[test]
    fn unpermuting_inverts_llama_cpp_row_order() {
        // 2 heads of 4 rows: GGUF row h*4 + 2i + j holds HF row h*4 + 2j + i.
        let gguf: Vec<f32> = vec![0., 2., 1., 3., 4., 6., 5., 7.];
        let a = Array::from_slice(&gguf, &[8, 1]).unwrap();
        let back = unpermute_rows(&a, 2, 4).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(back, [0., 1., 2., 3., 4., 5., 6., 7.]);
        assert!(unpermute_rows(&a, 3, 4).is_err());
    }
}
