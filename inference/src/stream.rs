//! Streamed tokens and why a stream stopped.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::StopStrings;

/// One generated token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Token {
    /// The vocabulary id.
    pub id: u32,
    /// The text this token adds to the output (may be empty while a
    /// multi-byte character is incomplete).
    pub text: String,
}

impl Token {
    /// A token with its id and the text it adds.
    pub fn new(id: u32, text: impl Into<String>) -> Token {
        Token {
            id,
            text: text.into(),
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
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

/// What a backend implements to produce a [`TokenStream`]: tokens with
/// their final text, in order. Stop strings are not the source's concern;
/// the stream applies them.
pub trait TokenSource {
    /// The next token, an error (after which the stream ends), or `None`
    /// when generation has stopped.
    fn next_token(&mut self) -> Option<crate::Result<Token>>;
    /// Why generation stopped, once it has.
    fn stop_reason(&self) -> Option<StopReason>;
    /// The stream reached a stop string: stop generating (no further
    /// `next_token` calls follow).
    fn stop(&mut self) {}
}

/// A stream of generated tokens: a plain iterator of `Result<Token>`.
///
/// Stop strings are applied here, once for every backend: text that might
/// begin a stop string is held back until the following text decides, and
/// the stream ends before the first stop string. After the last item,
/// [`stop_reason`](Self::stop_reason) says why it ended. An error ends the
/// stream.
pub struct TokenStream<'a> {
    source: Option<Box<dyn TokenSource + 'a>>,
    failed: Option<crate::Error>,
    stops: StopStrings,
    ready: VecDeque<Token>,
    stopped: bool,
    drained: bool,
}

impl<'a> TokenStream<'a> {
    /// Wraps a backend's token source.
    pub fn new(source: impl TokenSource + 'a) -> Self {
        TokenStream::with_stops(source, &[])
    }

    /// Wraps a backend's token source, ending before the first of `stops`.
    pub fn with_stops(source: impl TokenSource + 'a, stops: &[String]) -> Self {
        TokenStream {
            source: Some(Box::new(source)),
            failed: None,
            stops: StopStrings::new(stops),
            ready: VecDeque::new(),
            stopped: false,
            drained: false,
        }
    }

    /// A stream whose only item is `error`.
    pub fn failed(error: crate::Error) -> Self {
        TokenStream {
            source: None,
            failed: Some(error),
            stops: StopStrings::default(),
            ready: VecDeque::new(),
            stopped: false,
            drained: true,
        }
    }

    /// Why generation stopped; `None` while running or after an error.
    pub fn stop_reason(&self) -> Option<StopReason> {
        if !self.ready.is_empty() || !self.drained {
            return None;
        }
        if self.stopped {
            return self.source.as_ref().map(|_| StopReason::Stop);
        }
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
        loop {
            if let Some(t) = self.ready.pop_front() {
                return Some(Ok(t));
            }
            if self.drained {
                return None;
            }
            let source = self.source.as_mut()?;
            match source.next_token() {
                Some(Ok(token)) => {
                    let (out, hit) = self.stops.push(token);
                    self.ready.extend(out);
                    if hit {
                        source.stop();
                        self.stopped = true;
                        self.drained = true;
                    }
                }
                Some(Err(e)) => {
                    self.source = None;
                    self.drained = true;
                    self.ready.clear();
                    return Some(Err(e));
                }
                None => {
                    self.ready.extend(self.stops.finish());
                    self.drained = true;
                }
            }
        }
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

    /// Emits the given texts, then stops with `MaxTokens`; records a stop.
    struct Texts {
        texts: Vec<&'static str>,
        at: usize,
        stopped: bool,
    }

    impl TokenSource for Texts {
        fn next_token(&mut self) -> Option<crate::Result<Token>> {
            assert!(!self.stopped, "no token is asked for after a stop");
            let text = self.texts.get(self.at)?;
            self.at += 1;
            Some(Ok(Token {
                id: self.at as u32,
                text: text.to_string(),
            }))
        }
        fn stop_reason(&self) -> Option<StopReason> {
            (self.at == self.texts.len()).then_some(StopReason::MaxTokens)
        }
        fn stop(&mut self) {
            self.stopped = true;
        }
    }

    #[test]
    fn stop_strings_end_the_stream_for_any_source() {
        let source = Texts {
            texts: vec!["Hello", " wor", "ld. EN", "D here", " more"],
            at: 0,
            stopped: false,
        };
        let mut s = TokenStream::with_stops(source, &["END".to_string()]);
        let text: String = s.by_ref().map(|t| t.unwrap().text).collect();
        assert_eq!(text, "Hello world. ");
        assert_eq!(s.stop_reason(), Some(StopReason::Stop));

        // Held text is released when the source ends without a stop.
        let source = Texts {
            texts: vec!["a", "E", "N"],
            at: 0,
            stopped: false,
        };
        let mut s = TokenStream::with_stops(source, &["END".to_string()]);
        let text: String = s.by_ref().map(|t| t.unwrap().text).collect();
        assert_eq!(text, "aEN");
        assert_eq!(s.stop_reason(), Some(StopReason::MaxTokens));
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
