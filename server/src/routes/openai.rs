//! `POST /v1/chat/completions` and `POST /v1/completions` in OpenAI's
//! shapes, streamed (SSE `data:` chunks ending with `data: [DONE]`) or not.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use inference::{EngineRequest, Input, Message, Role, Token, TokenLogprobs};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    check_logprobs, collect, finish_reason, new_id, now, options, read_json, resolve_model, start,
    OneOrMany, Sampling,
};
use crate::engine_thread::Event;
use crate::sse::{self, StreamFormat};
use crate::{ApiError, App, ServerError};

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Message content: a string or a list of parts (`{"type": "text", "text"}`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    adapter: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    prompt: OneOrMany,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    logprobs: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    best_of: Option<u64>,
    #[serde(default)]
    adapter: Option<String>,
}

fn check_n(n: Option<u64>) -> Result<(), ServerError> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(ServerError::bad_param(
            "n",
            format!("n is {n}: this server generates one choice per request (n must be 1)"),
        )),
    }
}

fn text_of(content: Option<Content>, i: usize) -> Result<String, ServerError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for p in parts {
                if p.kind != "text" {
                    return Err(ServerError::bad_param(
                        "messages",
                        format!(
                            "message {}: content parts of type `{}` are not supported (text only)",
                            i + 1,
                            p.kind
                        ),
                    ));
                }
                text.push_str(p.text.as_deref().unwrap_or(""));
            }
            Ok(text)
        }
    }
}

fn messages(raw: Vec<ChatMessage>) -> Result<Vec<Message>, ServerError> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ServerError::bad_param(
                    "messages",
                    format!("message {}: role `{other}` is not supported (system, developer, user, assistant)", i + 1),
                ))
            }
        };
        out.push(Message::new(role, text_of(m.content, i)?));
    }
    inference::check_messages(&out)
        .map_err(|e| ServerError::bad_param("messages", ServerError::from(e).message()))?;
    Ok(out)
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(app): State<Arc<App>>, body: Body) -> Response {
    match chat_inner(&app, body).await {
        Ok(r) => r,
        Err(e) => ApiError::openai(e).into_response(),
    }
}

async fn chat_inner(app: &App, body: Body) -> Result<Response, ServerError> {
    let req: ChatRequest = read_json(app, body).await?;
    check_n(req.n)?;
    let adapter = resolve_model(app, req.model.as_deref(), req.adapter.as_deref())?;
    let (max, param) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => (Some(m), "max_completion_tokens"),
        (None, m) => (m, "max_tokens"),
    };
    let stop = req.stop.map(OneOrMany::into_vec).unwrap_or_default();
    let opts = options(app, max, param, &req.sampling, stop)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (true, top) => Some(check_logprobs(app, "top_logprobs", top.unwrap_or(0))?),
        (false, Some(_)) => {
            return Err(ServerError::bad_param(
                "top_logprobs",
                "top_logprobs needs logprobs set to true",
            ))
        }
        (false, None) => None,
    };
    let msgs = messages(req.messages)?;
    let mut request = EngineRequest::new(Input::Chat(msgs), opts);
    request.adapter = adapter;
    request.logprobs = logprobs;
    let model = req.model.unwrap_or_else(|| app.config.model_id.clone());
    let (first, rx) = start(app, request).await?;
    let id = new_id("chatcmpl-");
    let created = now();
    if req.stream.unwrap_or(false) {
        let include_usage = req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let format = ChatStream {
            id,
            created,
            model,
            include_usage,
            logprobs: logprobs.is_some(),
        };
        return Ok(sse::respond(first, rx, format));
    }
    let c = collect(first, rx).await?;
    let logprobs_json = logprobs.map(|_| {
        json!({"content": c.tokens.iter().map(|(t, l)| chat_logprob(t, l.as_ref())).collect::<Vec<_>>()})
    });
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": logprobs_json,
            "finish_reason": finish_reason(c.reason),
        }],
        "usage": usage(c.prompt_tokens, c.completion_tokens, c.cached_tokens),
    }))
    .into_response())
}

fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn chat_logprob(token: &Token, l: Option<&TokenLogprobs>) -> Value {
    let (logprob, top) = match l {
        Some(l) => (l.logprob, l.top.as_slice()),
        None => (0.0, &[][..]),
    };
    json!({
        "token": token.text,
        "logprob": logprob,
        "bytes": token.text.as_bytes(),
        "top_logprobs": top.iter().map(|s| json!({
            "token": s.text, "logprob": s.logprob, "bytes": s.text.as_bytes(),
        })).collect::<Vec<_>>(),
    })
}

/// Writes `chat.completion.chunk`s.
struct ChatStream {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    logprobs: bool,
}

impl ChatStream {
    fn chunk(&self, delta: Value, logprobs: Value, finish: Option<&str>) -> SseEvent {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        sse::data(&v)
    }
}

impl StreamFormat for ChatStream {
    fn event(&mut self, event: Event) -> (Vec<SseEvent>, bool) {
        match event {
            Event::Started { .. } => (
                vec![self.chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    None,
                )],
                false,
            ),
            Event::Token { token, logprobs } => {
                let lp = if self.logprobs {
                    json!({"content": [chat_logprob(&token, logprobs.as_ref())]})
                } else {
                    Value::Null
                };
                (
                    vec![self.chunk(json!({"content": token.text}), lp, None)],
                    false,
                )
            }
            Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                let mut out =
                    vec![self.chunk(json!({}), Value::Null, Some(finish_reason(Some(reason))))];
                if self.include_usage {
                    out.push(sse::data(&json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
                    })));
                }
                out.push(sse::done());
                (out, true)
            }
            Event::Failed(e) => (vec![sse::data(&e.openai_body()), sse::done()], true),
        }
    }
}

/// `POST /v1/completions`.
pub async fn completions(State(app): State<Arc<App>>, body: Body) -> Response {
    match completions_inner(&app, body).await {
        Ok(r) => r,
        Err(e) => ApiError::openai(e).into_response(),
    }
}

async fn completions_inner(app: &App, body: Body) -> Result<Response, ServerError> {
    let req: CompletionRequest = read_json(app, body).await?;
    check_n(req.n)?;
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ServerError::bad_param(
            "best_of",
            "best_of must be 1: this server generates one choice per request",
        ));
    }
    let adapter = resolve_model(app, req.model.as_deref(), req.adapter.as_deref())?;
    let prompt = match req.prompt {
        OneOrMany::One(p) => p,
        OneOrMany::Many(mut v) if v.len() == 1 => v.remove(0),
        OneOrMany::Many(v) => {
            return Err(ServerError::bad_param(
                "prompt",
                format!("{} prompts given: send one prompt per request", v.len()),
            ))
        }
    };
    if prompt.is_empty() {
        return Err(ServerError::bad_param("prompt", "the prompt is empty"));
    }
    let stop = req.stop.map(OneOrMany::into_vec).unwrap_or_default();
    let opts = options(app, req.max_tokens, "max_tokens", &req.sampling, stop)?;
    let logprobs = match req.logprobs {
        Some(k) => Some(check_logprobs(app, "logprobs", k)?),
        None => None,
    };
    let mut request = EngineRequest::new(Input::Prompt(prompt), opts);
    request.adapter = adapter;
    request.logprobs = logprobs;
    let model = req.model.unwrap_or_else(|| app.config.model_id.clone());
    let (first, rx) = start(app, request).await?;
    let id = new_id("cmpl-");
    let created = now();
    if req.stream.unwrap_or(false) {
        let include_usage = req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let format = CompletionStream {
            id,
            created,
            model,
            include_usage,
            logprobs: logprobs.is_some(),
            offset: 0,
        };
        return Ok(sse::respond(first, rx, format));
    }
    let c = collect(first, rx).await?;
    let logprobs_json = logprobs.map(|_| completion_logprobs(&c.tokens, 0));
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "text": c.text,
            "logprobs": logprobs_json,
            "finish_reason": finish_reason(c.reason),
        }],
        "usage": usage(c.prompt_tokens, c.completion_tokens, c.cached_tokens),
    }))
    .into_response())
}

/// The legacy completions logprobs object, text offsets counted from `offset`.
fn completion_logprobs(tokens: &[(Token, Option<TokenLogprobs>)], mut offset: usize) -> Value {
    let mut texts = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offsets = Vec::new();
    for (t, l) in tokens {
        texts.push(json!(t.text));
        lps.push(json!(l.as_ref().map_or(0.0, |l| l.logprob)));
        let mut top = serde_json::Map::new();
        for s in l.iter().flat_map(|l| l.top.iter()) {
            top.insert(s.text.clone(), json!(s.logprob));
        }
        tops.push(Value::Object(top));
        offsets.push(json!(offset));
        offset += t.text.len();
    }
    json!({"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// Writes `text_completion` chunks.
struct CompletionStream {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    logprobs: bool,
    offset: usize,
}

impl CompletionStream {
    fn chunk(&self, text: &str, logprobs: Value, finish: Option<&str>) -> SseEvent {
        let mut v = json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        sse::data(&v)
    }
}

impl StreamFormat for CompletionStream {
    fn event(&mut self, event: Event) -> (Vec<SseEvent>, bool) {
        match event {
            Event::Started { .. } => (Vec::new(), false),
            Event::Token { token, logprobs } => {
                let lp = if self.logprobs {
                    completion_logprobs(&[(token.clone(), logprobs)], self.offset)
                } else {
                    Value::Null
                };
                self.offset += token.text.len();
                (vec![self.chunk(&token.text, lp, None)], false)
            }
            Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                let mut out = vec![self.chunk("", Value::Null, Some(finish_reason(Some(reason))))];
                if self.include_usage {
                    out.push(sse::data(&json!({
                        "id": self.id,
                        "object": "text_completion",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
                    })));
                }
                out.push(sse::done());
                (out, true)
            }
            Event::Failed(e) => (vec![sse::data(&e.openai_body()), sse::done()], true),
        }
    }
}
