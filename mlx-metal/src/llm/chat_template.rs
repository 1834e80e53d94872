//! Chat templates (Jinja, as in tokenizer_config.json or
//! chat_template.jinja), rendered with minijinja.

use std::path::{Path, PathBuf};

use minijinja::{context, Environment, ErrorKind};

use crate::{Error, Result};

/// Template instructions one rendering may run: real chat templates use a
/// few hundred per message, so this allows conversations of thousands of
/// turns while a template that loops for ever stops with an error.
const FUEL: u64 = 50_000_000;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source_path: PathBuf,
}

/// One message as the template sees it.
#[derive(Debug, Clone)]
pub struct TemplateMessage<'a> {
    /// `system`, `user` or `assistant`.
    pub role: &'a str,
    /// The text.
    pub content: &'a str,
}

impl ChatTemplate {
    /// Compiles `source` (read from `path`, named in errors).
    pub fn new(source: &str, path: &Path) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::File {
                path: path.to_path_buf(),
                message: format!("invalid chat template: {e}"),
            })?;
        Ok(ChatTemplate {
            env,
            source_path: path.to_path_buf(),
        })
    }

    /// Renders `messages` with the generation prompt appended.
    pub fn render(
        &self,
        messages: &[TemplateMessage<'_>],
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String> {
        self.render_with(messages, true, bos_token, eos_token)
    }

    /// Renders `messages`, appending the generation prompt only when
    /// `add_generation_prompt` (training data renders whole conversations
    /// without it).
    pub fn render_with(
        &self,
        messages: &[TemplateMessage<'_>],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String> {
        let tmpl = self.env.get_template("chat").expect("added in new()");
        tmpl.render(context! {
            messages => minijinja::Value::from(
                messages
                    .iter()
                    .map(|m| context! { role => m.role, content => m.content })
                    .collect::<Vec<_>>()
            ),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token.unwrap_or_default(),
            eos_token => eos_token.unwrap_or_default(),
        })
        .map_err(|e| {
            let detail = match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("").to_string(),
                _ => e.to_string(),
            };
            Error::InvalidArgument(format!(
                "chat template of {}: {detail}",
                self.source_path.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn render(source: &str) -> Result<String> {
        let t = ChatTemplate::new(source, Path::new("tokenizer_config.json"))?;
        t.render(
            &[TemplateMessage {
                role: "user",
                content: "hi",
            }],
            None,
            None,
        )
    }

    #[test]
    fn a_template_that_never_ends_is_an_error() {
        let looping = "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}";
        let e = render(looping).unwrap_err().to_string();
        assert!(e.contains("tokenizer_config.json"), "{e}");
        let deep = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        assert!(render(deep).is_err());
    }

    #[test]
    fn a_long_conversation_renders() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>",
            Path::new("tokenizer_config.json"),
        )
        .unwrap();
        let messages: Vec<TemplateMessage<'_>> = (0..5000)
            .map(|i| TemplateMessage {
                role: if i % 2 == 0 { "user" } else { "assistant" },
                content: "hello there",
            })
            .collect();
        assert!(t
            .render(&messages, None, None)
            .unwrap()
            .ends_with("<|assistant|>"));
    }
}
