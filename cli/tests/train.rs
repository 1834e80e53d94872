//! `mlx-infer train` end to end on the fixtures, and adapters exchanged
//! with mlx_lm in both directions (greedy ids of `generate --adapter-path`
//! against `mlx_lm.load(model, adapter_path=...)`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use test_support::{fixtures, python};

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-infer"));
    cmd.env("MLXLM_PYTHON", fixtures().join("python"))
        .env_remove("MLX_INFER_MODEL")
        .env_remove("LD_LIBRARY_PATH");
    cmd
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-infer-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A prompt/completion data folder teaching "N plus N" sums.
fn write_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (split, n) in [("train", 24), ("valid", 8)] {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                serde_json::json!({"prompt": format!("What is {i} plus {i}?"), "completion": format!("The answer is {}.", 2 * i)})
                    .to_string()
            })
            .collect();
        std::fs::write(dir.join(format!("{split}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out: Output = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn train(model: &Path, data: &Path, adapter: &Path, extra: &[&str]) -> (i32, String, String) {
    output(
        cli()
            .args(["train", "--model"])
            .arg(model)
            .arg("--data")
            .arg(data)
            .arg("--adapter-path")
            .arg(adapter)
            .args(["--iters", "6", "--batch-size", "2", "--num-layers", "2"])
            .args(["--learning-rate", "1e-3", "--steps-per-report", "2"])
            .args(["--steps-per-eval", "3", "--save-every", "3"])
            .args(extra),
    )
}

const PROMPT: &str = "What is 3 plus 3?";

/// Greedy ids of `mlx-infer generate` (native backend).
fn our_greedy(model: &Path, adapter: Option<&Path>) -> Vec<u64> {
    let mut cmd = cli();
    cmd.args([
        "generate",
        "--backend",
        "mlx",
        "--max-tokens",
        "12",
        "--json",
        "--prompt",
        PROMPT,
    ])
    .arg("--model")
    .arg(model);
    if let Some(a) = adapter {
        cmd.arg("--adapter-path").arg(a);
    }
    let (code, stdout, stderr) = output(&mut cmd);
    assert_eq!(code, 0, "generate failed: {stderr}");
    json_lines(&stdout)
        .iter()
        .filter_map(|l| l.get("id").and_then(Value::as_u64))
        .collect()
}

/// Greedy ids of mlx_lm with the adapter loaded by `mlx_lm.load`.
fn mlx_lm_greedy(model: &Path, adapter: &Path) -> Vec<u64> {
    let script = r#"
import json, sys
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
model, tok = load(sys.argv[1], adapter_path=sys.argv[2])
prompt = tok.encode(sys.argv[3])
ids = []
for token, _ in generate_step(mx.array(prompt), model, max_tokens=12, sampler=lambda x: mx.argmax(x, axis=-1)):
    token = int(token)
    if token in tok.eos_token_ids:
        break
    ids.append(token)
print(json.dumps(ids))
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(model)
        .arg(adapter)
        .arg(PROMPT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mlx_lm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_adapter_trained_here_gives_mlx_lm_the_same_greedy_ids() {
    for fixture in ["llama", "qwen3-4bit"] {
        let model = fixtures().join(fixture);
        let dir = scratch(&format!("here-{fixture}"));
        let (data, adapter) = (dir.join("data"), dir.join("adapter"));
        write_data(&data);
        let (code, stdout, stderr) = train(&model, &data, &adapter, &["--json", "--mask-prompt"]);
        assert_eq!(code, 0, "train failed: {stderr}");
        let lines = json_lines(&stdout);
        let of = |t: &str| lines.iter().filter(|l| l["type"] == t).collect::<Vec<_>>();
        let train_reports = of("train");
        assert_eq!(
            train_reports
                .iter()
                .map(|l| l["iteration"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [2, 4, 6]
        );
        for r in &train_reports {
            for key in [
                "train_loss",
                "learning_rate",
                "tokens_per_second",
                "peak_memory_gb",
            ] {
                assert!(r[key].is_number(), "{key} in {r}");
            }
        }
        let vals = of("val");
        assert_eq!(
            vals.iter()
                .map(|l| l["iteration"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [0, 2, 5]
        );
        let first = vals[0]["val_loss"].as_f64().unwrap();
        let last = vals[2]["val_loss"].as_f64().unwrap();
        assert!(last < first, "validation loss falls: {first} -> {last}");
        for f in [
            "adapters.safetensors",
            "adapter_config.json",
            "0000003_adapters.safetensors",
            "0000006_adapters.safetensors",
        ] {
            assert!(adapter.join(f).is_file(), "{f} written");
        }
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["fine_tune_type"], "lora");
        assert_eq!(config["num_layers"], 2);
        assert_eq!(config["lora_parameters"]["rank"], 8);
        assert_eq!(config["lora_parameters"]["scale"], 20.0);

        let ours = our_greedy(&model, Some(&adapter));
        let theirs = mlx_lm_greedy(&model, &adapter);
        assert_eq!(ours, theirs, "{fixture}: greedy ids with the adapter");
        assert_ne!(
            ours,
            our_greedy(&model, None),
            "{fixture}: the adapter changes the output"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn an_adapter_trained_by_mlx_lm_gives_the_same_greedy_ids_here() {
    for fixture in ["llama", "qwen3-4bit"] {
        let model = fixtures().join(fixture);
        let dir = scratch(&format!("there-{fixture}"));
        let (data, adapter) = (dir.join("data"), dir.join("adapter"));
        write_data(&data);
        let out = Command::new(python())
            .args(["-m", "mlx_lm", "lora", "--train", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--adapter-path")
            .arg(&adapter)
            .args(["--iters", "6", "--batch-size", "2", "--num-layers", "2"])
            .args(["--learning-rate", "1e-3", "--fine-tune-type", "lora"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mlx_lm.lora failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = our_greedy(&model, Some(&adapter));
        assert_eq!(
            ours,
            mlx_lm_greedy(&model, &adapter),
            "{fixture}: greedy ids"
        );
        assert_ne!(
            ours,
            our_greedy(&model, None),
            "{fixture}: the adapter changes the output"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
