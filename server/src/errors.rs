//! The server's one error type and how it reaches clients: OpenAI's JSON
//! error shape on the OpenAI routes, Anthropic's on `/v1/messages`.

use axum::http::StatusCode;
use serde_json::{json, Value};

/// Everything that can go wrong while starting the server or answering a
/// request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The request is malformed or asks for something the server refuses
    /// (HTTP 400); `param` names the field at fault when there is one.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The field at fault.
        param: Option<String>,
    },
    /// A missing or wrong API key (HTTP 401).
    #[error("{0}")]
    Unauthorized(String),
    /// An unknown model, adapter or route (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request body is larger than `--max-body` (HTTP 413).
    #[error("the request body is over the limit of {0} bytes")]
    TooLarge(usize),
    /// The submit queue is full (HTTP 429).
    #[error("the server is busy: {0} requests are already waiting; retry later")]
    QueueFull(usize),
    /// The model is still loading, or the server is shutting down (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// Generation failed (HTTP 500).
    #[error("{0}")]
    Internal(String),
    /// The listening socket could not be opened or served.
    #[error("{context}: {source}")]
    Io {
        /// What the server was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The model could not be loaded or served.
    #[error(transparent)]
    Inference(#[from] inference::Error),
}

impl ServerError {
    /// A 400 naming the field at fault.
    pub fn bad_param(param: &str, message: impl Into<String>) -> ServerError {
        ServerError::BadRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    /// A 400 about the request as a whole.
    pub fn bad(message: impl Into<String>) -> ServerError {
        ServerError::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ServerError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ServerError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServerError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ServerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServerError::Inference(e) => match e {
                inference::Error::InvalidArgument(_) | inference::Error::ContextExceeded { .. } => {
                    StatusCode::BAD_REQUEST
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ServerError::Internal(_) | ServerError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ServerError::BadRequest { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// OpenAI's error `type` and `code` for this error.
    fn openai_kind(&self) -> (&'static str, Option<&'static str>) {
        match self.status() {
            StatusCode::BAD_REQUEST => ("invalid_request_error", None),
            StatusCode::UNAUTHORIZED => ("invalid_request_error", Some("invalid_api_key")),
            StatusCode::NOT_FOUND => ("invalid_request_error", Some("model_not_found")),
            StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", Some("request_too_large")),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limit_error", Some("queue_full")),
            StatusCode::SERVICE_UNAVAILABLE => ("server_error", Some("unavailable")),
            _ => ("server_error", None),
        }
    }

    /// The message clients see: an inference error without its
    /// `invalid argument: ` prefix.
    pub fn message(&self) -> String {
        match self {
            ServerError::Inference(inference::Error::InvalidArgument(m)) => m.clone(),
            e => e.to_string(),
        }
    }

    /// `{"error": {"message", "type", "param", "code"}}`.
    pub fn openai_body(&self) -> Value {
        let (kind, code) = self.openai_kind();
        json!({
            "error": {
                "message": self.message(),
                "type": kind,
                "param": self.param(),
                "code": code,
            }
        })
    }

    /// `{"type": "error", "error": {"type", "message"}}`.
    pub fn anthropic_body(&self) -> Value {
        let kind = match self.status() {
            StatusCode::BAD_REQUEST => "invalid_request_error",
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            _ => "api_error",
        };
        json!({"type": "error", "error": {"type": kind, "message": self.message()}})
    }
}

/// Which API's error shape a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `{"error": {...}}`.
    OpenAi,
    /// `{"type": "error", "error": {...}}`.
    Anthropic,
}

/// An error with the shape it is answered in.
#[derive(Debug)]
pub struct ApiError {
    /// The error.
    pub error: ServerError,
    /// The shape.
    pub dialect: Dialect,
}

impl ApiError {
    /// `error` in OpenAI's shape.
    pub fn openai(error: ServerError) -> ApiError {
        ApiError {
            error,
            dialect: Dialect::OpenAi,
        }
    }

    /// `error` in Anthropic's shape.
    pub fn anthropic(error: ServerError) -> ApiError {
        ApiError {
            error,
            dialect: Dialect::Anthropic,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        match self.dialect {
            Dialect::OpenAi => self.error.openai_body(),
            Dialect::Anthropic => self.error.anthropic_body(),
        }
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        (self.error.status(), axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape_names_type_param_and_code() {
        let e = ServerError::bad_param("n", "n must be 1");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.openai_body(),
            json!({"error": {"message": "n must be 1", "type": "invalid_request_error", "param": "n", "code": null}})
        );
        let e = ServerError::QueueFull(4);
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.openai_body()["error"]["code"], "queue_full");
    }

    #[test]
    fn anthropic_shape_and_inference_errors() {
        let e = ServerError::from(inference::Error::InvalidArgument(
            "the prompt is empty".into(),
        ));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.anthropic_body(),
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "the prompt is empty"}})
        );
        let e = ServerError::from(inference::Error::backend("mlx", "boom"));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.anthropic_body()["error"]["type"], "api_error");
    }
}
