//! `mlx-infer classify` and `mlx-infer batch`: the JSON lines other programs
//! parse, answers equal to mlx_lm's on the fixtures, bad lines reported by
//! number.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use test_support::{fixture_models, fixtures, ids, reference};

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-infer"));
    cmd.env("MLXLM_PYTHON", fixtures().join("python"))
        .env_remove("MLX_INFER_MODEL")
        .env_remove("LD_LIBRARY_PATH");
    cmd
}

/// Runs the CLI with `input` on stdin: (exit code, stdout JSON lines, stderr).
fn run(args: &[&str], model: &Path, input: &str) -> (i32, Vec<Value>, String) {
    test_support::run_json(cli().args(args).arg("--model").arg(model), input.as_bytes())
}

/// The raw prompt and the chat of a fixture as input lines.
fn input_lines(r: &Value) -> String {
    format!(
        "{}\n{}\n",
        json!({"prompt": r["raw"]["prompt"]}),
        json!({"messages": r["chat"]["messages"]})
    )
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[test]
fn batch_json_gives_mlx_lm_greedy_ids_in_input_order() {
    for dir in fixture_models() {
        let r = reference(&dir);
        let max = r["max_tokens"].to_string();
        let (code, lines, stderr) = run(
            &["batch", "--json", "--max-tokens", &max, "--batch-size", "2"],
            &dir,
            &input_lines(&r),
        );
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(lines.len(), 3, "{lines:?}");
        for (i, part) in ["raw", "chat"].iter().enumerate() {
            let line = &lines[i];
            assert_eq!(keys(line), ["ids", "index", "reason", "text"]);
            assert_eq!(line["index"], i);
            let got: Vec<u32> = ids(&line["ids"]);
            assert_eq!(got, ids(&r[part]["greedy_ids"]), "{} {part}", dir.display());
            assert_eq!(line["text"], r[part]["greedy_text"]);
            assert_eq!(line["reason"], r[part]["stop_reason"]);
        }
        let done = &lines[2];
        assert_eq!(
            keys(done),
            [
                "done",
                "generated_tokens",
                "generation_tps",
                "inputs",
                "peak_memory_bytes",
                "prompt_tokens",
                "prompt_tps"
            ]
        );
        assert_eq!(done["inputs"], 2);
        let generated = ids(&r["raw"]["greedy_ids"]).len() + ids(&r["chat"]["greedy_ids"]).len();
        assert_eq!(done["generated_tokens"], generated);
    }
}

#[test]
fn classify_json_top_token_is_the_first_greedy_token() {
    for dir in fixture_models() {
        let r = reference(&dir);
        let (code, lines, stderr) = run(
            &["classify", "--json", "--labels", "a,the", "--top-k", "2"],
            &dir,
            &input_lines(&r),
        );
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(lines.len(), 3);
        for (i, part) in ["raw", "chat"].iter().enumerate() {
            let line = &lines[i];
            assert_eq!(
                keys(line),
                ["id", "index", "label", "logprob", "scores", "text", "top"]
            );
            assert_eq!(line["index"], i);
            if let Some(first) = ids(&r[part]["greedy_ids"]).first() {
                assert_eq!(line["id"], *first, "{} {part}", dir.display());
            }
            assert!(line["logprob"].as_f64().unwrap() <= 0.0);
            assert_eq!(keys(&line["scores"]), ["a", "the"]);
            assert_eq!(line["top"].as_array().unwrap().len(), 2);
            assert_eq!(line["top"][0]["id"], line["id"]);
        }
        assert_eq!(
            keys(&lines[2]),
            [
                "done",
                "inputs",
                "inputs_per_s",
                "peak_memory_bytes",
                "prompt_tokens"
            ]
        );
        assert_eq!(lines[2]["inputs"], 2);
    }
}

#[test]
fn classify_without_labels_or_top_k_prints_the_plain_shape() {
    let dir = fixtures().join("qwen3");
    let (code, lines, stderr) = run(&["classify", "--json"], &dir, "hello\n");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(keys(&lines[0]), ["id", "index", "logprob", "text"]);
}

#[test]
fn bad_lines_are_named_and_stop_everything_unless_skipped() {
    let dir = fixtures().join("llama");
    let input = "good prompt\n{not json\n\n{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\nanother\n";
    for command in ["classify", "batch"] {
        let (code, lines, stderr) = run(
            &[command, "--json", "--max-tokens", "2"][..if command == "batch" { 4 } else { 2 }],
            &dir,
            input,
        );
        assert_eq!(code, 1, "{command}: {stderr}");
        assert!(lines.is_empty(), "{command}: nothing runs");
        for n in [2, 3, 4] {
            assert!(
                stderr.contains(&format!("stdin:{n}:")),
                "{command}: {stderr}"
            );
        }
        assert!(stderr.contains("--skip-invalid"), "{stderr}");

        let mut args = vec![command, "--json", "--skip-invalid"];
        if command == "batch" {
            args.extend(["--max-tokens", "2"]);
        }
        let (code, lines, stderr) = run(&args, &dir, input);
        assert_eq!(code, 0, "{command}: {stderr}");
        let indices: Vec<u64> = lines.iter().filter_map(|l| l["index"].as_u64()).collect();
        assert_eq!(indices, [0, 4], "{command}: input line indices");
        assert_eq!(lines.last().unwrap()["inputs"], 2);
    }
}

/// The Python backend cannot batch: it answers one input after the other,
/// with the same ids and the same JSON.
#[test]
fn the_mlxlm_backend_gives_the_same_answers() {
    for name in ["llama", "qwen3-4bit", "gemma3_text"] {
        let dir = fixtures().join(name);
        let r = reference(&dir);
        let max = r["max_tokens"].to_string();
        let (code, lines, stderr) = run(
            &[
                "batch",
                "--json",
                "--backend",
                "mlxlm",
                "--max-tokens",
                &max,
            ],
            &dir,
            &input_lines(&r),
        );
        assert_eq!(code, 0, "{stderr}");
        for (i, part) in ["raw", "chat"].iter().enumerate() {
            assert_eq!(
                ids(&lines[i]["ids"]),
                ids(&r[part]["greedy_ids"]),
                "{name} {part}"
            );
        }
        let (code, lines, stderr) = run(
            &[
                "classify",
                "--json",
                "--backend",
                "mlxlm",
                "--labels",
                "a,the",
                "--top-k",
                "2",
            ],
            &dir,
            &input_lines(&r),
        );
        assert_eq!(code, 0, "{stderr}");
        for (i, part) in ["raw", "chat"].iter().enumerate() {
            assert_eq!(
                keys(&lines[i]),
                ["id", "index", "label", "logprob", "scores", "text", "top"]
            );
            if let Some(first) = ids(&r[part]["greedy_ids"]).first() {
                assert_eq!(lines[i]["id"], *first, "{name} {part}");
            }
        }
    }
}
