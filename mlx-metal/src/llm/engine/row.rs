//! One request in the engine: waiting (perhaps part-prefilled) or decoding
//! in a row of the batch, with its own sampler, stop state and logprobs.

use std::collections::VecDeque;

use inference::{EngineRequest, RequestId, TokenLogprobs, TokenScore};

use crate::llm::batch::{Batch, Row};
use crate::llm::generate::sampler_settings;
use crate::llm::sampler::Sampler;
use crate::llm::tokenizer::Tokenizer;
use crate::{Array, Dtype, Result};

/// A submitted request not yet decoding.
pub(crate) struct Waiting<'m> {
    /// The caller's id.
    pub id: RequestId,
    /// The prompt's ids.
    pub prompt: Vec<u32>,
    /// The request.
    pub request: EngineRequest,
    /// The adapter's index among the engine's adapters.
    pub adapter: Option<usize>,
    /// The prefill under way: its one-row batch, prompt tokens read and
    /// how many of them came from the prefix cache.
    pub prefill: Option<Prefill<'m>>,
}

/// A prompt being read, over one or more steps.
pub(crate) struct Prefill<'m> {
    /// The row's own batch.
    pub batch: Batch<'m>,
    /// Prompt tokens read so far.
    pub done: usize,
    /// Of those, the ones the prefix cache supplied.
    pub cached: usize,
}

/// A request decoding in a row of the batch.
pub(crate) struct Running<'t> {
    /// The caller's id.
    pub id: RequestId,
    /// Ids, text and stop state.
    pub row: Row<'t>,
    sampler: Sampler,
    /// Greedy without a repetition penalty: sampled with the whole batch.
    pub greedy: bool,
    repetition_context: usize,
    /// The prompt and every token read since (EOS included): what the
    /// row's cache has read, and the repetition penalty's history.
    pub history: Vec<u32>,
    /// The request's token budget.
    pub max_tokens: usize,
    /// Alternatives asked for per token.
    pub logprobs: Option<usize>,
    /// Logprobs of generated tokens not yet released (in order).
    pub pending_logprobs: VecDeque<TokenLogprobs>,
    /// Prompt tokens from the prefix cache.
    pub cached: usize,
    /// The adapter's index.
    pub adapter: Option<usize>,
    /// Tokens reported so far.
    pub emitted: usize,
    /// Set by [`Engine::cancel`](inference::Engine::cancel).
    pub cancelled: bool,
    /// Reported as failed; leaves without a Done event.
    pub failed: bool,
}

impl<'t> Running<'t> {
    /// The row for a request whose prompt was read.
    pub fn new(tokenizer: &'t Tokenizer, w: Waiting<'_>, cached: usize) -> Result<Running<'t>> {
        let opts = &w.request.options;
        Ok(Running {
            id: w.id,
            row: Row::new(tokenizer, w.prompt.len(), &opts.stop),
            sampler: Sampler::new(&sampler_settings(opts))?,
            greedy: opts.temperature <= 0.0 && opts.repetition_penalty.is_none(),
            repetition_context: opts.repetition_context_size,
            history: w.prompt,
            max_tokens: opts.max_tokens,
            logprobs: w.request.logprobs,
            pending_logprobs: VecDeque::new(),
            cached,
            adapter: w.adapter,
            emitted: 0,
            cancelled: false,
            failed: false,
        })
    }

    /// Samples this row's next token (`[1]`) from its logits (`[1, vocab]`
    /// float32) with its own sampler, key and history; `input` (`[1]`
    /// int32), when given, is the token the logits were computed from, not
    /// yet read into the history.
    pub fn sample(&mut self, logits: &Array, input: Option<&Array>) -> Result<Array> {
        let history = if self.sampler.wants_history() {
            let context = self.repetition_context;
            let from_host = match input {
                Some(_) => context.saturating_sub(1),
                None => context,
            };
            let from = self.history.len().saturating_sub(from_host);
            let recent: Vec<i32> = self.history[from..].iter().map(|&t| t as i32).collect();
            let recent = Array::from_vec(&recent)?;
            Some(match input {
                Some(last) if context > 0 => {
                    Array::concatenate(&[&recent, &last.astype(Dtype::Int32)?], 0)?
                }
                _ => recent,
            })
        } else {
            None
        };
        self.sampler.sample(logits.clone(), history.as_ref())
    }

    /// When the request asked for logprobs: the chosen `token`'s (`[1,
    /// 1]`), and the top ids and their logprobs (`[1, k]`), from the row's
    /// raw logits (`[1, vocab]` float32).
    pub fn logprobs(&self, logits: &Array, token: &Array) -> Result<Option<LogprobArrays>> {
        let Some(k) = self.logprobs else {
            return Ok(None);
        };
        let lp = logits.subtract(&logits.logsumexp(&[-1], true)?)?;
        let chosen = lp.take_along_axis(&token.reshape(&[1, 1])?.astype(Dtype::Int32)?, -1)?;
        let k = (k as i32).min(lp.dim(-1)?);
        let top = if k == 0 {
            Array::zeros(&[1, 0], Dtype::Int32)?
        } else {
            lp.negative()?
                .argpartition(k - 1, -1)?
                .slice_axis(-1, 0, k)?
        };
        let top_lp = lp.take_along_axis(&top, -1)?;
        Ok(Some((chosen, top, top_lp)))
    }
}

/// The lazy logprobs of one token: the chosen one's, the top ids and
/// their logprobs.
pub(crate) type LogprobArrays = (Array, Array, Array);

/// The logprobs of a read step, the alternatives most likely first.
pub(crate) fn read_logprobs(
    tokenizer: &Tokenizer,
    (chosen, top, top_lp): &LogprobArrays,
) -> Result<TokenLogprobs> {
    let logprob = chosen.to_vec::<f32>()?.first().copied().unwrap_or(f32::NAN) as f64;
    let ids = top.to_vec::<u32>()?;
    let lps = top_lp.to_vec::<f32>()?;
    let mut scored: Vec<(u32, f32)> = ids.into_iter().zip(lps).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let top = scored
        .into_iter()
        .map(|(id, lp)| Ok(TokenScore::new(id, tokenizer.decode(&[id])?, lp as f64)))
        .collect::<Result<_>>()?;
    Ok(TokenLogprobs::new(logprob, top))
}
