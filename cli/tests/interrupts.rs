//! Interrupts and processes: Ctrl-C at the chat prompt (under a pty made by
//! util-linux `script`), SIGINT during a long prefill on both backends, and
//! the mlxlm bridge process never outliving the CLI, whatever the signal.
#![cfg(all(target_os = "linux", feature = "metal"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use test_support::fixtures;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mlx-infer")
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Waits up to `limit` for `child`; kills it and fails when it is still
/// running then.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Forwards `pipe`'s lines to a channel (so a test can wait for one).
fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns the lines read so far.
fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let hit = line.contains(needle);
        seen.push(line);
        if hit {
            return seen;
        }
    }
    panic!(
        "no line with `{needle}` within {limit:?}; got:\n{}",
        seen.join("\n")
    );
}

/// A prompt far longer than the fixture's context, whose full prefill
/// takes minutes on a CPU.
fn long_prompt() -> String {
    "the cat sat on the mat. ".repeat(15_000)
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether `pid` is a live process (a zombie waiting to be reaped is dead).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// Starts `generate` on the long prompt with `backend`; returns the child
/// once it has loaded the model and started the prefill.
fn start_long_prefill(backend: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(bin())
        .args([
            "generate",
            "--max-tokens",
            "4",
            "--backend",
            backend,
            "--model",
        ])
        .arg(fixtures().join("qwen3"))
        .env("MLXLM_PYTHON", test_support::python())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prompt = long_prompt();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = stdin.write_all(prompt.as_bytes());
    });
    let rx = lines(child.stderr.take().unwrap());
    // the context warning comes once the prompt is tokenised, just before the prefill
    wait_for(&rx, "warning: the prompt has", Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(1500));
    (child, rx)
}

#[test]
fn sigint_during_a_long_prefill_cancels_it_on_both_backends() {
    for backend in [inference::native_backend_name(), "mlxlm"] {
        let (mut child, rx) = start_long_prefill(backend);
        signal(child.id(), "INT");
        let status = wait_within(&mut child, Duration::from_secs(20), backend);
        assert_eq!(status.code(), Some(130), "{backend}");
        let rest: Vec<String> = rx.try_iter().collect();
        assert!(
            rest.iter().any(|l| l.contains("stop: cancelled")),
            "{backend}: {rest:?}"
        );
    }
}

#[test]
fn the_bridge_process_dies_with_the_cli_whatever_the_signal() {
    for sig in ["TERM", "KILL", "HUP"] {
        let (mut child, _rx) = start_long_prefill("mlxlm");
        let bridge = children(child.id());
        assert_eq!(bridge.len(), 1, "one bridge process: {bridge:?}");
        signal(child.id(), sig);
        wait_within(&mut child, Duration::from_secs(20), sig);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(bridge[0]) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !alive(bridge[0]),
            "SIG{sig}: the bridge {} outlived the CLI",
            bridge[0]
        );
    }
}

#[test]
fn ctrl_c_at_the_chat_prompt_exits_130_at_once() {
    let cmd = format!(
        "{} chat --max-tokens 3 --model {}",
        bin(),
        fixtures().join("qwen3").display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("`script` (util-linux) runs the CLI on a pty");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    // read the pty's output until the banner is there (no newline after the prompt)
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = tx.send(text.clone());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the chat banner");
        if text.contains("chatting with") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let status = wait_within(&mut child, Duration::from_secs(10), "chat after Ctrl-C");
    assert_eq!(status.code(), Some(130));
}
