//! Input files of `classify` and `batch`: one input per line, plain text
//! (a raw prompt) or a JSON object `{"prompt": ...}` or `{"messages":
//! [{"role", "content"}, ...]}`.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use inference::Input;
use serde::Deserialize;

/// One line that is not an input, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub problem: String,
}

/// The inputs of a file, each with its 0-based line index, and the bad
/// lines.
#[derive(Debug, Default)]
pub struct Inputs {
    /// `(line index, input)`, in file order.
    pub inputs: Vec<(usize, Input)>,
    /// Lines that are not inputs.
    pub bad: Vec<BadLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonInput {
    prompt: Option<String>,
    messages: Option<Vec<inference::Message>>,
}

/// Parses one line.
fn parse_line(line: &str) -> std::result::Result<Input, String> {
    if line.trim().is_empty() {
        return Err("empty line".into());
    }
    if !line.trim_start().starts_with('{') {
        return Ok(Input::Prompt(line.to_string()));
    }
    let v: JsonInput = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    match (v.prompt, v.messages) {
        (Some(p), None) if !p.is_empty() => Ok(Input::Prompt(p)),
        (Some(_), None) => Err("empty `prompt`".into()),
        (None, Some(m)) if !m.is_empty() => Ok(Input::Chat(m)),
        (None, Some(_)) => Err("empty `messages`".into()),
        (Some(_), Some(_)) => Err("give `prompt` or `messages`, not both".into()),
        (None, None) => Err("a JSON line needs `prompt` or `messages`".into()),
    }
}

/// Parses the text of an input file.
pub fn parse(text: &str) -> Inputs {
    let mut out = Inputs::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match parse_line(line) {
            Ok(input) => out.inputs.push((i, input)),
            Err(problem) => out.bad.push(BadLine {
                line: i + 1,
                problem,
            }),
        }
    }
    out
}

/// Reads `--input FILE` (or stdin for `-` or none) and applies
/// `--skip-invalid`: bad lines are reported on stderr and skipped, or they
/// stop everything before anything runs.
pub fn read(path: Option<&Path>, skip_invalid: bool) -> Result<Inputs> {
    let (text, name) = match path {
        Some(p) if p != Path::new("-") => (
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            p.display().to_string(),
        ),
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the inputs from stdin")?;
            (text, "stdin".to_string())
        }
    };
    let inputs = parse(&text);
    for b in &inputs.bad {
        eprintln!("{name}:{}: {}", b.line, b.problem);
    }
    if !inputs.bad.is_empty() && !skip_invalid {
        bail!(
            "{name}: {} bad line(s), nothing was run (pass --skip-invalid to continue past them)",
            inputs.bad.len()
        );
    }
    if inputs.inputs.is_empty() {
        bail!("{name}: no inputs");
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference::Message;

    #[test]
    fn lines_become_prompts_conversations_or_numbered_errors() {
        let text = "plain text\n{\"prompt\": \"json prompt\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n{bad json\n{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n{\"other\": 1}\n{\"messages\": []}\n";
        let parsed = parse(text);
        assert_eq!(
            parsed.inputs,
            vec![
                (0, Input::Prompt("plain text".into())),
                (1, Input::Prompt("json prompt".into())),
                (3, Input::Chat(vec![Message::user("hi")])),
            ]
        );
        let lines: Vec<usize> = parsed.bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![3, 5, 6, 7, 8]);
        assert_eq!(parsed.bad[0].problem, "empty line");
        assert!(parsed.bad[1].problem.starts_with("invalid JSON"));
        assert!(
            parsed.bad[2].problem.contains("robot"),
            "{:?}",
            parsed.bad[2]
        );
        assert!(
            parsed.bad[3].problem.contains("other"),
            "{:?}",
            parsed.bad[3]
        );
        assert_eq!(parsed.bad[4].problem, "empty `messages`");
    }
}
