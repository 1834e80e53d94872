//! `cargo xtask bench ops`: the cost of single MLX operations through
//! `mlx-metal` (the criterion suite `mlx-metal/benches/ops.rs`) and through
//! Python MLX (`xtask/python/bench_ops.py`, the same cases under the same
//! names), in one run, printed side by side as a
//! Markdown table with the ratio Python/Rust (above 1: Rust is faster).
//! On Linux Python's MLX is made to run on this build's `libmlx` (and its
//! BLAS) with `LD_PRELOAD`, as `cargo xtask bench` does for mlx_lm.
//!
//! The cases run one at a time, the two sides taking turns at going first,
//! so that on a shared machine both see the same load. Both sides time a
//! case the same way: one untimed call, a warm-up that
//! also estimates the time of a call, then `--samples` samples of equally
//! many iterations filling `--measurement` seconds (criterion's flat
//! sampling); the median per-iteration time is reported.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::process::{cargo, root};

/// Options of `cargo xtask bench ops`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Also run the 2048² and 4096² matmuls (in bfloat16 on a CPU they
    /// take minutes per side: ~5 s and ~40 s a call).
    #[arg(long)]
    pub heavy: bool,
    /// Only the cases whose name (`op/dtype/shape`) contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Samples per case (at least 10, criterion's minimum).
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// Warm-up seconds per case.
    #[arg(long, default_value_t = 0.5)]
    pub warm_up: f64,
    /// Measurement seconds per case.
    #[arg(long, default_value_t = 1.5)]
    pub measurement: f64,
    /// Print the table of an earlier run instead of running: criterion's
    /// output folder (`CRITERION_HOME` of that run)...
    #[arg(long, requires = "python_results")]
    pub criterion_dir: Option<PathBuf>,
    /// ...and the JSON lines `bench_ops.py` printed in that run.
    #[arg(long, requires = "criterion_dir")]
    pub python_results: Option<PathBuf>,
}

/// Whether `id` is one of the matmuls left out without `--heavy`.
fn is_heavy(id: &str) -> bool {
    id.starts_with("matmul/")
        && (id.ends_with("/2048x2048x2048") || id.ends_with("/4096x4096x4096"))
}

/// The case names of criterion's `--list` output (`NAME: benchmark` lines).
fn parse_list(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_suffix(": benchmark"))
        .map(str::to_string)
        .collect()
}

/// A criterion filter matching exactly `ids`.
fn exact_filter(ids: &[String]) -> String {
    let escape = |id: &str| -> String {
        id.chars()
            .flat_map(|ch| {
                let plain = ch.is_ascii_alphanumeric() || ch == '_' || ch == '/';
                (!plain).then_some('\\').into_iter().chain([ch])
            })
            .collect()
    };
    let alternatives: Vec<String> = ids.iter().map(|id| escape(id)).collect();
    format!("^(?:{})$", alternatives.join("|"))
}

/// One side's result for a case: the median time of one call in
/// nanoseconds, or why there is none.
type Outcome = std::result::Result<f64, String>;

/// The records `bench_ops.py` printed, in order: `{"id", "median_ns"}` or
/// `{"id", "error"}`; other lines are ignored.
fn parse_python(stdout: &str) -> Result<Vec<(String, Outcome)>> {
    let mut out = Vec::new();
    for line in stdout.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("bench_ops.py printed {line:?}"))?;
        let id = v
            .get("id")
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("bench_ops.py printed a record without an id: {line}"))?;
        let outcome = match (
            v.get("median_ns").and_then(serde_json::Value::as_f64),
            v.get("error"),
        ) {
            (Some(ns), _) => Ok(ns),
            (None, Some(e)) => Err(e.as_str().unwrap_or("failed").to_string()),
            (None, None) => {
                bail!("bench_ops.py printed a record with neither median_ns nor error: {line}")
            }
        };
        out.push((id.to_string(), outcome));
    }
    Ok(out)
}

/// Reads a criterion output folder: each `<case>/new/benchmark.json` names
/// a case, and the `estimates.json` beside it holds its median (ns).
fn read_criterion(dir: &Path) -> Result<HashMap<String, f64>> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, found)?;
            } else if path.ends_with("new/benchmark.json") {
                found.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    let mut medians = HashMap::new();
    for bench in files {
        let read = |path: &Path| -> Result<serde_json::Value> {
            let text = fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
        };
        let id = read(&bench)?
            .get("full_id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("{} has no full_id", bench.display()))?;
        let estimates = bench.with_file_name("estimates.json");
        let median = read(&estimates)?
            .pointer("/median/point_estimate")
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("{} has no median.point_estimate", estimates.display()))?;
        medians.insert(id, median);
    }
    Ok(medians)
}

/// One line of the table.
#[derive(Debug, PartialEq)]
struct Row {
    id: String,
    rust: Outcome,
    python: Outcome,
}

/// The rows for `ids`, in that order, joining both sides by name
/// (`rust_errors`: why a Rust case has no result).
fn join(
    ids: &[String],
    rust: &HashMap<String, f64>,
    python: &[(String, Outcome)],
    rust_errors: &HashMap<String, String>,
) -> Vec<Row> {
    let python: HashMap<&str, &Outcome> = python.iter().map(|(k, v)| (k.as_str(), v)).collect();
    ids.iter()
        .map(|id| Row {
            id: id.clone(),
            rust: rust.get(id).copied().ok_or_else(|| {
                rust_errors
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| "no result".to_string())
            }),
            python: python
                .get(id.as_str())
                .map(|o| (*o).clone())
                .unwrap_or_else(|| Err("no result".to_string())),
        })
        .collect()
}

/// `ns` with three significant digits in a fitting unit.
fn format_time(ns: f64) -> String {
    let (value, unit) = match ns {
        n if n < 1e3 => (n, "ns"),
        n if n < 1e6 => (n / 1e3, "µs"),
        n if n < 1e9 => (n / 1e6, "ms"),
        n => (n / 1e9, "s"),
    };
    let decimals = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.decimals$} {unit}")
}

/// The Markdown table: op, shape, dtype, both times and Python/Rust.
fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| op | shape | dtype | Rust (mlx-metal) | Python (mlx.core) | Python/Rust |\n\
         |----|-------|-------|-----------------:|------------------:|------------:|\n",
    );
    for row in rows {
        let mut parts = row.id.splitn(3, '/');
        let (op, dtype, shape) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let cell = |o: &Outcome| match o {
            Ok(ns) => format_time(*ns),
            Err(_) => "failed".to_string(),
        };
        let ratio = match (&row.rust, &row.python) {
            (Ok(r), Ok(p)) => format!("{:.2}x", p / r),
            _ => "—".to_string(),
        };
        out.push_str(&format!(
            "| {op} | {shape} | {dtype} | {} | {} | {ratio} |\n",
            cell(&row.rust),
            cell(&row.python)
        ));
    }
    out
}

/// Prints the table, then fails naming the cases without both results.
fn report(rows: &[Row]) -> Result<()> {
    println!("\n{}", table(rows));
    let missing: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            [("Rust", &r.rust), ("Python", &r.python)]
                .into_iter()
                .filter_map(|(side, o)| o.as_ref().err().map(|e| format!("{} ({side}): {e}", r.id)))
        })
        .collect();
    if !missing.is_empty() {
        bail!("cases without a result:\n  {}", missing.join("\n  "));
    }
    Ok(())
}

/// Runs `cmd` and returns whether it succeeded, its stdout and its stderr.
fn capture(mut cmd: Command, what: &str) -> Result<(bool, String, String)> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The last lines of `text`, for error messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// The path of the `ops` bench executable in cargo's JSON messages.
fn bench_executable(messages: &str) -> Option<PathBuf> {
    messages.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let target = v.get("target")?;
        let is_ops = target.get("name")?.as_str()? == "ops"
            && target
                .get("kind")?
                .as_array()?
                .iter()
                .any(|k| k.as_str() == Some("bench"));
        is_ops
            .then(|| v.get("executable")?.as_str().map(PathBuf::from))
            .flatten()
    })
}

/// Builds the criterion suite (`cargo bench --no-run`) and returns its
/// executable.
fn build_bench() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "mlx-metal", "--bench", "ops", "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    let (ok, stdout, _) = capture(cmd, "cargo bench -p mlx-metal --no-run")?;
    if !ok {
        bail!("cargo bench -p mlx-metal --bench ops --no-run failed");
    }
    bench_executable(&stdout).context("cargo built no `ops` bench executable")
}

/// Runs `cargo xtask bench ops`.
pub fn run(opts: &Options) -> Result<()> {
    if let (Some(dir), Some(file)) = (&opts.criterion_dir, &opts.python_results) {
        let python = parse_python(
            &fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?,
        )?;
        let rust = read_criterion(dir)?;
        let mut ids: Vec<String> = python.iter().map(|(id, _)| id.clone()).collect();
        let extra: BTreeSet<&String> = rust.keys().filter(|id| !ids.contains(id)).collect();
        ids.extend(extra.into_iter().cloned());
        return report(&join(&ids, &rust, &python, &HashMap::new()));
    }
    if opts.samples < 10 {
        bail!(
            "--samples {} is below criterion's minimum of 10",
            opts.samples
        );
    }
    if !(opts.warm_up > 0.0 && opts.measurement > 0.0) {
        bail!("--warm-up and --measurement must be positive seconds");
    }
    crate::build_mlx::run(&crate::build_mlx::Options::default())?;
    let python = crate::fixtures::python_env()?;
    let script = root().join("xtask/python/bench_ops.py");
    let exe = build_bench()?;
    // Python's MLX runs on this build's libmlx too (and so on the BLAS
    // build-mlx gave it, with as many threads as the Rust side uses).
    let libmlx = crate::bench::build_libmlx()?;
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();

    let mut list = Command::new(&exe);
    list.arg("--list");
    let (ok, stdout, stderr) = capture(list, "the ops bench")?;
    if !ok {
        bail!("{} --list failed: {}", exe.display(), tail(&stderr));
    }
    let rust_ids = parse_list(&stdout);
    let mut py_list = Command::new(&python);
    py_list.arg(&script).arg("--list");
    let (ok, stdout, stderr) = capture(py_list, "bench_ops.py --list")?;
    if !ok {
        bail!("{} --list failed: {}", script.display(), tail(&stderr));
    }
    let py_ids: Vec<String> = stdout.lines().map(str::to_string).collect();
    let (r, p): (BTreeSet<&String>, BTreeSet<&String>) =
        (rust_ids.iter().collect(), py_ids.iter().collect());
    if r != p {
        bail!(
            "the two sides name different cases: only in ops.rs {:?}, only in bench_ops.py {:?}",
            r.difference(&p).collect::<Vec<_>>(),
            p.difference(&r).collect::<Vec<_>>()
        );
    }
    let ids: Vec<String> = rust_ids
        .into_iter()
        .filter(|id| opts.heavy || !is_heavy(id))
        .filter(|id| opts.filter.as_ref().is_none_or(|f| id.contains(f.as_str())))
        .collect();
    if ids.is_empty() {
        bail!(
            "no case matches --filter {:?}",
            opts.filter.as_deref().unwrap_or("")
        );
    }
    if !opts.heavy {
        eprintln!("(the 2048² and 4096² matmuls are left out; --heavy runs them)");
    }

    let out_dir = root().join("target/ops-bench");
    let criterion_dir = out_dir.join("criterion");
    if criterion_dir.exists() {
        fs::remove_dir_all(&criterion_dir)
            .with_context(|| format!("cannot clear {}", criterion_dir.display()))?;
    }
    fs::create_dir_all(&criterion_dir)?;
    let (samples, warm_up, measurement) = (
        opts.samples.to_string(),
        opts.warm_up.to_string(),
        opts.measurement.to_string(),
    );
    // One case at a time, the two sides taking turns at going first, so
    // that both see the same load on a shared machine.
    let mut python_records = Vec::new();
    let mut rust_errors = HashMap::new();
    let mut python_log = String::new();
    for (i, id) in ids.iter().enumerate() {
        for rust_turn in [i % 2 == 0, i % 2 != 0] {
            if rust_turn {
                let mut cmd = Command::new(&exe);
                cmd.args(["--bench", "--noplot", "--nresamples", "10000"])
                    .args(["--sample-size", &samples, "--warm-up-time", &warm_up])
                    .args(["--measurement-time", &measurement])
                    .arg(exact_filter(std::slice::from_ref(id)))
                    .env("CRITERION_HOME", &criterion_dir);
                let (ok, _, stderr) = capture(cmd, "the ops bench")?;
                if i == 0 {
                    if let Some(line) = stderr.lines().find(|l| l.starts_with("ops bench:")) {
                        eprintln!("{line}");
                    }
                }
                if !ok {
                    rust_errors.insert(id.clone(), tail(&stderr));
                }
            } else {
                let mut cmd = Command::new(&python);
                cmd.arg(&script)
                    .args(["--quiet", "--samples", &samples, "--warm-up", &warm_up])
                    .args(["--measurement", &measurement, id]);
                if let Some(lib) = &libmlx {
                    cmd.env("LD_PRELOAD", lib)
                        .env("OPENBLAS_NUM_THREADS", &cores);
                }
                let (_, stdout, stderr) = capture(cmd, "bench_ops.py")?;
                let records = parse_python(&stdout)?;
                if records.is_empty() {
                    python_records.push((id.clone(), Err(tail(&stderr))));
                }
                python_log.push_str(&stdout);
                python_records.extend(records);
            }
        }
        let rust = read_criterion(&criterion_dir)?;
        let row = &join(
            std::slice::from_ref(id),
            &rust,
            &python_records,
            &rust_errors,
        )[0];
        let show = |o: &Outcome| o.as_ref().map_or("failed".into(), |ns| format_time(*ns));
        eprintln!(
            "[{}/{}] {id}: Rust {}, Python {}",
            i + 1,
            ids.len(),
            show(&row.rust),
            show(&row.python)
        );
    }
    let results = out_dir.join("python.jsonl");
    fs::write(&results, python_log)?;
    eprintln!(
        "(results: {} and {})",
        criterion_dir.display(),
        results.display()
    );
    let rust = read_criterion(&criterion_dir)?;
    report(&join(&ids, &rust, &python_records, &rust_errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn list_keeps_case_names_only() {
        let out = "matmul/f32/128x128x128: benchmark\n\nsdpa/bf16/q1x32x1x64_kv1x4x512x64: benchmark\nops bench: MLX\n";
        assert_eq!(
            parse_list(out),
            ids(&[
                "matmul/f32/128x128x128",
                "sdpa/bf16/q1x32x1x64_kv1x4x512x64"
            ])
        );
    }

    #[test]
    fn heavy_cases_are_the_two_largest_matmuls() {
        assert!(is_heavy("matmul/f32/4096x4096x4096"));
        assert!(is_heavy("matmul/bf16/2048x2048x2048"));
        assert!(!is_heavy("matmul/f32/1024x1024x1024"));
        assert!(!is_heavy("matmul/f32/1x2048x32000"));
        assert!(!is_heavy("rms_norm/f32/1x512x2048"));
    }

    #[test]
    fn filter_matches_names_exactly_and_escapes() {
        let f = exact_filter(&ids(&["add/f32/1048576", "sdpa/f32/q1x2_causal", "a.b/c"]));
        assert_eq!(f, r"^(?:add/f32/1048576|sdpa/f32/q1x2_causal|a\.b/c)$");
    }

    #[test]
    fn python_records_parse_with_errors_and_noise() {
        let out = "bench_ops.py: MLX 0.32.2\n\
                   {\"id\": \"add/f32/1048576\", \"median_ns\": 1500.5, \"samples\": 10, \"iters\": 3}\n\
                   {\"id\": \"decoder_layer/bf16/x\", \"error\": \"ImportError: no mlx_lm\"}\n";
        let records = parse_python(out).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0], ("add/f32/1048576".into(), Ok(1500.5)));
        assert_eq!(
            records[1],
            (
                "decoder_layer/bf16/x".into(),
                Err("ImportError: no mlx_lm".into())
            )
        );
        let err = parse_python("{\"median_ns\": 1}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("without an id"), "{err}");
        let err = parse_python("{\"id\": \"x\"}\n").unwrap_err().to_string();
        assert!(err.contains("neither"), "{err}");
        assert!(parse_python("{not json\n").is_err());
    }

    #[test]
    fn criterion_folder_is_read_by_full_id() {
        let dir = test_support::ScratchDir::new("xtask-opsbench");
        for (path, id, median) in [
            ("add/f32/1048576", "add/f32/1048576", 2500.0),
            ("sdpa/bf16/q_causal", "sdpa/bf16/q_causal", 7.5e6),
        ] {
            for sub in ["new", "base"] {
                let d = dir.join(path).join(sub);
                fs::create_dir_all(&d).unwrap();
                let m = if sub == "new" { median } else { 1.0 };
                fs::write(
                    d.join("benchmark.json"),
                    format!("{{\"full_id\": \"{id}\"}}"),
                )
                .unwrap();
                fs::write(
                    d.join("estimates.json"),
                    format!("{{\"median\": {{\"point_estimate\": {m}}}, \"mean\": {{\"point_estimate\": 0}}}}"),
                )
                .unwrap();
            }
        }
        let medians = read_criterion(&dir).unwrap();
        assert_eq!(medians.len(), 2);
        assert_eq!(medians["add/f32/1048576"], 2500.0);
        assert_eq!(medians["sdpa/bf16/q_causal"], 7.5e6);
        fs::write(dir.join("add/f32/1048576/new/estimates.json"), "{}").unwrap();
        let err = read_criterion(&dir).unwrap_err().to_string();
        assert!(err.contains("median.point_estimate"), "{err}");
    }

    #[test]
    fn join_pairs_by_name_and_table_shows_ratio() {
        let rust: HashMap<String, f64> = [
            ("chain100/f32/16".to_string(), 100_000.0),
            ("sum/f32/1048576".to_string(), 2e6),
        ]
        .into_iter()
        .collect();
        let python = vec![
            ("sum/f32/1048576".to_string(), Ok(1e6)),
            ("chain100/f32/16".to_string(), Ok(250_000.0)),
            ("argmax/f32/1x32000".to_string(), Err("boom".to_string())),
        ];
        let rows = join(
            &ids(&["chain100/f32/16", "sum/f32/1048576", "argmax/f32/1x32000"]),
            &rust,
            &python,
            &HashMap::new(),
        );
        assert_eq!(rows[0].python, Ok(250_000.0));
        assert_eq!(rows[1].rust, Ok(2e6));
        assert_eq!(rows[2].rust, Err("no result".to_string()));
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[2],
            "| chain100 | 16 | f32 | 100 µs | 250 µs | 2.50x |"
        );
        assert_eq!(
            lines[3],
            "| sum | 1048576 | f32 | 2.00 ms | 1.00 ms | 0.50x |"
        );
        assert_eq!(lines[4], "| argmax | 1x32000 | f32 | failed | failed | — |");
        let err = report(&rows).unwrap_err().to_string();
        assert!(
            err.contains("argmax/f32/1x32000 (Rust): no result"),
            "{err}"
        );
        assert!(err.contains("argmax/f32/1x32000 (Python): boom"), "{err}");
    }

    #[test]
    fn rust_failures_carry_their_message() {
        let errors: HashMap<String, String> =
            [("sum/f32/1".to_string(), "MLX: out of memory".to_string())].into();
        let rows = join(&ids(&["sum/f32/1"]), &HashMap::new(), &[], &errors);
        assert_eq!(rows[0].rust, Err("MLX: out of memory".to_string()));
        assert_eq!(rows[0].python, Err("no result".to_string()));
    }

    #[test]
    fn bench_executable_is_found_in_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"mlx_metal","kind":["lib"]},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"ops","kind":["bench"]},"executable":"/t/release/deps/ops-1"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            bench_executable(messages),
            Some(PathBuf::from("/t/release/deps/ops-1"))
        );
        assert_eq!(bench_executable("not json\n"), None);
    }

    #[test]
    fn times_get_three_significant_digits() {
        assert_eq!(format_time(812.0), "812 ns");
        assert_eq!(format_time(12_345.0), "12.3 µs");
        assert_eq!(format_time(4_561_000.0), "4.56 ms");
        assert_eq!(format_time(44.2e9), "44.2 s");
    }
}
