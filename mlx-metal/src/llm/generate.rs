//! The generation loop: chunked prefill, then decoding with the next step's
//! graph built and started (async eval) before the current token is read.

use std::time::Instant;

use inference::{GenerateOptions, StopReason, Token};

use crate::llm::compiled_decode::{CompiledDecode, DecodeMode};
use crate::llm::models::Architecture;
use crate::llm::profile;
use crate::llm::sampler::{Sampler, SamplerSettings};
use crate::llm::tokenizer::{Detokenizer, Tokenizer};
use crate::nn::cache::KvCache;
use crate::{async_eval, clear_cache, eval, Array, Dtype, Result};

/// The sampling part of generation options.
pub fn sampler_settings(opts: &GenerateOptions) -> SamplerSettings {
    SamplerSettings {
        temperature: opts.temperature,
        top_p: opts.top_p,
        min_p: opts.min_p,
        top_k: opts.top_k,
        repetition: opts
            .repetition_penalty
            .map(|p| (p, opts.repetition_context_size)),
        seed: opts.seed,
    }
}

/// Prompt tokens processed per forward pass during prefill (as mlx_lm).
pub const PREFILL_STEP: usize = 2048;

/// Runs one forward pass for `input` (`[L]` ids) and samples from its last
/// position.
struct Stepper<'a> {
    model: &'a dyn Architecture,
    caches: Vec<KvCache>,
    sampler: Sampler,
    history: Option<Array>,
    mode: DecodeMode,
    /// Takes over `caches` at the first single-token step in
    /// [`DecodeMode::Compiled`].
    compiled: Option<CompiledDecode<'a>>,
}

impl Stepper<'_> {
    fn remember(&mut self, input: &Array) -> Result<()> {
        if self.sampler.wants_history() {
            self.history = Some(match self.history.take() {
                Some(h) => Array::concatenate(&[&h, input], 0)?,
                None => input.clone(),
            });
        }
        Ok(())
    }

    /// Whether a step reading `n` tokens goes through the compiled graph:
    /// single tokens after a prompt, on a model not spread over a group.
    fn compiles(&self, n: i32) -> bool {
        n == 1
            && self.mode == DecodeMode::Compiled
            && !self.model.spread()
            && (self.compiled.is_some()
                || self.caches.first().and_then(KvCache::offset).unwrap_or(0) > 0)
    }

    /// The sampled token and a finiteness witness for its logits.
    fn step(&mut self, input: &Array) -> Result<Sampled> {
        let n = input.dim(0)?;
        let last = if self.compiles(n) {
            let decode = match &mut self.compiled {
                Some(d) => d,
                None => self.compiled.insert(CompiledDecode::new(
                    self.model,
                    std::mem::take(&mut self.caches),
                )?),
            };
            decode.step(input)?
        } else {
            let mut h = self
                .model
                .hidden(&input.reshape(&[1, n])?, &mut self.caches)?;
            if n > 1 {
                // The end of a prompt: the output layer only at its last position.
                h = h.slice_axis(1, n - 1, n)?;
            }
            self.model.logits(&h)?.squeeze(&[1])?
        };
        self.remember(input)?;
        let check = finite_witness(&last, &[])?;
        Ok(Sampled {
            token: self.sampler.sample(last, self.history.as_ref())?,
            check,
        })
    }
}

/// A sampled token (still lazy) with [`finite_witness`] of its logits.
struct Sampled {
    token: Array,
    check: Array,
}

impl Sampled {
    /// Starts computing both.
    fn start(&self) -> Result<()> {
        async_eval(&[&self.token, &self.check])
    }

    /// The token id, or [`Error::NonFinite`](crate::Error::NonFinite) when its
    /// logits were not all finite; `step` names the step in the message.
    fn read(&self, step: usize) -> Result<u32> {
        let id = self.token.item::<u32>()?;
        if !self.check.item::<f32>()?.is_finite() {
            return Err(crate::Error::NonFinite(format!(
                "at generated token {step}"
            )));
        }
        Ok(id)
    }
}

/// The sum of `logits` over `axes` (all when empty) in float32: finite
/// exactly when every logit summed is (a NaN or an infinity anywhere makes
/// it NaN or infinite; real logits are far too small to overflow it). One
/// reduction, computed with the token.
pub(crate) fn finite_witness(logits: &Array, axes: &[i32]) -> Result<Array> {
    logits.astype(Dtype::Float32)?.sum(axes, false)
}

/// Prompt tokens per prefill chunk when the generation can be cancelled:
/// chunks are sized to take about [`CHUNK_SECONDS`] each, so a cancellation
/// is seen within about that long, starting from this many tokens (enough
/// for most chat turns to be one chunk, as mlx_lm computes them).
const FIRST_CANCELLABLE_CHUNK: usize = 64;
/// Target duration of one cancellable prefill chunk.
const CHUNK_SECONDS: f64 = 0.25;

/// The next prefill chunk's size: the full `step` when nothing can cancel
/// the generation, else what the last chunk's speed fits in
/// [`CHUNK_SECONDS`] (a multiple of 16, between 16 and `step`).
fn next_chunk(step: usize, cancellable: bool, last: Option<(usize, f64)>) -> usize {
    if !cancellable {
        return step;
    }
    let n = match last {
        None => FIRST_CANCELLABLE_CHUNK,
        Some((tokens, secs)) => {
            let rate = tokens as f64 / secs.max(1e-6);
            ((rate * CHUNK_SECONDS) as usize / 16) * 16
        }
    };
    n.clamp(16, step.max(16))
}

/// Figures gathered while generating.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Tokens produced (EOS excluded).
    pub generated: usize,
    /// Prompt tokens per second (prefill and the first step).
    pub prompt_tps: f64,
    /// Generated tokens per second after the first.
    pub generation_tps: f64,
}

/// One generation in flight. Yields tokens with final text; ends with a stop
/// reason.
pub struct Generation<'a> {
    stepper: Stepper<'a>,
    detok: Detokenizer<'a>,
    tokenizer: &'a Tokenizer,
    opts: GenerateOptions,
    next: Option<Sampled>,
    /// The first token, from which the next step is still to be started.
    deferred: Option<Array>,
    held: Vec<Token>,
    ready: std::collections::VecDeque<Token>,
    reason: Option<StopReason>,
    failed: bool,
    timing: Timing,
    started: Instant,
    first_token_at: Option<Instant>,
}

impl<'a> Generation<'a> {
    /// Prefills `prompt` and starts computing the first token. With
    /// `fixed_chunks`, a cancellable generation still reads the prompt in
    /// chunks of `prefill_step` (the ranks of a distributed model must all
    /// run the same passes; chunks sized by each one's measured speed
    /// would differ).
    pub fn start(
        model: &'a dyn Architecture,
        tokenizer: &'a Tokenizer,
        prompt: &[u32],
        opts: &GenerateOptions,
        prefill_step: usize,
        fixed_chunks: bool,
    ) -> Result<Generation<'a>> {
        if prompt.is_empty() {
            return Err(crate::Error::InvalidArgument(
                "the prompt encodes to no tokens".into(),
            ));
        }
        crate::reset_peak_memory()?;
        let started = Instant::now();
        let mut stepper = Stepper {
            model,
            caches: model.make_caches(),
            sampler: Sampler::new(&sampler_settings(opts))?,
            history: None,
            mode: DecodeMode::from_env()?,
            compiled: None,
        };
        let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
        let mut done = 0usize;
        let cancellable = opts.cancel.is_some() && !fixed_chunks;
        let mut last_chunk = None;
        let mut cancelled = false;
        // Whole chunks while more than one remains; the first step then
        // reads the rest of the prompt (at most a chunk) and samples.
        loop {
            let n = next_chunk(prefill_step.max(1), cancellable, last_chunk);
            if ids.len() - done <= n {
                break;
            }
            if opts.is_cancelled() {
                cancelled = true;
                break;
            }
            let began = Instant::now();
            let chunk = Array::from_vec(&ids[done..done + n])?;
            let pending = stepper
                .model
                .prefill(&chunk.reshape(&[1, n as i32])?, &mut stepper.caches)?;
            eval(&pending.iter().collect::<Vec<_>>())?;
            stepper.remember(&chunk)?;
            done += n;
            clear_cache()?;
            last_chunk = Some((n, began.elapsed().as_secs_f64()));
        }
        cancelled |= opts.is_cancelled();
        let next = if opts.max_tokens > 0 && !cancelled {
            let y = stepper.step(&Array::from_vec(&ids[done..])?)?;
            y.start()?;
            Some(y)
        } else {
            None
        };
        Ok(Generation {
            stepper,
            detok: tokenizer.detokenizer(),
            tokenizer,
            opts: opts.clone(),
            next,
            deferred: None,
            held: Vec::new(),
            ready: Default::default(),
            reason: if cancelled {
                Some(StopReason::Cancelled)
            } else if opts.max_tokens == 0 {
                Some(StopReason::MaxTokens)
            } else {
                None
            },
            failed: false,
            timing: Timing {
                prompt_tokens: prompt.len(),
                ..Default::default()
            },
            started,
            first_token_at: None,
        })
    }

    /// Figures so far.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Ends the stream: releases held tokens (with the detokenizer's last
    /// text) and records why.
    fn finish(&mut self, reason: StopReason) -> Result<()> {
        let rest = self.detok.finish()?;
        if let Some(last) = self.held.last_mut() {
            last.text.push_str(&rest);
        }
        self.ready.extend(std::mem::take(&mut self.held));
        self.reason = Some(reason);
        self.next = None;
        self.deferred = None;
        Ok(())
    }

    /// Stops generating (the stream reached a stop string).
    pub fn stop(&mut self) {
        self.next = None;
        self.deferred = None;
        self.held.clear();
        self.ready.clear();
        self.reason = Some(StopReason::Stop);
    }

    /// Builds and starts the step that reads `token`.
    fn start_step(&mut self, token: &Array) -> Result<()> {
        let mut t = Instant::now();
        let step = self.stepper.step(token)?;
        let build = profile::lap(&mut t);
        if self.timing.generated == 2 && profile::enabled() {
            // What one steady step is made of (listing it takes time, so
            // once, and outside the timed parts).
            let name = match self.stepper.compiled {
                Some(_) => "decode-graph-compiled",
                None => "decode-graph-eager",
            };
            profile::record_graph(name, &[&step.token]);
            t = Instant::now();
        }
        step.start()?;
        let launch = profile::lap(&mut t);
        self.next = Some(step);
        profile::record(|| format!("decode build_us={build} launch_us={launch}"));
        Ok(())
    }

    fn advance(&mut self) -> Result<()> {
        if self.opts.is_cancelled() {
            return self.finish(StopReason::Cancelled);
        }
        if let Some(token) = self.deferred.take() {
            self.start_step(&token)?;
        }
        let Some(y) = self.next.take() else {
            return self.finish(StopReason::MaxTokens);
        };
        // The input of the following step, if there is one.
        let following = if self.timing.generated + 1 < self.opts.max_tokens {
            Some(y.token.astype(Dtype::Int32)?)
        } else {
            None
        };
        let id = if self.first_token_at.is_none() {
            // The prompt's end: read it before anything else is queued and
            // hand it out; the next step starts at the next call. On the
            // CPU, MLX lets only a few tasks wait at a time, so queueing
            // the next step first would hold this token back until most of
            // that step had run (a whole decode step of latency).
            let id = y.read(1)?;
            self.deferred = following;
            id
        } else {
            // Later tokens: build and start the following step before
            // reading this one, so the device is never idle between steps.
            if let Some(token) = following {
                self.start_step(&token)?;
            }
            let waited = Instant::now();
            let id = y.read(self.timing.generated + 1)?;
            let wait = waited.elapsed().as_micros();
            profile::record(|| format!("decode wait_us={wait}"));
            id
        };
        let now = Instant::now();
        if self.first_token_at.is_none() {
            let secs = (now - self.started).as_secs_f64();
            self.timing.prompt_tps = self.timing.prompt_tokens as f64 / secs.max(1e-9);
            self.first_token_at = Some(now);
        }
        if self.tokenizer.eos_ids().contains(&id) {
            self.next = None;
            return self.finish(StopReason::Eos);
        }
        self.timing.generated += 1;
        if let Some(first) = self.first_token_at {
            // as mlx_lm counts: tokens so far over the time since the first
            let secs = (now - first).as_secs_f64();
            if secs > 0.0 {
                self.timing.generation_tps = self.timing.generated as f64 / secs;
            }
        }
        if self.timing.generated.is_multiple_of(256) {
            clear_cache()?;
        }
        let text = self.detok.add(id)?;
        self.held.push(Token::new(id, text));
        if !self.detok.pending() {
            self.ready.extend(std::mem::take(&mut self.held));
        }
        if self.timing.generated >= self.opts.max_tokens {
            self.next = None;
            return self.finish(StopReason::MaxTokens);
        }
        Ok(())
    }

    /// The next token, an error, or `None` when generation has stopped.
    pub fn next_token(&mut self) -> Option<Result<Token>> {
        loop {
            if let Some(t) = self.ready.pop_front() {
                return Some(Ok(t));
            }
            if self.reason.is_some() || self.failed {
                return None;
            }
            if let Err(e) = self.advance() {
                self.failed = true;
                self.next = None;
                self.deferred = None;
                return Some(Err(e));
            }
        }
    }

    /// Why generation stopped, once every token has been taken.
    pub fn stop_reason(&self) -> Option<StopReason> {
        if self.ready.is_empty() && !self.failed {
            self.reason
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_chunk;

    #[test]
    fn prefill_chunks_follow_the_measured_speed_when_cancellable() {
        assert_eq!(next_chunk(2048, false, Some((10, 100.0))), 2048);
        assert_eq!(next_chunk(2048, true, None), 64);
        // 1000 tokens/s: a quarter of a second is 250 tokens, 240 in steps of 16
        assert_eq!(next_chunk(2048, true, Some((100, 0.1))), 240);
        // very slow: never below 16; very fast: never above the step
        assert_eq!(next_chunk(2048, true, Some((16, 30.0))), 16);
        assert_eq!(next_chunk(2048, true, Some((64, 0.0001))), 2048);
    }
}
