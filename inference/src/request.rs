//! The checks every backend applies to a request before generating, in one
//! place so that the backends agree: an empty prompt or message is refused,
//! and a prompt longer than the model's context is refused when the caller
//! set [`GenerateOptions::max_context`], else warned about (through the
//! `log` crate, at `warn` level).

use crate::{Error, GenerateOptions, Message, Result};

/// Refuses an empty prompt.
///
/// ```
/// assert!(inference::check_prompt("").is_err());
/// assert!(inference::check_prompt("Hello").is_ok());
/// ```
pub fn check_prompt(prompt: &str) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("the prompt is empty".into()));
    }
    Ok(())
}

/// Refuses a conversation with no messages or with a message whose text is
/// empty (or only white space), naming it.
///
/// ```
/// use inference::Message;
/// assert!(inference::check_messages(&[Message::user("Hi")]).is_ok());
/// assert!(inference::check_messages(&[Message::user(" ")]).is_err());
/// assert!(inference::check_messages(&[]).is_err());
/// ```
pub fn check_messages(messages: &[Message]) -> Result<()> {
    if messages.is_empty() {
        return Err(Error::InvalidArgument(
            "the conversation has no messages".into(),
        ));
    }
    if let Some((i, m)) = messages
        .iter()
        .enumerate()
        .find(|(_, m)| m.content.trim().is_empty())
    {
        return Err(Error::InvalidArgument(format!(
            "message {} ({}) is empty",
            i + 1,
            m.role.as_str()
        )));
    }
    Ok(())
}

/// Checks a prompt of `prompt_tokens` against `opts.max_context` (refused
/// when over) and the model's `context_length` (a warning when over).
pub fn check_context(
    prompt_tokens: usize,
    opts: &GenerateOptions,
    context_length: Option<usize>,
) -> Result<()> {
    if let Some(limit) = opts.max_context {
        if prompt_tokens > limit {
            return Err(Error::ContextExceeded {
                prompt_tokens,
                limit,
            });
        }
    }
    if let Some(context) = context_length {
        if prompt_tokens > context {
            log::warn!(
                "the prompt has {prompt_tokens} tokens but the model was trained for a context of {context}: expect degraded output"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_inputs_are_refused() {
        assert_eq!(
            check_prompt("").unwrap_err().to_string(),
            "invalid argument: the prompt is empty"
        );
        let e = check_messages(&[Message::system("Be brief."), Message::user("\n")]).unwrap_err();
        assert_eq!(e.to_string(), "invalid argument: message 2 (user) is empty");
    }

    #[test]
    fn context_limits_refuse_or_pass() {
        let opts = GenerateOptions::default().max_context(8);
        let e = check_context(9, &opts, Some(100)).unwrap_err();
        assert!(matches!(
            e,
            Error::ContextExceeded {
                prompt_tokens: 9,
                limit: 8
            }
        ));
        assert!(check_context(8, &opts, Some(4)).is_ok());
        assert!(check_context(1000, &GenerateOptions::default(), Some(10)).is_ok());
    }
}
