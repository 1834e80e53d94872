//! The server in-process over a fake model whose batching engine writes
//! `"<adapter>:<n> "` tokens with logprobs: the batching path over HTTP
//! (logprobs, adapters, cached tokens) and 503 while the model loads.

use std::sync::mpsc;
use std::time::Duration;

use inference::{
    Engine, EngineEvent, EngineOptions, EngineRequest, GenerateOptions, Message, Metrics,
    ModelInfo, RequestId, StopReason, TextModel, Token, TokenLogprobs, TokenScore, TokenStream,
};
use mlx_infer_server::{serve_on, ServerConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct FakeModel {
    info: ModelInfo,
}

impl TextModel for FakeModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn generate<'a>(&'a mut self, _: &str, _: &GenerateOptions) -> TokenStream<'a> {
        TokenStream::failed(inference::Error::Unsupported("fake".into()))
    }
    fn chat<'a>(&'a mut self, _: &[Message], _: &GenerateOptions) -> TokenStream<'a> {
        TokenStream::failed(inference::Error::Unsupported("fake".into()))
    }
    fn engine<'a>(&'a mut self, opts: &EngineOptions) -> inference::Result<Box<dyn Engine + 'a>> {
        Ok(Box::new(FakeEngine {
            adapters: opts.adapters.iter().map(|(n, _)| n.clone()).collect(),
            rows: Vec::new(),
        }))
    }
    fn metrics(&self) -> Metrics {
        Metrics::default()
    }
}

struct Row {
    id: RequestId,
    request: EngineRequest,
    made: usize,
}

struct FakeEngine {
    adapters: Vec<String>,
    rows: Vec<Row>,
}

impl Engine for FakeEngine {
    fn submit(&mut self, id: RequestId, request: EngineRequest) -> inference::Result<usize> {
        if let Some(a) = &request.adapter {
            if !self.adapters.contains(a) {
                return Err(inference::Error::InvalidArgument(format!(
                    "no adapter `{a}`"
                )));
            }
        }
        self.rows.push(Row {
            id,
            request,
            made: 0,
        });
        Ok(4)
    }
    fn cancel(&mut self, id: RequestId) {
        self.rows.retain(|r| r.id != id);
    }
    fn step(&mut self) -> inference::Result<Vec<EngineEvent>> {
        let mut events = Vec::new();
        self.rows.retain_mut(|r| {
            if r.made == 0 {
                events.push(EngineEvent::Started {
                    id: r.id,
                    prompt_tokens: 4,
                    cached_tokens: 1,
                });
            }
            let name = r.request.adapter.clone().unwrap_or_else(|| "base".into());
            let logprobs = r.request.logprobs.map(|k| {
                TokenLogprobs::new(
                    -0.5,
                    (0..k)
                        .map(|i| TokenScore::new(i as u32, format!("t{i}"), -1.0 - i as f64))
                        .collect(),
                )
            });
            events.push(EngineEvent::Token {
                id: r.id,
                token: Token::new(r.made as u32, format!("{name}:{} ", r.made)),
                logprobs,
            });
            r.made += 1;
            if r.made == r.request.options.max_tokens {
                events.push(EngineEvent::Done {
                    id: r.id,
                    reason: StopReason::MaxTokens,
                    prompt_tokens: 4,
                    completion_tokens: r.made,
                    cached_tokens: 1,
                });
                return false;
            }
            true
        });
        Ok(events)
    }
    fn pending(&self) -> usize {
        self.rows.len()
    }
    fn running(&self) -> usize {
        self.rows.len()
    }
}

/// `(status, body)` of one request.
async fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        loop {
            let (size, tail) = rest.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

/// Starts the server on a free port with a loader that waits for `go`.
async fn start(go: mpsc::Receiver<()>) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = ServerConfig::default();
    config.model_id = "fake".into();
    config.adapters = vec![("fr".into(), "adapters/fr".into())];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let loader = Box::new(move || {
            go.recv().unwrap();
            let mut info = ModelInfo::new("fake", "fake", "/fake");
            info.context_length = Some(64);
            Ok(Box::new(FakeModel { info }) as Box<dyn TextModel>)
        });
        serve_on(listener, config, loader, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (port, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_is_503_then_the_batching_engine_serves_logprobs_and_adapters() {
    let (go, wait) = mpsc::channel();
    let (port, _stop) = start(wait).await;

    // Loading: 503 everywhere, in each API's shape.
    let (status, body) = http(port, "GET", "/health", None).await;
    assert_eq!((status, body.as_str()), (503, r#"{"status":"loading"}"#));
    let (status, body) = http(
        port,
        "POST",
        "/v1/completions",
        Some(&json!({"prompt": "x"})),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("loading"),
        "{v}"
    );
    let msg = json!({"max_tokens": 2, "messages": [{"role": "user", "content": "x"}]});
    let (status, body) = http(port, "POST", "/v1/messages", Some(&msg)).await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["type"],
        "overloaded_error"
    );

    go.send(()).unwrap();
    let mut ready = false;
    for _ in 0..500 {
        let (status, body) = http(port, "GET", "/health", None).await;
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["batching"], true);
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready);

    // Chat with logprobs, through the adapter named as the model.
    let body = json!({"model": "fr", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
                      "logprobs": true, "top_logprobs": 2});
    let (status, text) = http(port, "POST", "/v1/chat/completions", Some(&body)).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "fr:0 fr:1 fr:2 ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(content[0]["token"], "fr:0 ");
    assert_eq!(content[0]["logprob"], -0.5);
    assert_eq!(
        content[0]["top_logprobs"][1],
        json!({"token": "t1", "logprob": -2.0, "bytes": [116, 49]})
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7,
                                  "prompt_tokens_details": {"cached_tokens": 1}})
    );

    // Completions with logprobs, streamed.
    let body = json!({"prompt": "x", "max_tokens": 2, "logprobs": 1, "stream": true});
    let (status, text) = http(port, "POST", "/v1/completions", Some(&body)).await;
    assert_eq!(status, 200, "{text}");
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["text"], "base:0 ");
    assert_eq!(
        chunks[1]["choices"][0]["logprobs"]["tokens"],
        json!(["base:1 "])
    );
    assert_eq!(
        chunks[1]["choices"][0]["logprobs"]["text_offset"],
        json!([7])
    );
    assert_eq!(
        chunks[1]["choices"][0]["logprobs"]["top_logprobs"],
        json!([{"t0": -1.0}])
    );
    assert!(text.trim_end().ends_with("data: [DONE]"));

    // Anthropic streaming through the engine, with the adapter field.
    let body = json!({"max_tokens": 2, "adapter": "fr", "stream": true,
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]});
    let (status, text) = http(port, "POST", "/v1/messages", Some(&body)).await;
    assert_eq!(status, 200, "{text}");
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(text.contains(r#""stop_reason":"max_tokens""#), "{text}");
    assert!(text.contains(r#""text":"fr:1 ""#), "{text}");

    // Too many alternatives.
    let body = json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21});
    let (status, text) = http(port, "POST", "/v1/chat/completions", Some(&body)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("top_logprobs"), "{text}");
}
