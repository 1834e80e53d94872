//! Broken model directories: each is an `Err` naming the file and the
//! tensor or key at fault. Nothing panics or aborts.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{copy_model, fixtures};
use mlx_metal::llm::NativeModel;
use mlx_metal::{load_safetensors, save_safetensors, Array, Error};

fn load_err(dir: &Path) -> Error {
    match NativeModel::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

fn file_error(e: &Error) -> (&PathBuf, &str) {
    match e {
        Error::File { path, message } => (path, message.as_str()),
        other => panic!("expected Error::File, got {other:?}"),
    }
}

/// Rewrites `dir/model.safetensors` from the fixture's, changed by `edit`.
fn rewrite(dir: &Path, fixture: &str, edit: impl FnOnce(&mut HashMap<String, Array>)) {
    let mut st = load_safetensors(fixtures().join(fixture).join("model.safetensors")).unwrap();
    edit(&mut st.tensors);
    save_safetensors(dir.join("model.safetensors"), &st.tensors, &st.metadata).unwrap();
}

#[test]
fn missing_files_are_named() {
    let dir = copy_model(&fixtures().join("llama"), "no-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    let (path, msg) = file_error(&e);
    assert_eq!(path, &dir.join("config.json"));
    assert!(msg.contains("missing"), "{e}");

    let dir = copy_model(&fixtures().join("llama"), "no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.to_string().contains("no *.safetensors"), "{e}");

    let dir = copy_model(&fixtures().join("llama"), "no-tokenizer");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = load_err(&dir);
    assert_eq!(file_error(&e).0, &dir.join("tokenizer.json"));

    let e = load_err(Path::new("/no/such/model"));
    assert_eq!(e.to_string(), "/no/such/model: no such model directory");
}

#[test]
fn bad_config_is_named() {
    let dir = copy_model(&fixtures().join("qwen3"), "bad-json");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let e = load_err(&dir);
    assert!(file_error(&e).1.contains("invalid JSON"), "{e}");

    let dir = copy_model(&fixtures().join("qwen3"), "unknown-type");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "mamba9"}"#).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(&e, Error::UnsupportedModel { path, model_type, .. } if path == &dir.join("config.json") && model_type == "mamba9"),
        "{e}"
    );
    // through the API: Unsupported, so that auto-selection can fall back
    mlx_metal::ensure_registered();
    let e = inference::load_model_with(
        &dir,
        inference::LoadOptions::default().backend(mlx_metal::backend_name()),
    )
    .err()
    .unwrap();
    assert!(matches!(e, inference::Error::Unsupported(_)), "{e}");
    assert!(
        e.to_string().contains("config.json") && e.to_string().contains("mamba9"),
        "{e}"
    );

    let dir = copy_model(&fixtures().join("qwen3"), "no-head-dim");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("head_dim");
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    assert!(load_err(&dir).to_string().contains("head_dim"));
}

/// Every family: a required key removed, and a key of the wrong type, are
/// errors naming config.json and the key.
#[test]
fn missing_and_mistyped_keys_name_config_json_and_the_key() {
    for family in [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "phi3",
        "gemma2",
        "gemma3_text",
    ] {
        for (case, edit) in [
            ("missing", None),
            ("mistyped", Some(serde_json::json!("four"))),
        ] {
            let dir = copy_model(&fixtures().join(family), &format!("{family}-{case}"));
            let path = dir.join("config.json");
            let mut cfg: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let obj = cfg.as_object_mut().unwrap();
            // gemma3_text has a default for every key: only a wrong type fails.
            if family == "gemma3_text" && edit.is_none() {
                continue;
            }
            match &edit {
                None => obj.remove("num_attention_heads"),
                Some(v) => obj.insert("num_attention_heads".into(), v.clone()),
            };
            std::fs::write(&path, cfg.to_string()).unwrap();
            let e = load_err(&dir);
            let (file, msg) = file_error(&e);
            assert_eq!(file, &path, "{family} {case}: {e}");
            assert!(msg.contains("num_attention_heads"), "{family} {case}: {e}");
        }
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = copy_model(&fixtures().join("llama"), "missing-tensor");
    rewrite(&dir, "llama", |t| {
        t.remove("model.layers.1.mlp.up_proj.weight").unwrap();
    });
    let e = load_err(&dir);
    assert!(
        e.to_string()
            .contains("`model.layers.1.mlp.up_proj.weight` is missing"),
        "{e}"
    );
    // one weight file: the error names it
    assert_eq!(file_error(&e).0, &dir.join("model.safetensors"));
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_its_file() {
    let dir = copy_model(&fixtures().join("qwen3"), "wrong-shape");
    rewrite(&dir, "qwen3", |t| {
        let w = t["model.layers.0.self_attn.q_proj.weight"].clone();
        let s = w.shape();
        t.insert(
            "model.layers.0.self_attn.q_proj.weight".into(),
            w.reshape(&[s[1], s[0]]).unwrap(),
        );
    });
    let e = load_err(&dir);
    let (path, msg) = file_error(&e);
    assert_eq!(path, &dir.join("model.safetensors"));
    assert!(
        msg.contains("model.layers.0.self_attn.q_proj.weight")
            && msg.contains("expected [128, 64]"),
        "{e}"
    );
}

#[test]
fn truncated_and_corrupt_weights_are_named() {
    let dir = copy_model(&fixtures().join("gemma3_text"), "truncated");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = load_err(&dir);
    let (path, msg) = file_error(&e);
    assert_eq!(path, &dir.join("model.safetensors"));
    assert!(msg.contains("truncated"), "{e}");

    let dir = copy_model(&fixtures().join("gemma3_text"), "corrupt");
    std::fs::write(
        dir.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json!!!}",
    )
    .unwrap();
    let e = load_err(&dir);
    let (path, msg) = file_error(&e);
    assert_eq!(path, &dir.join("model.safetensors"));
    assert!(msg.contains("corrupt"), "{e}");

    std::fs::write(dir.join("model.safetensors"), b"tiny").unwrap();
    assert!(file_error(&load_err(&dir)).1.contains("truncated"));
}

#[test]
fn a_quantised_layer_without_scales_is_named() {
    let dir = copy_model(&fixtures().join("llama-4bit"), "no-scales");
    rewrite(&dir, "llama-4bit", |t| {
        t.remove("model.layers.0.self_attn.q_proj.scales").unwrap();
    });
    let e = load_err(&dir);
    let (path, msg) = file_error(&e);
    assert_eq!(path, &dir.join("model.safetensors"));
    assert!(
        msg.contains("model.layers.0.self_attn.q_proj.scales") && msg.contains("missing"),
        "{e}"
    );

    let dir = copy_model(&fixtures().join("llama-4bit"), "no-quant-config");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("quantization");
    cfg.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(e.to_string().contains("no `quantization` block"), "{e}");
}

#[test]
fn sharded_weights_load_through_the_index() {
    let dir = copy_model(&fixtures().join("qwen3"), "sharded");
    let st = load_safetensors(fixtures().join("qwen3/model.safetensors")).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = st.tensors.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let shard: HashMap<String, Array> = part
            .iter()
            .map(|n| ((*n).clone(), st.tensors[*n].clone()))
            .collect();
        save_safetensors(dir.join(file), &shard, &st.metadata).unwrap();
        for n in part {
            map.insert((*n).clone(), serde_json::Value::String(file.into()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let r = common::reference(&fixtures().join("qwen3"));
    let mut model = NativeModel::load(&dir).unwrap();
    use inference::TextModel;
    let got: Vec<u32> = model
        .generate(
            r["raw"]["prompt"].as_str().unwrap(),
            &inference::GenerateOptions::default().max_tokens(10),
        )
        .map(|t| t.unwrap().id)
        .collect();
    assert_eq!(got, common::ids(&r["raw"]["greedy_ids"])[..10]);

    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&dir);
    assert_eq!(
        file_error(&e).0,
        &dir.join("model-00002-of-00002.safetensors")
    );
}

#[test]
fn half_precision_weights_keep_their_dtype() {
    use inference::TextModel;
    for (name, dtype) in [
        ("bf16", mlx_metal::Dtype::Bfloat16),
        ("f16", mlx_metal::Dtype::Float16),
    ] {
        let dir = copy_model(&fixtures().join("qwen3"), name);
        rewrite(&dir, "qwen3", |t| {
            for v in t.values_mut() {
                *v = v.astype(dtype).unwrap();
            }
        });
        let st = load_safetensors(dir.join("model.safetensors")).unwrap();
        assert!(st.tensors.values().all(|a| a.dtype() == dtype));
        let mut model = NativeModel::load_with_dtype(&dir, inference::ComputeDtype::Model).unwrap();
        let ids = Array::from_slice(&[1i32, 2, 3], &[1, 3]).unwrap();
        let mut caches = model.architecture().make_caches();
        let logits = model.architecture().forward(&ids, &mut caches).unwrap();
        assert_eq!(
            logits.dtype(),
            dtype,
            "{name}: computed in the weights' dtype"
        );
        let n = model
            .generate("abc", &inference::GenerateOptions::default().max_tokens(5))
            .map(|t| t.map(|_| ()))
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .len();
        assert_eq!(n, 5);
    }
}
