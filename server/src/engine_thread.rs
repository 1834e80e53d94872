//! The thread that owns the model. HTTP handlers hand it [`Job`]s through a
//! bounded submit queue and read each request's [`Event`]s from a channel
//! of their own; the thread serves them with the model's batching
//! [`Engine`] when it has one, else one request at a time with
//! [`TextModel::generate`] / [`TextModel::chat`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use inference::{
    CancellationToken, Engine, EngineEvent, EngineOptions, EngineRequest, Input, ModelInfo,
    RequestId, StopReason, TextModel, Token, TokenLogprobs,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::metrics::Metrics;
use crate::ServerError;

/// What a request's handler hears from the engine thread, in order:
/// `Started`, any number of `Token`s, then `Done` — or `Failed` at any
/// point, after which nothing follows.
#[derive(Debug)]
pub enum Event {
    /// The prompt was read; generation begins.
    Started {
        /// Tokens in the prompt (0 when the backend reports it only at the end).
        prompt_tokens: usize,
        /// Prompt tokens served from the prefix cache.
        cached_tokens: usize,
    },
    /// Generated text.
    Token {
        /// The token.
        token: Token,
        /// Its logprobs, when asked for.
        logprobs: Option<TokenLogprobs>,
    },
    /// The request finished.
    Done {
        /// Why.
        reason: StopReason,
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens generated.
        completion_tokens: usize,
        /// Prompt tokens served from the prefix cache.
        cached_tokens: usize,
    },
    /// The request failed; the others go on.
    Failed(ServerError),
}

/// One request on its way to the engine thread.
#[derive(Debug)]
pub struct Job {
    /// Unique among requests in flight.
    pub id: RequestId,
    /// What to generate.
    pub request: EngineRequest,
    /// Where its events go; when the receiver is dropped (the client went
    /// away) the request is cancelled.
    pub events: UnboundedSender<Event>,
    /// When the request arrived (for time to first token).
    pub arrived: Instant,
}

/// Whether the model can be used yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Being loaded by the engine thread.
    Loading,
    /// Serving.
    Ready,
    /// Loading failed with this message.
    Failed(String),
}

/// What the engine thread tells the HTTP side.
#[derive(Debug)]
pub struct Shared {
    status: RwLock<Status>,
    info: OnceLock<ModelInfo>,
    batching: AtomicBool,
    /// The server's figures.
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// Loading, with `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Shared {
        Shared {
            status: RwLock::new(Status::Loading),
            info: OnceLock::new(),
            batching: AtomicBool::new(false),
            metrics,
        }
    }

    /// The model's status.
    pub fn status(&self) -> Status {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, status: Status) {
        *self.status.write().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// What was loaded, once it is.
    pub fn info(&self) -> Option<&ModelInfo> {
        self.info.get()
    }

    /// True when requests go through a batching engine (which also gives
    /// logprobs and per-request adapters).
    pub fn batching(&self) -> bool {
        self.batching.load(Ordering::SeqCst)
    }
}

/// The handlers' side of the submit queue.
#[derive(Debug)]
pub struct Submitter {
    tx: SyncSender<Job>,
    next_id: AtomicU64,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Submitter {
    /// A submit queue holding at most `capacity` waiting jobs, and the
    /// engine thread's end of it.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Submitter, Receiver<Job>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        (
            Submitter {
                tx,
                next_id: AtomicU64::new(1),
                capacity,
                metrics,
            },
            rx,
        )
    }

    /// Queues `request`; its events arrive on the returned channel. A full
    /// queue is [`ServerError::QueueFull`].
    pub fn submit(&self, request: EngineRequest) -> Result<UnboundedReceiver<Event>, ServerError> {
        let (events, rx) = unbounded_channel();
        let job = Job {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            request,
            events,
            arrived: Instant::now(),
        };
        self.metrics.queued();
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.dequeued();
                Err(match e {
                    TrySendError::Full(_) => ServerError::QueueFull(self.capacity),
                    TrySendError::Disconnected(_) => {
                        ServerError::Unavailable("the server is shutting down".into())
                    }
                })
            }
        }
    }
}

/// Loads a model on the engine thread.
pub type ModelLoader = Box<dyn FnOnce() -> inference::Result<Box<dyn TextModel>> + Send>;

/// The engine thread's body: loads the model, then serves jobs until every
/// [`Submitter`] is gone and nothing is pending. `abort` cancels every
/// request (the end of a shutdown's grace period); `runtime` runs the
/// watchers that cancel a one-at-a-time generation when its client leaves.
pub fn run(
    loader: ModelLoader,
    options: EngineOptions,
    jobs: Receiver<Job>,
    shared: Arc<Shared>,
    abort: CancellationToken,
    runtime: tokio::runtime::Handle,
) -> Result<(), ServerError> {
    let mut model = match loader() {
        Ok(m) => m,
        Err(e) => {
            shared.set_status(Status::Failed(e.to_string()));
            return Err(e.into());
        }
    };
    let _ = shared.info.set(model.info().clone());
    let max_batch = options.max_batch;
    let mut engine_broke = false;
    loop {
        let served = match model.engine(&options) {
            Ok(mut engine) => {
                if !engine_broke {
                    eprintln!(
                        "serving with continuous batching (at most {max_batch} requests at once)"
                    );
                }
                shared.batching.store(true, Ordering::SeqCst);
                shared.set_status(Status::Ready);
                run_engine(engine.as_mut(), &jobs, &shared.metrics, &abort, max_batch)
            }
            // An engine that worked and cannot be made again (a
            // distributed model whose other ranks are gone) ends serving:
            // one request at a time would not work either.
            Err(e) if engine_broke => {
                shared.set_status(Status::Failed(e.to_string()));
                return Err(e.into());
            }
            Err(e) => {
                if !matches!(e, inference::Error::Unsupported(_)) {
                    log::warn!("no batching engine ({e}); serving one request at a time");
                }
                break;
            }
        };
        match served {
            Ok(()) => return Ok(()),
            Err(e) => {
                log::warn!("the batching engine failed ({e}); starting a new one");
                engine_broke = true;
            }
        }
    }
    shared.batching.store(false, Ordering::SeqCst);
    eprintln!(
        "serving one request at a time (the {} backend has no batching engine)",
        model.info().backend
    );
    shared.set_status(Status::Ready);
    run_serial(model.as_mut(), &jobs, &shared.metrics, &abort, &runtime);
    Ok(())
}

/// A request inside the engine.
struct Live {
    job: Job,
    cancelled: bool,
    last_token: Option<Instant>,
}

/// Serves jobs through `engine` until the queue is closed and nothing is
/// pending. Each round takes new jobs (waiting for one when idle), cancels
/// those whose client left, steps, and routes the events. `Err` when a
/// step failed: every request then in the engine has been told.
pub fn run_engine(
    engine: &mut dyn Engine,
    jobs: &Receiver<Job>,
    metrics: &Metrics,
    abort: &CancellationToken,
    max_batch: usize,
) -> inference::Result<()> {
    let mut live: HashMap<RequestId, Live> = HashMap::new();
    let mut open = true;
    loop {
        if open && engine.pending() == 0 {
            metrics.set_running(0);
            metrics.set_engine_waiting(0);
            match jobs.recv() {
                Ok(job) => admit(engine, job, &mut live, metrics, abort),
                Err(_) => open = false,
            }
        }
        while open && engine.pending() < max_batch {
            match jobs.try_recv() {
                Ok(job) => admit(engine, job, &mut live, metrics, abort),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        for (id, l) in live.iter_mut() {
            if !l.cancelled && (l.job.events.is_closed() || abort.is_cancelled()) {
                engine.cancel(*id);
                l.cancelled = true;
            }
        }
        if engine.pending() == 0 {
            if open {
                continue;
            }
            metrics.set_running(0);
            metrics.set_engine_waiting(0);
            return Ok(());
        }
        metrics.set_running(engine.running());
        metrics.set_engine_waiting(engine.pending().saturating_sub(engine.running()));
        // A panic inside the engine is a broken step, not a dead server.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.step()))
            .unwrap_or_else(|_| {
                Err(inference::Error::backend(
                    "engine",
                    "the batching engine panicked",
                ))
            });
        let events = match step {
            Ok(events) => events,
            Err(e) => {
                for (_, l) in live.drain() {
                    let _ = l
                        .job
                        .events
                        .send(Event::Failed(ServerError::Internal(format!(
                            "the batching engine failed: {e}"
                        ))));
                }
                metrics.set_running(0);
                metrics.set_engine_waiting(0);
                return Err(e);
            }
        };
        for event in events {
            route(event, &mut live, metrics);
        }
    }
}

fn admit(
    engine: &mut dyn Engine,
    job: Job,
    live: &mut HashMap<RequestId, Live>,
    metrics: &Metrics,
    abort: &CancellationToken,
) {
    metrics.dequeued();
    if job.events.is_closed() {
        return;
    }
    if abort.is_cancelled() {
        let _ = job.events.send(Event::Failed(ServerError::Unavailable(
            "the server is shutting down".into(),
        )));
        return;
    }
    match engine.submit(job.id, job.request.clone()) {
        Ok(_) => {
            live.insert(
                job.id,
                Live {
                    job,
                    cancelled: false,
                    last_token: None,
                },
            );
        }
        Err(e) => {
            let _ = job.events.send(Event::Failed(e.into()));
        }
    }
}

fn route(event: EngineEvent, live: &mut HashMap<RequestId, Live>, metrics: &Metrics) {
    let id = event.id();
    let Some(l) = live.get_mut(&id) else {
        return;
    };
    let out = match event {
        EngineEvent::Started {
            prompt_tokens,
            cached_tokens,
            ..
        } => Event::Started {
            prompt_tokens,
            cached_tokens,
        },
        EngineEvent::Token {
            token, logprobs, ..
        } => {
            let now = Instant::now();
            match l.last_token {
                None => metrics.ttft(now - l.job.arrived),
                Some(t) => metrics.inter_token(now - t),
            }
            l.last_token = Some(now);
            Event::Token { token, logprobs }
        }
        EngineEvent::Done {
            reason,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            ..
        } => {
            metrics.tokens(prompt_tokens, completion_tokens);
            let l = live.remove(&id).expect("present");
            let _ = l.job.events.send(Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            });
            return;
        }
        EngineEvent::Failed { error, .. } => {
            let l = live.remove(&id).expect("present");
            let _ = l.job.events.send(Event::Failed(error.into()));
            return;
        }
        _ => return,
    };
    let _ = l.job.events.send(out);
}

/// Serves jobs one at a time with the model's token streams until the
/// queue is closed. A client that leaves cancels its generation (prompt
/// processing included) through [`inference::GenerateOptions::cancel`].
pub fn run_serial(
    model: &mut dyn TextModel,
    jobs: &Receiver<Job>,
    metrics: &Metrics,
    abort: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) {
    while let Ok(job) = jobs.recv() {
        metrics.dequeued();
        if job.events.is_closed() {
            continue;
        }
        if abort.is_cancelled() {
            let _ = job.events.send(Event::Failed(ServerError::Unavailable(
                "the server is shutting down".into(),
            )));
            continue;
        }
        let cancel = abort.child_token();
        let watcher = {
            let (events, cancel) = (job.events.clone(), cancel.clone());
            runtime.spawn(async move {
                tokio::select! {
                    _ = events.closed() => cancel.cancel(),
                    _ = cancel.cancelled() => {}
                }
            })
        };
        metrics.set_running(1);
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve_one(model, &job, cancel.clone(), metrics)
        }));
        if served.is_err() {
            let _ = job.events.send(Event::Failed(ServerError::Internal(
                "generation panicked".into(),
            )));
        }
        metrics.set_running(0);
        cancel.cancel();
        drop(watcher);
    }
}

fn serve_one(model: &mut dyn TextModel, job: &Job, cancel: CancellationToken, metrics: &Metrics) {
    let opts = job.request.options.clone().cancel(cancel);
    let mut stream = match &job.request.input {
        Input::Prompt(p) => model.generate(p, &opts),
        Input::Chat(m) => model.chat(m, &opts),
    };
    let mut started = false;
    let mut generated = 0;
    let mut last: Option<Instant> = None;
    for item in stream.by_ref() {
        match item {
            Ok(token) => {
                let now = Instant::now();
                match last {
                    None => metrics.ttft(now - job.arrived),
                    Some(t) => metrics.inter_token(now - t),
                }
                last = Some(now);
                if !started {
                    started = true;
                    let _ = job.events.send(Event::Started {
                        prompt_tokens: 0,
                        cached_tokens: 0,
                    });
                }
                generated += 1;
                let _ = job.events.send(Event::Token {
                    token,
                    logprobs: None,
                });
            }
            Err(e) => {
                let _ = job.events.send(Event::Failed(e.into()));
                return;
            }
        }
    }
    let reason = stream.stop_reason().unwrap_or(StopReason::MaxTokens);
    drop(stream);
    let prompt_tokens = model.metrics().prompt_tokens;
    metrics.tokens(prompt_tokens, generated);
    if !started {
        let _ = job.events.send(Event::Started {
            prompt_tokens,
            cached_tokens: 0,
        });
    }
    let _ = job.events.send(Event::Done {
        reason,
        prompt_tokens,
        completion_tokens: generated,
        cached_tokens: 0,
    });
}

#[cfg(test)]
mod tests;
