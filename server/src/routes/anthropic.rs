//! `POST /v1/messages` in Anthropic's Messages format, streamed with its
//! event types or not; errors in Anthropic's shape.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use inference::{EngineRequest, Input, Message, Role, StopReason};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{collect, new_id, options, read_json, resolve_model, start, Sampling};
use crate::engine_thread::Event;
use crate::sse::{self, StreamFormat};
use crate::{ApiError, App, ServerError};

/// A string or a list of content blocks (`{"type": "text", "text"}`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    fn text(self, what: &str) -> Result<String, ServerError> {
        match self {
            Content::Text(t) => Ok(t),
            Content::Blocks(blocks) => {
                let mut text = String::new();
                for b in blocks {
                    if b.kind != "text" {
                        return Err(ServerError::bad(format!(
                            "{what}: content blocks of type `{}` are not supported (text only)",
                            b.kind
                        )));
                    }
                    text.push_str(b.text.as_deref().unwrap_or(""));
                }
                Ok(text)
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct AnthropicMessage {
    role: String,
    content: Content,
}

#[derive(Debug, Deserialize)]
struct MessagesRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<AnthropicMessage>,
    max_tokens: Option<u64>,
    #[serde(default)]
    system: Option<Content>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    adapter: Option<String>,
}

/// `POST /v1/messages`.
pub async fn messages(State(app): State<Arc<App>>, body: Body) -> Response {
    match inner(&app, body).await {
        Ok(r) => r,
        Err(e) => ApiError::anthropic(e).into_response(),
    }
}

async fn inner(app: &App, body: Body) -> Result<Response, ServerError> {
    let req: MessagesRequest = read_json(app, body).await?;
    let adapter = resolve_model(app, req.model.as_deref(), req.adapter.as_deref())?;
    let Some(max_tokens) = req.max_tokens else {
        return Err(ServerError::bad_param(
            "max_tokens",
            "max_tokens: field required",
        ));
    };
    let stops = req.stop_sequences.unwrap_or_default();
    // Anthropic's default temperature is 1, as OpenAI's; `options` applies it.
    let opts = options(
        app,
        Some(max_tokens),
        "max_tokens",
        &req.sampling,
        stops.clone(),
    )?;
    let mut msgs = Vec::new();
    if let Some(system) = req.system {
        let text = system.text("system")?;
        if !text.trim().is_empty() {
            msgs.push(Message::system(text));
        }
    }
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ServerError::bad(format!(
                    "messages.{i}.role: `{other}` is not one of user, assistant"
                )))
            }
        };
        msgs.push(Message::new(
            role,
            m.content.text(&format!("messages.{i}"))?,
        ));
    }
    if !msgs.iter().any(|m| m.role != Role::System) {
        return Err(ServerError::bad_param(
            "messages",
            "messages: at least one message is required",
        ));
    }
    inference::check_messages(&msgs)
        .map_err(|e| ServerError::bad_param("messages", ServerError::from(e).message()))?;
    let mut request = EngineRequest::new(Input::Chat(msgs), opts);
    request.adapter = adapter;
    let model = req.model.unwrap_or_else(|| app.config.model_id.clone());
    let (first, rx) = start(app, request).await?;
    let id = new_id("msg_");
    // The stop sequence met is known when only one was given.
    let one_stop = (stops.len() == 1).then(|| stops[0].clone());
    if req.stream.unwrap_or(false) {
        let format = MessagesStream {
            id,
            model,
            one_stop,
            output_tokens: 0,
        };
        return Ok(sse::respond(first, rx, format));
    }
    let c = collect(first, rx).await?;
    let (reason, seq) = stop_reason(c.reason, &one_stop);
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": c.text}],
        "stop_reason": reason,
        "stop_sequence": seq,
        "usage": {"input_tokens": c.prompt_tokens, "output_tokens": c.completion_tokens},
    }))
    .into_response())
}

fn stop_reason(reason: Option<StopReason>, one_stop: &Option<String>) -> (&'static str, Value) {
    match reason {
        Some(StopReason::MaxTokens) => ("max_tokens", Value::Null),
        Some(StopReason::Stop) => ("stop_sequence", json!(one_stop)),
        _ => ("end_turn", Value::Null),
    }
}

/// Writes message_start, content_block_start, content_block_delta...,
/// content_block_stop, message_delta, message_stop.
struct MessagesStream {
    id: String,
    model: String,
    one_stop: Option<String>,
    output_tokens: usize,
}

impl StreamFormat for MessagesStream {
    fn event(&mut self, event: Event) -> (Vec<SseEvent>, bool) {
        match event {
            Event::Started { prompt_tokens, .. } => (
                vec![
                    sse::named(
                        "message_start",
                        &json!({"type": "message_start", "message": {
                            "id": self.id, "type": "message", "role": "assistant",
                            "model": self.model, "content": [],
                            "stop_reason": null, "stop_sequence": null,
                            "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
                        }}),
                    ),
                    sse::named(
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}),
                    ),
                ],
                false,
            ),
            Event::Token { token, .. } => {
                self.output_tokens += 1;
                (
                    vec![sse::named(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": token.text}}),
                    )],
                    false,
                )
            }
            Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
                ..
            } => {
                let (reason, seq) = stop_reason(Some(reason), &self.one_stop);
                (
                    vec![
                        sse::named(
                            "content_block_stop",
                            &json!({"type": "content_block_stop", "index": 0}),
                        ),
                        sse::named(
                            "message_delta",
                            &json!({"type": "message_delta",
                                    "delta": {"stop_reason": reason, "stop_sequence": seq},
                                    "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}}),
                        ),
                        sse::named("message_stop", &json!({"type": "message_stop"})),
                    ],
                    true,
                )
            }
            Event::Failed(e) => (vec![sse::named("error", &e.anthropic_body())], true),
        }
    }
}
