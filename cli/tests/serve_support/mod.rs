//! What the `serve` tests share: a running `mlx-infer serve` on a free
//! loopback port, a small HTTP/1.1 client over `std::net` (chunked bodies
//! and server-sent events included), and the CLI's own answers to compare
//! with.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::fixtures;

/// The program under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mlx-infer")
}

/// A command for the CLI with the tests' environment.
pub fn cli() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env("MLXLM_PYTHON", fixtures().join("python"))
        .env_remove("MLX_INFER_MODEL")
        .env_remove("MLX_INFER_API_KEY")
        .env_remove("LD_LIBRARY_PATH");
    cmd
}

/// A running server, killed on drop.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its stderr lines after the address.
    pub stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `mlx-infer serve --model MODEL --port 0 ARGS` and waits (up
    /// to two minutes) until `/health` says ok.
    pub fn start(model: &Path, args: &[&str]) -> Server {
        Server::start_with(&[], model, args)
    }

    /// [`start`](Self::start) as `ranks` processes of `mlx-infer launch`
    /// (`launch -n RANKS -- serve ...`); the child is the launcher.
    pub fn launch(ranks: usize, model: &Path, args: &[&str]) -> Server {
        Server::start_with(&["launch", "-n", &ranks.to_string(), "--"], model, args)
    }

    fn start_with(before: &[&str], model: &Path, args: &[&str]) -> Server {
        let mut child = cli()
            .args(before)
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut port = None;
        let mut seen = Vec::new();
        while port.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on http://") {
                        port = rest.rsplit(':').next().and_then(|p| p.parse().ok());
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("no `listening on` line; stderr:\n{}", seen.join("\n"));
                }
            }
        }
        let server = Server {
            child,
            port: port.unwrap(),
            stderr: rx,
        };
        while Instant::now() < deadline {
            if let Ok(r) = server.get("/health") {
                if r.status == 200 {
                    return server;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not become healthy");
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> std::io::Result<Response> {
        request(self.port, "GET", path, &[], None)
    }

    /// `POST path` with a JSON body; panics on a transport error.
    pub fn post(&self, path: &str, body: &Value) -> Response {
        request(
            self.port,
            "POST",
            path,
            &[],
            Some(body.to_string().as_bytes()),
        )
        .unwrap()
    }

    /// `POST path` with raw bytes and extra headers.
    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(self.port, "POST", path, headers, Some(body)).unwrap()
    }

    /// The server's resident memory, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits up to `limit` for the server to exit.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "the server still runs after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The SSE events: `(event name, data)`, in order.
    pub fn events(&self) -> Vec<(Option<String>, String)> {
        parse_sse(&self.text())
    }
}

/// Parses server-sent events.
pub fn parse_sse(text: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            out.push((name, data.join("\n")));
        }
    }
    out
}

/// Opens a connection and sends a request (`Connection: close`).
pub fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    Ok(s)
}

/// Sends a request and reads the whole response.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    let s = send(port, method, path, headers, body)?;
    read_response(s)
}

/// Reads a response to the end of the connection.
pub fn read_response(s: TcpStream) -> std::io::Result<Response> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            line.clear();
            r.read_line(&mut line)?;
        }
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The text of `mlx-infer generate` (or `chat`, when `chat` is true) for
/// `input` greedily, through the JSON lines.
pub fn cli_text(model: &Path, chat: bool, input: &str, max_tokens: usize) -> String {
    let out = cli()
        .arg(if chat { "chat" } else { "generate" })
        .arg(if chat { "--message" } else { "--prompt" })
        .arg(input)
        .arg("--model")
        .arg(model)
        .args(["--temperature", "0", "--json", "--max-tokens"])
        .arg(max_tokens.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    test_support::json_lines(&out.stdout)
        .iter()
        .filter_map(|v| v.get("text").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The text of a chat or completion answer, streamed or not.
pub fn answer_text(r: &Response, stream: bool) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    if !stream {
        let v = r.json();
        let c = &v["choices"][0];
        return c["message"]["content"]
            .as_str()
            .or_else(|| c["text"].as_str())
            .unwrap()
            .to_string();
    }
    let events = r.events();
    assert_eq!(events.last().unwrap().1, "[DONE]", "{}", r.text());
    let mut text = String::new();
    for (_, data) in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(data).unwrap();
        assert!(v.get("error").is_none(), "{v}");
        if let Some(c) = v["choices"].get(0) {
            if let Some(t) = c["delta"]["content"]
                .as_str()
                .or_else(|| c["text"].as_str())
            {
                text.push_str(t);
            }
        }
    }
    text
}

/// Runs `f` on a thread and fails the test when it takes longer than
/// `limit` (so nothing hangs forever).
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}
