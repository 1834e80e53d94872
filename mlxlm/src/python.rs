//! Which Python runs the bridge, and whether it has mlx_lm.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The interpreter: `MLXLM_PYTHON`, else `python3`.
pub fn python_command() -> String {
    std::env::var("MLXLM_PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// What the bridge's Python has: MLX and mlx_lm versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonMlx {
    /// `mlx.core.__version__`.
    pub mlx: String,
    /// The installed `mlx-lm` version.
    pub mlx_lm: String,
}

/// The versions when the interpreter imports `mlx_lm`, else why not.
/// Asked once per process (importing mlx_lm takes a second or two).
pub fn python_status() -> Result<PythonMlx, String> {
    static STATUS: OnceLock<Result<PythonMlx, String>> = OnceLock::new();
    STATUS.get_or_init(probe).clone()
}

fn probe() -> Result<PythonMlx, String> {
    let python = python_command();
    let out = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m, mlx.core as mx, mlx_lm; print(mx.__version__, m.version('mlx-lm'))",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{python}` ({e}); set MLXLM_PYTHON"))?;
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        if let (Some(mlx), Some(mlx_lm)) = (words.next(), words.next()) {
            return Ok(PythonMlx {
                mlx: mlx.to_string(),
                mlx_lm: mlx_lm.to_string(),
            });
        }
        return Err(format!("`{python}` printed no versions: {text:?}"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().map(str::trim).find(|l| !l.is_empty());
    let why = match last {
        Some(line) => line.to_string(),
        None => crate::bridge::describe_exit(out.status),
    };
    Err(format!(
        "`{python}` cannot import mlx_lm ({why}); install it with `pip install mlx-lm` or set MLXLM_PYTHON"
    ))
}
