//! The application: shared state, the router with its middleware, and the
//! serving loop with graceful shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use inference::CancellationToken;

use crate::engine_thread::{self, ModelLoader, Shared, Submitter};
use crate::metrics::Metrics;
use crate::{routes, ApiError, ServerConfig, ServerError};

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The settings.
    pub config: ServerConfig,
    /// The engine thread's state (model status, info).
    pub shared: Arc<Shared>,
    /// The submit queue.
    pub submitter: Submitter,
    /// Set once a shutdown began: new generation requests get 503.
    pub shutting_down: AtomicBool,
    /// When the server started.
    pub started: Instant,
}

impl App {
    /// The figures.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

/// The router over `app`: the routes, the API key check on `/v1/*`, and
/// request counting for `/metrics`.
pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::openai::chat))
        .route("/v1/completions", post(routes::openai::completions))
        .route("/v1/messages", post(routes::anthropic::messages))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{id}", get(routes::models::one))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_key));
    Router::new()
        .merge(v1)
        .route("/health", get(routes::models::health))
        .route("/metrics", get(routes::models::metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::openai(ServerError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    )))
}

/// Counts each answered request by endpoint and status.
async fn count(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let endpoint = match path.as_str() {
        "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/messages"
        | "/v1/models"
        | "/health"
        | "/metrics" => path,
        p if p.starts_with("/v1/models/") => "/v1/models/{id}".to_string(),
        _ => "other".to_string(),
    };
    let response = next.run(req).await;
    app.metrics().request(&endpoint, response.status().as_u16());
    response
}

/// With `--api-key`: `Authorization: Bearer KEY` or `x-api-key: KEY`.
async fn require_key(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(key) = app.config.api_key.as_deref() else {
        return next.run(req).await;
    };
    let headers = req.headers();
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let x_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if bearer == Some(key) || x_key == Some(key) {
        return next.run(req).await;
    }
    let message = if bearer.is_none() && x_key.is_none() {
        "missing API key: send `Authorization: Bearer KEY`"
    } else {
        "incorrect API key"
    };
    let error = ServerError::Unauthorized(message.into());
    if req.uri().path() == "/v1/messages" {
        ApiError::anthropic(error).into_response()
    } else {
        ApiError::openai(error).into_response()
    }
}

/// Binds, prints `listening on http://HOST:PORT` on stderr, loads the model
/// with `loader` on the engine thread and serves until SIGTERM or Ctrl-C.
/// On the signal the server stops accepting connections, lets running
/// streams finish for [`ServerConfig::shutdown_grace`], then cancels what
/// is left; it returns once every connection is closed. A model that fails
/// to load ends the server with that error.
pub async fn serve(config: ServerConfig, loader: ModelLoader) -> Result<(), ServerError> {
    config.validate()?;
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Io {
            context: format!("cannot listen on {addr}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServerError::Io {
        context: "cannot read the bound address".into(),
        source,
    })?;
    eprintln!("listening on http://{local}");
    serve_on(listener, config, loader, async {
        signal().await;
        eprintln!("shutting down: finishing running requests");
    })
    .await
}

/// [`serve`] on a bound `listener`, shutting down (gracefully, as there)
/// when `shutdown` completes instead of on a signal.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    loader: ModelLoader,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared::new(metrics.clone()));
    let (submitter, jobs) = Submitter::new(config.max_queue, metrics);
    let abort = CancellationToken::new();
    let load_failed = CancellationToken::new();
    let engine = {
        let (options, shared, abort, failed) = (
            config.engine_options(),
            shared.clone(),
            abort.clone(),
            load_failed.clone(),
        );
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let result = engine_thread::run(loader, options, jobs, shared, abort, runtime);
                if result.is_err() {
                    failed.cancel();
                }
                result
            })
            .map_err(|source| ServerError::Io {
                context: "cannot start the engine thread".into(),
                source,
            })?
    };
    let grace = config.shutdown_grace;
    let app = Arc::new(App {
        config,
        shared,
        submitter,
        shutting_down: AtomicBool::new(false),
        started: Instant::now(),
    });
    let shutdown = {
        let (app, abort, failed) = (app.clone(), abort.clone(), load_failed.clone());
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = failed.cancelled() => {}
            }
            app.shutting_down.store(true, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                abort.cancel();
            });
        }
    };
    // Tokens go out as small SSE writes: without TCP_NODELAY, Nagle's
    // algorithm holds a write back until the client's delayed ACK (about
    // 40 ms on Linux), which a streaming client sees as latency.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await;
    abort.cancel();
    served.map_err(|source| ServerError::Io {
        context: "the server failed".into(),
        source,
    })?;
    // Every handler is gone, so is every Submitter: the engine thread ends
    // once its last request is cancelled.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if engine.is_finished() {
        match engine.join() {
            Ok(result) => result?,
            Err(_) => return Err(ServerError::Internal("the engine thread panicked".into())),
        }
    }
    Ok(())
}

/// [`serve`] on a multi-threaded Tokio runtime of its own, for programs
/// that are not async.
pub fn serve_blocking(config: ServerConfig, loader: ModelLoader) -> Result<(), ServerError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()
        .map_err(|source| ServerError::Io {
            context: "cannot start the async runtime".into(),
            source,
        })?
        .block_on(serve(config, loader))
}

/// SIGTERM or Ctrl-C.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
