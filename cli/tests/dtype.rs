//! `--dtype` end to end: half-precision weights give mlx_lm's greedy ids
//! on both backends, with `model` (both compute in bfloat16) and with the
//! default `auto` (both upcast to float32 on the CPU); bad values are
//! usage errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use test_support::ScratchDir;

fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    assert!(
        dir.join("index.json").is_file(),
        "no fixtures: run `cargo xtask fixtures`"
    );
    dir
}

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-infer"));
    cmd.env("MLXLM_PYTHON", fixtures().join("python"))
        .env_remove("MLX_INFER_MODEL")
        .env_remove("LD_LIBRARY_PATH");
    cmd
}

/// A copy of fixture `name` with every floating-point tensor in bfloat16,
/// written by mlx itself (the fixtures' Python); removed when it drops.
fn bf16_copy(name: &str) -> ScratchDir {
    let from = fixtures().join(name);
    let dir = ScratchDir::copy_of(&from, &format!("cli-{name}-bf16"));
    let script = "import sys, mlx.core as mx\n\
                  w, meta = mx.load(sys.argv[1], return_metadata=True)\n\
                  w = {k: v.astype(mx.bfloat16) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in w.items()}\n\
                  mx.save_safetensors(sys.argv[2], w, meta)\n";
    let ok = Command::new(fixtures().join("python"))
        .args(["-c", script])
        .arg(from.join("model.safetensors"))
        .arg(dir.join("model.safetensors"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "could not write the bfloat16 copy");
    dir
}

/// Greedy ids of `generate --json` and the load summary line.
fn greedy(dir: &Path, backend: &str, dtype: &str, prompt: &str, max: u64) -> (Vec<u64>, String) {
    let out = cli()
        .args(["generate", "--json", "--temperature", "0"])
        .args(["--backend", backend, "--dtype", dtype])
        .args(["--max-tokens", &max.to_string(), "--prompt", prompt])
        .arg("--model")
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{backend} {dtype}: {stderr}");
    let ids = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| v.get("id").and_then(Value::as_u64))
        .collect();
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("loaded "))
        .unwrap_or_else(|| panic!("no load summary in {stderr:?}"))
        .to_string();
    (ids, summary)
}

fn native() -> &'static str {
    if cfg!(all(target_os = "macos", target_arch = "aarch64")) {
        "metal"
    } else {
        "mlx"
    }
}

#[test]
fn half_precision_weights_give_mlx_lm_ids_with_model_and_auto() {
    for name in ["qwen3", "llama"] {
        let dir = bf16_copy(name);
        let prompt = "The quick brown fox jumps over the lazy dog";
        for dtype in ["model", "auto"] {
            let (want, python) = greedy(&dir, "mlxlm", dtype, prompt, 24);
            let (got, rust) = greedy(&dir, native(), dtype, prompt, 24);
            assert_eq!(got, want, "{name} --dtype {dtype}");
            assert!(!got.is_empty());
            let compute = if dtype == "model" || native() == "metal" {
                "bfloat16"
            } else {
                "float32"
            };
            for summary in [&python, &rust] {
                assert!(
                    summary.contains(&format!("weights bfloat16, compute {compute}")),
                    "{summary}"
                );
            }
            if cfg!(target_os = "linux") {
                assert!(rust.contains("BLAS "), "{rust}");
            }
        }
    }
}

#[test]
fn a_bad_dtype_is_a_usage_error_naming_it() {
    for cmd in [
        vec!["generate", "--prompt", "hi"],
        vec!["chat", "--message", "hi"],
        vec!["bench", "--prompt", "hi"],
    ] {
        let out = cli()
            .args(&cmd)
            .arg("--model")
            .arg(fixtures().join("llama"))
            .args(["--dtype", "double"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("invalid value 'double' for '--dtype")
                && stderr.contains("auto, model, float32, bfloat16, float16"),
            "{stderr}"
        );
    }
}

#[test]
fn bench_lines_say_the_compute_dtype_and_blas() {
    let out = cli()
        .args([
            "bench",
            "--runs",
            "1",
            "--max-tokens",
            "3",
            "--prompt",
            "hi",
        ])
        .args(["--backend", native(), "--dtype", "float16", "--model"])
        .arg(fixtures().join("qwen3"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["compute_dtype"], "float16");
    assert!(line["blas"].is_string(), "{line}");
    assert_eq!(line["generated_tokens"], 3);
}
