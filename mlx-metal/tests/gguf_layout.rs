//! The GGUF mapping proved in float32: each reference fixture is written as
//! llama.cpp's converter lays it out (GGUF tensor names, `llama`'s q/k rows
//! permuted for interleaved RoPE and Llama 3 scaling as `rope_freqs`,
//! Gemma's norms stored as `1 + w`, the tokenizer in `tokenizer.ggml.*`),
//! then loaded back natively: prompt ids equal mlx_lm's and the logits match
//! mlx_lm's on the original directory to 1e-4.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fixtures, ids, reference};
use inference::gguf::{write, TensorData, TensorType, Value};
use inference::TextModel;
use mlx_metal::llm::NativeModel;
use mlx_metal::{load_safetensors, Array, Dtype};
use serde_json::Value as Json;

fn json(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The GGUF name of a Hugging Face tensor name.
fn gguf_name(hf: &str, gemma: bool) -> String {
    let top = [
        ("model.embed_tokens.", "token_embd."),
        ("model.norm.", "output_norm."),
        ("lm_head.", "output."),
    ];
    for (from, to) in top {
        if let Some(rest) = hf.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (layer, rest) = rest.split_once('.').unwrap();
    let (module, suffix) = rest.rsplit_once('.').unwrap();
    let part = match (module, gemma) {
        ("input_layernorm", _) => "attn_norm",
        ("self_attn.q_proj", _) => "attn_q",
        ("self_attn.qkv_proj", _) => "attn_qkv",
        ("mlp.gate_up_proj", _) => "ffn_up",
        ("self_attn.k_proj", _) => "attn_k",
        ("self_attn.v_proj", _) => "attn_v",
        ("self_attn.o_proj", _) => "attn_output",
        ("self_attn.q_norm", _) => "attn_q_norm",
        ("self_attn.k_norm", _) => "attn_k_norm",
        ("mlp.gate_proj", _) => "ffn_gate",
        ("mlp.up_proj", _) => "ffn_up",
        ("mlp.down_proj", _) => "ffn_down",
        ("post_attention_layernorm", false) => "ffn_norm",
        ("post_attention_layernorm", true) => "post_attention_norm",
        ("pre_feedforward_layernorm", true) => "ffn_norm",
        ("post_feedforward_layernorm", true) => "post_ffw_norm",
        other => panic!("no GGUF name for {other:?}"),
    };
    format!("blk.{layer}.{part}.{suffix}")
}

/// llama.cpp's permutation of q/k rows: HF row `h*d + j*d/2 + i` goes to
/// GGUF row `h*d + 2i + j`.
fn permute(rows: &[f32], heads: usize, width: usize) -> Vec<f32> {
    let d = rows.len() / width / heads;
    let mut out = vec![0.0; rows.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..d / 2 {
                let from = (h * d + j * d / 2 + i) * width;
                let to = (h * d + 2 * i + j) * width;
                out[to..to + width].copy_from_slice(&rows[from..from + width]);
            }
        }
    }
    out
}

/// llama.cpp's per-frequency divisors for Llama 3 RoPE scaling.
fn rope_freqs(c: &Json, head_dim: usize) -> Vec<f32> {
    let s = &c["rope_scaling"];
    let num = |k: &str| s[k].as_f64().unwrap();
    let (factor, low, high, old) = (
        num("factor"),
        num("low_freq_factor"),
        num("high_freq_factor"),
        num("original_max_position_embeddings"),
    );
    let base = c["rope_theta"].as_f64().unwrap();
    (0..head_dim / 2)
        .map(|i| {
            let freq = base.powf(-2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

fn f32_tensor(name: String, shape: Vec<u64>, data: &[f32]) -> TensorData {
    TensorData {
        name,
        shape,
        kind: TensorType::named("F32").unwrap(),
        data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Writes fixture `dir` as llama.cpp would, to `out`.
fn write_as_llama_cpp(dir: &Path, arch: &str, out: &Path) {
    let c = json(&dir.join("config.json"));
    let gemma = arch.starts_with("gemma");
    let int = |k: &str| c[k].as_u64().unwrap();
    let heads = int("num_attention_heads") as usize;
    let kv_heads = c["num_key_value_heads"].as_u64().unwrap_or(heads as u64) as usize;
    let hidden = int("hidden_size") as usize;
    let head_dim = c["head_dim"].as_u64().unwrap_or((hidden / heads) as u64) as usize;

    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("general.architecture", Value::String(arch.into()));
    let a = |k: &str| format!("{arch}.{k}");
    put(
        &a("block_count"),
        Value::U32(int("num_hidden_layers") as u32),
    );
    put(&a("embedding_length"), Value::U32(hidden as u32));
    put(
        &a("feed_forward_length"),
        Value::U32(int("intermediate_size") as u32),
    );
    put(&a("attention.head_count"), Value::U32(heads as u32));
    put(&a("attention.head_count_kv"), Value::U32(kv_heads as u32));
    put(&a("attention.key_length"), Value::U32(head_dim as u32));
    put(
        &a("context_length"),
        Value::U32(int("max_position_embeddings") as u32),
    );
    put(
        &a("attention.layer_norm_rms_epsilon"),
        Value::F32(c["rms_norm_eps"].as_f64().unwrap() as f32),
    );
    put(
        &a("rope.freq_base"),
        Value::F32(c["rope_theta"].as_f64().unwrap() as f32),
    );
    if arch == "gemma2" {
        for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
            put(&a(k), Value::F32(c[k].as_f64().unwrap() as f32));
        }
    }
    if arch == "gemma3" {
        put(
            &a("attention.sliding_window"),
            Value::U32(int("sliding_window") as u32),
        );
        put(
            &a("attention.sliding_window_pattern"),
            Value::U32(int("sliding_window_pattern") as u32),
        );
    }
    if c["rope_scaling"]["rope_type"] == "llama3" {
        put(
            &a("rope.scaling.original_context_length"),
            Value::U32(
                c["rope_scaling"]["original_max_position_embeddings"]
                    .as_u64()
                    .unwrap() as u32,
            ),
        );
    }

    // The tokenizer, from tokenizer.json and tokenizer_config.json.
    let tok = json(&dir.join("tokenizer.json"));
    let tok_cfg = json(&dir.join("tokenizer_config.json"));
    assert_eq!(
        tok["pre_tokenizer"]["type"], "ByteLevel",
        "GPT-2 style fixture"
    );
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let mut types = vec![1i32; tokens.len()];
    for added in tok["added_tokens"].as_array().unwrap() {
        let id = added["id"].as_u64().unwrap() as usize;
        if id >= tokens.len() {
            tokens.resize(id + 1, String::new());
            types.resize(id + 1, 1);
        }
        tokens[id] = added["content"].as_str().unwrap().to_string();
        types[id] = if added["special"] == true { 3 } else { 4 };
    }
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| match p {
            Json::String(s) => Value::String(s.clone()),
            Json::Array(pair) => Value::String(format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            )),
            other => panic!("merge {other:?}"),
        })
        .collect();
    let id_of = |t: &Json| {
        let t = t.as_str().or_else(|| t["content"].as_str())?;
        tokens.iter().position(|x| x == t).map(|i| i as u32)
    };
    put("tokenizer.ggml.model", Value::String("gpt2".into()));
    put("tokenizer.ggml.pre", Value::String("gpt2".into()));
    put(
        "tokenizer.ggml.tokens",
        Value::Array(tokens.iter().cloned().map(Value::String).collect()),
    );
    put(
        "tokenizer.ggml.token_type",
        Value::Array(types.into_iter().map(Value::I32).collect()),
    );
    put("tokenizer.ggml.merges", Value::Array(merges));
    for (key, field) in [("bos_token_id", "bos_token"), ("eos_token_id", "eos_token")] {
        if let Some(id) = id_of(&tok_cfg[field]) {
            put(&format!("tokenizer.ggml.{key}"), Value::U32(id));
        }
    }
    put(
        "tokenizer.ggml.add_bos_token",
        Value::Bool(tok["post_processor"]["type"] == "TemplateProcessing"),
    );
    if let Some(t) = tok_cfg["chat_template"].as_str() {
        put("tokenizer.chat_template", Value::String(t.into()));
    }

    let weights = load_safetensors(dir.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = weights.tensors.keys().collect();
    names.sort();
    let mut tensors = Vec::new();
    for name in names {
        let array = weights.tensors[name].astype(Dtype::Float32).unwrap();
        let shape: Vec<u64> = array.shape().iter().map(|&d| d as u64).collect();
        let mut data = array.to_vec::<f32>().unwrap();
        let width = *shape.last().unwrap() as usize;
        if arch == "llama" && name.contains("self_attn.q_proj.") {
            data = permute(&data, heads, width);
        } else if arch == "llama" && name.contains("self_attn.k_proj.") {
            data = permute(&data, kv_heads, width);
        }
        if gemma && name.ends_with("norm.weight") {
            data.iter_mut().for_each(|x| *x += 1.0);
        }
        tensors.push(f32_tensor(gguf_name(name, gemma), shape, &data));
    }
    if arch == "phi3" {
        let rotated = (head_dim as f64 * c["partial_rotary_factor"].as_f64().unwrap()) as u32;
        put(&a("rope.dimension_count"), Value::U32(rotated));
        put(
            &a("rope.scaling.original_context_length"),
            Value::U32(int("original_max_position_embeddings") as u32),
        );
    }
    if c["rope_scaling"]["type"] == "longrope" {
        for which in ["long", "short"] {
            let f: Vec<f32> = c["rope_scaling"][format!("{which}_factor")]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            tensors.push(f32_tensor(
                format!("rope_factors_{which}.weight"),
                vec![f.len() as u64],
                &f,
            ));
        }
    }
    if c["rope_scaling"]["rope_type"] == "llama3" {
        let freqs = rope_freqs(&c, head_dim);
        tensors.push(f32_tensor(
            "rope_freqs.weight".into(),
            vec![freqs.len() as u64],
            &freqs,
        ));
    }
    write(out, &m, &tensors).unwrap();
}

#[test]
fn fixtures_written_as_gguf_match_mlx_lm() {
    let scratch = test_support::ScratchDir::new("layout");
    let families = [
        ("llama", "llama"),
        ("qwen2", "qwen2"),
        ("qwen3", "qwen3"),
        ("phi3", "phi3"),
        ("gemma2", "gemma2"),
        ("gemma3_text", "gemma3"),
    ];
    for (fixture, arch) in families {
        let dir = fixtures().join(fixture);
        let file = scratch.join(format!("{fixture}.gguf"));
        write_as_llama_cpp(&dir, arch, &file);
        let r = reference(&dir);
        let mut model = NativeModel::load(&file).unwrap();
        assert_eq!(model.info().architecture, r["model_type"].as_str().unwrap());
        let prompt = ids(&r["raw"]["prompt_ids"]);
        let encoded = model
            .tokenizer()
            .encode_prompt(r["raw"]["prompt"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            encoded, prompt,
            "{fixture}: prompt ids from the GGUF tokenizer"
        );

        let arch_model = model.architecture();
        let mut caches = arch_model.make_caches();
        let n = prompt.len() as i32;
        let logits = arch_model
            .forward(&Array::from_slice(&prompt, &[1, n]).unwrap(), &mut caches)
            .unwrap()
            .slice_axis(1, n - 1, n)
            .unwrap()
            .astype(Dtype::Float32)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let want: Vec<f32> = r["raw"]["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let worst = logits
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{fixture}: max |diff| {worst}");

        let opts = inference::GenerateOptions::default().max_tokens(8);
        let greedy: Vec<u32> = model
            .generate(r["raw"]["prompt"].as_str().unwrap(), &opts)
            .map(|t| t.unwrap().id)
            .collect();
        let want = ids(&r["raw"]["greedy_ids"]);
        assert_eq!(
            greedy[..],
            want[..greedy.len().min(want.len())],
            "{fixture} greedy"
        );
    }
}
