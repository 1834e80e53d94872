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
    let cmd = format!(
        "{} chat --json --max-tokens 3 --model {}",
        env!("CARGO_BIN_EXE_mlx-infer"),
        fixtures.join("qwen3").display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("MLXLM_PYTHON", fixtures.join("python"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`script` (util-linux) runs the CLI on a pty");
    let mut stdin = child.stdin.take().unwrap();
    // two turns, then an empty line ends the conversation
    stdin.write_all(b"hello there\nand again\n\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let done: Vec<serde_json::Value> = text
        .lines()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("{\"done\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(done.len(), 2, "two replies in:\n{text}");
    let first = done[0]["prompt_tokens"].as_u64().unwrap();
    let second = done[1]["prompt_tokens"].as_u64().unwrap();
    // the second prompt holds the first exchange: user turn, 3-token reply, new turn
    assert!(
        second > first + 3,
        "history kept: {first} then {second} prompt tokens"
    );
}
