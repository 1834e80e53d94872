//! Stop strings over a token stream.

use crate::Token;

/// Applies stop strings to a stream of tokens without ever emitting text
/// that turns out to belong to a stop string.
///
/// A token whose text might be the start of a stop string is held back until
/// the following text decides: released as is, or cut where the stop string
/// begins. The concatenated text of the tokens released equals the stream's
/// text up to (not including) the first stop string.
///
/// ```
/// use inference::{StopStrings, Token};
///
/// let mut stops = StopStrings::new(&["\n\n".to_string()]);
/// let t = |id, s: &str| Token::new(id, s);
/// assert_eq!(stops.push(t(1, "Hi")).0.len(), 1);
/// assert!(stops.push(t(2, "!\n")).0.is_empty(), "might start \\n\\n: held");
/// let (out, stopped) = stops.push(t(3, "\nBye"));
/// assert!(stopped);
/// assert_eq!(out, vec![t(2, "!")]);
/// ```
#[derive(Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: Vec<Token>,
}

impl StopStrings {
    /// Watches for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        StopStrings {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: Vec::new(),
        }
    }

    /// Adds a token; returns the tokens that can be released now and whether
    /// a stop string was reached (in which case nothing more should be pushed).
    pub fn push(&mut self, token: Token) -> (Vec<Token>, bool) {
        if self.stops.is_empty() {
            return (vec![token], false);
        }
        self.held.push(token);
        let text: String = self.held.iter().map(|t| t.text.as_str()).collect();
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min();
        if let Some(cut) = first_stop {
            return (self.release_before(cut, true), true);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| longest_prefix_suffix(&text, s))
            .max()
            .unwrap_or(0);
        (self.release_before(text.len() - keep, false), false)
    }

    /// Releases everything still held (the stream ended without a stop).
    pub fn finish(&mut self) -> Vec<Token> {
        std::mem::take(&mut self.held)
    }

    /// Releases held tokens whose text ends at or before byte `limit` of the
    /// held text. With `cut`, the token straddling `limit` is released with
    /// its text truncated and the rest are dropped.
    fn release_before(&mut self, limit: usize, cut: bool) -> Vec<Token> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut consumed = 0;
        for token in &self.held {
            let end = start + token.text.len();
            if end <= limit {
                out.push(token.clone());
                consumed += 1;
            } else {
                if cut && start < limit {
                    out.push(Token {
                        id: token.id,
                        text: token.text[..limit - start].to_string(),
                    });
                }
                break;
            }
            start = end;
        }
        if cut {
            self.held.clear();
        } else {
            self.held.drain(..consumed);
        }
        out
    }
}

/// Length of the longest proper prefix of `stop` that `text` ends with.
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    stop.char_indices()
        .map(|(i, _)| i)
        .filter(|&i| i > 0 && text.ends_with(&stop[..i]))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: u32, s: &str) -> Token {
        Token { id, text: s.into() }
    }

    fn run(stops: &[&str], tokens: &[&str]) -> (String, Vec<u32>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopStrings::new(&stops);
        let mut out = Vec::new();
        let mut stopped = false;
        for (i, s) in tokens.iter().enumerate() {
            let (ready, hit) = m.push(t(i as u32, s));
            out.extend(ready);
            if hit {
                stopped = true;
                break;
            }
        }
        if !stopped {
            out.extend(m.finish());
        }
        (
            out.iter().map(|t| t.text.as_str()).collect(),
            out.iter().map(|t| t.id).collect(),
            stopped,
        )
    }

    #[test]
    fn without_stops_everything_passes_at_once() {
        let mut m = StopStrings::new(&[]);
        assert_eq!(m.push(t(1, "a")).0, vec![t(1, "a")]);
    }

    #[test]
    fn stop_inside_one_token_cuts_it() {
        assert_eq!(
            run(&["END"], &["ab", "cENDx", "y"]),
            ("abc".into(), vec![0, 1], true)
        );
    }

    #[test]
    fn stop_across_tokens_is_never_emitted() {
        assert_eq!(
            run(&["###"], &["a#", "#", "#b"]),
            ("a".into(), vec![0], true)
        );
    }

    #[test]
    fn false_alarm_releases_the_held_text() {
        assert_eq!(
            run(&["###"], &["a#", "#", "b"]),
            ("a##b".into(), vec![0, 1, 2], false)
        );
    }

    #[test]
    fn stream_end_releases_a_partial_match() {
        assert_eq!(
            run(&["stop"], &["x", "st"]),
            ("xst".into(), vec![0, 1], false)
        );
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_is_safe() {
        assert_eq!(
            run(&["b", "é!"], &["aé!", "b"]),
            ("a".into(), vec![0], true)
        );
        assert_eq!(
            run(&["日本"], &["x日", "本語"]),
            ("x".into(), vec![0], true)
        );
    }

    #[test]
    fn stop_at_the_very_start_emits_nothing() {
        assert_eq!(run(&["Q"], &["Q", "r"]), ("".into(), vec![], true));
    }
}
