//! Broken model directories, each built from a copy of a fixture: the CLI
//! must exit with status 1 and a message naming the file and the key or
//! tensor at fault, never panic (101), abort (134) or crash (139).
#![cfg(feature = "metal")]

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use test_support::{fixtures, ScratchDir};

/// Runs `mlx-infer generate` on `dir`; returns the exit code and stderr.
fn generate(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-infer"))
        .args([
            "generate",
            "--max-tokens",
            "3",
            "--prompt",
            "hello world",
            "--model",
        ])
        .arg(dir)
        .args(extra)
        .env("MLXLM_PYTHON", test_support::python())
        .output()
        .expect("run mlx-infer");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a clean refusal: status 1, and `needles` (file, key) in the
/// message.
fn refused(case: &str, dir: &Path, needles: &[&str]) {
    refused_by(case, dir, needles, &[]);
}

/// [`refused`], with extra arguments (a backend).
fn refused_by(case: &str, dir: &Path, needles: &[&str], extra: &[&str]) {
    let (code, stderr) = generate(dir, extra);
    assert_eq!(code, Some(1), "{case}: exit {code:?}\n{stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{case}: `{needle}` not in the message:\n{stderr}"
        );
    }
    for crash in ["panicked", "RUST_BACKTRACE", ".cpp", "terminate called"] {
        assert!(!stderr.contains(crash), "{case}: {crash} in\n{stderr}");
    }
}

fn config_case(fixture: &str, case: &str, edit: impl FnOnce(&mut Value), needles: &[&str]) {
    let dir = ScratchDir::copy_of(&fixtures().join(fixture), case);
    dir.edit_config(edit);
    let mut all = vec!["config.json"];
    all.extend_from_slice(needles);
    refused(case, dir.path(), &all);
    // the mlxlm backend applies the same checks before Python sees the
    // file (the vocabulary against the tokenizer is mlx_lm's own check)
    if !needles.contains(&"vocab_size") {
        refused_by(case, dir.path(), &all, &["--backend", "mlxlm"]);
    }
}

#[test]
fn bad_config_numbers_are_refused_naming_the_key() {
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("qwen3", "num_hidden_layers", json!(0), "num_hidden_layers"),
        (
            "qwen3",
            "num_hidden_layers",
            json!(1_000_000_000),
            "num_hidden_layers",
        ),
        ("qwen3", "num_hidden_layers", json!(-3), "num_hidden_layers"),
        (
            "qwen3",
            "num_attention_heads",
            json!(0),
            "num_attention_heads",
        ),
        (
            "qwen3",
            "num_key_value_heads",
            json!(3),
            "num_key_value_heads",
        ),
        (
            "qwen3",
            "intermediate_size",
            json!(1_000_000_000_000i64),
            "intermediate_size",
        ),
        (
            "qwen3",
            "intermediate_size",
            json!(100_000_000),
            "intermediate_size",
        ),
        ("qwen3", "vocab_size", json!(100), "vocab_size"),
        ("qwen3", "rope_theta", json!(0), "rope_theta"),
        ("qwen3", "rms_norm_eps", json!(-1), "rms_norm_eps"),
        ("qwen3", "hidden_size", json!("64"), "hidden_size"),
        ("qwen3", "head_dim", json!(1.5), "head_dim"),
        (
            "llama",
            "num_attention_heads",
            json!(3),
            "num_attention_heads",
        ),
        ("gemma3_text", "sliding_window", json!(0), "sliding_window"),
        (
            "gemma2",
            "query_pre_attn_scalar",
            json!(-1),
            "query_pre_attn_scalar",
        ),
    ];
    for (fixture, key, value, needle) in cases {
        let case = format!("{fixture}-{key}-{value}");
        let (k, v) = (key.to_string(), value.clone());
        config_case(
            fixture,
            &case,
            move |c| {
                if k == "num_attention_heads" && v == json!(3) {
                    c["num_key_value_heads"] = json!(1);
                }
                c[k.as_str()] = v;
            },
            &[needle],
        );
    }
}

#[test]
fn unsupported_quantisation_is_refused() {
    for (q, needle) in [
        (json!({"group_size": 0, "bits": 4}), "group_size"),
        (json!({"group_size": 64, "bits": 9}), "bits"),
        (
            json!({"group_size": 64, "bits": 4, "mode": "banana"}),
            "banana",
        ),
        (
            json!({"group_size": 64, "bits": 4, "mode": "mxfp4"}),
            "mxfp4",
        ),
        (json!("four bits"), "quantization"),
    ] {
        let case = format!("quant-{needle}");
        config_case(
            "qwen3-4bit",
            &case,
            |c| c["quantization"] = q.clone(),
            &[needle],
        );
    }
}

/// The tensors of a safetensors header, sorted by their data offset.
fn tensors_by_offset(header: &Value) -> Vec<String> {
    let mut names: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    names.sort_by_key(|n| header[n]["data_offsets"][0].as_u64().unwrap());
    names
}

fn weights_case(case: &str, edit: impl FnOnce(&mut Value, &mut Vec<u8>) -> String) {
    let dir = ScratchDir::copy_of(&fixtures().join("qwen3"), case);
    let mut tensor = String::new();
    dir.edit_safetensors("model.safetensors", |h, d| tensor = edit(h, d));
    refused(case, dir.path(), &["model.safetensors", &tensor]);
}

#[test]
fn bad_weights_are_refused_naming_the_tensor() {
    weights_case("unused-tensor", |h, data| {
        let first = tensors_by_offset(h)[0].clone();
        let (a, b) = (
            h[&first]["data_offsets"][0].as_u64().unwrap() as usize,
            h[&first]["data_offsets"][1].as_u64().unwrap() as usize,
        );
        let start = data.len();
        let copy = data[a..b].to_vec();
        data.extend_from_slice(&copy);
        let name = "model.layers.7.mlp.gate_proj.weight".to_string();
        h[&name] = json!({
            "dtype": h[&first]["dtype"].clone(),
            "shape": h[&first]["shape"].clone(),
            "data_offsets": [start, start + copy.len()],
        });
        name
    });
    weights_case("overlapping-offsets", |h, _| {
        let names = tensors_by_offset(h);
        let (first, second) = (&names[0], &names[1]);
        let len = h[second]["data_offsets"][1].as_u64().unwrap()
            - h[second]["data_offsets"][0].as_u64().unwrap();
        let start = h[first]["data_offsets"][0].as_u64().unwrap();
        h[second]["data_offsets"] = json!([start, start + len]);
        // either tensor of the overlapping pair may be named
        "inside the previous tensor".to_string()
    });
    for (case, shape) in [
        ("shape-2p32", json!([4294967360u64])),
        ("shape-string", json!("64")),
        ("shape-2p40", json!([1u64 << 40, 1u64 << 40])),
    ] {
        weights_case(case, |h, _| {
            let name = tensors_by_offset(h)[0].clone();
            h[&name]["shape"] = shape.clone();
            name
        });
    }
    weights_case("missing-tensor", |h, data| {
        let last = tensors_by_offset(h).last().unwrap().clone();
        let start = h[&last]["data_offsets"][0].as_u64().unwrap() as usize;
        data.truncate(start);
        h.as_object_mut().unwrap().remove(&last);
        last
    });
}

#[test]
fn missing_and_corrupt_files_are_named() {
    let dir = ScratchDir::copy_of(&fixtures().join("qwen3"), "no-config");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    refused("no config.json", dir.path(), &["config.json", "missing"]);

    let dir = ScratchDir::copy_of(&fixtures().join("qwen3"), "bad-json");
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": ").unwrap();
    refused("invalid config.json", dir.path(), &["config.json", "JSON"]);

    let dir = ScratchDir::copy_of(&fixtures().join("qwen3"), "truncated-tokenizer");
    let tokenizer = std::fs::read(dir.path().join("tokenizer.json")).unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        &tokenizer[..tokenizer.len() / 2],
    )
    .unwrap();
    refused("truncated tokenizer.json", dir.path(), &["tokenizer.json"]);

    let dir = ScratchDir::copy_of(&fixtures().join("qwen3"), "truncated-weights");
    let weights = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &weights[..weights.len() - 100],
    )
    .unwrap();
    refused(
        "truncated weights",
        dir.path(),
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn non_finite_logits_stop_with_an_error_on_both_backends() {
    let dir = ScratchDir::copy_of(&fixtures().join("qwen3"), "nan-norm");
    dir.edit_safetensors("model.safetensors", |h, data| {
        let t = &h["model.norm.weight"];
        assert_eq!(t["dtype"], "F32");
        let (a, b) = (
            t["data_offsets"][0].as_u64().unwrap() as usize,
            t["data_offsets"][1].as_u64().unwrap() as usize,
        );
        for chunk in data[a..b].chunks_mut(4) {
            chunk.copy_from_slice(&f32::NAN.to_le_bytes());
        }
    });
    for backend in [inference::native_backend_name(), "mlxlm"] {
        let (code, stderr) = generate(dir.path(), &["--backend", backend]);
        assert_eq!(code, Some(1), "{backend}: {stderr}");
        assert!(stderr.contains("non-finite logits"), "{backend}: {stderr}");
        assert!(!stderr.contains("stop: eos"), "{backend}: {stderr}");
    }
    // batched generation too
    let (code, stderr) = cli(
        &[
            "batch",
            "--max-tokens",
            "3",
            "--model",
            dir.path().to_str().unwrap(),
        ],
        b"hello\nworld\n",
    );
    assert_eq!(code, Some(1), "batch: {stderr}");
    assert!(stderr.contains("non-finite logits"), "batch: {stderr}");
}

/// Runs the CLI with `args`; returns the exit code and stderr.
fn cli(args: &[&str], stdin: &[u8]) -> (Option<i32>, String) {
    let out = test_support::output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_mlx-infer"))
            .args(args)
            .env("MLXLM_PYTHON", test_support::python()),
        stdin,
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_options_and_empty_inputs_are_refused_like_an_empty_prompt() {
    let model = fixtures().join("qwen3");
    let m = model.to_str().unwrap();
    for (args, stdin, needle) in [
        (
            vec!["chat", "--model", m, "--message", ""],
            &b""[..],
            "message 1 (user) is empty",
        ),
        (vec!["chat", "--model", m], &b""[..], "is empty"),
        (
            vec!["generate", "--model", m, "--prompt", ""],
            &b""[..],
            "the prompt is empty",
        ),
        (
            vec!["generate", "--model", m],
            &b""[..],
            "the prompt is empty",
        ),
        (
            vec!["bench", "--model", m, "--prompt", "hi", "--runs", "0"],
            &b""[..],
            "--runs",
        ),
        (
            vec!["bench", "--model", m, "--prompt", "hi", "--max-tokens", "0"],
            &b""[..],
            "--max-tokens",
        ),
        (
            vec![
                "generate",
                "--model",
                m,
                "--prompt",
                "hi",
                "--temperature=inf",
            ],
            &b""[..],
            "temperature must be a finite number >= 0",
        ),
        (
            vec![
                "generate",
                "--model",
                m,
                "--prompt",
                "hi",
                "--backend",
                if inference::native_backend_name() == "mlx" {
                    "metal"
                } else {
                    "mlx"
                },
            ],
            &b""[..],
            "not available on this platform",
        ),
        (
            vec![
                "generate",
                "--model",
                m,
                "--prompt",
                "hi",
                "--max-context",
                "0",
            ],
            &b""[..],
            "--max-context",
        ),
    ] {
        let (code, stderr) = cli(&args, stdin);
        assert!(
            matches!(code, Some(1) | Some(2)),
            "{args:?}: exit {code:?}: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{args:?}: `{needle}` not in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_prompt_beyond_the_context_is_warned_about_or_refused() {
    let model = fixtures().join("qwen3"); // max_position_embeddings 1024
    let long = "word ".repeat(1500);
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-infer"))
        .args([
            "generate",
            "--json",
            "--max-tokens",
            "2",
            "--prompt",
            &long,
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: the prompt has") && stderr.contains("context of 1024"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let done: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(done["over_context"], true, "{done}");
    assert_eq!(done["context_length"], 1024, "{done}");

    let (code, stderr) = cli(
        &[
            "generate",
            "--max-tokens",
            "2",
            "--max-context",
            "100",
            "--prompt",
            &long,
            "--model",
            model.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("over the context limit of 100"), "{stderr}");

    // a short prompt: no warning
    let (code, stderr) = cli(
        &[
            "generate",
            "--max-tokens",
            "2",
            "--prompt",
            "hi",
            "--model",
            model.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn an_mlxlm_interpreter_that_dies_is_reported_with_its_signal() {
    let dir = ScratchDir::new("dying-python");
    let script = dir.path().join("python3");
    std::fs::write(&script, "#!/bin/sh\nkill -9 $$\n").unwrap();
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    assert!(chmod.success());
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-infer"))
        .args([
            "generate",
            "--backend",
            "mlxlm",
            "--prompt",
            "hi",
            "--model",
        ])
        .arg(fixtures().join("qwen3"))
        .env("MLXLM_PYTHON", &script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("killed by signal 9"), "{stderr}");
}
