//! The engine thread against a scripted fake [`Engine`]: every request
//! produces `max_tokens` tokens `"<id>:<n> "`, one per step, so the tests
//! see joins, cancels and failures between steps.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use super::*;

/// What the fake saw, for the assertions.
#[derive(Debug, Default)]
struct Log {
    /// Per step: the ids decoding.
    steps: Vec<Vec<RequestId>>,
    /// Each cancel, with the number of steps run before it.
    cancelled: Vec<(RequestId, usize)>,
}

struct Row {
    id: RequestId,
    left: usize,
    made: usize,
    prompt: usize,
    started: bool,
    cancelled: bool,
}

struct Fake {
    rows: Vec<Row>,
    log: Arc<Mutex<Log>>,
    /// Fail the row with this id at its second token.
    fail: Option<RequestId>,
    /// `step` itself fails at this step number.
    break_at: Option<usize>,
    /// `step` panics at this step number.
    panic_at: Option<usize>,
}

impl Fake {
    fn new(log: Arc<Mutex<Log>>) -> Fake {
        Fake {
            rows: Vec::new(),
            log,
            fail: None,
            break_at: None,
            panic_at: None,
        }
    }
}

impl Engine for Fake {
    fn submit(&mut self, id: RequestId, request: EngineRequest) -> inference::Result<usize> {
        let prompt = match &request.input {
            Input::Prompt(p) => p.len(),
            Input::Chat(m) => m.len(),
        };
        if prompt == 0 {
            return Err(inference::Error::InvalidArgument(
                "the prompt is empty".into(),
            ));
        }
        self.rows.push(Row {
            id,
            left: request.options.max_tokens,
            made: 0,
            prompt,
            started: false,
            cancelled: false,
        });
        Ok(prompt)
    }

    fn cancel(&mut self, id: RequestId) {
        if let Some(r) = self.rows.iter_mut().find(|r| r.id == id) {
            r.cancelled = true;
            let mut log = self.log.lock().unwrap();
            let at = log.steps.len();
            log.cancelled.push((id, at));
        }
    }

    fn step(&mut self) -> inference::Result<Vec<EngineEvent>> {
        let mut log = self.log.lock().unwrap();
        if self.break_at == Some(log.steps.len()) {
            return Err(inference::Error::backend("fake", "the device is gone"));
        }
        let panic = self.panic_at == Some(log.steps.len());
        log.steps.push(self.rows.iter().map(|r| r.id).collect());
        drop(log);
        assert!(!panic, "the fake engine panics on purpose");
        let mut events = Vec::new();
        let fail = self.fail;
        self.rows.retain_mut(|r| {
            let done = |r: &Row, reason| EngineEvent::Done {
                id: r.id,
                reason,
                prompt_tokens: r.prompt,
                completion_tokens: r.made,
                cached_tokens: 0,
            };
            if r.cancelled {
                events.push(done(r, StopReason::Cancelled));
                return false;
            }
            if !r.started {
                r.started = true;
                events.push(EngineEvent::Started {
                    id: r.id,
                    prompt_tokens: r.prompt,
                    cached_tokens: 0,
                });
            }
            if fail == Some(r.id) && r.made == 1 {
                events.push(EngineEvent::Failed {
                    id: r.id,
                    error: inference::Error::backend("fake", "non-finite logits"),
                });
                return false;
            }
            events.push(EngineEvent::Token {
                id: r.id,
                token: Token::new(r.made as u32, format!("{}:{} ", r.id, r.made)),
                logprobs: None,
            });
            r.made += 1;
            r.left -= 1;
            if r.left == 0 {
                events.push(done(r, StopReason::MaxTokens));
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

fn request(prompt: &str, max_tokens: usize) -> EngineRequest {
    EngineRequest::new(
        Input::Prompt(prompt.into()),
        inference::GenerateOptions::default().max_tokens(max_tokens),
    )
}

/// Runs the engine loop over `fake` on a thread; returns the submitter and
/// the thread.
fn start(
    fake: Fake,
    max_batch: usize,
    capacity: usize,
) -> (
    Submitter,
    std::thread::JoinHandle<inference::Result<()>>,
    Arc<Metrics>,
    CancellationToken,
) {
    let metrics = Arc::new(Metrics::default());
    let (submitter, rx): (Submitter, Receiver<Job>) = Submitter::new(capacity, metrics.clone());
    let abort = CancellationToken::new();
    let (m, a) = (metrics.clone(), abort.clone());
    let thread = std::thread::spawn(move || {
        let mut fake = fake;
        run_engine(&mut fake, &rx, &m, &a, max_batch)
    });
    (submitter, thread, metrics, abort)
}

/// Reads events until the end; returns the text and the last event.
fn drain(rx: &mut UnboundedReceiver<Event>) -> (String, Event) {
    let mut text = String::new();
    loop {
        let e = rx
            .blocking_recv()
            .expect("the request ends with Done or Failed");
        match e {
            Event::Token { token, .. } => text.push_str(&token.text),
            Event::Started { .. } => {}
            end => return (text, end),
        }
    }
}

fn expected(id: RequestId, n: usize) -> String {
    (0..n).map(|i| format!("{id}:{i} ")).collect()
}

#[test]
fn requests_join_a_running_batch_between_steps() {
    let log = Arc::new(Mutex::new(Log::default()));
    let (submitter, thread, metrics, _) = start(Fake::new(log.clone()), 8, 16);
    // a runs until its client leaves.
    let mut a = submitter.submit(request("a", 1_000_000)).unwrap();
    assert!(matches!(
        a.blocking_recv(),
        Some(Event::Started {
            prompt_tokens: 1,
            ..
        })
    ));
    assert!(matches!(a.blocking_recv(), Some(Event::Token { .. })));
    let mut b = submitter.submit(request("bb", 3)).unwrap();
    let (text_b, end_b) = drain(&mut b);
    assert_eq!(text_b, expected(2, 3));
    assert!(matches!(
        end_b,
        Event::Done {
            reason: StopReason::MaxTokens,
            prompt_tokens: 2,
            completion_tokens: 3,
            ..
        }
    ));
    // a's tokens go on in order.
    let mut next = 1;
    while let Some(Event::Token { token, .. }) = a.blocking_recv() {
        assert_eq!(token.text, format!("1:{next} "));
        next += 1;
        if next == 20 {
            break;
        }
    }
    drop(a);
    drop(submitter);
    thread.join().unwrap().unwrap();
    let steps = log.lock().unwrap().steps.clone();
    assert_eq!(steps[0], vec![1]);
    // b joined while a was running: three steps decoded both.
    let both = steps
        .iter()
        .filter(|s| s.contains(&1) && s.contains(&2))
        .count();
    assert_eq!(both, 3, "{steps:?}");
    assert!(metrics.render().contains("mlx_infer_running_requests 0"));
}

#[test]
fn a_dropped_receiver_cancels_its_request_only() {
    let log = Arc::new(Mutex::new(Log::default()));
    let (submitter, thread, _, _) = start(Fake::new(log.clone()), 8, 16);
    let mut keep = submitter.submit(request("keep", 50)).unwrap();
    let mut leave = submitter.submit(request("leave", 1_000_000)).unwrap();
    // Both run; then the second client goes away.
    assert!(matches!(leave.blocking_recv(), Some(Event::Started { .. })));
    assert!(matches!(leave.blocking_recv(), Some(Event::Token { .. })));
    drop(leave);
    let (text, end) = drain(&mut keep);
    assert_eq!(text, expected(1, 50));
    assert!(matches!(
        end,
        Event::Done {
            reason: StopReason::MaxTokens,
            ..
        }
    ));
    drop(submitter);
    thread.join().unwrap().unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.cancelled.len(), 1, "{:?}", log.cancelled);
    let (id, at) = log.cancelled[0];
    assert_eq!(id, 2);
    // The row is freed at the next step (which reports it cancelled).
    assert!(
        log.steps[at + 1..].iter().all(|s| !s.contains(&2)),
        "{:?}",
        &log.steps[at..]
    );
}

#[test]
fn a_failed_request_ends_alone_and_a_refused_one_gets_its_error() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut fake = Fake::new(log.clone());
    fake.fail = Some(2);
    let (submitter, thread, _, _) = start(fake, 8, 16);
    let mut a = submitter.submit(request("a", 5)).unwrap();
    let mut b = submitter.submit(request("b", 5)).unwrap();
    let mut empty = submitter.submit(request("", 5)).unwrap();
    let (text_b, end_b) = drain(&mut b);
    assert_eq!(text_b, expected(2, 1));
    assert!(
        matches!(&end_b, Event::Failed(e) if e.to_string().contains("non-finite")),
        "{end_b:?}"
    );
    let (text_a, end_a) = drain(&mut a);
    assert_eq!(text_a, expected(1, 5));
    assert!(matches!(end_a, Event::Done { .. }));
    match empty.blocking_recv() {
        Some(Event::Failed(e)) => {
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
            assert!(e.message().contains("empty"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    drop(submitter);
    thread.join().unwrap().unwrap();
}

#[test]
fn the_batch_holds_at_most_max_batch_and_the_queue_refuses_when_full() {
    let log = Arc::new(Mutex::new(Log::default()));
    let (submitter, thread, _, _) = start(Fake::new(log.clone()), 2, 64);
    let mut rxs: Vec<_> = (0..6)
        .map(|i| submitter.submit(request("p", 3 + i)).unwrap())
        .collect();
    for (i, rx) in rxs.iter_mut().enumerate() {
        let (text, _) = drain(rx);
        assert_eq!(text, expected(i as u64 + 1, 3 + i));
    }
    drop(submitter);
    thread.join().unwrap().unwrap();
    let steps = log.lock().unwrap().steps.clone();
    assert!(steps.iter().all(|s| s.len() <= 2), "{steps:?}");

    // A queue of 2 with no engine thread reading it: the third is refused.
    let (submitter, _rx) = Submitter::new(2, Arc::new(Metrics::default()));
    let _a = submitter.submit(request("p", 1)).unwrap();
    let _b = submitter.submit(request("p", 1)).unwrap();
    let e = submitter.submit(request("p", 1)).unwrap_err();
    assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
}

#[test]
fn a_broken_step_fails_every_request_in_the_engine_and_abort_cancels_all() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut fake = Fake::new(log.clone());
    fake.break_at = Some(2);
    let (submitter, thread, _, _) = start(fake, 8, 16);
    let mut a = submitter.submit(request("a", 100)).unwrap();
    let (_, end) = drain(&mut a);
    assert!(matches!(&end, Event::Failed(e) if e.to_string().contains("device is gone")));
    assert!(thread.join().unwrap().is_err());

    // A panicking step is a broken step: the thread lives to tell.
    let mut fake = Fake::new(Arc::new(Mutex::new(Log::default())));
    fake.panic_at = Some(1);
    let (submitter, thread, _, _) = start(fake, 8, 16);
    let mut a = submitter.submit(request("a", 100)).unwrap();
    let (_, end) = drain(&mut a);
    assert!(
        matches!(&end, Event::Failed(e) if e.to_string().contains("panicked")),
        "{end:?}"
    );
    assert!(thread.join().unwrap().is_err());

    let log = Arc::new(Mutex::new(Log::default()));
    let (submitter, thread, _, abort) = start(Fake::new(log.clone()), 8, 16);
    let mut a = submitter.submit(request("a", 1_000_000)).unwrap();
    assert!(matches!(a.blocking_recv(), Some(Event::Started { .. })));
    abort.cancel();
    let (_, end) = drain(&mut a);
    assert!(
        matches!(
            end,
            Event::Done {
                reason: StopReason::Cancelled,
                ..
            }
        ),
        "{end:?}"
    );
    drop(submitter);
    thread.join().unwrap().unwrap();
}
