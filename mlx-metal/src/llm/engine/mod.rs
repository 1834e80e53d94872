//! The serving engine: [`inference::Engine`] over a [`Batch`] whose rows
//! are requests that join and leave between steps.
//!
//! Each [`step`](inference::Engine::step):
//!
//! 1. requests cancelled while waiting end;
//! 2. the tokens the previous step started are read (one per row): text
//!    and logprobs are reported, rows that reached EOS, their token budget,
//!    a stop string, a cancel or non-finite logits end and leave the batch
//!    (a finished row's cache goes to the prefix cache);
//! 3. the next decode step for the remaining rows is built and started
//!    (`async_eval`) before anything reads it;
//! 4. waiting requests are prefilled, in arrival order, at most
//!    `prefill_step_size` prompt tokens in all per step: fresh prompts
//!    that fit are read together in one left-padded batch; the others
//!    (continuing a stored prefix, or too long) start from a one-row
//!    batch of their own, read over several steps if need be, and those
//!    whose last tokens are read in the same step with as many tokens
//!    left are read together; a request whose prompt is read samples its
//!    first token and joins the batch.
//!
//! Greedy rows are sampled together (one argmax over the batch); a row
//! with temperature, a repetition penalty or a seed is sampled alone with
//! its own sampler and key, so a seeded request gives the same tokens
//! whatever shares its batch.

mod adapters;
mod prefix_cache;
mod replicated;
mod row;

pub use replicated::{Follower, Leader};

use std::collections::{BTreeMap, HashSet, VecDeque};

use inference::{
    Engine, EngineEvent, EngineOptions, EngineRequest, Input, RequestId, StopReason, TextModel,
    Token, MAX_TOP_LOGPROBS,
};

use crate::llm::batch::Batch;
use crate::llm::generate::{finite_witness, PREFILL_STEP};
use crate::llm::profile;
use crate::llm::sampler::{Sampler, SamplerSettings};
use crate::llm::NativeModel;
use crate::nn::cache::row_index;
use crate::nn::lora::AdapterRows;
use crate::{async_eval, clear_cache, Array, Dtype, Result};

use prefix_cache::PrefixCache;
use row::{read_logprobs, LogprobArrays, Running, Waiting};

/// The tokens the last step started, per row of the batch, not yet read.
struct Pending {
    /// `[rows]` uint32.
    tokens: Array,
    /// `[rows]` float32 finiteness witnesses.
    checks: Array,
    /// Per row, the logprob arrays when asked for.
    logprobs: Vec<Option<LogprobArrays>>,
}

impl Pending {
    /// Samples a token for each of `rows` from `logits` (`[rows, vocab]`
    /// float32): the greedy rows together (`greedy`), the others each with
    /// its own sampler.
    /// `inputs` (`[rows]`), when given, are the tokens the logits were
    /// computed from, not yet read into the rows' histories (a repetition
    /// penalty counts them).
    fn sample(
        rows: &mut [Running<'_>],
        logits: &Array,
        inputs: Option<&Array>,
        greedy: &mut Sampler,
    ) -> Result<Pending> {
        let checks = finite_witness(logits, &[-1])?;
        let row = |r: usize, a: &Array| a.slice_axis(0, r as i32, r as i32 + 1);
        let batch_greedy = rows
            .iter()
            .any(|r| r.greedy)
            .then(|| greedy.sample(logits.clone(), None))
            .transpose()?;
        let tokens = match &batch_greedy {
            Some(g) if rows.iter().all(|r| r.greedy) => g.astype(Dtype::Uint32)?,
            _ => {
                let each = rows
                    .iter_mut()
                    .enumerate()
                    .map(|(r, running)| match &batch_greedy {
                        Some(g) if running.greedy => row(r, g)?.astype(Dtype::Uint32),
                        _ => {
                            let input = inputs.map(|i| row(r, i)).transpose()?;
                            running
                                .sample(&row(r, logits)?, input.as_ref())?
                                .astype(Dtype::Uint32)
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Array::concatenate(&each.iter().collect::<Vec<_>>(), 0)?
            }
        };
        let logprobs = rows
            .iter()
            .enumerate()
            .map(|(r, running)| running.logprobs(&row(r, logits)?, &row(r, &tokens)?))
            .collect::<Result<_>>()?;
        Ok(Pending {
            tokens,
            checks,
            logprobs,
        })
    }

    /// Only the rows `keep` (in that order).
    fn filter(self, keep: &[usize]) -> Result<Pending> {
        let idx = row_index(keep)?;
        let mut logprobs = self.logprobs;
        let logprobs = keep.iter().map(|&r| logprobs[r].take()).collect();
        Ok(Pending {
            tokens: self.tokens.take(&idx, 0)?,
            checks: self.checks.take(&idx, 0)?,
            logprobs,
        })
    }

    /// The rows of `self`, then those of `more`.
    fn append(self, more: Pending) -> Result<Pending> {
        let mut logprobs = self.logprobs;
        logprobs.extend(more.logprobs);
        Ok(Pending {
            tokens: Array::concatenate(&[&self.tokens, &more.tokens], 0)?,
            checks: Array::concatenate(&[&self.checks, &more.checks], 0)?,
            logprobs,
        })
    }

    /// The arrays to evaluate.
    fn outputs(&self) -> Vec<&Array> {
        let mut out = vec![&self.tokens, &self.checks];
        for (a, b, c) in self.logprobs.iter().flatten() {
            out.extend([a, b, c]);
        }
        out
    }
}

/// The native backend's [`Engine`]; see the [module documentation](self).
pub struct NativeEngine<'m> {
    pub(crate) model: &'m NativeModel,
    options: EngineOptions,
    /// Each layer's sliding window (for caches rebuilt from stored ones).
    windows: Vec<Option<i32>>,
    /// Samples the greedy rows of a batch together.
    greedy: Sampler,
    waiting: VecDeque<Waiting<'m>>,
    batch: Option<Batch<'m>>,
    rows: Vec<Running<'m>>,
    next: Option<Pending>,
    prefix: PrefixCache,
    /// Ids in flight (waiting or running).
    ids: HashSet<RequestId>,
    /// Events decided outside a step (requests ending before they start).
    early: Vec<EngineEvent>,
    /// Steps taken, to return MLX's buffer cache now and then.
    steps: usize,
    /// The rows each per-request adapter applies to (`None`: no adapters).
    adapter_rows: Option<AdapterRows>,
}

impl Drop for NativeEngine<'_> {
    fn drop(&mut self) {
        // The model serves whole sequences again: no adapter on any row.
        if let Some(rows) = &self.adapter_rows {
            rows.clear();
        }
    }
}

impl<'m> NativeEngine<'m> {
    /// An engine over `model`; attaches [`EngineOptions::adapters`] to it
    /// (each request picks its own; the model as loaded serves those that
    /// name none).
    pub fn new(model: &'m mut NativeModel, options: &EngineOptions) -> Result<NativeEngine<'m>> {
        options
            .validate()
            .map_err(|e| crate::Error::InvalidArgument(e.to_string()))?;
        let adapter_rows = adapters::install(model.architecture_mut(), &options.adapters)?;
        let model: &'m NativeModel = model;
        let windows = model
            .architecture()
            .make_caches()
            .iter()
            .map(|c| c.window())
            .collect();
        Ok(NativeEngine {
            model,
            options: options.clone(),
            windows,
            greedy: Sampler::new(&SamplerSettings::default())?,
            waiting: VecDeque::new(),
            batch: None,
            rows: Vec::new(),
            next: None,
            prefix: PrefixCache::new(options.prompt_cache_size),
            ids: HashSet::new(),
            early: Vec::new(),
            steps: 0,
            adapter_rows,
        })
    }

    /// Prefixes in the prefix cache.
    pub fn cached_prefixes(&self) -> usize {
        self.prefix.len()
    }

    /// Sets which adapter each row of the next forward pass uses.
    fn select(&self, rows: &[Option<usize>]) -> Result<()> {
        match &self.adapter_rows {
            Some(a) => a.select(rows, self.options.adapters.len()),
            None => Ok(()),
        }
    }

    /// The prompt's ids, after the checks every backend applies.
    fn encode(&self, request: &EngineRequest) -> inference::Result<Vec<u32>> {
        let ids = match &request.input {
            Input::Prompt(p) => {
                inference::check_prompt(p)?;
                self.model.tokenizer().encode_prompt(p)?
            }
            Input::Chat(m) => {
                inference::check_messages(m)?;
                self.model.chat_prompt(m)?
            }
        };
        if ids.is_empty() {
            return Err(inference::Error::InvalidArgument(
                "the prompt encodes to no tokens".into(),
            ));
        }
        Ok(ids)
    }

    /// Reads the tokens the last step started and reports them; marks the
    /// rows that end.
    fn read(&mut self, pending: Pending, events: &mut Vec<EngineEvent>) -> Result<()> {
        let ids = pending.tokens.to_vec::<u32>()?;
        let checks = pending.checks.to_vec::<f32>()?;
        let tokenizer = self.model.tokenizer();
        let mut out = Vec::new();
        for (r, row) in self.rows.iter_mut().enumerate() {
            if row.cancelled {
                row.row.reason = Some(StopReason::Cancelled);
                continue;
            }
            if !checks[r].is_finite() {
                events.push(EngineEvent::Failed {
                    id: row.id,
                    error: crate::Error::NonFinite(format!(
                        "at generated token {}",
                        row.row.ids.len() + 1
                    ))
                    .into(),
                });
                row.failed = true;
                row.row.reason = Some(StopReason::Cancelled);
                continue;
            }
            let id = ids[r];
            row.history.push(id);
            if let Some(lp) = &pending.logprobs[r] {
                if !tokenizer.eos_ids().contains(&id) {
                    row.pending_logprobs
                        .push_back(read_logprobs(tokenizer, lp)?);
                }
            }
            if let Err(e) = row
                .row
                .accept(id, tokenizer.eos_ids(), row.max_tokens, &mut out)
            {
                events.push(EngineEvent::Failed {
                    id: row.id,
                    error: e.into(),
                });
                row.failed = true;
                row.row.reason = Some(StopReason::Cancelled);
                out.clear();
                continue;
            }
            Self::report(row, &mut out, events);
        }
        Ok(())
    }

    /// Reports `tokens` as the row's Token events.
    fn report(row: &mut Running<'_>, tokens: &mut Vec<Token>, events: &mut Vec<EngineEvent>) {
        for token in tokens.drain(..) {
            row.emitted += 1;
            let logprobs = row.pending_logprobs.pop_front();
            events.push(EngineEvent::Token {
                id: row.id,
                token,
                logprobs,
            });
        }
    }

    /// Reports the rows that ended, stores their caches and drops them
    /// from the batch.
    fn remove_finished(&mut self, events: &mut Vec<EngineEvent>) -> Result<()> {
        let mut keep = Vec::new();
        let mut out = Vec::new();
        for (r, row) in self.rows.iter_mut().enumerate() {
            if row.cancelled && row.row.reason.is_none() {
                row.row.reason = Some(StopReason::Cancelled);
            }
            let Some(reason) = row.row.reason else {
                keep.push(r);
                continue;
            };
            self.ids.remove(&row.id);
            if row.failed {
                continue;
            }
            if reason != StopReason::Cancelled {
                if let Some(b) = &self.batch {
                    self.prefix
                        .store(&row.history, row.adapter, b.caches(), r)?;
                }
            }
            match row.row.finish(reason, &mut out) {
                Ok(()) => Self::report(row, &mut out, events),
                Err(e) => {
                    events.push(EngineEvent::Failed {
                        id: row.id,
                        error: e.into(),
                    });
                    continue;
                }
            }
            events.push(EngineEvent::Done {
                id: row.id,
                reason,
                prompt_tokens: row.row.prompt_tokens,
                completion_tokens: row.emitted,
                cached_tokens: row.cached,
            });
        }
        if keep.len() != self.rows.len() {
            self.rows.retain(|row| row.row.reason.is_none());
            if self.rows.is_empty() {
                self.batch = None;
                self.next = None;
            } else {
                if let Some(b) = &mut self.batch {
                    b.filter(&keep)?;
                }
                // The step already started computed the leaving rows too.
                self.next = self.next.take().map(|p| p.filter(&keep)).transpose()?;
            }
        }
        Ok(())
    }

    /// Builds and starts the decode step that reads `inputs`, the tokens
    /// of the step before, for every running row, before they are read
    /// (as mlx_lm's batch generator does: the device computes it while the
    /// host reads and reports them). Rows that those tokens end are
    /// computed once more; [`remove_finished`](Self::remove_finished)
    /// drops them from the result.
    ///
    /// `unread` says whether `tokens` are still missing from the rows'
    /// histories (a repetition penalty then counts them from `tokens`).
    fn decode(&mut self, tokens: &Array, unread: bool) -> Result<Option<Pending>> {
        if self.batch.is_none() {
            return Ok(None);
        }
        let adapters: Vec<Option<usize>> = self.rows.iter().map(|r| r.adapter).collect();
        self.select(&adapters)?;
        let Some(batch) = &mut self.batch else {
            return Ok(None);
        };
        let tokens = tokens.astype(Dtype::Int32)?;
        let logits = batch.step(&tokens)?;
        let inputs = unread.then_some(&tokens);
        let next = Pending::sample(&mut self.rows, &logits, inputs, &mut self.greedy)?;
        let mut state = batch.state();
        state.extend(next.outputs());
        async_eval(&state)?;
        Ok(Some(next))
    }

    /// Prefills waiting requests within the step's token budget; those
    /// whose prompt is read sample their first token and join the batch.
    /// Fresh prompts that fit the budget whole are read together in one
    /// left-padded batch; a prompt that continues a stored prefix, or is
    /// too long for what is left of the budget, is read in its own
    /// one-row batch, over several steps if need be, and the prompts whose
    /// last tokens come in the same step with as many tokens left are read
    /// together (their one-row batches merged).
    fn admit(&mut self, events: &mut Vec<EngineEvent>) -> Result<()> {
        let arch = self.model.architecture();
        let mut budget = self.options.prefill_step_size;
        // Requests in the queue's head left there this step (part-read, or
        // to be read together).
        let mut skipped = 0;
        let mut together: Vec<RequestId> = Vec::new();
        let mut joined: Vec<(Vec<Running<'m>>, Batch<'m>, Array)> = Vec::new();
        // Prompts read apart whose last tokens are read this step, by how
        // many tokens are left.
        let mut continuing: BTreeMap<usize, Vec<(Waiting<'m>, row::Prefill<'m>)>> = BTreeMap::new();
        let mut joining = 0;
        while budget > 0
            && skipped < self.waiting.len()
            && self.rows.len() + joining + skipped < self.options.max_batch
        {
            let w = &mut self.waiting[skipped];
            if w.request.options.max_tokens == 0 {
                let w = self.waiting.remove(skipped).expect("in range");
                self.ids.remove(&w.id);
                events.push(EngineEvent::Started {
                    id: w.id,
                    prompt_tokens: w.prompt.len(),
                    cached_tokens: 0,
                });
                events.push(EngineEvent::Done {
                    id: w.id,
                    reason: StopReason::MaxTokens,
                    prompt_tokens: w.prompt.len(),
                    completion_tokens: 0,
                    cached_tokens: 0,
                });
                continue;
            }
            if w.prefill.is_none() {
                let (cached, caches) =
                    match self.prefix.lookup(&w.prompt, w.adapter, &self.windows)? {
                        Some(found) => found,
                        None if w.prompt.len() <= budget => {
                            budget -= w.prompt.len();
                            together.push(w.id);
                            skipped += 1;
                            continue;
                        }
                        None => (0, arch.make_batch_caches(&[0])),
                    };
                w.prefill = Some(row::Prefill {
                    batch: Batch::with_caches(arch, caches, 1),
                    done: cached,
                    cached,
                });
            }
            let adapter = w.adapter;
            self.select(&[adapter])?;
            let w = &mut self.waiting[skipped];
            let p = w.prefill.as_mut().expect("set above");
            let rest = w.prompt.len() - p.done;
            let n = rest.min(budget);
            budget -= n;
            let chunk: Vec<i32> = w.prompt[p.done..p.done + n]
                .iter()
                .map(|&t| t as i32)
                .collect();
            let chunk = Array::from_slice(&chunk, &[1, n as i32])?;
            if n < rest {
                p.batch.feed(&chunk)?;
                p.done += n;
                skipped += 1;
                continue;
            }
            // The rest of the prompt is read this step, together with the
            // other prompts whose rests have as many tokens.
            let mut w = self.waiting.remove(skipped).expect("in range");
            let p = w.prefill.take().expect("set above");
            joining += 1;
            continuing.entry(n).or_default().push((w, p));
        }
        for (n, group) in continuing {
            let mut ids = Vec::with_capacity(group.len() * n);
            let mut adapters = Vec::with_capacity(group.len());
            let mut cached = Vec::with_capacity(group.len());
            let mut batches = Vec::with_capacity(group.len());
            let mut requests = Vec::with_capacity(group.len());
            for (w, p) in group {
                ids.extend(w.prompt[p.done..].iter().map(|&t| t as i32));
                adapters.push(w.adapter);
                cached.push(p.cached);
                batches.push(p.batch);
                requests.push(w);
            }
            let rows = requests.len() as i32;
            let mut batches = batches.into_iter();
            let mut batch = batches.next().expect("a group has a request");
            batch.extend_many(batches.collect())?;
            self.select(&adapters)?;
            let logits = batch.last_logits(&Array::from_slice(&ids, &[rows, n as i32])?)?;
            let rows = self.start(requests, &batch, &cached, events)?;
            joined.push((rows, batch, logits));
        }
        if !together.is_empty() {
            let (group, rest): (Vec<_>, Vec<_>) = self
                .waiting
                .drain(..)
                .partition(|w| together.contains(&w.id));
            self.waiting = rest.into();
            let adapters: Vec<Option<usize>> = group.iter().map(|w| w.adapter).collect();
            self.select(&adapters)?;
            let prompts: Vec<&[u32]> = group.iter().map(|w| w.prompt.as_slice()).collect();
            let (batch, logits) = Batch::prefill(arch, &prompts, PREFILL_STEP)?;
            let fresh = vec![0; group.len()];
            let rows = self.start(group, &batch, &fresh, events)?;
            joined.push((rows, batch, logits));
        }
        if joined.is_empty() {
            return Ok(());
        }
        let first = self.rows.len();
        let mut logits = Vec::with_capacity(joined.len());
        let mut batches = Vec::with_capacity(joined.len());
        for (rows, batch, l) in joined {
            batches.push(batch);
            self.rows.extend(rows);
            logits.push(l);
        }
        // every joining batch in one concatenation per layer
        let mut batches = batches.into_iter();
        let mut running = match self.batch.take() {
            Some(b) => b,
            None => batches.next().expect("at least one joined"),
        };
        running.extend_many(batches.collect())?;
        self.batch = Some(running);
        let logits = Array::concatenate(&logits.iter().collect::<Vec<_>>(), 0)?;
        let new = Pending::sample(&mut self.rows[first..], &logits, None, &mut self.greedy)?;
        let mut outputs = new.outputs();
        if let Some(b) = &self.batch {
            outputs.extend(b.state());
        }
        async_eval(&outputs)?;
        self.next = Some(match self.next.take() {
            Some(running) => running.append(new)?,
            None => new,
        });
        Ok(())
    }

    /// Requests whose prompts `batch` has read (row `r` is `requests[r]`,
    /// `cached[r]` of its prompt from the prefix cache): stores their
    /// prompts in the prefix cache, reports them started and makes their
    /// rows.
    fn start(
        &mut self,
        requests: Vec<Waiting<'_>>,
        batch: &Batch<'_>,
        cached: &[usize],
        events: &mut Vec<EngineEvent>,
    ) -> Result<Vec<Running<'m>>> {
        requests
            .into_iter()
            .zip(cached)
            .enumerate()
            .map(|(r, (w, &cached))| {
                self.prefix.store(&w.prompt, w.adapter, batch.caches(), r)?;
                events.push(EngineEvent::Started {
                    id: w.id,
                    prompt_tokens: w.prompt.len(),
                    cached_tokens: cached,
                });
                Running::new(self.model.tokenizer(), w, cached)
            })
            .collect()
    }
}

impl Engine for NativeEngine<'_> {
    fn submit(&mut self, id: RequestId, request: EngineRequest) -> inference::Result<usize> {
        request.options.validate()?;
        if self.ids.contains(&id) {
            return Err(inference::Error::InvalidArgument(format!(
                "request {id} is already in flight"
            )));
        }
        if let Some(k) = request.logprobs {
            if k > MAX_TOP_LOGPROBS {
                return Err(inference::Error::InvalidArgument(format!(
                    "logprobs asks for {k} alternatives; at most {MAX_TOP_LOGPROBS} are allowed"
                )));
            }
        }
        let adapter = match &request.adapter {
            None => None,
            Some(name) => {
                let known = self.options.adapters.iter().position(|(n, _)| n == name);
                Some(known.ok_or_else(|| {
                    inference::Error::InvalidArgument(format!("unknown adapter `{name}`"))
                })?)
            }
        };
        let prompt = self.encode(&request)?;
        let context = self.model.info().context_length;
        inference::check_context(prompt.len(), &request.options, context)?;
        if let Some(limit) = context {
            let max = request.options.max_tokens;
            if prompt.len() + max > limit {
                return Err(inference::Error::InvalidArgument(format!(
                    "the prompt's {} tokens and max_tokens {max} exceed the model's context length of {limit}",
                    prompt.len()
                )));
            }
        }
        let n = prompt.len();
        self.ids.insert(id);
        self.waiting.push_back(Waiting {
            id,
            prompt,
            request,
            adapter,
            prefill: None,
        });
        Ok(n)
    }

    fn cancel(&mut self, id: RequestId) {
        if let Some(i) = self.waiting.iter().position(|w| w.id == id) {
            let w = self.waiting.remove(i).expect("in range");
            self.ids.remove(&id);
            self.early.push(EngineEvent::Done {
                id,
                reason: StopReason::Cancelled,
                prompt_tokens: w.prompt.len(),
                completion_tokens: 0,
                cached_tokens: w.prefill.map_or(0, |p| p.cached),
            });
            return;
        }
        if let Some(row) = self.rows.iter_mut().find(|r| r.id == id) {
            row.cancelled = true;
        }
    }

    fn step(&mut self) -> inference::Result<Vec<EngineEvent>> {
        let mut events = std::mem::take(&mut self.early);
        let mut t = std::time::Instant::now();
        let rows = self.rows.len();
        // A model spread over a group keeps one step queued at a time: with
        // two, the ranks of a pipeline can each wait in a different
        // collective.
        let spread = self.model.architecture().spread();
        // Nothing to start ahead when every row reaches its token budget
        // with the tokens about to be read.
        let ahead = !spread && self.rows.iter().any(|r| r.row.ids.len() + 1 < r.max_tokens);
        let pending = self.next.take();
        if let (Some(pending), true) = (&pending, ahead) {
            self.next = self.decode(&pending.tokens, true)?;
        }
        let started = self.next.is_some();
        let mut decode = profile::lap(&mut t);
        if let Some(pending) = pending {
            self.read(pending, &mut events)?;
        }
        let read = profile::lap(&mut t);
        self.remove_finished(&mut events)?;
        let remove = profile::lap(&mut t);
        if !started && self.batch.is_some() {
            let inputs: Vec<i32> = self
                .rows
                .iter()
                .map(|r| *r.history.last().expect("a running row has read a token") as i32)
                .collect();
            self.next = self.decode(&Array::from_vec(&inputs)?, false)?;
            decode += profile::lap(&mut t);
        }
        let waiting = self.waiting.len();
        self.admit(&mut events)?;
        let admit = profile::lap(&mut t);
        profile::record(|| {
            let admitted = self.rows.len().saturating_sub(rows);
            format!(
                "engine rows={rows} admitted={admitted} waiting={waiting} read_us={read} \
                 remove_us={remove} decode_us={decode} admit_us={admit}"
            )
        });
        self.steps += 1;
        if self.steps.is_multiple_of(256) {
            clear_cache()?;
        }
        Ok(events)
    }

    fn pending(&self) -> usize {
        self.ids.len() + usize::from(!self.early.is_empty())
    }

    fn running(&self) -> usize {
        self.rows.len()
    }
}
