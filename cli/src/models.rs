//! `mlx-infer models`: the models found on this machine and the backend
//! that would run each.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use inference::discover::{self, Source};
use serde_json::json;

/// `mlx-infer models`.
#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// One JSON object per line: `{"path", "format", "source", "name", "backend"}`.
    #[arg(long)]
    json: bool,
    /// Also list models no available backend runs.
    #[arg(long)]
    all: bool,
}

/// Lists the Hugging Face cache, the default model and the ollama store.
pub fn run(args: &ModelsArgs, out: &mut impl Write) -> Result<i32> {
    let backends: Vec<_> = inference::backends()
        .into_iter()
        .filter(|b| b.is_available())
        .collect();
    let mut shown = 0;
    for found in discover::all_models() {
        let backend = backends.iter().find(|b| b.accepts(&found.path));
        if backend.is_none() && !args.all {
            continue;
        }
        let format = if found.path.is_dir() {
            "directory"
        } else {
            "gguf"
        };
        let (source, name) = match &found.source {
            Source::HuggingFace => ("huggingface", None),
            Source::Cache => ("default", None),
            Source::Ollama(name) => ("ollama", Some(name.as_str())),
        };
        let backend = backend.map(|b| b.name());
        if args.json {
            writeln!(
                out,
                "{}",
                json!({"path": found.path, "format": format, "source": source, "name": name, "backend": backend})
            )?;
        } else {
            writeln!(
                out,
                "{:<10} {:<11} {:<6} {}{}",
                format,
                source,
                backend.unwrap_or("-"),
                found.path.display(),
                name.map(|n| format!("  ({n})")).unwrap_or_default()
            )?;
        }
        shown += 1;
    }
    if shown == 0 && !args.json {
        writeln!(
            out,
            "no models found (run `{}` for the default model)",
            discover::DEFAULT_MODEL_COMMAND
        )?;
    }
    Ok(0)
}
