//! `mlx-infer chat` on a terminal: an interactive conversation that keeps
//! its history (run under util-linux `script`, which gives the program a
//! pty; Linux only).
#![cfg(target_os = "linux")]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[test]
fn interactive_chat_keeps_the_history() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    assert!(
        fixtures.join("index.json").is_file(),
        "no fixtures: run `cargo xtask fixtures`"
    );
    let (_, done) = two_turns("chat --json --max-tokens 3 --model MODEL");
    assert_eq!(done.len(), 2, "two replies");
    let first = done[0]["prompt_tokens"].as_u64().unwrap();
    let second = done[1]["prompt_tokens"].as_u64().unwrap();
    // the second prompt holds the first exchange: user turn, 3-token reply, new turn
    assert!(
        second > first + 3,
        "history kept: {first} then {second} prompt tokens"
    );
}

/// The token lines and summaries of `mlx-infer ARGS` (a chat on a pty,
/// with `--json`; MODEL stands for the qwen3 fixture) given two turns,
/// then an empty line that ends the conversation.
fn two_turns(args: &str) -> (Vec<String>, Vec<serde_json::Value>) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let cmd = format!("{} {args}", env!("CARGO_BIN_EXE_mlx-infer"))
        .replace("MODEL", &fixtures.join("qwen3").display().to_string());
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("MLXLM_PYTHON", fixtures.join("python"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`script` (util-linux) runs the CLI on a pty");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello there\nand again\n\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args}: {text}");
    let lines: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    let tokens = lines
        .iter()
        .filter(|l| l.starts_with("{\"id\""))
        .cloned()
        .collect();
    let done = lines
        .iter()
        .filter(|l| l.starts_with("{\"done\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (tokens, done)
}

/// A distributed chat on a terminal: rank 0 reads each line and hands it
/// to the other rank, and the conversation is the one a single process
/// has.
#[test]
fn a_distributed_interactive_chat_is_one_process_chat() {
    let (alone, alone_done) = two_turns("chat --json --max-tokens 3 --model MODEL");
    let (spread, spread_done) =
        two_turns("launch -n 2 -- chat --json --max-tokens 3 --model MODEL --distributed tensor");
    assert_eq!(alone_done.len(), 2);
    assert_eq!(spread_done.len(), 2, "two replies");
    assert!(!alone.is_empty());
    assert_eq!(spread, alone, "the replies differ");
    let prompts = |d: &[serde_json::Value]| -> Vec<u64> {
        d.iter()
            .map(|v| v["prompt_tokens"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        prompts(&spread_done),
        prompts(&alone_done),
        "the history differs"
    );
}
