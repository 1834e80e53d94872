//! `mlx-infer train` end to end on the fixtures, and adapters exchanged
//! with mlx_lm in both directions (greedy ids of `generate --adapter-path`
//! against `mlx_lm.load(model, adapter_path=...)`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use test_support::{fixtures, python, ScratchDir};

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-infer"));
    cmd.env("MLXLM_PYTHON", fixtures().join("python"))
        .env_remove("MLX_INFER_MODEL")
        .env_remove("LD_LIBRARY_PATH");
    cmd
}

fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("train-{name}"))
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
    test_support::json_lines(stdout.as_bytes())
}

/// Runs `mlx-infer train` with small defaults; `extra` adds flags or
/// overrides a default's value.
fn train(model: &Path, data: &Path, adapter: &Path, extra: &[&str]) -> (i32, String, String) {
    let defaults = [
        ("--iters", "6"),
        ("--batch-size", "2"),
        ("--num-layers", "2"),
        ("--learning-rate", "1e-3"),
        ("--steps-per-report", "2"),
        ("--steps-per-eval", "3"),
        ("--save-every", "3"),
    ];
    let mut cmd = cli();
    cmd.args(["train", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--adapter-path")
        .arg(adapter);
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    output(cmd.args(extra))
}

const PROMPT: &str = "What is 3 plus 3?";

/// Greedy ids of `mlx-infer generate` (native backend).
fn our_greedy(model: &Path, adapter: Option<&Path>) -> Vec<u64> {
    greedy_on("mlx", model, adapter)
}

/// Greedy ids of `mlx-infer generate --backend BACKEND`.
fn greedy_on(backend: &str, model: &Path, adapter: Option<&Path>) -> Vec<u64> {
    let mut cmd = cli();
    cmd.args([
        "generate",
        "--backend",
        backend,
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

/// Greedy ids of mlx_lm on `model`, with `adapter` (if any) loaded by
/// `mlx_lm.load`.
fn mlx_lm_greedy(model: &Path, adapter: Option<&Path>) -> Vec<u64> {
    let script = r#"
import json, sys
import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
model, tok = load(sys.argv[1], adapter_path=sys.argv[3] if len(sys.argv) > 3 else None)
prompt = tok.encode(sys.argv[2])
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
        .arg(PROMPT)
        .args(adapter)
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
        let theirs = mlx_lm_greedy(&model, Some(&adapter));
        assert_eq!(ours, theirs, "{fixture}: greedy ids with the adapter");
        assert_eq!(
            greedy_on("mlxlm", &model, Some(&adapter)),
            theirs,
            "{fixture}: the mlxlm backend applies the adapter too"
        );
        assert_ne!(
            ours,
            our_greedy(&model, None),
            "{fixture}: the adapter changes the output"
        );
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
            mlx_lm_greedy(&model, Some(&adapter)),
            "{fixture}: greedy ids"
        );
        assert_ne!(
            ours,
            our_greedy(&model, None),
            "{fixture}: the adapter changes the output"
        );
    }
}

/// Trains a small llama adapter (2 iterations) into `dir/adapter`.
fn small_adapter(dir: &Path) -> PathBuf {
    let (data, adapter) = (dir.join("data"), dir.join("adapter"));
    write_data(&data);
    let (code, _, stderr) = train(
        &fixtures().join("llama"),
        &data,
        &adapter,
        &["--iters", "2"],
    );
    assert_eq!(code, 0, "train failed: {stderr}");
    adapter
}

#[test]
fn adapters_for_another_model_or_rank_are_refused_naming_the_file() {
    let dir = scratch("mismatch");
    let adapter = small_adapter(&dir);
    let generate = |model: &str, adapter: &Path| {
        output(
            cli()
                .args([
                    "generate",
                    "--backend",
                    "mlx",
                    "--max-tokens",
                    "2",
                    "--prompt",
                    "hi",
                ])
                .arg("--model")
                .arg(fixtures().join(model))
                .arg("--adapter-path")
                .arg(adapter),
        )
    };
    let (code, _, stderr) = generate("mistral", &adapter);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("adapters.safetensors") && stderr.contains("k_proj.lora_b` has shape"),
        "{stderr}"
    );

    let config = adapter.join("adapter_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"rank\": 8", "\"rank\": 4")).unwrap();
    let (code, _, stderr) = generate("llama", &adapter);
    assert_ne!(code, 0);
    assert!(stderr.contains("another rank or model"), "{stderr}");

    let (code, _, stderr) = generate("llama", &dir.join("nowhere"));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("nowhere") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[test]
fn bad_training_input_gets_clear_errors() {
    let dir = scratch("badinput");
    let model = fixtures().join("llama");
    let (code, _, stderr) = train(&model, &dir.join("nodata"), &dir.join("a"), &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("nodata") && stderr.contains("does not exist"),
        "{stderr}"
    );

    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (code, _, stderr) = train(&model, &data, &dir.join("a"), &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("train.jsonl") && stderr.contains("missing"),
        "{stderr}"
    );

    std::fs::write(
        data.join("train.jsonl"),
        "{\"text\": \"ok\"}\n{\"text\": 5}\n",
    )
    .unwrap();
    let (code, _, stderr) = train(&model, &data, &dir.join("a"), &[]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("train.jsonl:2: expected a string `text`"),
        "{stderr}"
    );

    std::fs::write(data.join("train.jsonl"), "{\"text\": \"only one\"}\n").unwrap();
    let (code, _, stderr) = train(&model, &data, &dir.join("a"), &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("fewer than the batch size 2"), "{stderr}");

    write_data(&data);
    let (code, _, stderr) = train(&model, &data, &dir.join("a"), &["--num-layers", "3"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("only 2"), "{stderr}");

    // Long rows train, truncated, with one warning.
    let (code, stdout, stderr) = train(
        &model,
        &data,
        &dir.join("a"),
        &["--max-seq-length", "8", "--iters", "3"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.matches("truncated to 8").count(), 1, "{stderr}");
    let _ = stdout;

    // The output folder may not be a file.
    let file = dir.join("file");
    std::fs::write(&file, "keep me").unwrap();
    let (code, _, stderr) = train(&model, &data, &file, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("is not a folder"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// Whether every tensor of a safetensors file is finite (read by mlx).
fn all_finite(path: &Path) -> bool {
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, mlx.core as mx; w = mx.load(sys.argv[1]); print(all(bool(mx.all(mx.isfinite(v))) for v in w.values()))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

#[test]
fn a_diverging_run_stops_with_a_clear_message_and_keeps_the_last_good_adapter() {
    let dir = scratch("nan");
    let (data, adapter) = (dir.join("data"), dir.join("adapter"));
    write_data(&data);
    let (code, _, stderr) = train(
        &fixtures().join("llama"),
        &data,
        &adapter,
        &[
            "--optimizer",
            "sgd",
            "--learning-rate",
            "1e30",
            "--iters",
            "50",
        ],
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("the training loss became"), "{stderr}");
    let weights = adapter.join("adapters.safetensors");
    assert!(weights.is_file());
    assert!(all_finite(&weights), "the saved adapter is finite");
}

#[test]
fn ctrl_c_saves_the_adapter_and_exits_130() {
    use std::io::{BufRead, BufReader};
    let dir = scratch("ctrlc");
    let (data, adapter) = (dir.join("data"), dir.join("adapter"));
    write_data(&data);
    let mut child = cli()
        .args(["train", "--model"])
        .arg(fixtures().join("llama"))
        .arg("--data")
        .arg(&data)
        .arg("--adapter-path")
        .arg(&adapter)
        .args([
            "--iters",
            "100000",
            "--batch-size",
            "2",
            "--steps-per-report",
            "1",
        ])
        .args(["--num-layers", "2"])
        .args([
            "--save-every",
            "100000",
            "--steps-per-eval",
            "100000",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("a report before the end").unwrap();
        if line.contains("\"train\"") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted after"), "{stderr}");
    assert!(rest.iter().any(|l| l.contains("\"save\"")), "{rest:?}");
    assert!(adapter.join("adapters.safetensors").is_file());
}

/// Max |a - b| over the tensors two model directories share (float ones,
/// dequantised by mlx), and the names only one has.
fn compare_weights(a: &Path, b: &Path) -> (f64, Vec<String>) {
    let script = r#"
import json, sys, glob
import mlx.core as mx
def load(d):
    w = {}
    for f in glob.glob(d + "/*.safetensors"):
        w.update(mx.load(f))
    return w
a, b = load(sys.argv[1]), load(sys.argv[2])
only = sorted(set(a) ^ set(b))
worst = 0.0
for k in set(a) & set(b):
    if a[k].dtype == mx.uint32:
        continue
    worst = max(worst, mx.abs(a[k].astype(mx.float32) - b[k].astype(mx.float32)).max().item())
print(json.dumps([worst, only]))
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn fuse_matches_mlx_lm_fuse() {
    for (fixture, dequantize) in [
        ("llama", false),
        ("qwen3-4bit", false),
        ("qwen3-4bit", true),
    ] {
        let model = fixtures().join(fixture);
        let dir = scratch(&format!("fuse-{fixture}-{dequantize}"));
        let (data, adapter) = (dir.join("data"), dir.join("adapter"));
        write_data(&data);
        let (code, _, stderr) = train(&model, &data, &adapter, &[]);
        assert_eq!(code, 0, "train failed: {stderr}");

        let ours = dir.join("fused");
        let mut cmd = cli();
        cmd.args(["fuse", "--model"])
            .arg(&model)
            .arg("--adapter-path")
            .arg(&adapter)
            .arg("--out")
            .arg(&ours);
        if dequantize {
            cmd.arg("--dequantize");
        }
        let (code, _, stderr) = output(&mut cmd);
        assert_eq!(code, 0, "fuse failed: {stderr}");
        let theirs = dir.join("fused-mlx-lm");
        let mut py = Command::new(python());
        py.args(["-m", "mlx_lm", "fuse", "--model"])
            .arg(&model)
            .arg("--adapter-path")
            .arg(&adapter)
            .arg("--save-path")
            .arg(&theirs);
        if dequantize {
            py.arg("--dequantize");
        }
        let out = py.output().unwrap();
        assert!(
            out.status.success(),
            "mlx_lm.fuse failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let with_adapter = mlx_lm_greedy(&model, Some(&adapter));
        assert_eq!(
            mlx_lm_greedy(&ours, None),
            with_adapter,
            "{fixture}: mlx_lm on our fused model"
        );
        assert_eq!(
            our_greedy(&ours, None),
            mlx_lm_greedy(&theirs, None),
            "{fixture}: ours vs mlx_lm's fused"
        );
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(ours.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            config.get("quantization").is_some(),
            fixture.ends_with("bit") && !dequantize
        );
        let (worst, only) = compare_weights(&ours, &theirs);
        assert!(
            only.is_empty(),
            "{fixture}: tensors only one side has: {only:?}"
        );
        if !fixture.ends_with("bit") || dequantize {
            assert!(worst <= 1e-4, "{fixture}: fused weights differ by {worst}");
        }

        // The output is not overwritten.
        let (code, _, stderr) = output(&mut cmd);
        assert_ne!(code, 0);
        assert!(stderr.contains("not empty"), "{stderr}");
    }
}

/// Whether two safetensors files hold the same tensors (names and values).
fn same_tensors(a: &Path, b: &Path) -> bool {
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, mlx.core as mx; a, b = mx.load(sys.argv[1]), mx.load(sys.argv[2]); print(set(a) == set(b) and all(bool(mx.array_equal(a[k], b[k])) for k in a))",
        ])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

#[test]
fn training_resumes_from_saved_weights_and_reports_the_test_loss() {
    let dir = scratch("resume");
    let first = small_adapter(&dir);
    let data = dir.join("data");
    std::fs::copy(data.join("valid.jsonl"), data.join("test.jsonl")).unwrap();
    let saved = dir.join("first.safetensors");
    std::fs::copy(first.join("adapters.safetensors"), &saved).unwrap();
    // A learning rate of 0 leaves the resumed weights as they were.
    let second = dir.join("second");
    let (code, stdout, stderr) = output(
        cli()
            .args(["train", "--model"])
            .arg(fixtures().join("llama"))
            .arg("--data")
            .arg(&data)
            .arg("--adapter-path")
            .arg(&second)
            .args(["--iters", "1", "--batch-size", "2", "--num-layers", "2"])
            .args(["--learning-rate", "0", "--json", "--resume-adapter-file"])
            .arg(&saved),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert!(same_tensors(&saved, &second.join("adapters.safetensors")));
    let lines = json_lines(&stdout);
    let test = lines
        .iter()
        .find(|l| l["type"] == "test")
        .expect("a test report");
    assert!(test["test_loss"].as_f64().unwrap() > 0.0);

    // Without resuming, the fresh adapter differs from the saved one.
    let third = dir.join("third");
    let (code, _, stderr) = train(
        &fixtures().join("llama"),
        &data,
        &third,
        &["--iters", "1", "--learning-rate", "0"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(!same_tensors(&saved, &third.join("adapters.safetensors")));
}
