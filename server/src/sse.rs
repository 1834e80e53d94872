//! Server-sent events: turns a request's [`Event`]s into an SSE response
//! through a per-API [`StreamFormat`]. Dropping the response (the client
//! went away) drops the event receiver, which cancels the request.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine_thread::Event;

/// How one API writes a stream.
pub trait StreamFormat: Send + 'static {
    /// The SSE events for `event`, and whether the stream ends after them.
    fn event(&mut self, event: Event) -> (Vec<SseEvent>, bool);
}

/// An SSE response of `first` (already received) and the rest of `rx`,
/// written by `format`. A channel that closes early ends the stream as a
/// failure.
pub fn respond<F: StreamFormat>(
    first: Event,
    rx: UnboundedReceiver<Event>,
    mut format: F,
) -> Response {
    let (head, done) = format.event(first);
    let state = (rx, format, done);
    let rest = stream::unfold(state, |(mut rx, mut format, done)| async move {
        if done {
            return None;
        }
        let event = rx.recv().await.unwrap_or_else(|| {
            Event::Failed(crate::ServerError::Internal(
                "the engine stopped before the request finished".into(),
            ))
        });
        let (out, done) = format.event(event);
        Some((stream::iter(out), (rx, format, done)))
    })
    .flatten();
    let all = stream::iter(head).chain(rest).map(Ok::<_, Infallible>);
    Sse::new(all)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `data: JSON`.
pub fn data(value: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

/// `event: NAME` + `data: JSON`.
pub fn named(name: &str, value: &serde_json::Value) -> SseEvent {
    SseEvent::default().event(name).data(value.to_string())
}

/// `data: [DONE]`.
pub fn done() -> SseEvent {
    SseEvent::default().data("[DONE]")
}
