//! `mlx-infer classify` and `mlx-infer batch`: many inputs through the
//! batched API, results in input order.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use inference::{BatchEvent, BatchOptions, ClassifyOptions, Completion, StopReason};
use serde_json::{json, Map, Value};

use crate::distributed::DistributedArgs;
use crate::generate::{cancel_on_ctrl_c, CommonArgs, INTERRUPTED};
use crate::inputs;

/// `mlx-infer classify`.
#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// Model directory or .gguf file (default as for `generate`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Force a backend (`mlx`, `metal`, `mlxlm`); default: the best available.
    #[arg(long)]
    backend: Option<String>,
    /// Floating-point type to compute in (as for `generate`).
    #[arg(long, default_value = "auto", value_parser = crate::loading::dtype_parser())]
    dtype: inference::ComputeDtype,
    /// Apply the fine-tuned adapter in this folder (adapters.safetensors + adapter_config.json).
    #[arg(long)]
    adapter_path: Option<PathBuf>,
    /// One input per line: plain text, {"prompt": ...} or {"messages": [...]} (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Comma-separated labels: report each one's probability (that of its first token) and the winner.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Also report the K most likely next tokens.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Most inputs in one forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Most padded tokens in one forward pass.
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// Report bad lines and go on (otherwise nothing runs).
    #[arg(long)]
    skip_invalid: bool,
    /// One JSON object per input, then a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    distributed: DistributedArgs,
}

/// `mlx-infer batch`.
#[derive(Args, Debug)]
pub struct BatchArgs {
    /// One input per line: plain text, {"prompt": ...} or {"messages": [...]} (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Most inputs decoding at once.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Report bad lines and go on (otherwise nothing runs).
    #[arg(long)]
    skip_invalid: bool,
    #[command(flatten)]
    common: CommonArgs,
}

/// The inputs of `--input` (or stdin) as [`inputs::read`] checks them; on
/// a `follower` (a distributed run's rank other than 0), none: rank 0
/// hands its own over once the model is loaded.
fn read_inputs(
    follower: bool,
    path: Option<&std::path::Path>,
    skip_invalid: bool,
) -> Result<Vec<(usize, inference::Input)>> {
    if follower {
        return Ok(Vec::new());
    }
    Ok(inputs::read(path, skip_invalid)?.inputs)
}

/// Inputs per call of `classify`: the first call's size, then about
/// [`CHUNK_SECONDS`] of work at the rate measured so far, within these
/// bounds. Each call ends with the device idle while its last batch is
/// read and its results written, so a fast device gets long calls; the
/// progress bar moves between them.
const CLASSIFY_CHUNK: std::ops::RangeInclusive<usize> = 1024..=65536;
/// Seconds of work per call of `classify` once the rate is known.
const CHUNK_SECONDS: f64 = 2.0;
/// Inputs per call when the model is spread over the ranks of a launch,
/// whose calls must match one for one.
const SPREAD_CHUNK: usize = 4096;

/// The next call's size after `done` inputs took `seconds`.
fn next_chunk(done: usize, seconds: f64) -> usize {
    let rate = done as f64 / seconds.max(1e-3);
    ((rate * CHUNK_SECONDS) as usize).clamp(*CLASSIFY_CHUNK.start(), *CLASSIFY_CHUNK.end())
}

fn progress(total: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} inputs  {per_sec}  eta {eta}")
            .expect("a valid template"),
    );
    bar
}

/// Runs `mlx-infer classify`.
pub fn classify(args: ClassifyArgs) -> Result<i32> {
    let follower = args.distributed.follower()?;
    let parsed = read_inputs(follower, args.input.as_deref(), args.skip_invalid)?;
    let mut model = crate::generate::load_with(
        args.model.clone(),
        args.backend.as_deref(),
        args.dtype,
        args.adapter_path.as_deref(),
        args.distributed.load_option()?,
    )?;
    let parsed = args.distributed.rank_zero_value(parsed)?;
    let opts = ClassifyOptions::default()
        .top_k(args.top_k)
        .labels(args.labels.iter().map(|l| l.as_str()))
        .batch(
            BatchOptions::default()
                .batch_size(args.batch_size)
                .max_batch_tokens(args.max_batch_tokens),
        );
    let started = Instant::now();
    let bar = progress(parsed.len());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (mut prompt_tokens, mut peak) = (0usize, 0u64);
    // Ranks of a distributed launch classify in step: their calls keep
    // one size rather than each following its own clock.
    let spread = args.distributed.is_spread();
    let (mut from, mut size) = match spread {
        true => (0, SPREAD_CHUNK),
        false => (0, *CLASSIFY_CHUNK.start()),
    };
    while from < parsed.len() {
        let chunk = &parsed[from..(from + size).min(parsed.len())];
        from += chunk.len();
        let batch: Vec<inference::Input> = chunk.iter().map(|(_, i)| i.clone()).collect();
        let results = model.classify(&batch, &opts)?;
        if follower {
            continue;
        }
        let m = model.metrics();
        peak = peak.max(m.peak_memory_bytes);
        for (c, (line, _)) in results.iter().zip(chunk) {
            prompt_tokens += c.prompt_tokens;
            if args.json {
                let mut v = Map::new();
                v.insert("index".into(), json!(line));
                v.insert("id".into(), json!(c.top.id));
                v.insert("text".into(), json!(c.top.text));
                v.insert("logprob".into(), json!(c.top.logprob));
                if !args.labels.is_empty() {
                    v.insert("label".into(), json!(c.label));
                    let scores: Map<String, Value> = c
                        .scores
                        .iter()
                        .map(|(l, p)| (l.clone(), json!(p)))
                        .collect();
                    v.insert("scores".into(), Value::Object(scores));
                }
                if args.top_k > 0 {
                    let top: Vec<Value> = c
                        .top_k
                        .iter()
                        .map(|t| json!({"id": t.id, "text": t.text, "logprob": t.logprob}))
                        .collect();
                    v.insert("top".into(), Value::Array(top));
                }
                writeln!(out, "{}", Value::Object(v))?;
            } else {
                match &c.label {
                    Some(label) => writeln!(out, "{line}\t{label}")?,
                    None => writeln!(out, "{line}\t{:?}\t{:.4}", c.top.text, c.top.logprob)?,
                }
            }
        }
        out.flush()?;
        bar.inc(chunk.len() as u64);
        if !spread {
            size = next_chunk(from, started.elapsed().as_secs_f64());
        }
    }
    bar.finish_and_clear();
    if follower {
        return Ok(0);
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let n = parsed.len();
    if args.json {
        writeln!(
            out,
            "{}",
            json!({
                "done": true,
                "inputs": n,
                "prompt_tokens": prompt_tokens,
                "inputs_per_s": n as f64 / secs,
                "peak_memory_bytes": peak,
            })
        )?;
    } else {
        eprintln!(
            "{n} inputs, {prompt_tokens} prompt tokens in {secs:.2} s: {:.1} inputs/s | peak memory: {:.1} MB",
            n as f64 / secs,
            peak as f64 / 1e6
        );
    }
    Ok(0)
}

/// Runs `mlx-infer batch`.
pub fn batch(args: BatchArgs) -> Result<i32> {
    let follower = args.common.distributed.follower()?;
    let parsed = read_inputs(follower, args.input.as_deref(), args.skip_invalid)?;
    let cancel = cancel_on_ctrl_c()?;
    let mut model = args.common.load()?;
    let parsed = args.common.distributed.rank_zero_value(parsed)?;
    let opts = args.common.options(cancel);
    let batch = BatchOptions::default().batch_size(args.batch_size);
    let lines: Vec<usize> = parsed.iter().map(|(l, _)| *l).collect();
    let batch_inputs: Vec<inference::Input> = parsed.iter().map(|(_, i)| i.clone()).collect();
    if follower {
        let mut cancelled = false;
        for event in model.generate_batch(&batch_inputs, &opts, &batch) {
            if let BatchEvent::Done(c) = event? {
                cancelled |= c.reason == StopReason::Cancelled;
            }
        }
        return Ok(if cancelled { INTERRUPTED } else { 0 });
    }
    let started = Instant::now();
    let bar = progress(lines.len());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Rows finish out of order; print each once all before it have.
    let mut finished: BTreeMap<usize, Completion> = BTreeMap::new();
    let mut printed = 0usize;
    let (mut prompt_tokens, mut generated, mut cancelled) = (0usize, 0usize, false);
    let mut first_token: Option<Instant> = None;
    let mut stream = model.generate_batch(&batch_inputs, &opts, &batch);
    for event in stream.by_ref() {
        match event? {
            BatchEvent::Token { .. } => {
                first_token.get_or_insert_with(Instant::now);
            }
            BatchEvent::Done(c) => {
                bar.inc(1);
                finished.insert(c.index, c);
                while let Some(c) = finished.remove(&printed) {
                    prompt_tokens += c.prompt_tokens;
                    generated += c.ids.len();
                    cancelled |= c.reason == StopReason::Cancelled;
                    let index = lines[c.index];
                    if args.common.json_lines() {
                        writeln!(
                            out,
                            "{}",
                            json!({"index": index, "ids": c.ids, "text": c.text, "reason": c.reason.as_str()})
                        )?;
                    } else {
                        writeln!(out, "{index}\t{:?}\t{}", c.text, c.reason)?;
                    }
                    printed += 1;
                }
                out.flush()?;
            }
            _ => {}
        }
    }
    drop(stream);
    bar.finish_and_clear();
    let m = model.metrics();
    let end = Instant::now();
    let first = first_token.unwrap_or(end);
    let prompt_tps = prompt_tokens as f64 / (first - started).as_secs_f64().max(1e-9);
    let generation_tps = generated as f64 / (end - first).as_secs_f64().max(1e-9);
    if args.common.json_lines() {
        writeln!(
            out,
            "{}",
            json!({
                "done": true,
                "inputs": printed,
                "prompt_tokens": prompt_tokens,
                "generated_tokens": generated,
                "prompt_tps": prompt_tps,
                "generation_tps": generation_tps,
                "peak_memory_bytes": m.peak_memory_bytes,
            })
        )?;
    } else {
        eprintln!(
            "{printed} inputs | prompt: {prompt_tokens} tokens, {prompt_tps:.1} tok/s | generation: {generated} tokens, {generation_tps:.1} tok/s | peak memory: {:.1} MB",
            m.peak_memory_bytes as f64 / 1e6
        );
    }
    Ok(if cancelled { INTERRUPTED } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_calls_last_about_two_seconds_within_bounds() {
        // 3,000 inputs a second: the next call takes 6,000.
        assert_eq!(next_chunk(3000, 1.0), 6000);
        // A slow machine still classifies a thousand at a time; a fast one
        // at most 65,536.
        assert_eq!(next_chunk(10, 5.0), 1024);
        assert_eq!(next_chunk(1_000_000, 1.0), 65536);
        // No time measured yet is no division by zero.
        assert_eq!(next_chunk(1024, 0.0), 65536);
    }
}
