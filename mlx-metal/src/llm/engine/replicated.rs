//! Serving a model spread over the ranks of a distributed group: every
//! rank runs the same [`NativeEngine`] over its share of the model, so the
//! collectives inside each forward pass meet. Rank 0 (the [`Leader`]) is
//! driven by the server; before each step it sends the requests submitted
//! and cancelled since the last one to the other ranks ([`Follower`]s),
//! which replay them and step too. The engine decides alike on every rank
//! (same requests, same order, same random seed), so only these messages
//! cross between ranks, through MLX's own collectives.
//!
//! A follower ends when the leader is dropped (it sends a last message
//! saying so). Any failure on either side is an error for that rank: a
//! leader whose step failed sends nothing more (the followers may be
//! inside that step's collectives), the model then refuses to make another
//! engine, and the server stops; the launcher then stops the others.

use inference::{Engine, EngineEvent, EngineRequest, RequestId};
use serde::{Deserialize, Serialize};

use crate::distributed::Group;
use crate::llm::engine::NativeEngine;
use crate::Error;

/// What the leader tells the followers before a step.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Message {
    /// Submits and cancels, in the order the leader took them.
    commands: Vec<Command>,
    /// No step follows: the leader is gone.
    end: bool,
}

/// One call the leader took.
#[derive(Debug, Serialize, Deserialize)]
enum Command {
    Submit(RequestId, Box<EngineRequest>),
    Cancel(RequestId),
}

fn send(group: &Group, message: &Message) -> inference::Result<()> {
    let bytes = serde_json::to_vec(message)
        .map_err(|e| Error::InvalidArgument(format!("cannot encode an engine message: {e}")))?;
    group.broadcast_bytes(&bytes)?;
    Ok(())
}

fn receive(group: &Group) -> inference::Result<Message> {
    let bytes = group.broadcast_bytes(&[])?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Mlx(format!(
            "rank {}: a bad engine message from rank 0: {e}",
            group.rank()
        ))
        .into()
    })
}

/// Rank 0's engine: a [`NativeEngine`] whose calls are replayed on the
/// other ranks.
pub struct Leader<'m> {
    inner: NativeEngine<'m>,
    group: &'m Group,
    queued: Vec<Command>,
    /// Set while a step runs and left set when it fails: the followers may
    /// be inside that step's collectives, so nothing more is sent to them.
    broken: bool,
    /// The model's mark that its followers are gone (set on drop).
    followers_gone: &'m std::cell::Cell<bool>,
}

impl<'m> Leader<'m> {
    /// Leads the followers of `group` with `inner`; `followers_gone` is
    /// set when this leader ends.
    pub(crate) fn new(
        inner: NativeEngine<'m>,
        group: &'m Group,
        followers_gone: &'m std::cell::Cell<bool>,
    ) -> Leader<'m> {
        Leader {
            inner,
            group,
            queued: Vec::new(),
            broken: false,
            followers_gone,
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.followers_gone.set(true);
        // After a failed step the followers cannot take a message in step:
        // they end when this process does (the ring's sockets close).
        if self.broken {
            return;
        }
        let end = Message {
            commands: Vec::new(),
            end: true,
        };
        // A follower that is gone already cannot be told; nothing to do.
        if let Err(e) = send(self.group, &end) {
            log::warn!("could not tell the other ranks that serving ended: {e}");
        }
    }
}

impl Engine for Leader<'_> {
    fn submit(&mut self, id: RequestId, request: EngineRequest) -> inference::Result<usize> {
        // Only what this rank accepts reaches the others (they would
        // refuse it alike).
        let n = self.inner.submit(id, request.clone())?;
        self.queued.push(Command::Submit(id, Box::new(request)));
        Ok(n)
    }

    fn cancel(&mut self, id: RequestId) {
        self.inner.cancel(id);
        self.queued.push(Command::Cancel(id));
    }

    fn step(&mut self) -> inference::Result<Vec<EngineEvent>> {
        if self.broken {
            return Err(inference::Error::InvalidArgument(
                "an earlier step failed; the ranks are no longer in step".into(),
            ));
        }
        let message = Message {
            commands: std::mem::take(&mut self.queued),
            end: false,
        };
        // cleared only when the step returns (not on an error or a panic)
        self.broken = true;
        send(self.group, &message)?;
        let events = self.inner.step()?;
        self.broken = false;
        Ok(events)
    }

    fn pending(&self) -> usize {
        self.inner.pending()
    }

    fn running(&self) -> usize {
        self.inner.running()
    }
}

/// The engine of a rank other than 0: each [`step`](Engine::step) waits
/// for the leader's next message, replays it and steps; its events are
/// rank 0's to report and are dropped here. [`pending`](Engine::pending)
/// is 1 until the leader has ended, then 0, so
/// `while engine.pending() > 0 { engine.step()?; }` serves to the end.
/// Submitting or cancelling on a follower is refused: its requests come
/// from the leader.
pub struct Follower<'m> {
    inner: NativeEngine<'m>,
    group: &'m Group,
    ended: bool,
}

impl<'m> Follower<'m> {
    /// Follows rank 0 of `group` with `inner`.
    pub(crate) fn new(inner: NativeEngine<'m>, group: &'m Group) -> Follower<'m> {
        Follower {
            inner,
            group,
            ended: false,
        }
    }
}

impl Engine for Follower<'_> {
    fn submit(&mut self, _id: RequestId, _request: EngineRequest) -> inference::Result<usize> {
        Err(inference::Error::Unsupported(format!(
            "submitting to rank {} of a distributed engine (requests go to rank 0)",
            self.group.rank()
        )))
    }

    fn cancel(&mut self, _id: RequestId) {}

    fn step(&mut self) -> inference::Result<Vec<EngineEvent>> {
        if self.ended {
            return Ok(Vec::new());
        }
        let message = receive(self.group)?;
        for command in message.commands {
            match command {
                Command::Submit(id, request) => {
                    self.inner.submit(id, *request).map_err(|e| {
                        Error::Mlx(format!(
                            "rank {} refused request {id} that rank 0 accepted: {e}",
                            self.group.rank()
                        ))
                    })?;
                }
                Command::Cancel(id) => self.inner.cancel(id),
            }
        }
        if message.end {
            self.ended = true;
            return Ok(Vec::new());
        }
        self.inner.step()?;
        Ok(Vec::new())
    }

    fn pending(&self) -> usize {
        usize::from(!self.ended)
    }

    fn running(&self) -> usize {
        self.inner.running()
    }
}
