//! `mlx-infer generate` and `mlx-infer chat`: stream tokens to stdout.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use clap::Args;
use inference::{
    CancellationToken, ComputeDtype, Distributed, GenerateOptions, LoadOptions, Message,
    StopReason, TextModel, TokenStream,
};
use serde_json::json;

use crate::distributed::DistributedArgs;

/// Exit status after Ctrl-C (128 + SIGINT).
pub const INTERRUPTED: i32 = 130;

/// Options shared by `generate` and `chat`.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Model directory or .gguf file (default: MLX_INFER_MODEL, else the first model in the
    /// Hugging Face cache, else the default model SmolLM2-135M-Instruct once fetched).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Force a backend (`mlx`, `metal`, `mlxlm`); default: the best available.
    #[arg(long)]
    backend: Option<String>,
    /// Floating-point type to compute in: `auto` (float32 for bfloat16/float16
    /// weights on a CPU, the weights' type on a GPU), `model` (the weights'
    /// type), or `float32`, `bfloat16`, `float16`. Quantised weights stay
    /// quantised; their scales follow.
    #[arg(long, default_value = "auto", value_parser = crate::loading::dtype_parser())]
    dtype: ComputeDtype,
    /// Apply the fine-tuned adapter in this folder (adapters.safetensors + adapter_config.json).
    #[arg(long)]
    adapter_path: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass (1 disables).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 disables).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Drop tokens below min_p times the top probability (0 disables).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalty for tokens seen in the recent context.
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 20)]
    repetition_context_size: usize,
    /// Seed for reproducible sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when the output contains this text (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Refuse prompts longer than this many tokens (without it, a prompt
    /// beyond the model's context length only gets a warning).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_context: Option<u64>,
    /// One JSON object per line: each token, then a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub distributed: DistributedArgs,
}

/// `mlx-infer generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt (default: read from stdin).
    #[arg(long)]
    prompt: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

/// `mlx-infer chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// One user message: print the reply and exit (default: interactive on a
    /// terminal, else the message is read from stdin).
    #[arg(long)]
    message: Option<String>,
    /// A system message that frames the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

/// Loads `model` (or the default one) with `backend` (or the best),
/// computing in `dtype`, spread over the ranks of a distributed launch
/// when `distributed` says so, and says on stderr what was loaded and how
/// it computes (rank 0 only).
pub fn load_with(
    model: Option<PathBuf>,
    backend: Option<&str>,
    dtype: ComputeDtype,
    adapter_path: Option<&Path>,
    distributed: Option<Distributed>,
) -> Result<Box<dyn TextModel>> {
    let dir = crate::model_path::resolve(model)?;
    let mut opts = LoadOptions::default().dtype(dtype);
    opts.backend = backend.map(str::to_string);
    opts.adapter_path = adapter_path.map(Path::to_path_buf);
    let quiet = distributed.as_ref().is_some_and(|d| {
        crate::distributed::group_rank(d.backend.as_deref()).is_ok_and(|r| r != 0)
    });
    opts.distributed = distributed;
    let model = inference::load_model_with(&dir, opts)?;
    if !quiet {
        eprintln!("{}", crate::loading::summary(model.info()));
    }
    Ok(model)
}

impl CommonArgs {
    /// Whether `--json` was given.
    pub fn json_lines(&self) -> bool {
        self.json
    }

    /// The generation options, cancelled by `cancel`.
    pub fn options(&self, cancel: CancellationToken) -> GenerateOptions {
        let mut o = GenerateOptions::default()
            .max_tokens(self.max_tokens)
            .temperature(self.temperature)
            .top_p(self.top_p)
            .top_k(self.top_k)
            .min_p(self.min_p)
            .repetition_context_size(self.repetition_context_size)
            .cancel(cancel);
        o.repetition_penalty = self.repetition_penalty;
        o.seed = self.seed;
        o.stop = self.stop.clone();
        o.max_context = self.max_context.map(|n| n as usize);
        o
    }

    /// Loads the model these options name.
    pub fn load(&self) -> Result<Box<dyn TextModel>> {
        load_with(
            self.model.clone(),
            self.backend.as_deref(),
            self.dtype,
            self.adapter_path.as_deref(),
            self.distributed.load_option()?,
        )
    }
}

/// Runs a generation to its end without printing (a distributed run's
/// ranks other than 0); returns the stop reason and the text.
fn drain(mut stream: TokenStream<'_>) -> Result<(Option<StopReason>, String)> {
    let mut text = String::new();
    for token in stream.by_ref() {
        text.push_str(&token?.text);
    }
    Ok((stream.stop_reason(), text))
}

/// Set while the interactive chat waits for the user's next line: Ctrl-C
/// there quits at once.
static AT_PROMPT: AtomicBool = AtomicBool::new(false);

/// Cancels `token` on Ctrl-C (installed once per process). Ctrl-C at the
/// chat prompt, or a second Ctrl-C while the first is being honoured,
/// exits at once with status 130.
pub fn cancel_on_ctrl_c() -> Result<CancellationToken> {
    let token = CancellationToken::new();
    let t = token.clone();
    ctrlc::set_handler(move || {
        if AT_PROMPT.load(Ordering::SeqCst) || t.is_cancelled() {
            eprintln!();
            crate::linked::exit(INTERRUPTED);
        }
        t.cancel();
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(token)
}

/// Streams one generation to stdout; returns the stop reason.
fn stream_out(
    mut stream: TokenStream<'_>,
    json_lines: bool,
    reply: &mut String,
) -> Result<Option<StopReason>> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for token in stream.by_ref() {
        let token = token?;
        if json_lines {
            writeln!(out, "{}", json!({"id": token.id, "text": token.text}))?;
        } else {
            write!(out, "{}", token.text)?;
        }
        out.flush()?;
        reply.push_str(&token.text);
    }
    if !json_lines && !reply.is_empty() && !reply.ends_with('\n') {
        writeln!(out)?;
        out.flush()?;
    }
    Ok(stream.stop_reason())
}

/// Prints the summary: a JSON line, or a human line on stderr.
fn summary(model: &dyn TextModel, reason: Option<StopReason>, json_lines: bool) -> Result<()> {
    let m = model.metrics();
    let reason = reason.map_or("unknown", StopReason::as_str);
    if json_lines {
        println!(
            "{}",
            json!({
                "done": true,
                "reason": reason,
                "prompt_tokens": m.prompt_tokens,
                "generated_tokens": m.generated_tokens,
                "prompt_tps": m.prompt_tps,
                "generation_tps": m.generation_tps,
                "peak_memory_bytes": m.peak_memory_bytes,
                "context_length": m.context_length,
                "over_context": m.over_context(),
            })
        );
    } else {
        eprintln!(
            "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s | peak memory: {:.1} MB | stop: {reason}",
            m.prompt_tokens,
            m.prompt_tps,
            m.generated_tokens,
            m.generation_tps,
            m.peak_memory_bytes as f64 / 1e6
        );
    }
    Ok(())
}

fn exit_code(reason: Option<StopReason>) -> i32 {
    if reason == Some(StopReason::Cancelled) {
        INTERRUPTED
    } else {
        0
    }
}

/// Runs `mlx-infer generate`.
pub fn generate(args: GenerateArgs) -> Result<i32> {
    let follower = args.common.distributed.follower()?;
    let prompt = match args.prompt {
        Some(p) => p,
        // a distributed run's other ranks get the prompt from rank 0
        None if follower => String::new(),
        None => {
            if std::io::stdin().is_terminal() {
                bail!("no prompt: pass --prompt TEXT or pipe the prompt on stdin");
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the prompt from stdin")?;
            text
        }
    };
    if !follower {
        inference::check_prompt(&prompt)?;
    }
    let cancel = cancel_on_ctrl_c()?;
    let mut model = args.common.load()?;
    let prompt = args.common.distributed.rank_zero_text(prompt)?;
    let opts = args.common.options(cancel);
    if follower {
        return Ok(exit_code(drain(model.generate(&prompt, &opts))?.0));
    }
    let mut text = String::new();
    let reason = stream_out(model.generate(&prompt, &opts), args.common.json, &mut text)?;
    summary(model.as_ref(), reason, args.common.json)?;
    Ok(exit_code(reason))
}

/// Runs `mlx-infer chat`.
pub fn chat(args: ChatArgs) -> Result<i32> {
    let follower = args.common.distributed.follower()?;
    let cancel = cancel_on_ctrl_c()?;
    let mut history: Vec<Message> = args.system.iter().map(Message::system).collect();
    let one_shot = match &args.message {
        Some(m) => Some(m.clone()),
        // a distributed run's other ranks get the message from rank 0
        None if follower => None,
        None if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the message from stdin")?;
            Some(text)
        }
        None => None,
    };
    if let Some(message) = &one_shot {
        let mut first = history.clone();
        first.push(Message::user(message.clone()));
        inference::check_messages(&first)?;
    }
    let mut model = args.common.load()?;
    // Every rank of a distributed chat learns from rank 0 whether it is
    // one message or a conversation.
    let one_shot = args.common.distributed.rank_zero_value(one_shot)?;
    if let Some(message) = one_shot {
        history.push(Message::user(message));
        let opts = args.common.options(cancel);
        if follower {
            return Ok(exit_code(drain(model.chat(&history, &opts))?.0));
        }
        let mut reply = String::new();
        let reason = stream_out(model.chat(&history, &opts), args.common.json, &mut reply)?;
        summary(model.as_ref(), reason, args.common.json)?;
        return Ok(exit_code(reason));
    }

    if !follower {
        eprintln!(
            "chatting with {} (empty line, Ctrl-D or Ctrl-C quits; Ctrl-C during a reply stops it and quits)",
            model.info().path.display()
        );
    }
    let opts = args.common.options(cancel);
    let stdin = std::io::stdin();
    loop {
        let mut line = String::new();
        if !follower {
            eprint!("> ");
            AT_PROMPT.store(true, Ordering::SeqCst);
            let read = stdin.lock().read_line(&mut line);
            AT_PROMPT.store(false, Ordering::SeqCst);
            if read? == 0 {
                line.clear();
            }
        }
        // rank 0's line on every rank (an empty one ends them all)
        let line = args.common.distributed.rank_zero_text(line)?;
        if line.trim().is_empty() {
            return Ok(0);
        }
        history.push(Message::user(line.trim_end()));
        if follower {
            let (reason, reply) = drain(model.chat(&history, &opts))?;
            if reason == Some(StopReason::Cancelled) {
                return Ok(INTERRUPTED);
            }
            history.push(Message::assistant(reply));
            continue;
        }
        let mut reply = String::new();
        let reason = stream_out(model.chat(&history, &opts), args.common.json, &mut reply)?;
        summary(model.as_ref(), reason, args.common.json)?;
        if reason == Some(StopReason::Cancelled) {
            return Ok(INTERRUPTED);
        }
        history.push(Message::assistant(reply));
    }
}
