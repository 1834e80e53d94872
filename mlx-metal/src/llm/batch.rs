//! Many sequences through one forward pass: a [`Batch`] of left-padded
//! rows, each at its own position, that grows (rows prefilled apart and
//! merged in) and shrinks (finished rows filtered out) between decode
//! steps; and the two drivers built on it, classification and batch
//! generation. The models are the same as for one sequence: batch caches
//! give each row its positions and mask.

use std::collections::VecDeque;
use std::time::Instant;

use inference::{
    BatchEvent, BatchOptions, Classification, ClassifyOptions, Completion, GenerateOptions,
    StopReason, StopStrings, Token, TokenScore,
};

use crate::llm::generate::{finite_witness, sampler_settings, PREFILL_STEP};
use crate::llm::models::Architecture;
use crate::llm::profile;
use crate::llm::sampler::Sampler;
use crate::llm::tokenizer::{Detokenizer, Tokenizer};
use crate::nn::cache::{row_index, KvCache};
use crate::{async_eval, clear_cache, eval, Array, Dtype, Error, Result};

/// Rows decoding together, with their batch caches.
pub struct Batch<'m> {
    model: &'m dyn Architecture,
    caches: Vec<KvCache>,
    rows: usize,
}

impl<'m> Batch<'m> {
    /// Left-pads `prompts` to a common length and runs them through
    /// `model` (`chunk` columns per forward pass); returns the batch and the
    /// float32 logits `[rows, vocab]` after each prompt. The output layer
    /// runs only at the last column, where every row's prompt ends.
    pub fn prefill(
        model: &'m dyn Architecture,
        prompts: &[&[u32]],
        chunk: usize,
    ) -> Result<(Batch<'m>, Array)> {
        Batch::prefill_with(model, prompts, chunk, false)
    }

    /// The logits after each prompt, keeping no KV cache when the prompts
    /// fit one forward pass (prefill-only work such as classification).
    pub fn last_logits_only(
        model: &'m dyn Architecture,
        prompts: &[&[u32]],
        chunk: usize,
    ) -> Result<Array> {
        Batch::prefill_with(model, prompts, chunk, true).map(|(_, logits)| logits)
    }

    fn prefill_with(
        model: &'m dyn Architecture,
        prompts: &[&[u32]],
        chunk: usize,
        transient: bool,
    ) -> Result<(Batch<'m>, Array)> {
        if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
            return Err(Error::InvalidArgument(
                "every prompt of a batch needs at least one token".into(),
            ));
        }
        let len = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let left: Vec<i32> = prompts.iter().map(|p| (len - p.len()) as i32).collect();
        let mut ids = Vec::with_capacity(prompts.len() * len);
        for p in prompts {
            ids.extend(std::iter::repeat_n(0i32, len - p.len()));
            ids.extend(p.iter().map(|&t| t as i32));
        }
        let (b, l) = (prompts.len() as i32, len as i32);
        let tokens = Array::from_slice(&ids, &[b, l])?;
        let chunk = chunk.max(1) as i32;
        let caches = if transient && l <= chunk {
            model
                .make_caches()
                .iter()
                .map(|c| KvCache::batch_transient(&left, c.window()))
                .collect()
        } else {
            model.make_batch_caches(&left)
        };
        let mut batch = Batch::with_caches(model, caches, prompts.len());
        // Whole chunks while more than one chunk is left, then the rest in
        // one pass whose last column alone goes through the output layer.
        let mut done = 0i32;
        while l - done > chunk {
            let n = chunk;
            batch.feed(&tokens.slice_axis(1, done, done + n)?)?;
            done += n;
        }
        let logits = batch.last_logits(&tokens.slice_axis(1, done, l)?)?;
        Ok((batch, logits))
    }

    /// A batch of `rows` rows over `caches` (one per layer, batch caches
    /// holding what the rows have read so far).
    pub(crate) fn with_caches(
        model: &'m dyn Architecture,
        caches: Vec<KvCache>,
        rows: usize,
    ) -> Batch<'m> {
        Batch {
            model,
            caches,
            rows,
        }
    }

    /// Runs `tokens` (`[rows, n]`) through the model for their keys and
    /// values alone (no output layer) and evaluates the caches (and, on a
    /// pipelined model, the hand-over between ranks, which the caches of
    /// the first ranks do not depend on: see [`Architecture::prefill`]).
    pub(crate) fn feed(&mut self, tokens: &Array) -> Result<()> {
        let pending = self.model.prefill(tokens, &mut self.caches)?;
        eval(&pending.iter().collect::<Vec<_>>())?;
        clear_cache()
    }

    /// The caches, one per layer.
    pub(crate) fn caches(&self) -> &[KvCache] {
        &self.caches
    }

    /// Runs `tokens` (`[rows, n]`) and returns the float32 logits of the last
    /// column, `[rows, vocab]`.
    pub(crate) fn last_logits(&mut self, tokens: &Array) -> Result<Array> {
        let h = self.model.hidden(tokens, &mut self.caches)?;
        let n = h.dim(1)?;
        let logits = self.model.logits(&h.slice_axis(1, n - 1, n)?)?;
        logits.squeeze(&[1])?.astype(Dtype::Float32)
    }

    /// One decode step: `tokens` (`[rows]`, one per row) in, float32 logits
    /// `[rows, vocab]` out.
    pub fn step(&mut self, tokens: &Array) -> Result<Array> {
        let ids = tokens
            .astype(Dtype::Int32)?
            .reshape(&[self.rows as i32, 1])?;
        self.last_logits(&ids)
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Keeps only `rows`, in that order.
    pub fn filter(&mut self, rows: &[usize]) -> Result<()> {
        for c in &mut self.caches {
            c.filter(rows)?;
        }
        self.rows = rows.len();
        Ok(())
    }

    /// Appends the rows of `other` (prefilled apart) after this batch's.
    pub fn extend(&mut self, other: Batch<'_>) -> Result<()> {
        self.extend_many(vec![other])
    }

    /// Appends the rows of every batch of `others`, in order (one
    /// concatenation per layer however many there are).
    pub fn extend_many(&mut self, others: Vec<Batch<'_>>) -> Result<()> {
        let mut per_layer: Vec<Vec<KvCache>> = self.caches.iter().map(|_| Vec::new()).collect();
        for o in others {
            self.rows += o.rows;
            for (layer, c) in per_layer.iter_mut().zip(o.caches) {
                layer.push(c);
            }
        }
        for (c, os) in self.caches.iter_mut().zip(per_layer) {
            c.extend_many(os)?;
        }
        Ok(())
    }

    /// The arrays to evaluate to materialise the caches.
    pub(crate) fn state(&self) -> Vec<&Array> {
        self.caches.iter().flat_map(|c| c.state()).collect()
    }
}

/// The distribution after each prompt, batched as `opts.batch` says; the
/// next batch's graph is built and started before the current one's
/// results are read. Results come back in input order.
pub fn classify(
    model: &dyn Architecture,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    opts: &ClassifyOptions,
) -> Result<Vec<Classification>> {
    opts.batch
        .validate()
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let labels: Vec<u32> = opts
        .labels
        .iter()
        .map(|label| {
            let ids = tokenizer.encode(label, false)?;
            ids.first().copied().ok_or_else(|| {
                Error::InvalidArgument(format!("label {label:?} encodes to no tokens"))
            })
        })
        .collect::<Result<_>>()?;
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let plan = opts.batch.plan(&lengths);
    let label_ids = (!labels.is_empty())
        .then(|| Array::from_vec(&labels.iter().map(|&i| i as i32).collect::<Vec<_>>()))
        .transpose()?;
    let vocab_k = opts.top_k.max(1) as i32;

    // Each batch's outputs: (indices, top ids, top logprobs, label logprobs).
    type Pending = (Vec<usize>, Array, Array, Option<Array>);
    let launch = |rows: &[usize]| -> Result<Pending> {
        let batch_prompts: Vec<&[u32]> = rows.iter().map(|&i| prompts[i].as_slice()).collect();
        let logits = Batch::last_logits_only(model, &batch_prompts, PREFILL_STEP)?;
        let logprobs = logits.subtract(&logits.logsumexp(&[-1], true)?)?;
        let vocab = logprobs.dim(-1)?;
        let k = vocab_k.min(vocab);
        // argmax for the top token alone: a partition of the whole
        // vocabulary costs far more on a GPU.
        let top = if k == 1 {
            logprobs.argmax(-1, true)?
        } else {
            logprobs
                .negative()?
                .argpartition(k - 1, -1)?
                .slice_axis(-1, 0, k)?
        };
        let top_lp = logprobs.take_along_axis(&top, -1)?;
        let labels = label_ids
            .as_ref()
            .map(|ids| logprobs.take(ids, -1))
            .transpose()?;
        let mut outputs = vec![&top, &top_lp];
        outputs.extend(labels.iter());
        async_eval(&outputs)?;
        Ok((rows.to_vec(), top, top_lp, labels))
    };

    let mut results: Vec<Option<Classification>> = vec![None; prompts.len()];
    let mut pending: Option<Pending> = None;
    for rows in plan
        .iter()
        .map(Vec::as_slice)
        .chain(std::iter::once(&[][..]))
    {
        let next = if rows.is_empty() {
            None
        } else {
            Some(launch(rows)?)
        };
        if let Some((indices, top, top_lp, labels)) = pending.take() {
            let k = top.dim(-1)? as usize;
            let ids = top.to_vec::<u32>()?;
            let lps = top_lp.to_vec::<f32>()?;
            let label_lps = labels.map(|l| l.to_vec::<f32>()).transpose()?;
            for (r, &index) in indices.iter().enumerate() {
                let mut scored: Vec<(u32, f32)> =
                    (0..k).map(|j| (ids[r * k + j], lps[r * k + j])).collect();
                scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let score = |(id, lp): (u32, f32)| -> Result<TokenScore> {
                    Ok(TokenScore::new(id, tokenizer.decode(&[id])?, lp as f64))
                };
                let mut c = Classification::new(index, score(scored[0])?, prompts[index].len());
                if opts.top_k > 0 {
                    c.top_k = scored
                        .iter()
                        .take(opts.top_k)
                        .map(|&s| score(s))
                        .collect::<Result<_>>()?;
                }
                if let Some(l) = &label_lps {
                    let n = opts.labels.len();
                    c.score_labels(
                        &opts.labels,
                        l[r * n..(r + 1) * n].iter().map(|&lp| lp as f64),
                    );
                }
                results[index] = Some(c);
            }
        }
        pending = next;
    }
    Ok(results
        .into_iter()
        .map(|c| c.expect("every input is in one batch"))
        .collect())
}

/// One generated sequence's text state, shared by batch generation and
/// the serving engine: its ids, its detokenizer, the tokens held back while
/// a multi-byte character or a stop string may be forming, and why it
/// ended.
pub(crate) struct Row<'t> {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Ids generated (EOS not included).
    pub ids: Vec<u32>,
    /// The text released so far.
    pub text: String,
    detok: Detokenizer<'t>,
    held: Vec<Token>,
    stops: StopStrings,
    /// Why the row ended, once it has.
    pub reason: Option<StopReason>,
}

impl<'t> Row<'t> {
    /// A row for a prompt of `prompt_tokens` that stops at `stops`.
    pub fn new(tokenizer: &'t Tokenizer, prompt_tokens: usize, stops: &[String]) -> Row<'t> {
        Row {
            prompt_tokens,
            ids: Vec::new(),
            text: String::new(),
            detok: tokenizer.detokenizer(),
            held: Vec::new(),
            stops: StopStrings::new(stops),
            reason: None,
        }
    }

    /// Takes the sampled token `id`: EOS ends the row; otherwise the token
    /// is added and what the stop strings release goes to `out`; the row
    /// ends on a stop string or when it has `max_tokens`.
    pub fn accept(
        &mut self,
        id: u32,
        eos: &[u32],
        max_tokens: usize,
        out: &mut Vec<Token>,
    ) -> Result<()> {
        if eos.contains(&id) {
            self.reason = Some(StopReason::Eos);
            return Ok(());
        }
        self.ids.push(id);
        let text = self.detok.add(id)?;
        self.held.push(Token::new(id, text));
        if !self.detok.pending() {
            self.release(out);
        }
        if self.reason.is_none() && self.ids.len() >= max_tokens {
            self.reason = Some(StopReason::MaxTokens);
        }
        Ok(())
    }

    /// Ends the row for `reason` unless it already ended, and sends what
    /// is still held to `out` (nothing after a stop string).
    pub fn finish(&mut self, reason: StopReason, out: &mut Vec<Token>) -> Result<()> {
        let reason = *self.reason.get_or_insert(reason);
        if reason != StopReason::Stop {
            let rest = self.detok.finish()?;
            if let Some(last) = self.held.last_mut() {
                last.text.push_str(&rest);
            }
            if !self.release(out) {
                let rest = self.stops.finish();
                self.emit(rest, out);
            }
        }
        Ok(())
    }

    /// Passes the held tokens through the stop strings and emits what they
    /// release; true (and the row stopped) when a stop string was reached.
    fn release(&mut self, out: &mut Vec<Token>) -> bool {
        for t in std::mem::take(&mut self.held) {
            let (released, hit) = self.stops.push(t);
            self.emit(released, out);
            if hit {
                self.reason = Some(StopReason::Stop);
                return true;
            }
        }
        false
    }

    /// Adds `tokens` to the row's text and to `out`.
    fn emit(&mut self, tokens: Vec<Token>, out: &mut Vec<Token>) {
        for token in tokens {
            self.text.push_str(&token.text);
            out.push(token);
        }
    }
}

/// A batch generation in flight: rows are prefilled in groups, merged
/// into the running batch as others finish (continuous batching), and
/// decode together; each stops on EOS, its token budget or a stop string.
pub struct BatchGeneration<'m> {
    model: &'m dyn Architecture,
    tokenizer: &'m Tokenizer,
    opts: GenerateOptions,
    batch_size: usize,
    waiting: VecDeque<(usize, Vec<u32>)>,
    batch: Option<Batch<'m>>,
    /// The rows decoding, with their input index.
    rows: Vec<(usize, Row<'m>)>,
    /// The tokens sampled for the current rows, not yet read.
    next: Option<Array>,
    /// Per row, the sum of the logits the tokens in `next` came from:
    /// finite exactly when all of them were.
    check: Option<Array>,
    sampler: Sampler,
    events: VecDeque<BatchEvent>,
    failed: bool,
    /// Tokens generated so far, all rows together.
    pub generated: usize,
}

impl<'m> BatchGeneration<'m> {
    /// Starts generating for `prompts` (input order); at most
    /// `batch.batch_size` rows decode at once, the shortest prompts first.
    pub fn new(
        model: &'m dyn Architecture,
        tokenizer: &'m Tokenizer,
        prompts: Vec<Vec<u32>>,
        opts: &GenerateOptions,
        batch: &BatchOptions,
    ) -> Result<BatchGeneration<'m>> {
        opts.validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        batch
            .validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if opts.repetition_penalty.is_some() {
            return Err(Error::InvalidArgument(
                "repetition_penalty is not supported in batch generation".into(),
            ));
        }
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(Error::InvalidArgument(format!(
                "input {i} encodes to no tokens"
            )));
        }
        let mut events = VecDeque::new();
        if opts.max_tokens == 0 {
            for (i, p) in prompts.iter().enumerate() {
                events.push_back(BatchEvent::Done(Completion::new(
                    i,
                    Vec::new(),
                    String::new(),
                    StopReason::MaxTokens,
                    p.len(),
                )));
            }
        }
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        if opts.max_tokens == 0 {
            order.clear();
        }
        order.sort_by_key(|&i| (prompts[i].len(), i));
        let mut prompts: Vec<Option<Vec<u32>>> = prompts.into_iter().map(Some).collect();
        let waiting = order
            .into_iter()
            .map(|i| (i, prompts[i].take().expect("each index once")))
            .collect();
        Ok(BatchGeneration {
            model,
            tokenizer,
            opts: opts.clone(),
            batch_size: batch.batch_size,
            waiting,
            batch: None,
            rows: Vec::new(),
            next: None,
            check: None,
            sampler: Sampler::new(&sampler_settings(opts))?,
            events,
            failed: false,
            generated: 0,
        })
    }

    /// Prefills waiting prompts into the free rows of the batch and
    /// samples their first tokens.
    fn admit(&mut self) -> Result<()> {
        let free = self.batch_size.saturating_sub(self.rows.len());
        if free == 0 || self.waiting.is_empty() {
            return Ok(());
        }
        let group: Vec<(usize, Vec<u32>)> =
            (0..free).map_while(|_| self.waiting.pop_front()).collect();
        let prompts: Vec<&[u32]> = group.iter().map(|(_, p)| p.as_slice()).collect();
        let (batch, logits) = Batch::prefill(self.model, &prompts, PREFILL_STEP)?;
        let first_check = finite_witness(&logits, &[-1])?;
        let first = self.sampler.sample(logits, None)?;
        // Tokens already sampled for the running rows come first.
        let next = match self.next.take() {
            Some(running) => Array::concatenate(&[&running, &first], 0)?,
            None => first,
        };
        let check = match self.check.take() {
            Some(running) => Array::concatenate(&[&running, &first_check], 0)?,
            None => first_check,
        };
        self.check = Some(check);
        match &mut self.batch {
            Some(b) => b.extend(batch)?,
            None => self.batch = Some(batch),
        }
        for (index, prompt) in group {
            self.rows.push((
                index,
                Row::new(self.tokenizer, prompt.len(), &self.opts.stop),
            ));
        }
        self.next = Some(next);
        Ok(())
    }

    /// Starts the next step from the sampled tokens (not yet read, as
    /// mlx_lm's batch generator does, so the device computes it while the
    /// tokens are read and reported), then reads them, turns them into
    /// events and lets the rows that ended go: the step already started
    /// computes them once more and its results for them are dropped.
    ///
    /// A model spread over a group reads the tokens first and starts the
    /// next step for the remaining rows only: with two steps queued, the
    /// ranks of a pipeline can each wait in a different collective.
    fn advance(&mut self) -> Result<()> {
        if self.next.is_none() {
            self.admit()?;
        }
        let Some(tokens) = self.next.take() else {
            return Ok(());
        };
        let check = self.check.take();
        let cancelled = self.opts.is_cancelled();
        // Nothing to start when every row reaches its token budget with
        // the tokens about to be read.
        let max = self.opts.max_tokens;
        let ahead = !self.model.spread() && self.rows.iter().any(|(_, r)| r.ids.len() + 1 < max);
        let begun = Instant::now();
        let mut t = begun;
        let rows = self.rows.len();
        let mut following = match &mut self.batch {
            Some(b) if !cancelled && ahead => Some(Self::start_step(
                b,
                &mut self.sampler,
                &tokens,
                self.generated,
            )?),
            _ => None,
        };
        let mut start = profile::lap(&mut t);
        let ids = tokens.to_vec::<u32>()?;
        let wait = profile::lap(&mut t);
        if let Some(check) = check {
            let sums = check.to_vec::<f32>()?;
            if let Some(r) = sums.iter().position(|s| !s.is_finite()) {
                let row = self.rows.get(r).map_or(r, |(index, _)| *index);
                return Err(crate::Error::NonFinite(format!(
                    "for input {row}, at its generated token {}",
                    self.rows.get(r).map_or(0, |(_, row)| row.ids.len()) + 1
                )));
            }
        }
        let mut out = Vec::new();
        for ((index, row), &id) in self.rows.iter_mut().zip(&ids) {
            if cancelled {
                row.reason = Some(StopReason::Cancelled);
                continue;
            }
            let before = row.ids.len();
            row.accept(id, self.tokenizer.eos_ids(), self.opts.max_tokens, &mut out)?;
            self.generated += row.ids.len() - before;
            self.events
                .extend(out.drain(..).map(|token| BatchEvent::Token {
                    index: *index,
                    token,
                }));
        }
        // Finished rows: release what they held, report, and leave.
        let mut keep = Vec::new();
        for (r, (index, row)) in self.rows.iter_mut().enumerate() {
            let Some(reason) = row.reason else {
                keep.push(r);
                continue;
            };
            row.finish(reason, &mut out)?;
            self.events
                .extend(out.drain(..).map(|token| BatchEvent::Token {
                    index: *index,
                    token,
                }));
            self.events.push_back(BatchEvent::Done(Completion::new(
                *index,
                std::mem::take(&mut row.ids),
                std::mem::take(&mut row.text),
                reason,
                row.prompt_tokens,
            )));
        }
        if cancelled {
            self.rows.clear();
            self.batch = None;
            self.waiting.clear();
            return Ok(());
        }
        // The rows that go on, when some ended.
        let mut kept = None;
        if keep.len() != self.rows.len() {
            self.rows.retain(|(_, row)| row.reason.is_none());
            if self.rows.is_empty() {
                self.batch = None;
                following = None;
            } else {
                if let Some(b) = &mut self.batch {
                    b.filter(&keep)?;
                }
                let idx = row_index(&keep)?;
                following = following
                    .map(|(next, check)| {
                        Ok::<_, Error>((next.take(&idx, 0)?, check.take(&idx, 0)?))
                    })
                    .transpose()?;
                kept = Some(idx);
            }
        }
        if following.is_none() {
            if let Some(b) = &mut self.batch {
                let inputs = match &kept {
                    Some(idx) => tokens.take(idx, 0)?,
                    None => tokens,
                };
                t = Instant::now();
                following = Some(Self::start_step(
                    b,
                    &mut self.sampler,
                    &inputs,
                    self.generated,
                )?);
                start += profile::lap(&mut t);
            }
        }
        let host = begun.elapsed().as_micros().saturating_sub(start + wait);
        profile::record(|| {
            format!("batch rows={rows} start_us={start} wait_us={wait} host_us={host}")
        });
        if let Some((next, check)) = following {
            self.next = Some(next);
            self.check = Some(check);
        }
        if self.generated.is_multiple_of(256) {
            clear_cache()?;
        }
        // Rows that finished make room for waiting prompts.
        if self.rows.len() < self.batch_size && !self.waiting.is_empty() {
            self.admit()?;
        }
        Ok(())
    }

    /// Builds and starts the decode step of `batch` that reads `tokens`
    /// (`[rows]`): its sampled tokens and their logits' finiteness witness.
    /// `generated` (tokens so far) picks the step whose graph the step
    /// profile lists.
    fn start_step(
        batch: &mut Batch<'_>,
        sampler: &mut Sampler,
        tokens: &Array,
        generated: usize,
    ) -> Result<(Array, Array)> {
        let mut t = Instant::now();
        let logits = batch.step(&tokens.astype(Dtype::Int32)?)?;
        let check = finite_witness(&logits, &[-1])?;
        let next = sampler.sample(logits, None)?;
        let build = profile::lap(&mut t);
        if generated == 2 * batch.rows() && profile::enabled() {
            profile::record_graph("batch-graph", &[&next, &check]);
            t = Instant::now();
        }
        let mut state = batch.state();
        state.push(&next);
        state.push(&check);
        async_eval(&state)?;
        let launch = profile::lap(&mut t);
        profile::record(|| format!("batch-step build_us={build} launch_us={launch}"));
        Ok((next, check))
    }

    /// The next event, an error, or `None` when every row has finished.
    pub fn next_event(&mut self) -> Option<Result<BatchEvent>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(Ok(e));
            }
            if self.failed || (self.next.is_none() && self.waiting.is_empty()) {
                return None;
            }
            if let Err(e) = self.advance() {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}
