//! `mlx-infer generate` and `chat` end to end through the native and mlxlm backends,
//! against mlx_lm's recorded answers (fixtures from `cargo xtask fixtures`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use test_support::{fixture_models as models, fixtures, reference};

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-infer"));
    cmd.env("MLXLM_PYTHON", fixtures().join("python"))
        .env_remove("MLX_INFER_MODEL")
        .env_remove("LD_LIBRARY_PATH");
    cmd
}

/// Runs the CLI; returns (exit code, stdout JSON lines, stderr).
fn run_json(cmd: &mut Command, stdin: Option<&str>) -> (i32, Vec<Value>, String) {
    test_support::run_json(cmd, stdin.unwrap_or("").as_bytes())
}

fn token_ids(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.get("id").and_then(Value::as_u64))
        .collect()
}

fn expected(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn check_done(lines: &[Value], r: &Value, part: &str) {
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(done["reason"], r[part]["stop_reason"]);
    assert_eq!(
        done["prompt_tokens"].as_u64().unwrap() as usize,
        r[part]["prompt_ids"].as_array().unwrap().len()
    );
    assert_eq!(
        done["generated_tokens"].as_u64().unwrap() as usize,
        r[part]["greedy_ids"].as_array().unwrap().len()
    );
    for key in ["prompt_tps", "generation_tps", "peak_memory_bytes"] {
        assert!(done[key].as_f64().unwrap() > 0.0, "{key} in {done}");
    }
    // every other line is exactly {"id", "text"}
    for l in &lines[..lines.len() - 1] {
        let keys: Vec<&String> = l.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "text"], "{l}");
    }
}

/// The backends under test: the native one and mlxlm.
fn backends() -> [&'static str; 2] {
    [inference::native_backend_name(), "mlxlm"]
}

/// Runs `mlx-infer <command> --json` greedily on every fixture with every
/// backend and checks the ids and the summary against mlx_lm's record of
/// `part`; `input` adds the prompt or messages.
fn check_every_fixture(command: &str, part: &str, input: impl Fn(&Value) -> Vec<String>) {
    for dir in models() {
        let r = reference(&dir);
        let max = r["max_tokens"].to_string();
        for backend in backends() {
            let (code, lines, stderr) = run_json(
                cli()
                    .args([
                        command,
                        "--backend",
                        backend,
                        "--temperature",
                        "0",
                        "--json",
                    ])
                    .args(["--max-tokens", &max])
                    .arg("--model")
                    .arg(&dir)
                    .args(input(&r)),
                None,
            );
            assert_eq!(code, 0, "{stderr}");
            let want = expected(&r[part]["greedy_ids"]);
            assert_eq!(token_ids(&lines), want, "{} {backend}", dir.display());
            check_done(&lines, &r, part);
        }
    }
}

#[test]
fn generate_json_gives_mlx_lm_greedy_ids_on_every_fixture() {
    check_every_fixture("generate", "raw", |r| {
        vec![
            "--prompt".into(),
            r["raw"]["prompt"].as_str().unwrap().into(),
        ]
    });
}

#[test]
fn chat_json_gives_mlx_lm_greedy_ids_on_every_fixture() {
    check_every_fixture("chat", "chat", |r| {
        let msgs = r["chat"]["messages"].as_array().unwrap();
        assert_eq!(msgs[0]["role"], "system");
        assert_eq!(msgs[1]["role"], "user");
        vec![
            "--system".into(),
            msgs[0]["content"].as_str().unwrap().into(),
            "--message".into(),
            msgs[1]["content"].as_str().unwrap().into(),
        ]
    });
}

#[test]
fn prompt_from_stdin_and_model_from_the_environment() {
    let dir = fixtures().join("qwen3");
    let r = reference(&dir);
    let (code, lines, stderr) = run_json(
        cli()
            .args(["generate", "--json", "--max-tokens", "40"])
            .env("MLX_INFER_MODEL", &dir),
        Some(r["raw"]["prompt"].as_str().unwrap()),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(token_ids(&lines), expected(&r["raw"]["greedy_ids"]));
}

#[test]
fn plain_output_streams_text_and_a_summary_line() {
    let dir = fixtures().join("llama");
    let r = reference(&dir);
    let out = cli()
        .args(["generate", "--max-tokens", "40", "--model"])
        .arg(&dir)
        .args(["--prompt", r["raw"]["prompt"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim_end_matches('\n'),
        r["raw"]["greedy_text"]
            .as_str()
            .unwrap()
            .trim_end_matches('\n')
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("prompt: ") && last.contains("tok/s") && last.contains("peak memory"),
        "{last}"
    );
}

#[test]
fn the_hugging_face_cache_supplies_a_default_model() {
    let home = test_support::ScratchDir::new("hf-home");
    let snap = home.join("hub/models--test--tiny/snapshots/0123");
    std::fs::create_dir_all(&snap).unwrap();
    for entry in std::fs::read_dir(fixtures().join("llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snap.join(entry.file_name())).unwrap();
    }
    let (code, lines, stderr) = run_json(
        cli()
            .args(["generate", "--json", "--max-tokens", "3", "--prompt", "hi"])
            .env("HF_HOME", home.path())
            .env_remove("HF_HUB_CACHE"),
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("models--test--tiny"), "{stderr}");
    assert_eq!(token_ids(&lines).len(), 3);

    let empty = home.join("empty-home");
    std::fs::create_dir_all(&empty).unwrap();
    let out = cli()
        .args(["generate", "--prompt", "hi"])
        .env("HOME", &empty)
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_CACHE")
        .env_remove("MLX_INFER_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--model") && stderr.contains("MLX_INFER_MODEL"),
        "{stderr}"
    );
}

#[test]
fn a_bad_model_directory_is_one_error_line() {
    let out = cli()
        .args(["generate", "--prompt", "hi", "--model", "/no/such/dir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "error: /no/such/dir: no such model directory"
    );
}

/// The CLI's Python child, from `/proc` (Linux only).
#[cfg(target_os = "linux")]
fn python_child(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Starts a long generation and waits for its first token line.
fn start_long_generation(
    backend: &str,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    use std::os::unix::process::CommandExt;
    let mut child = cli()
        .process_group(0)
        .args([
            "generate",
            "--backend",
            backend,
            "--json",
            "--max-tokens",
            "1000000",
            "--prompt",
            "abc",
            "--model",
        ])
        .arg(fixtures().join("llama"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"id\""), "{first}");
    (child, stdout)
}

fn wait_with_deadline(
    child: &mut std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit * 5 {
            let _ = child.kill();
            panic!("the CLI did not exit");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn killing_the_python_process_is_an_error_within_a_second() {
    let (mut child, stdout) = start_long_generation("mlxlm");
    let python = python_child(child.id()).expect("the CLI has a Python child");
    assert!(Command::new("kill")
        .args(["-9", &python.to_string()])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    // keep draining stdout so the CLI never blocks on a full pipe
    let drain = std::thread::spawn(move || stdout.lines().count());
    let (status, _) = wait_with_deadline(&mut child, Duration::from_secs(1));
    let elapsed = started.elapsed();
    drain.join().unwrap();
    assert!(elapsed < Duration::from_secs(1), "exited after {elapsed:?}");
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("error:") && stderr.contains("exited unexpectedly"),
        "{stderr}"
    );
}

#[test]
fn ctrl_c_stops_cleanly_with_the_summary() {
    for backend in backends() {
        ctrl_c_stops(backend);
    }
}

fn ctrl_c_stops(backend: &str) {
    let (mut child, stdout) = start_long_generation(backend);
    // as a terminal does: SIGINT to the whole foreground process group
    let group = format!("-{}", child.id());
    assert!(Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .unwrap()
        .success());
    let lines: Vec<String> = stdout.lines().map(|l| l.unwrap()).collect();
    let (status, _) = wait_with_deadline(&mut child, Duration::from_secs(2));
    assert_eq!(status.code(), Some(130));
    let done: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(done["reason"], "cancelled");
}
