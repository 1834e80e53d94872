//! Checks a model's `config.json` before anything is allocated (the rules
//! live in [`inference::check_config`], shared with every backend) and,
//! once the tokenizer is loaded, that the vocabulary covers its ids.

use crate::llm::config::Config;
use crate::{Error, Result};

/// Checks `config` with [`inference::check_config`]; errors name its file
/// and the key.
pub fn check(config: &Config) -> Result<()> {
    inference::check_config(&config.raw, &config.path).map_err(|e| match e {
        inference::Error::InvalidModel { path, message } => Error::File { path, message },
        other => Error::InvalidArgument(other.to_string()),
    })
}

/// Checks that the model's vocabulary (`vocab_size` rows of the embedding)
/// covers every id the tokenizer can produce.
pub fn check_vocab_covers(config: &Config, tokenizer_ids: usize) -> Result<()> {
    if let Some(vocab) = config.vocab_size {
        if (vocab as i64) < tokenizer_ids as i64 {
            return Err(Error::File {
                path: config.path.clone(),
                message: format!(
                    "key `vocab_size`: {vocab} does not cover the tokenizer's {tokenizer_ids} ids"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;

    #[test]
    fn a_bad_config_names_its_file_and_key() {
        let e = Config::from_value(
            json!({"model_type": "llama", "num_hidden_layers": 0}),
            Path::new("/m/config.json"),
        )
        .unwrap_err();
        assert!(matches!(&e, Error::File { path, .. } if path == Path::new("/m/config.json")));
        assert!(e.to_string().contains("num_hidden_layers"), "{e}");
    }

    #[test]
    fn vocabulary_must_cover_the_tokenizer() {
        let c = Config::from_value(
            json!({"model_type": "llama", "vocab_size": 100}),
            Path::new("/m/config.json"),
        )
        .unwrap();
        assert!(check_vocab_covers(&c, 100).is_ok());
        let m = check_vocab_covers(&c, 101).unwrap_err().to_string();
        assert!(m.contains("vocab_size") && m.contains("101"), "{m}");
    }
}
