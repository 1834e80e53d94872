//! Many inputs at once: classification (the next-token distribution after
//! each prompt) and batch generation (a completion for each prompt, rows
//! stopping on their own).

use serde::{Deserialize, Serialize};

use crate::{Message, StopReason, Token};

/// One input: a raw prompt or a conversation (rendered with the model's
/// chat template).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Input {
    /// A raw prompt (special tokens added as the tokenizer says).
    Prompt(String),
    /// A conversation, ending where the model's reply begins.
    Chat(Vec<Message>),
}

impl From<&str> for Input {
    fn from(s: &str) -> Input {
        Input::Prompt(s.to_string())
    }
}

/// How inputs are cut into batches: sorted by length, then filled up to
/// `batch_size` rows and `max_batch_tokens` padded tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchOptions {
    /// Most rows in one forward pass.
    pub batch_size: usize,
    /// Most tokens (rows × longest prompt) in one forward pass.
    pub max_batch_tokens: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            batch_size: 32,
            max_batch_tokens: 16384,
        }
    }
}

impl BatchOptions {
    /// Set [`batch_size`](Self::batch_size).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Set [`max_batch_tokens`](Self::max_batch_tokens).
    pub fn max_batch_tokens(mut self, n: usize) -> Self {
        self.max_batch_tokens = n;
        self
    }

    /// Checks the values, naming the first one at fault.
    pub fn validate(&self) -> crate::Result<()> {
        if self.batch_size == 0 {
            return Err(crate::Error::InvalidArgument(
                "batch_size must be at least 1".into(),
            ));
        }
        if self.max_batch_tokens == 0 {
            return Err(crate::Error::InvalidArgument(
                "max_batch_tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Cuts `lengths` (prompt lengths, in input order) into batches of
    /// input indices: shortest first, so rows of a batch have similar
    /// lengths and padding stays small.
    ///
    /// ```
    /// use inference::BatchOptions;
    /// let plan = BatchOptions::default().batch_size(2).plan(&[5, 1, 9, 2]);
    /// assert_eq!(plan, vec![vec![1, 3], vec![0, 2]]);
    /// ```
    pub fn plan(&self, lengths: &[usize]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| (lengths[i], i));
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        for i in order {
            let longest = current
                .iter()
                .map(|&j| lengths[j])
                .max()
                .unwrap_or(0)
                .max(lengths[i]);
            let full = current.len() >= self.batch_size
                || (!current.is_empty() && longest * (current.len() + 1) > self.max_batch_tokens);
            if full {
                batches.push(std::mem::take(&mut current));
            }
            current.push(i);
        }
        if !current.is_empty() {
            batches.push(current);
        }
        batches
    }
}

/// Options of [`TextModel::classify`](crate::TextModel::classify).
///
/// ```
/// use inference::ClassifyOptions;
/// let opts = ClassifyOptions::default().labels(["positive", "negative"]).top_k(5);
/// assert_eq!(opts.labels.len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClassifyOptions {
    /// Also report the `top_k` most likely next tokens (0: only the top one).
    pub top_k: usize,
    /// Score these labels: each label's probability is that of the first
    /// token of its encoding (as written: include a leading space if the
    /// label follows one); the winner is the most probable.
    pub labels: Vec<String>,
    /// How inputs are batched.
    pub batch: BatchOptions,
}

impl ClassifyOptions {
    /// Set [`top_k`](Self::top_k).
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }

    /// Set [`labels`](Self::labels).
    pub fn labels<S: Into<String>>(mut self, labels: impl IntoIterator<Item = S>) -> Self {
        self.labels = labels.into_iter().map(Into::into).collect();
        self
    }

    /// Set [`batch`](Self::batch).
    pub fn batch(mut self, batch: BatchOptions) -> Self {
        self.batch = batch;
        self
    }
}

/// A token with its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenScore {
    /// Vocabulary id.
    pub id: u32,
    /// Its text.
    pub text: String,
    /// Natural-log probability.
    pub logprob: f64,
}

impl TokenScore {
    /// A scored token.
    pub fn new(id: u32, text: impl Into<String>, logprob: f64) -> TokenScore {
        TokenScore {
            id,
            text: text.into(),
            logprob,
        }
    }
}

/// The next-token distribution after one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Classification {
    /// The input's position.
    pub index: usize,
    /// The most likely next token.
    pub top: TokenScore,
    /// The `top_k` most likely, best first (empty unless asked for).
    pub top_k: Vec<TokenScore>,
    /// Each label's probability, in the order given.
    pub scores: Vec<(String, f64)>,
    /// The most probable label, when labels were given.
    pub label: Option<String>,
    /// Tokens in the input.
    pub prompt_tokens: usize,
}

impl Classification {
    /// A classification with its top token; the rest empty.
    pub fn new(index: usize, top: TokenScore, prompt_tokens: usize) -> Classification {
        Classification {
            index,
            top,
            top_k: Vec::new(),
            scores: Vec::new(),
            label: None,
            prompt_tokens,
        }
    }

    /// Records each label's probability from its log-probability (in the
    /// order of `labels`) and the most probable label as the winner.
    pub fn score_labels(&mut self, labels: &[String], logprobs: impl IntoIterator<Item = f64>) {
        self.scores = labels
            .iter()
            .cloned()
            .zip(logprobs.into_iter().map(f64::exp))
            .collect();
        self.label = self
            .scores
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(name, _)| name.clone());
    }
}

/// One row of a batch generation, once it has finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Completion {
    /// The input's position.
    pub index: usize,
    /// Generated ids (EOS excluded).
    pub ids: Vec<u32>,
    /// Their text, up to any stop string.
    pub text: String,
    /// Why the row stopped.
    pub reason: StopReason,
    /// Tokens in the input.
    pub prompt_tokens: usize,
}

impl Completion {
    /// A finished row.
    pub fn new(
        index: usize,
        ids: Vec<u32>,
        text: String,
        reason: StopReason,
        prompt_tokens: usize,
    ) -> Completion {
        Completion {
            index,
            ids,
            text,
            reason,
            prompt_tokens,
        }
    }
}

/// What a batch generation yields, as it happens.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BatchEvent {
    /// Row `index` produced a token.
    Token {
        /// The input's position.
        index: usize,
        /// The token.
        token: Token,
    },
    /// Row `index` finished.
    Done(Completion),
}

/// A stream of [`BatchEvent`]s: a plain iterator; an error ends it.
pub struct BatchStream<'a> {
    inner: Box<dyn Iterator<Item = crate::Result<BatchEvent>> + 'a>,
}

impl<'a> BatchStream<'a> {
    /// Wraps a backend's event iterator.
    pub fn new(inner: impl Iterator<Item = crate::Result<BatchEvent>> + 'a) -> Self {
        BatchStream {
            inner: Box::new(inner),
        }
    }

    /// A stream whose only item is `error`.
    pub fn failed(error: crate::Error) -> Self {
        BatchStream::new(std::iter::once(Err(error)))
    }

    /// Drains the stream; returns the completions in input order.
    pub fn collect_completions(self) -> crate::Result<Vec<Completion>> {
        let mut done = Vec::new();
        for event in self {
            if let BatchEvent::Done(c) = event? {
                done.push(c);
            }
        }
        done.sort_by_key(|c| c.index);
        Ok(done)
    }
}

impl Iterator for BatchStream<'_> {
    type Item = crate::Result<BatchEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_sort_by_length_and_respect_both_limits() {
        let lengths = [10, 3, 7, 3, 12, 1];
        let plan = BatchOptions::default().batch_size(2).plan(&lengths);
        assert_eq!(plan, vec![vec![5, 1], vec![3, 2], vec![0, 4]]);
        // Sorted lengths 1 3 3 | 7 10 | 12: four rows padded to 7 would be
        // 28 tokens, over the budget of 24; 7 and 10 make 20; 12 alone.
        let plan = BatchOptions::default()
            .batch_size(8)
            .max_batch_tokens(24)
            .plan(&lengths);
        assert_eq!(plan, vec![vec![5, 1, 3], vec![2, 0], vec![4]]);
        // A prompt longer than the budget still gets a batch of its own.
        let plan = BatchOptions::default().max_batch_tokens(4).plan(&[9, 2]);
        assert_eq!(plan, vec![vec![1], vec![0]]);
        assert!(BatchOptions::default().batch_size(0).validate().is_err());
    }

    #[test]
    fn inputs_read_as_prompts_or_conversations() {
        let p: Input = serde_json::from_str(r#""hello""#).unwrap();
        assert_eq!(p, Input::Prompt("hello".into()));
        let c: Input = serde_json::from_str(r#"[{"role":"user","content":"hi"}]"#).unwrap();
        assert_eq!(c, Input::Chat(vec![Message::user("hi")]));
    }
}
