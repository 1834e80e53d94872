//! Training data in mlx_lm's formats: a folder with `train.jsonl` (and
//! optionally `valid.jsonl`, `test.jsonl`), one JSON object a line, all
//! lines of a file in one of three shapes (the first line decides):
//!
//! - `{"text": ...}`: the text, tokenised with special tokens and ended
//!   with the EOS token;
//! - `{"prompt": ..., "completion": ...}`: a user / assistant exchange
//!   through the model's chat template;
//! - `{"messages": [{"role": ..., "content": ...}, ...]}`: a conversation
//!   through the chat template.
//!
//! With `mask_prompt`, only the completion (the last message) counts in
//! the loss. Batches are built as mlx_lm's `iterate_batches`: examples
//! sorted by length, grouped, padded with 0 to one more than a multiple
//! of 32 (at most `max_seq_length`), longer rows truncated.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

use crate::llm::chat_template::{ChatTemplate, TemplateMessage};
use crate::llm::tokenizer::Tokenizer;
use crate::{Array, Error, Result};

/// One tokenised example: its ids and the first position that counts in
/// the loss (0 unless the prompt is masked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Number of leading prompt tokens left out of the loss.
    pub offset: usize,
}

/// The shape of a dataset's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"text"}`.
    Text,
    /// `{"prompt", "completion"}`.
    Completions,
    /// `{"messages"}`.
    Chat,
}

/// A tokenised dataset file.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The file it came from.
    pub path: PathBuf,
    /// The format of its lines.
    pub format: Format,
    /// The examples, in file order.
    pub examples: Vec<Example>,
}

/// The splits of a data folder.
#[derive(Debug, Clone)]
pub struct Splits {
    /// `train.jsonl` (required).
    pub train: Dataset,
    /// `valid.jsonl`, if present.
    pub valid: Option<Dataset>,
    /// `test.jsonl`, if present.
    pub test: Option<Dataset>,
}

/// What tokenising needs: the tokenizer, the chat template (for prompt /
/// completion and chat data) and whether prompts are masked.
#[derive(Clone, Copy)]
pub struct Encoder<'a> {
    /// The model's tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The model's chat template, if it has one.
    pub template: Option<&'a ChatTemplate>,
    /// Leave prompts out of the loss.
    pub mask_prompt: bool,
}

fn bad(path: &Path, line: Option<usize>, message: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

impl Encoder<'_> {
    fn template(&self, path: &Path, line: usize) -> Result<&ChatTemplate> {
        self.template.ok_or_else(|| {
            bad(
                path,
                Some(line),
                "prompt/completion and chat data need a chat template, and this model has none",
            )
        })
    }

    fn render(
        &self,
        template: &ChatTemplate,
        messages: &[TemplateMessage<'_>],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = template.render_with(
            messages,
            add_generation_prompt,
            self.tokenizer.bos_token(),
            self.tokenizer.eos_token(),
        )?;
        self.tokenizer.encode(&text, false)
    }

    /// Tokenises one line's object in `format`.
    fn encode(&self, format: Format, v: &Value, path: &Path, line: usize) -> Result<Example> {
        let field = |key: &str| -> Result<&str> {
            v.get(key).and_then(Value::as_str).ok_or_else(|| {
                bad(
                    path,
                    Some(line),
                    format!("expected a string `{key}` (as on line 1)"),
                )
            })
        };
        let ctx = |e: Error| match e {
            Error::Dataset { .. } => e,
            other => bad(path, Some(line), other.to_string()),
        };
        match format {
            Format::Text => {
                let mut tokens = self.tokenizer.encode(field("text")?, true).map_err(ctx)?;
                if let Some(eos) = self.tokenizer.eos_token_id() {
                    if tokens.last() != Some(&eos) {
                        tokens.push(eos);
                    }
                }
                Ok(Example { tokens, offset: 0 })
            }
            Format::Completions => {
                let template = self.template(path, line)?;
                let messages = [
                    TemplateMessage {
                        role: "user",
                        content: field("prompt")?,
                    },
                    TemplateMessage {
                        role: "assistant",
                        content: field("completion")?,
                    },
                ];
                let tokens = self.render(template, &messages, false).map_err(ctx)?;
                let offset = if self.mask_prompt {
                    self.render(template, &messages[..1], true)
                        .map_err(ctx)?
                        .len()
                } else {
                    0
                };
                Ok(Example { tokens, offset })
            }
            Format::Chat => {
                let template = self.template(path, line)?;
                let list = v.get("messages").and_then(Value::as_array).ok_or_else(|| {
                    bad(
                        path,
                        Some(line),
                        "expected a `messages` array (as on line 1)",
                    )
                })?;
                let mut messages = Vec::with_capacity(list.len());
                for (i, m) in list.iter().enumerate() {
                    let get = |k: &str| {
                        m.get(k).and_then(Value::as_str).ok_or_else(|| {
                            bad(
                                path,
                                Some(line),
                                format!("message {} has no string `{k}`", i + 1),
                            )
                        })
                    };
                    messages.push(TemplateMessage {
                        role: get("role")?,
                        content: get("content")?,
                    });
                }
                if messages.is_empty() {
                    return Err(bad(path, Some(line), "`messages` is empty"));
                }
                let tokens = self.render(template, &messages, false).map_err(ctx)?;
                let offset = if self.mask_prompt {
                    let last_is_assistant = messages.last().is_some_and(|m| m.role == "assistant");
                    self.render(template, &messages[..messages.len() - 1], last_is_assistant)
                        .map_err(ctx)?
                        .len()
                } else {
                    0
                };
                Ok(Example { tokens, offset })
            }
        }
    }

    /// Reads and tokenises one `.jsonl` file. Blank lines are skipped;
    /// every other line must be a JSON object of the first line's format.
    pub fn load_file(&self, path: &Path) -> Result<Dataset> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(path, None, format!("cannot read: {e}")))?;
        let mut format = None;
        let mut examples = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(raw)
                .map_err(|e| bad(path, Some(line), format!("invalid JSON: {e}")))?;
            if !v.is_object() {
                return Err(bad(path, Some(line), "expected a JSON object"));
            }
            let f = match format {
                Some(f) => f,
                None => {
                    let f = detect(&v).ok_or_else(|| {
                        bad(
                            path,
                            Some(line),
                            "unsupported format: expected `text`, `prompt` and `completion`, or `messages`",
                        )
                    })?;
                    if f == Format::Text && self.mask_prompt {
                        return Err(bad(
                            path,
                            Some(line),
                            "prompt masking needs prompt/completion or chat data, not text",
                        ));
                    }
                    format = Some(f);
                    f
                }
            };
            examples.push(self.encode(f, &v, path, line)?);
        }
        let format = format.ok_or_else(|| bad(path, None, "no examples (the file is empty)"))?;
        Ok(Dataset {
            path: path.to_path_buf(),
            format,
            examples,
        })
    }

    /// Loads a data folder: `train.jsonl` must exist and hold examples;
    /// `valid.jsonl` and `test.jsonl` are read when present.
    pub fn load_dir(&self, dir: &Path) -> Result<Splits> {
        if !dir.is_dir() {
            return Err(bad(dir, None, "data folder does not exist"));
        }
        let train = dir.join("train.jsonl");
        if !train.is_file() {
            return Err(bad(
                &train,
                None,
                "missing: the data folder needs train.jsonl (and usually valid.jsonl)",
            ));
        }
        let optional = |name: &str| -> Result<Option<Dataset>> {
            let p = dir.join(name);
            p.is_file().then(|| self.load_file(&p)).transpose()
        };
        Ok(Splits {
            train: self.load_file(&train)?,
            valid: optional("valid.jsonl")?,
            test: optional("test.jsonl")?,
        })
    }
}

/// The format of a line, by its keys (mlx_lm's order of checks).
pub fn detect(v: &Value) -> Option<Format> {
    if v.get("prompt").is_some() && v.get("completion").is_some() {
        Some(Format::Completions)
    } else if v.get("messages").is_some() {
        Some(Format::Chat)
    } else if v.get("text").is_some() {
        Some(Format::Text)
    } else {
        None
    }
}

/// A padded batch: ids `[B, L]` (int32, 0-padded) and `(offset, length)`
/// per row `[B, 2]` (int32), as mlx_lm's loss reads them.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids.
    pub tokens: Array,
    /// First counted position and length of each row.
    pub lengths: Array,
    /// The longest row before truncation, when some row was longer than
    /// `max_seq_length`.
    pub truncated_from: Option<usize>,
}

/// mlx_lm's batch groups: example indices sorted by length (stable),
/// cut into groups of `batch_size` (a remainder is dropped).
pub fn batch_groups(ds: &Dataset, batch_size: usize) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(Error::InvalidArgument(
            "batch size must be at least 1".into(),
        ));
    }
    if ds.examples.len() < batch_size {
        return Err(bad(
            &ds.path,
            None,
            format!(
                "has {} examples, fewer than the batch size {batch_size}",
                ds.examples.len()
            ),
        ));
    }
    let mut idx: Vec<usize> = (0..ds.examples.len()).collect();
    idx.sort_by_key(|&i| ds.examples[i].tokens.len());
    Ok(idx
        .chunks_exact(batch_size)
        .map(<[usize]>::to_vec)
        .collect())
}

/// Pads the examples `group` names into a [`Batch`] (mlx_lm's padding:
/// `1 + 32 * ceil(longest / 32)`, capped at `max_seq_length`).
pub fn make_batch(ds: &Dataset, group: &[usize], max_seq_length: usize) -> Result<Batch> {
    let rows: Vec<&Example> = group.iter().map(|&i| &ds.examples[i]).collect();
    let longest = rows.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
    let width = (1 + 32 * longest.div_ceil(32)).min(max_seq_length).max(2);
    let mut ids = vec![0i32; rows.len() * width];
    let mut lengths = Vec::with_capacity(rows.len() * 2);
    for (r, e) in rows.iter().enumerate() {
        let n = e.tokens.len().min(max_seq_length);
        for (j, &t) in e.tokens[..n].iter().enumerate() {
            ids[r * width + j] = t as i32;
        }
        lengths.push(e.offset as i32);
        lengths.push(n as i32);
    }
    Ok(Batch {
        tokens: Array::from_slice(&ids, &[rows.len() as i32, width as i32])?,
        lengths: Array::from_slice(&lengths, &[rows.len() as i32, 2])?,
        truncated_from: (longest > max_seq_length).then_some(longest),
    })
}

/// Batches of a dataset in a random order of the length-sorted groups,
/// reshuffled each pass; endless when `repeat`.
pub struct Batches<'a> {
    ds: &'a Dataset,
    groups: Vec<Vec<usize>>,
    order: Vec<usize>,
    next: usize,
    max_seq_length: usize,
    repeat: bool,
    rng: StdRng,
}

impl<'a> Batches<'a> {
    /// Batches of `batch_size` rows of `ds`, shuffled with `seed`.
    pub fn new(
        ds: &'a Dataset,
        batch_size: usize,
        max_seq_length: usize,
        repeat: bool,
        seed: u64,
    ) -> Result<Batches<'a>> {
        if max_seq_length < 2 {
            return Err(Error::InvalidArgument(
                "max_seq_length must be at least 2".into(),
            ));
        }
        let groups = batch_groups(ds, batch_size)?;
        let mut b = Batches {
            ds,
            order: Vec::new(),
            groups,
            next: 0,
            max_seq_length,
            repeat,
            rng: StdRng::seed_from_u64(seed),
        };
        b.shuffle();
        Ok(b)
    }

    fn shuffle(&mut self) {
        self.order = (0..self.groups.len()).collect();
        self.order.shuffle(&mut self.rng);
        self.next = 0;
    }

    /// Number of batches in one pass.
    pub fn per_pass(&self) -> usize {
        self.groups.len()
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next == self.order.len() {
            if !self.repeat {
                return None;
            }
            self.shuffle();
        }
        let g = self.order[self.next];
        self.next += 1;
        Some(make_batch(self.ds, &self.groups[g], self.max_seq_length))
    }
}
