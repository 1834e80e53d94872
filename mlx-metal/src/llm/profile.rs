//! Host-side step timings for speed work: when the environment variable
//! `MLX_INFER_STEP_PROFILE` names a file, the generation loop and the
//! serving engine append one line per step to it, saying how long the
//! step took to build (Rust and mlx-c making the graph), to launch
//! (`async_eval`, where MLX encodes the graph for the device) and how
//! long reading its result waited. Off (and free) otherwise.
//!
//! Lines are plain `key=value` pairs after a kind word, e.g.
//! `decode build_us=812 launch_us=1630 pid=4242` when a decode step starts
//! and `decode wait_us=240 pid=4242` when its token is read; once per
//! generation, `decode-graph-eager ops=311 fused=0` (or `-compiled`): the
//! operations of one steady decode step, and how many of them are fused
//! kernels of a compiled step, with `decode-graph-eager-kinds` counting
//! them by kind ([`record_graph`]).

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The environment variable naming the file.
pub const PROFILE_ENV: &str = "MLX_INFER_STEP_PROFILE";

fn sink() -> Option<&'static Mutex<File>> {
    static SINK: OnceLock<Option<Mutex<File>>> = OnceLock::new();
    SINK.get_or_init(|| {
        let path = std::env::var_os(PROFILE_ENV)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()?;
        Some(Mutex::new(file))
    })
    .as_ref()
}

/// Whether step timings are being written.
pub fn enabled() -> bool {
    sink().is_some()
}

/// Appends the line `line()` makes, with this process's id (`pid=`, so
/// that the ranks of a distributed run can share one file), when timings
/// are on.
pub fn record(line: impl FnOnce() -> String) {
    if let Some(file) = sink() {
        let text = format!("{} pid={}\n", line(), std::process::id());
        if let Ok(mut f) = file.lock() {
            // One write per line, so that lines from several processes
            // appending to the file do not mix. A profile is a diagnostic:
            // a failed write loses a line, not the run.
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// Records what the graph of `outputs` is made of, when timings are on:
/// `{name} ops=.. fused=..` (its operations, and how many are fused
/// kernels, MLX `Compiled` nodes) and `{name}-kinds Kind:count ...` (most
/// frequent first). Listing a graph takes time, so callers do it once and
/// outside their timed parts; a listing that fails only leaves its lines
/// out.
pub fn record_graph(name: &str, outputs: &[&crate::Array]) {
    if !enabled() {
        return;
    }
    let Ok(ops) = crate::graph::count_operations(outputs) else {
        return;
    };
    let total: usize = ops.values().sum();
    let fused: usize = ops
        .iter()
        .filter(|(k, _)| k.starts_with("Compiled"))
        .map(|(_, n)| n)
        .sum();
    record(|| format!("{name} ops={total} fused={fused}"));
    let mut kinds: Vec<_> = ops.iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    record(|| format!("{name}-kinds {}", kinds.join(" ")));
}

/// Microseconds since `t`, and `t` moved to now.
pub fn lap(t: &mut Instant) -> u128 {
    let now = Instant::now();
    let us = (now - *t).as_micros();
    *t = now;
    us
}
