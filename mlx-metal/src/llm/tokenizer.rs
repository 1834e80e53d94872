//! The tokenizer (`tokenizer.json` through the `tokenizers` crate), the
//! special tokens a model declares, and streaming detokenisation.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::llm::config::{ids, Config};
use crate::{Error, Result};

/// A model's tokenizer with its BOS/EOS tokens and chat template source.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
    chat_template: Option<(String, PathBuf)>,
    path: PathBuf,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::File {
                path: path.to_path_buf(),
                message: format!("invalid JSON: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// A special token as tokenizer_config.json writes it: a string or an
/// `{"content": ...}` object.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` and the special tokens from
    /// tokenizer_config.json, config.json and generation_config.json.
    pub fn load(dir: &Path, config: &Config) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::File {
                path,
                message: "missing (the native backend needs tokenizer.json)".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::File {
            path: path.clone(),
            message: format!("cannot load the tokenizer: {e}"),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let tok_cfg = read_json(&cfg_path)?.unwrap_or(Value::Null);
        let gen_cfg = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let jinja = dir.join("chat_template.jinja");
        let template = match jinja.is_file() {
            true => Some((
                std::fs::read_to_string(&jinja).map_err(|e| Error::File {
                    path: jinja.clone(),
                    message: e.to_string(),
                })?,
                jinja,
            )),
            false => None,
        };
        let mut eos = ids(gen_cfg.get("eos_token_id"));
        eos.extend(config.eos_ids());
        Ok(Tokenizer::with_config(
            inner, path, &tok_cfg, &cfg_path, eos, template,
        ))
    }

    /// A tokenizer from the JSON of `tokenizer.json` and
    /// `tokenizer_config.json` (as built from a GGUF file); `source` names
    /// where they came from in errors.
    pub fn from_json(
        tokenizer_json: &Value,
        tokenizer_config: &Value,
        config: &Config,
        source: &Path,
    ) -> Result<Tokenizer> {
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(tokenizer_json.clone()).map_err(|e| Error::File {
                path: source.to_path_buf(),
                message: format!("cannot build the tokenizer: {e}"),
            })?;
        Ok(Tokenizer::with_config(
            inner,
            source.to_path_buf(),
            tokenizer_config,
            source,
            config.eos_ids(),
            None,
        ))
    }

    /// Completes a tokenizer with the special tokens and chat template of
    /// `tok_cfg` (a `tokenizer_config.json`, read from `cfg_path`);
    /// `jinja` (a `chat_template.jinja`) is used when that has no template.
    fn with_config(
        inner: tokenizers::Tokenizer,
        path: PathBuf,
        tok_cfg: &Value,
        cfg_path: &Path,
        extra_eos: Vec<u32>,
        jinja: Option<(String, PathBuf)>,
    ) -> Tokenizer {
        let bos_token = token_text(tok_cfg.get("bos_token"));
        let eos_token = token_text(tok_cfg.get("eos_token"));
        let mut eos: BTreeSet<u32> = extra_eos.into_iter().collect();
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos.insert(id);
        }
        let chat_template = match tok_cfg.get("chat_template") {
            Some(Value::String(s)) => Some((s.clone(), cfg_path.to_path_buf())),
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| named.first())
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(|s| (s.to_string(), cfg_path.to_path_buf())),
            _ => None,
        };
        Tokenizer {
            inner,
            bos_token,
            eos_token,
            eos_ids: eos.into_iter().collect(),
            chat_template: chat_template.or(jinja),
            path,
        }
    }

    /// Token ids of `text`; `add_special` applies the post-processor (BOS...).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::File {
                path: self.path.clone(),
                message: format!("cannot encode: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// A raw prompt as mlx_lm encodes it: special tokens added unless the
    /// prompt already starts with the BOS token.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode(prompt, self.adds_special(prompt))
    }

    /// Whether [`encode_prompt`](Self::encode_prompt) adds special tokens
    /// to `prompt`: unless it already starts with the BOS token.
    pub fn adds_special(&self, prompt: &str) -> bool {
        match &self.bos_token {
            Some(bos) => !prompt.starts_with(bos.as_str()),
            None => true,
        }
    }

    /// [`encode`](Self::encode) of each `(text, add_special)`, spread over
    /// the machine's cores; ids in the order of `texts`, or the error of
    /// the first text that fails.
    pub fn encode_all<S: AsRef<str> + Sync>(&self, texts: &[(S, bool)]) -> Result<Vec<Vec<u32>>> {
        use rayon::prelude::*;
        let encoded: Vec<Result<Vec<u32>>> = texts
            .par_iter()
            .map(|(text, add)| self.encode(text.as_ref(), *add))
            .collect();
        encoded.into_iter().collect()
    }

    /// Text of `ids`, special tokens included (as Hugging Face's `decode`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::File {
            path: self.path.clone(),
            message: format!("cannot decode: {e}"),
        })
    }

    /// The end-of-sequence ids (config.json, generation_config.json and
    /// tokenizer_config.json together).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The id of the EOS token text (what Hugging Face's `eos_token_id`
    /// gives), if the vocabulary has it.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
    }

    /// The BOS token text.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS token text.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The chat template source and the file it came from.
    pub fn chat_template(&self) -> Option<(&str, &Path)> {
        self.chat_template
            .as_ref()
            .map(|(t, p)| (t.as_str(), p.as_path()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One past the largest id the tokenizer can produce (added tokens
    /// included): the embedding must have at least this many rows.
    pub fn id_bound(&self) -> usize {
        self.inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// A fresh streaming detokenizer.
    pub fn detokenizer(&self) -> Detokenizer<'_> {
        Detokenizer {
            tokenizer: self,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            emitted: 0,
        }
    }
}

/// Turns a stream of ids into text pieces that never split a UTF-8
/// character and that add up to `decode(all ids)`.
///
/// Each step decodes a short window (from a few tokens back, so decoders
/// that strip a leading space see the same context as a full decode) and
/// emits what the newest tokens added, once it no longer ends in an
/// incomplete character. A token that adds no text (one the tokenizer
/// skips when decoding) is final at once, so it holds nothing back.
pub struct Detokenizer<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    emitted: usize,
}

impl Detokenizer<'_> {
    /// Adds a token; returns the text that became final (maybe empty).
    pub fn add(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if !text.starts_with(&prefix) || text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        if text.len() == prefix.len() {
            // A token that decodes to nothing (an id the tokenizer skips)
            // is final as it is; the window keeps its start, so the next
            // token is decoded with the same context.
            self.read_offset = self.ids.len();
            return Ok(String::new());
        }
        let new = text[prefix.len()..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.emitted += new.len();
        Ok(new)
    }

    /// Whether some added tokens have not yet produced their text.
    pub fn pending(&self) -> bool {
        self.read_offset < self.ids.len()
    }

    /// The rest of the text once the stream has ended (an incomplete
    /// character at the very end decodes to U+FFFD, as a full decode does).
    pub fn finish(&mut self) -> Result<String> {
        let full = self.tokenizer.decode(&self.ids)?;
        let rest = full.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = full.len();
        self.read_offset = self.ids.len();
        self.prefix_offset = self.ids.len();
        Ok(rest)
    }
}
