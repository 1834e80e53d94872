//! `GET /v1/models`, `GET /v1/models/{id}`, `GET /health` and
//! `GET /metrics`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::engine_thread::Status;
use crate::{ApiError, App, ServerError};

fn entry(app: &App, id: &str, parent: Option<&str>) -> Value {
    let created = super::now().saturating_sub(app.started.elapsed().as_secs());
    let mut v = json!({"id": id, "object": "model", "created": created, "owned_by": "mlx-infer"});
    if let Some(p) = parent {
        v["parent"] = json!(p);
    }
    v
}

/// `GET /v1/models`: the model, then each adapter (with the model as
/// `parent`).
pub async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let id = &app.config.model_id;
    let mut data = vec![entry(&app, id, None)];
    for (name, _) in &app.config.adapters {
        data.push(entry(&app, name, Some(id)));
    }
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`.
pub async fn one(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    if id == app.config.model_id || id == "default" {
        return Json(entry(&app, &app.config.model_id, None)).into_response();
    }
    if app.config.adapters.iter().any(|(n, _)| *n == id) {
        return Json(entry(&app, &id, Some(&app.config.model_id))).into_response();
    }
    ApiError::openai(ServerError::NotFound(format!(
        "the model `{id}` does not exist"
    )))
    .into_response()
}

/// `GET /health`: 200 `{"status": "ok"}` when serving, 503 `loading` or
/// `failed` otherwise.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let (code, body) = match app.shared.status() {
        Status::Ready => {
            let info = app.shared.info();
            (
                StatusCode::OK,
                json!({
                    "status": "ok",
                    "model": app.config.model_id,
                    "backend": info.map(|i| i.backend.clone()),
                    "batching": app.shared.batching(),
                    "queue_depth": app.metrics().queue_depth(),
                }),
            )
        }
        Status::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "loading"}),
        ),
        Status::Failed(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failed", "error": e}),
        ),
    };
    (code, Json(body)).into_response()
}

/// `GET /metrics` in Prometheus' text format.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics().render(),
    )
        .into_response()
}
