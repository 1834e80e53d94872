//! The generation loop: chunked prefill, then decoding with the next step's
//! graph built and started (async eval) before the current token is read.

use std::time::Instant;

use inference::{GenerateOptions, StopReason, Token};

use crate::llm::models::Architecture;
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
}

impl Stepper<'_> {
    fn forward(&mut self, input: &Array) -> Result<Array> {
        let n = input.dim(0)?;
        self.model
            .forward(&input.reshape(&[1, n])?, &mut self.caches)
    }

    fn remember(&mut self, input: &Array) -> Result<()> {
        if self.sampler.wants_history() {
            self.history = Some(match self.history.take() {
                Some(h) => Array::concatenate(&[&h, input], 0)?,
                None => input.clone(),
            });
        }
        Ok(())
    }

    fn step(&mut self, input: &Array) -> Result<Array> {
        let logits = self.forward(input)?;
        let l = logits.dim(1)?;
        let last = logits.slice_axis(1, l - 1, l)?.squeeze(&[1])?;
        self.remember(input)?;
        self.sampler.sample(last, self.history.as_ref())
    }
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
    next: Option<Array>,
    held: Vec<Token>,
    ready: std::collections::VecDeque<Token>,
    reason: Option<StopReason>,
    failed: bool,
    timing: Timing,
    started: Instant,
    first_token_at: Option<Instant>,
}

impl<'a> Generation<'a> {
    /// Prefills `prompt` and starts computing the first token.
    pub fn start(
        model: &'a dyn Architecture,
        tokenizer: &'a Tokenizer,
        prompt: &[u32],
        opts: &GenerateOptions,
        prefill_step: usize,
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
        };
        let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
        let mut done = 0usize;
        while ids.len() - done > 1 {
            let n = prefill_step.max(1).min(ids.len() - done - 1);
            let chunk = Array::from_vec(&ids[done..done + n])?;
            stepper.forward(&chunk)?;
            let state: Vec<&Array> = stepper.caches.iter().flat_map(|c| c.state()).collect();
            eval(&state)?;
            stepper.remember(&chunk)?;
            done += n;
            clear_cache()?;
        }
        let next = if opts.max_tokens > 0 {
            let y = stepper.step(&Array::from_vec(&ids[done..])?)?;
            async_eval(&[&y])?;
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
            held: Vec::new(),
            ready: Default::default(),
            reason: if opts.max_tokens == 0 {
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
        Ok(())
    }

    /// Stops generating (the stream reached a stop string).
    pub fn stop(&mut self) {
        self.next = None;
        self.held.clear();
        self.ready.clear();
        self.reason = Some(StopReason::Stop);
    }

    fn advance(&mut self) -> Result<()> {
        if self.opts.is_cancelled() {
            return self.finish(StopReason::Cancelled);
        }
        let Some(y) = self.next.take() else {
            return self.finish(StopReason::MaxTokens);
        };
        // Build and start the following step before reading this token.
        if self.timing.generated + 1 < self.opts.max_tokens {
            let following = self.stepper.step(&y.astype(Dtype::Int32)?)?;
            async_eval(&[&following])?;
            self.next = Some(following);
        }
        let id = y.item::<u32>()?;
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
