//! Streamed tokens and why a stream stopped.

use serde::{Deserialize, Serialize};

/// One generated token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The vocabulary id.
    pub id: u32,
    /// The text this token adds to the output (may be empty while a
    /// multi-byte character is incomplete).
    pub text: String,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_tokens` were generated.
    MaxTokens,
    /// A stop string appeared in the output.
    Stop,
    /// The cancellation token fired.
    Cancelled,
}

impl StopReason {
    /// The wire name: `eos`, `max_tokens`, `stop` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Stop => "stop",
            StopReason::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eos" => StopReason::Eos,
            "max_tokens" | "length" => StopReason::MaxTokens,
            "stop" => StopReason::Stop,
            "cancelled" => StopReason::Cancelled,
            _ => return None,
        })
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backend implements to produce a [`TokenStream`].
pub trait TokenSource {
    /// The next token, an error (after which the stream ends), or `None`
    /// when generation has stopped.
    fn next_token(&mut self) -> Option<crate::Result<Token>>;
    /// Why generation stopped, once it has.
    fn stop_reason(&self) -> Option<StopReason>;
}

/// A stream of generated tokens: a plain iterator of `Result<Token>`.
///
/// After the last item, [`stop_reason`](Self::stop_reason) says why it
/// ended. An error ends the stream.
pub struct TokenStream<'a> {
    source: Option<Box<dyn TokenSource + 'a>>,
    failed: Option<crate::Error>,
}

impl<'a> TokenStream<'a> {
    /// Wraps a backend's token source.
    pub fn new(source: impl TokenSource + 'a) -> Self {
        TokenStream {
            source: Some(Box::new(source)),
            failed: None,
        }
    }

    /// A stream whose only item is `error`.
    pub fn failed(error: crate::Error) -> Self {
        TokenStream {
            source: None,
            failed: Some(error),
        }
    }

    /// Why generation stopped; `None` while running or after an error.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.source.as_ref().and_then(|s| s.stop_reason())
    }

    /// Drains the stream and returns the concatenated text.
    pub fn collect_text(self) -> crate::Result<String> {
        let mut text = String::new();
        for token in self {
            text.push_str(&token?.text);
        }
        Ok(text)
    }
}

impl Iterator for TokenStream<'_> {
    type Item = crate::Result<Token>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let item = self.source.as_mut()?.next_token();
        if let Some(Err(_)) = &item {
            self.source = None;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        left: u32,
        fail_at: Option<u32>,
    }

    impl TokenSource for Counter {
        fn next_token(&mut self) -> Option<crate::Result<Token>> {
            if self.left == 0 {
                return None;
            }
            self.left -= 1;
            if Some(self.left) == self.fail_at {
                return Some(Err(crate::Error::backend("test", "boom")));
            }
            Some(Ok(Token {
                id: self.left,
                text: format!("{}", self.left),
            }))
        }
        fn stop_reason(&self) -> Option<StopReason> {
            (self.left == 0).then_some(StopReason::MaxTokens)
        }
    }

    #[test]
    fn collects_text_and_reports_reason() {
        let mut s = TokenStream::new(Counter {
            left: 3,
            fail_at: None,
        });
        assert_eq!(s.stop_reason(), None);
        let ids: Vec<u32> = s.by_ref().map(|t| t.unwrap().id).collect();
        assert_eq!(ids, vec![2, 1, 0]);
        assert_eq!(s.stop_reason(), Some(StopReason::MaxTokens));
    }

    #[test]
    fn an_error_ends_the_stream() {
        let s = TokenStream::new(Counter {
            left: 5,
            fail_at: Some(3),
        });
        let items: Vec<_> = s.collect();
        assert_eq!(items.len(), 2);
        assert!(items[1].is_err());
    }

    #[test]
    fn failed_stream_yields_its_error_once() {
        let mut s = TokenStream::failed(crate::Error::Unsupported("x".into()));
        assert!(matches!(s.next(), Some(Err(crate::Error::Unsupported(_)))));
        assert!(s.next().is_none());
    }

    #[test]
    fn stop_reason_names_round_trip() {
        for r in [
            StopReason::Eos,
            StopReason::MaxTokens,
            StopReason::Stop,
            StopReason::Cancelled,
        ] {
            assert_eq!(StopReason::parse(r.as_str()), Some(r));
        }
    }
}
