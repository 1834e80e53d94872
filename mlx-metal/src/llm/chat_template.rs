//! Chat templates (Jinja, as in tokenizer_config.json or
//! chat_template.jinja), rendered with minijinja.

use std::path::{Path, PathBuf};

use minijinja::{context, Environment, ErrorKind};

use crate::{Error, Result};

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
