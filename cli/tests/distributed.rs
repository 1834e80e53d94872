//! `--distributed` and `mlx-infer launch`: the same command run as 2 or 4
//! local ranks of MLX's `ring` backend prints what one process prints.

use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use test_support::{fixtures, ScratchFile};

mod serve_support;
use serve_support::{answer_text, cli_text, request, send, within, Server};

/// One launch at a time: launches running side by side could pick the
/// same free loopback ports, and on a small machine slow each other down.
fn one_launch() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _turn = one_launch();
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
    let _turn = one_launch();
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
fn distributed_runs_need_the_native_backend() {
    let _turn = one_launch();
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
    let out = run(&["launch", "-n", "2", "--", "launch", "-n", "2"]);
    assert_ne!(out.status.code(), Some(0));
}

/// A request's answer text from `port`: a completion of `prompt`, or (with
/// `chat`) the reply to it as a user message, streamed or not.
fn ask(port: u16, prompt: &str, chat: bool, stream: bool, extra: &Value) -> String {
    let mut body = if chat {
        json!({"messages": [{"role": "user", "content": prompt}]})
    } else {
        json!({"prompt": prompt})
    };
    body["max_tokens"] = json!(12);
    body["temperature"] = json!(0);
    body["stream"] = json!(stream);
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let path = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let r = request(port, "POST", path, &[], Some(body.to_string().as_bytes())).unwrap();
    answer_text(&r, stream)
}

/// `serve --distributed` over two ranks, tensor- and pipeline-parallel:
/// concurrent greedy requests
/// (completions and chats, streamed or not) get the text one process
/// gives, a seeded sampled request the tokens a one-process server gives,
/// a client leaving mid-stream leaves the others as they were, and SIGTERM
/// sent to the launch ends every rank with status 0.
#[test]
fn a_launched_server_answers_as_one_process() {
    let _turn = one_launch();
    let prompts = [
        "Once upon a time",
        "The capital of France is",
        "1, 2, 3, 4,",
        "Hello there",
    ];
    for (fixture, kind) in [
        ("qwen3", "tensor"),
        ("llama", "tensor"),
        ("gemma3_text", "pipeline"),
    ] {
        let model = fixtures().join(fixture);
        let expected: Vec<String> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| cli_text(&model, i % 2 == 1, p, 12))
            .collect();
        let seeded = json!({"temperature": 0.9, "seed": 7});
        let alone = {
            let server = Server::start(&model, &[]);
            ask(server.port, prompts[0], false, false, &seeded)
        };
        // prompts read a few tokens a step: chunked prefill crosses the ranks too
        let mut server = Server::launch(
            2,
            &model,
            &["--distributed", kind, "--prefill-step-size", "4"],
        );
        let port = server.port;
        // A client that leaves after the first bytes of a long stream.
        let leaver = within(Duration::from_secs(120), "a stream", move || {
            let body = json!({"prompt": "Far away", "max_tokens": 200, "stream": true});
            let mut s = send(
                port,
                "POST",
                "/v1/completions",
                &[],
                Some(body.to_string().as_bytes()),
            )
            .unwrap();
            let mut first = [0u8; 64];
            std::io::Read::read(&mut s, &mut first).unwrap()
        });
        assert!(leaver > 0);
        let answers: Vec<String> =
            within(Duration::from_secs(300), "concurrent requests", move || {
                let threads: Vec<_> = prompts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let p = p.to_string();
                        std::thread::spawn(move || ask(port, &p, i % 2 == 1, i == 1, &json!({})))
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
        assert_eq!(
            answers, expected,
            "{fixture}: the text differs from one process's"
        );
        let sampled = ask(port, prompts[0], false, false, &seeded);
        assert_eq!(
            sampled, alone,
            "{fixture}: seeded sampling differs from one process's"
        );
        server.signal("TERM");
        let status = server.wait(Duration::from_secs(60));
        assert!(
            status.success(),
            "{fixture}: the launch ended with {status}"
        );
        let err: Vec<String> = server.stderr.try_iter().collect();
        assert!(err.iter().any(|l| l == "stopped"), "{fixture}: {err:?}");
        assert_eq!(
            err.iter().filter(|l| l.starts_with("loaded ")).count(),
            1,
            "{err:?}"
        );
    }
}

/// Without `--prompt`, rank 0 reads the prompt from stdin and hands it to
/// the others; a message piped to a distributed chat goes the same way.
#[test]
fn rank_zero_reads_stdin_for_every_rank() {
    let _turn = one_launch();
    let model = fixtures().join("qwen3");
    let model = model.to_str().unwrap();
    for (command, flag) in [("generate", "--prompt"), ("chat", "--message")] {
        let alone = run(&[
            command,
            "--model",
            model,
            flag,
            "Once upon a time",
            "--max-tokens",
            "12",
        ]);
        assert!(alone.status.success(), "{alone:?}");
        let launched = run_with_stdin(
            &[
                "launch",
                "-n",
                "2",
                "--",
                command,
                "--model",
                model,
                "--max-tokens",
                "12",
                "--distributed",
                "tensor",
            ],
            "Once upon a time",
        );
        let err = String::from_utf8_lossy(&launched.stderr);
        assert!(launched.status.success(), "{command}: {err}");
        assert!(!alone.stdout.is_empty());
        assert_eq!(launched.stdout, alone.stdout, "{command}: the text differs");
    }
}

/// `mlx-infer ARGS` with `stdin` piped in.
fn run_with_stdin(args: &[&str], stdin: &str) -> Output {
    test_support::output_with_stdin(cli().args(args), stdin.as_bytes())
}

/// The JSON lines of `mlx-infer ARGS` that carry an `index`, with `stdin`
/// piped in.
fn indexed_lines(args: &[&str], stdin: &str) -> Vec<Value> {
    let out = run_with_stdin(args, stdin);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    test_support::json_lines(&out.stdout)
        .into_iter()
        .filter(|v| v.get("index").is_some())
        .collect()
}

/// `batch` and `classify` spread over ranks (inputs piped to rank 0 or
/// named by `--input`): the same completions as one process, and the same
/// classifications (ids equal, logprobs to 1e-4: the ranks sum partial
/// products in another order).
#[test]
fn batch_and_classify_over_ranks_match_one_process() {
    let _turn = one_launch();
    let inputs = "Once upon a time\nHello there\nThe capital of France is\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n";
    let inputs_file = ScratchFile::with_contents("dist-inputs.txt", inputs);
    let file = inputs_file.to_str().unwrap().to_string();
    let cases = [
        ("qwen3", "tensor", "2"),
        ("qwen3", "pipeline", "2"),
        ("gemma3_text", "pipeline", "4"),
        ("llama-4bit", "pipeline", "2"),
    ];
    for (fixture, kind, n) in cases {
        let model = fixtures().join(fixture);
        let model = model.to_str().unwrap();
        let batch = [
            "batch",
            "--model",
            model,
            "--input",
            &file,
            "--max-tokens",
            "10",
            "--json",
        ];
        let alone = indexed_lines(&batch, "");
        let mut launched = vec!["launch", "-n", n, "--"];
        launched.extend(batch);
        launched.extend(["--distributed", kind]);
        let spread = indexed_lines(&launched, "");
        assert_eq!(alone.len(), 4);
        assert_eq!(spread, alone, "{fixture} {kind} over {n}: batch differs");

        let classify = ["classify", "--model", model, "--json", "--top-k", "3"];
        let alone = indexed_lines(&classify, inputs);
        let mut launched = vec!["launch", "-n", n, "--"];
        launched.extend(classify);
        launched.extend(["--distributed", kind]);
        let spread = indexed_lines(&launched, inputs);
        assert_eq!(spread.len(), alone.len(), "{fixture} {kind} over {n}");
        for (a, b) in alone.iter().zip(&spread) {
            assert_eq!(a["index"], b["index"]);
            assert_eq!(a["id"], b["id"], "{fixture} {kind} over {n}: {a} vs {b}");
            let ids = |v: &Value| -> Vec<Value> {
                v["top"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["id"].clone())
                    .collect()
            };
            assert_eq!(ids(a), ids(b), "{fixture} {kind} over {n}");
            let (x, y) = (
                a["logprob"].as_f64().unwrap(),
                b["logprob"].as_f64().unwrap(),
            );
            assert!(
                (x - y).abs() < 1e-4,
                "{fixture} {kind} over {n}: {x} vs {y}"
            );
        }
    }
}

/// `launch --backend nccl` sets NCCL's environment for each rank; a build
/// of MLX without NCCL (the CPU build) says so instead of failing vaguely.
#[test]
fn an_nccl_launch_needs_an_mlx_with_nccl() {
    let _turn = one_launch();
    let model = fixtures().join("qwen3");
    let out = run(&[
        "launch",
        "-n",
        "2",
        "--backend",
        "nccl",
        "--",
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-tokens",
        "4",
        "--distributed",
        "tensor",
        "--distributed-backend",
        "nccl",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(
            err.contains("this MLX build has no `nccl` distributed backend"),
            "{err}"
        );
    }
}

/// A prompt of several hundred tokens (read in chunks when a generation
/// can be cancelled, as the CLI's can): every rank reads it in the same
/// chunks, so the ids are one process's.
#[test]
fn long_prompts_give_one_process_ids() {
    let _turn = one_launch();
    let model = fixtures().join("qwen3");
    let model = model.to_str().unwrap();
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(30);
    let args = [
        "generate",
        "--model",
        model,
        "--prompt",
        &prompt,
        "--max-tokens",
        "8",
        "--json",
    ];
    let alone = run(&args);
    assert!(alone.status.success(), "{alone:?}");
    let ids = |out: &Output| -> Vec<Value> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get("id").cloned())
            .collect()
    };
    assert_eq!(ids(&alone).len(), 8);
    for kind in ["tensor", "pipeline"] {
        let mut launched = vec!["launch", "-n", "2", "--"];
        launched.extend(args);
        launched.extend(["--distributed", kind]);
        let out = run(&launched);
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(ids(&out), ids(&alone), "{kind}: the ids differ");
    }
}

/// The child processes of `pid` and the rank each was given (Linux).
fn ranks_of(pid: u32) -> Vec<(u32, usize)> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children
        .split_whitespace()
        .map(|c| c.parse::<u32>().unwrap())
        .filter_map(|c| {
            let env = std::fs::read(format!("/proc/{c}/environ")).ok()?;
            let rank = env
                .split(|&b| b == 0)
                .find_map(|kv| kv.strip_prefix(b"MLX_RANK="))?;
            Some((c, std::str::from_utf8(rank).ok()?.parse().ok()?))
        })
        .collect()
}

/// A rank of a distributed server that is killed (SIGKILL, no chance to
/// say goodbye) ends the launch with an error, whichever rank it was, and
/// leaves no rank behind.
#[test]
fn a_killed_rank_ends_a_distributed_server() {
    let _turn = one_launch();
    let model = fixtures().join("qwen3");
    for victim in [1, 0] {
        let mut server = Server::launch(2, &model, &["--distributed", "tensor"]);
        assert!(!ask(server.port, "Hello there", false, false, &json!({})).is_empty());
        let ranks = ranks_of(server.child.id());
        assert_eq!(ranks.len(), 2, "{ranks:?}");
        let (pid, _) = ranks.iter().find(|(_, r)| *r == victim).unwrap();
        let killed = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = server.wait(Duration::from_secs(60));
        assert!(
            !status.success(),
            "rank {victim} killed: the launch ended with {status}"
        );
        for (pid, rank) in ranks {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "rank {rank} still runs after rank {victim} was killed"
            );
        }
    }
}
