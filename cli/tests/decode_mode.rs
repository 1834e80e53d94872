//! `MLX_INFER_DECODE`: both decode paths give mlx_lm's greedy ids through
//! the CLI, and an unknown value is refused with a message naming it.

use std::process::Command;

use serde_json::Value;

use test_support::{fixture_models, fixtures, reference};

fn generate(model: &std::path::Path, prompt: &str, mode: &str) -> (i32, Vec<Value>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-infer"));
    cmd.env("MLXLM_PYTHON", fixtures().join("python"))
        .env("MLX_INFER_DECODE", mode)
        .env_remove("LD_LIBRARY_PATH")
        .args([
            "generate",
            "--backend",
            "mlx",
            "--json",
            "--max-tokens",
            "40",
        ])
        .arg("--model")
        .arg(model)
        .args(["--prompt", prompt]);
    test_support::run_json(&mut cmd, b"")
}

#[test]
fn compiled_and_eager_decoding_give_mlx_lms_greedy_ids() {
    for model in fixture_models() {
        let r = reference(&model);
        let want: Vec<u64> = r["raw"]["greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        for mode in ["compiled", "eager"] {
            let (code, lines, err) = generate(&model, r["raw"]["prompt"].as_str().unwrap(), mode);
            assert_eq!(code, 0, "{} {mode}: {err}", model.display());
            let got: Vec<u64> = lines
                .iter()
                .filter_map(|l| l.get("id").and_then(Value::as_u64))
                .collect();
            assert_eq!(got, want, "{} {mode}", model.display());
            assert_eq!(lines.last().unwrap()["reason"], r["raw"]["stop_reason"]);
        }
    }
}

#[test]
fn an_unknown_decode_mode_is_refused_by_name() {
    let model = fixtures().join("qwen3");
    let (code, lines, err) = generate(&model, "hello", "fastest");
    assert_ne!(code, 0);
    assert!(lines.iter().all(|l| l.get("id").is_none()), "{lines:?}");
    assert!(
        err.contains("MLX_INFER_DECODE=\"fastest\"") && err.contains("`compiled` or `eager`"),
        "{err}"
    );
}
