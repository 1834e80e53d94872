//! `--distributed` and `mlx-infer launch`: the same command run as 2 or 4
//! local ranks of MLX's `ring` backend prints what one process prints.

use std::process::{Command, Output};

use test_support::fixtures;

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-infer"));
    cmd.env("MLXLM_PYTHON", fixtures().join("python"))
        .env_remove("MLX_INFER_MODEL")
        .env_remove("MLX_RANK")
        .env_remove("MLX_HOSTFILE");
    cmd
}

fn run(args: &[&str]) -> Output {
    cli().args(args).output().unwrap()
}

fn generate_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "generate",
        "--model",
        model,
        "--prompt",
        "Once upon a time",
        "--max-tokens",
        "12",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn launched_ranks_print_what_one_process_prints() {
    let cases = [
        ("llama", "tensor", "2"),
        ("qwen3", "tensor", "2"),
        ("gemma2", "tensor", "2"),
        ("qwen3", "pipeline", "2"),
        ("gemma3_text", "pipeline", "4"),
        ("llama-4bit", "pipeline", "2"),
    ];
    for (fixture, kind, n) in cases {
        let model = fixtures().join(fixture);
        let model = model.to_str().unwrap();
        let alone = run(&generate_args(model, &[]));
        assert!(alone.status.success(), "{fixture}: {alone:?}");
        let mut args = vec!["launch", "-n", n, "--"];
        args.extend(generate_args(model, &["--distributed", kind]));
        let launched = run(&args);
        let err = String::from_utf8_lossy(&launched.stderr);
        assert!(
            launched.status.success(),
            "{fixture} {kind} over {n}: {err}"
        );
        assert!(!alone.stdout.is_empty());
        assert_eq!(
            launched.stdout, alone.stdout,
            "{fixture} {kind} over {n}: the text differs"
        );
        // Only rank 0 reports what it loaded.
        assert_eq!(err.matches("loaded ").count(), 1, "{err}");
    }
}

#[test]
fn a_failing_rank_ends_the_launch_with_its_status() {
    // One key/value head cannot be split over two ranks: every rank refuses.
    let model = fixtures().join("gemma3_text");
    let mut args = vec!["launch", "-n", "2", "--"];
    args.extend(generate_args(
        model.to_str().unwrap(),
        &["--distributed", "tensor"],
    ));
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be split evenly over 2 ranks"), "{err}");
}

#[test]
fn distributed_runs_need_the_native_backend_and_a_prompt_argument() {
    let model = fixtures().join("qwen3");
    let model = model.to_str().unwrap();
    let out = run(&[
        "generate",
        "--model",
        model,
        "--backend",
        "mlxlm",
        "--prompt",
        "hi",
        "--distributed",
        "tensor",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runs in one process"), "{err}");
    let out = run(&["generate", "--model", model, "--distributed", "pipeline"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prompt"), "{err}");
    let out = run(&["launch", "-n", "2", "--", "launch", "-n", "2"]);
    assert_ne!(out.status.code(), Some(0));
}
