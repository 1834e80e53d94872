//! `mlx-infer serve` end to end: the binary on a free loopback port,
//! greedy answers equal to `generate`/`chat` (alone and among 31 other
//! concurrent requests), the official Python clients, curl, every error
//! status with its JSON shape, a load test with disconnecting and
//! misbehaving clients, and SIGTERM during streams.
#![cfg(all(target_os = "linux", feature = "metal"))]

mod serve_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use serve_support::*;
use test_support::{fixture_models, fixtures};

const MAX: usize = 16;

/// Prompts of different lengths.
fn prompts() -> Vec<String> {
    let base = "The quick brown fox jumps over the lazy dog. ";
    [1, 2, 3, 5, 8, 13, 21, 34]
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{i}: {}", base.repeat(*n)))
        .collect()
}

fn completion(prompt: &str, stream: bool, max: usize) -> Value {
    json!({"prompt": prompt, "max_tokens": max, "temperature": 0, "stream": stream})
}

fn chat(message: &str, stream: bool, max: usize) -> Value {
    json!({"messages": [{"role": "user", "content": message}], "max_tokens": max, "temperature": 0, "stream": stream})
}

#[test]
fn greedy_answers_equal_generate_and_chat_on_every_fixture() {
    for dir in fixture_models() {
        let server = Server::start(&dir, &[]);
        let raw = cli_text(&dir, false, "Hello, my name is", MAX);
        let reply = cli_text(&dir, true, "Hello, who are you?", MAX);
        let r = server.post(
            "/v1/completions",
            &completion("Hello, my name is", false, MAX),
        );
        assert_eq!(answer_text(&r, false), raw, "{}", dir.display());
        let r = server.post(
            "/v1/chat/completions",
            &chat("Hello, who are you?", true, MAX),
        );
        assert_eq!(answer_text(&r, true), reply, "{}", dir.display());
    }
}

/// Sends the 32 requests of `cases` (path, body, stream, expected) at once
/// and checks every answer.
fn check_concurrently(server: &Server, cases: Vec<(&'static str, Value, bool, String)>) {
    let port = server.port;
    let threads: Vec<_> = cases
        .into_iter()
        .map(|(path, body, stream, want)| {
            std::thread::spawn(move || {
                let r =
                    request(port, "POST", path, &[], Some(body.to_string().as_bytes())).unwrap();
                assert_eq!(answer_text(&r, stream), want, "{path} {body}");
            })
        })
        .collect();
    within(
        Duration::from_secs(600),
        "32 concurrent requests",
        move || {
            for t in threads {
                t.join().unwrap();
            }
        },
    );
}

#[test]
fn greedy_answers_hold_among_32_concurrent_requests() {
    for name in ["llama", "qwen3-4bit", "gemma3_text-8bit"] {
        let dir = fixtures().join(name);
        let server = Server::start(&dir, &[]);
        let mut cases = Vec::new();
        for p in prompts() {
            let raw = cli_text(&dir, false, &p, MAX);
            let reply = cli_text(&dir, true, &p, MAX);
            for stream in [false, true] {
                cases.push((
                    "/v1/completions",
                    completion(&p, stream, MAX),
                    stream,
                    raw.clone(),
                ));
                cases.push((
                    "/v1/chat/completions",
                    chat(&p, stream, MAX),
                    stream,
                    reply.clone(),
                ));
            }
        }
        assert_eq!(cases.len(), 32);
        check_concurrently(&server, cases);
    }
}

#[test]
fn official_openai_and_anthropic_clients_work() {
    let dir = fixtures().join("qwen3");
    let python = fixtures().join("python");
    let probe = Command::new(&python)
        .args(["-c", "import openai, anthropic"])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "the fixtures' Python lacks openai/anthropic: run `cargo xtask fixtures` ({})",
        String::from_utf8_lossy(&probe.stderr)
    );
    let (prompt, message) = ("Once upon a time", "Tell me a story.");
    let case = json!({
        "prompt": prompt,
        "message": message,
        "max_tokens": MAX,
        "raw": cli_text(&dir, false, prompt, MAX),
        "chat": cli_text(&dir, true, message, MAX),
    });
    let scratch = test_support::ScratchDir::new("serve-clients");
    let cases = scratch.path().join("case.json");
    std::fs::write(&cases, case.to_string()).unwrap();
    let server = Server::start(&dir, &["--api-key", "sekret"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_clients.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(server.port.to_string())
        .arg("sekret")
        .arg(&cases)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn curl_streams_and_answers() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let dir = fixtures().join("llama");
    let server = Server::start(&dir, &[]);
    let want = cli_text(&dir, true, "Hi there", MAX);
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", server.port);
    let curl = |body: Value| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-N",
                "--max-time",
                "120",
                "-H",
                "Content-Type: application/json",
                "-d",
            ])
            .arg(body.to_string())
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let v: Value = serde_json::from_str(&curl(chat("Hi there", false, MAX))).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    let events = parse_sse(&curl(chat("Hi there", true, MAX)));
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .filter_map(|(_, d)| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, want);
}

fn assert_openai_error(r: &Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    let e = &v["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(e.get(key).is_some(), "{key} missing in {v}");
    }
    assert!(
        e["message"].as_str().unwrap().contains(needle),
        "`{needle}` not in {v}"
    );
}

fn assert_anthropic_error(r: &Response, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

#[test]
fn every_error_has_its_status_and_shape() {
    let dir = fixtures().join("qwen3");
    let server = Server::start(
        &dir,
        &[
            "--api-key",
            "sekret",
            "--max-body",
            "4096",
            "--max-tokens",
            "100",
            "--adapters",
            "fr=/nonexistent",
        ],
    );
    let auth = [("Authorization", "Bearer sekret")];
    let post = |path: &str, body: &str| server.post_raw(path, &auth, body.as_bytes());
    // 401: no key, a wrong key; Anthropic's shape on /v1/messages.
    let ok_body = chat("Hi", false, 4).to_string();
    let r = server.post_raw("/v1/chat/completions", &[], ok_body.as_bytes());
    assert_openai_error(&r, 401, "API key");
    let r = server.post_raw(
        "/v1/completions",
        &[("Authorization", "Bearer nope")],
        b"{}",
    );
    assert_openai_error(&r, 401, "incorrect");
    let msg = json!({"max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}).to_string();
    let r = server.post_raw("/v1/messages", &[("x-api-key", "nope")], msg.as_bytes());
    assert_anthropic_error(&r, 401, "authentication_error");
    let r = server.post_raw("/v1/messages", &[("x-api-key", "sekret")], msg.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    assert_eq!(server.get("/health").unwrap().status, 200);
    // 400s.
    assert_openai_error(&post("/v1/chat/completions", "{not json"), 400, "JSON");
    assert_openai_error(&post("/v1/chat/completions", "[1, 2]"), 400, "object");
    assert_openai_error(
        &post(
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": "ten"}"#,
        ),
        400,
        "invalid type",
    );
    assert_openai_error(&post("/v1/completions", r#"{"prompt": 5}"#), 400, "invalid");
    assert_openai_error(
        &post("/v1/chat/completions", r#"{"messages": []}"#),
        400,
        "no messages",
    );
    assert_openai_error(
        &post(
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "  "}]}"#,
        ),
        400,
        "empty",
    );
    let r = post("/v1/completions", r#"{"prompt": "Hi", "max_tokens": 5000}"#);
    assert_openai_error(&r, 400, "context length");
    assert_eq!(r.json()["error"]["param"], "max_tokens");
    assert_openai_error(
        &post("/v1/completions", r#"{"prompt": "Hi", "max_tokens": 200}"#),
        400,
        "--max-tokens",
    );
    let r = post(
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 200}"#,
    );
    assert_eq!(r.json()["error"]["param"], "max_completion_tokens");
    let r = post("/v1/completions", r#"{"prompt": "Hi", "n": 3}"#);
    assert_openai_error(&r, 400, "n must be 1");
    assert_eq!(r.json()["error"]["param"], "n");
    assert_openai_error(
        &post("/v1/completions", r#"{"prompt": "Hi", "best_of": 2}"#),
        400,
        "best_of",
    );
    assert_openai_error(
        &post("/v1/completions", r#"{"prompt": "Hi", "temperature": -1}"#),
        400,
        "temperature",
    );
    assert_openai_error(
        &post("/v1/completions", r#"{"prompt": "Hi", "stop": [""]}"#),
        400,
        "stop",
    );
    assert_openai_error(&post("/v1/completions", r#"{"prompt": ""}"#), 400, "empty");
    let r = server.post_raw(
        "/v1/messages",
        &auth,
        br#"{"messages": [{"role": "user", "content": "Hi"}]}"#,
    );
    assert_anthropic_error(&r, 400, "invalid_request_error");
    let r = server.post_raw("/v1/messages", &auth, b"{oops");
    assert_anthropic_error(&r, 400, "invalid_request_error");
    // 404s.
    assert_openai_error(
        &post("/v1/completions", r#"{"prompt": "Hi", "model": "gpt-4"}"#),
        404,
        "gpt-4",
    );
    assert_openai_error(
        &post("/v1/completions", r#"{"prompt": "Hi", "adapter": "de"}"#),
        404,
        "de",
    );
    let r = server.post_raw(
        "/v1/messages",
        &auth,
        br#"{"model": "claude", "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]}"#,
    );
    assert_anthropic_error(&r, 404, "not_found_error");
    // the model by its name, by `default`, and the adapter listed.
    assert_eq!(
        post(
            "/v1/completions",
            r#"{"prompt": "Hi", "model": "qwen3", "max_tokens": 2}"#
        )
        .status,
        200
    );
    assert_eq!(
        post(
            "/v1/completions",
            r#"{"prompt": "Hi", "model": "default", "max_tokens": 2}"#
        )
        .status,
        200
    );
    let models = request(server.port, "GET", "/v1/models", &auth, None)
        .unwrap()
        .json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["qwen3", "fr"]);
    // 413.
    let big = json!({"prompt": "x".repeat(10_000)}).to_string();
    assert_openai_error(&post("/v1/completions", &big), 413, "limit");
    // The server is still well.
    let r = post("/v1/completions", &completion("Hi", false, 3).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let metrics = server.get("/metrics").unwrap().text();
    assert!(
        metrics.contains("mlx_infer_requests_total{endpoint=\"/v1/completions\",status=\"400\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlx_infer_requests_total{endpoint=\"/v1/messages\",status=\"401\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlx_infer_time_to_first_token_seconds_count"),
        "{metrics}"
    );
}

/// Streams a long completion on a raw connection and reads until its first
/// text chunk: the request is running.
fn running_stream(port: u16, max_tokens: usize) -> std::io::BufReader<std::net::TcpStream> {
    use std::io::BufRead;
    let body = completion("Once", true, max_tokens).to_string();
    let s = send(port, "POST", "/v1/completions", &[], Some(body.as_bytes())).unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
        if line.starts_with("data: {") && line.contains("\"text\"") {
            return r;
        }
    }
}

#[test]
fn a_full_queue_is_429_and_a_disconnect_frees_the_row() {
    let dir = fixtures().join("phi3");
    let server = Server::start(
        &dir,
        &[
            "--max-batch",
            "1",
            "--max-queue",
            "1",
            "--max-tokens",
            "8000",
        ],
    );
    let port = server.port;
    let a = running_stream(port, 8000);
    let b = std::thread::spawn(move || {
        request(
            port,
            "POST",
            "/v1/completions",
            &[],
            Some(completion("Hi", false, 3).to_string().as_bytes()),
        )
        .unwrap()
    });
    // b waits in the queue.
    within(Duration::from_secs(60), "b queued", move || loop {
        let m = request(port, "GET", "/metrics", &[], None).unwrap().text();
        if m.contains("mlx_infer_queue_depth 1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    });
    let r = server.post("/v1/completions", &completion("Hi", false, 3));
    assert_openai_error(&r, 429, "busy");
    let r = server.post_raw(
        "/v1/messages",
        &[],
        json!({"max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]})
            .to_string()
            .as_bytes(),
    );
    assert_anthropic_error(&r, 429, "rate_limit_error");
    // a's client leaves: its row is freed and b runs.
    drop(a);
    let r = within(Duration::from_secs(120), "b answered", move || {
        b.join().unwrap()
    });
    assert_eq!(r.status, 200, "{}", r.text());
    // a was cancelled, not run to its 8000 tokens.
    let m = server.get("/metrics").unwrap().text();
    let generated: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("mlx_infer_generated_tokens_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(generated < 8000, "{generated} tokens generated");
}

#[test]
fn load_with_disconnects_and_bad_bodies_completes_every_good_request() {
    let dir = fixtures().join("qwen3-4bit");
    let server = Server::start(&dir, &["--max-queue", "1024"]);
    let prompts: Vec<String> = prompts().into_iter().take(4).collect();
    let wants: Vec<String> = prompts
        .iter()
        .map(|p| cli_text(&dir, false, p, MAX))
        .collect();
    // Warm up, then the baseline.
    for p in &prompts {
        assert_eq!(
            server
                .post("/v1/completions", &completion(p, true, MAX))
                .status,
            200
        );
    }
    let baseline = server.rss_kib();
    let port = server.port;
    let clients: Vec<_> = (0..64)
        .map(|c| {
            let (prompts, wants) = (prompts.clone(), wants.clone());
            std::thread::spawn(move || {
                for round in 0..3 {
                    let k = (c + round) % prompts.len();
                    match (c + round) % 8 {
                        // disconnect mid-stream
                        0 => {
                            let _ = running_stream(port, 1000);
                        }
                        // a bad body
                        1 => {
                            let r = request(
                                port,
                                "POST",
                                "/v1/chat/completions",
                                &[],
                                Some(b"{\"messages\": 7"),
                            )
                            .unwrap();
                            assert_eq!(r.status, 400);
                        }
                        2 => {
                            let body = completion(&prompts[k], false, MAX).to_string();
                            let r = request(
                                port,
                                "POST",
                                "/v1/completions",
                                &[],
                                Some(body.as_bytes()),
                            )
                            .unwrap();
                            assert_eq!(answer_text(&r, false), wants[k]);
                        }
                        _ => {
                            let body = completion(&prompts[k], true, MAX).to_string();
                            let r = request(
                                port,
                                "POST",
                                "/v1/completions",
                                &[],
                                Some(body.as_bytes()),
                            )
                            .unwrap();
                            assert_eq!(answer_text(&r, true), wants[k]);
                        }
                    }
                }
            })
        })
        .collect();
    within(Duration::from_secs(900), "the load", move || {
        for c in clients {
            c.join().unwrap();
        }
    });
    // Every row was freed: nothing queued or running, and the server answers.
    within(Duration::from_secs(60), "idle after the load", move || {
        loop {
            let m = request(port, "GET", "/metrics", &[], None).unwrap().text();
            if m.contains("mlx_infer_queue_depth 0") && m.contains("mlx_infer_running_requests 0") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let r = server.post("/v1/completions", &completion(&prompts[0], false, MAX));
    assert_eq!(answer_text(&r, false), wants[0]);
    let after = server.rss_kib();
    assert!(
        after < baseline + baseline / 2 + 64 * 1024,
        "RSS went from {baseline} KiB to {after} KiB"
    );
}

#[test]
fn sigterm_ends_streams_and_exits_zero() {
    let dir = fixtures().join("phi3");
    let mut server = Server::start(&dir, &["--shutdown-grace", "1", "--max-tokens", "8000"]);
    let port = server.port;
    // One stream runs; two more wait in the queue (one request at a time
    // on a backend without a batching engine).
    let running = running_stream(port, 8000);
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let body = completion("Once", true, 8000).to_string();
            send(port, "POST", "/v1/completions", &[], Some(body.as_bytes())).unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    server.signal("TERM");
    let (rest, others) = within(
        Duration::from_secs(120),
        "streams end after SIGTERM",
        move || {
            use std::io::Read;
            let mut running = running;
            let mut rest = Vec::new();
            let _ = running.read_to_end(&mut rest);
            let others: Vec<Response> = waiting
                .into_iter()
                .map(|s| read_response(s).unwrap())
                .collect();
            (String::from_utf8_lossy(&rest).into_owned(), others)
        },
    );
    assert!(rest.contains("data: [DONE]"), "{rest}");
    for r in others {
        // Finished (cancelled at the end of the grace period) or refused.
        assert!(
            (r.status == 200 && r.text().contains("data: [DONE]")) || r.status == 503,
            "{} {}",
            r.status,
            r.text()
        );
    }
    let status = server.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
    // The port is closed.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// The server's `mlx_infer_NAME` figure.
fn metric(server: &Server, name: &str) -> u64 {
    let m = server.get("/metrics").unwrap().text();
    let prefix = format!("mlx_infer_{name} ");
    m.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in {m}"))
        .parse()
        .unwrap()
}

#[test]
fn a_non_streamed_request_whose_client_leaves_is_cancelled() {
    let dir = fixtures().join("phi3");
    let server = Server::start(&dir, &["--max-tokens", "8000"]);
    let body = completion("Once", false, 8000).to_string();
    let conn = send(
        server.port,
        "POST",
        "/v1/completions",
        &[],
        Some(body.as_bytes()),
    )
    .unwrap();
    let port = server.port;
    within(Duration::from_secs(60), "the request runs", move || loop {
        let m = request(port, "GET", "/metrics", &[], None).unwrap().text();
        if m.contains("mlx_infer_running_requests 1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    });
    drop(conn);
    let r = server.post("/v1/completions", &completion("Hi", false, 3));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(metric(&server, "generated_tokens_total") < 8000);
}

#[test]
fn the_mlxlm_backend_is_served_one_request_at_a_time() {
    let dir = fixtures().join("qwen3");
    let server = Server::start(&dir, &["--backend", "mlxlm"]);
    let health = server.get("/health").unwrap().json();
    assert_eq!(health["backend"], "mlxlm");
    assert_eq!(health["batching"], false);
    let out = cli()
        .args([
            "generate",
            "--backend",
            "mlxlm",
            "--temperature",
            "0",
            "--json",
        ])
        .args([
            "--max-tokens",
            &MAX.to_string(),
            "--prompt",
            "Hello, my name is",
            "--model",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: String = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<Value>(l).ok()?["text"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let port = server.port;
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let want = want.clone();
            std::thread::spawn(move || {
                let body = completion("Hello, my name is", i % 2 == 0, MAX).to_string();
                let r =
                    request(port, "POST", "/v1/completions", &[], Some(body.as_bytes())).unwrap();
                assert_eq!(answer_text(&r, i % 2 == 0), want);
            })
        })
        .collect();
    within(Duration::from_secs(300), "mlxlm requests", move || {
        for t in threads {
            t.join().unwrap();
        }
    });
    // Logprobs need a batching engine.
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2, "logprobs": 2}),
    );
    assert_openai_error(&r, 400, "batching engine");
}

#[test]
fn bad_flags_are_refused_before_serving() {
    let dir = fixtures().join("qwen3");
    for (args, needle) in [
        (&["--adapters", "fr"][..], "NAME=DIR"),
        (&["--max-batch", "0"][..], "--max-batch"),
        (&["--max-queue", "0"][..], "--max-queue"),
    ] {
        let out = cli()
            .arg("serve")
            .arg("--model")
            .arg(&dir)
            .args(["--port", "0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("listening on"), "{err}");
    }
}
