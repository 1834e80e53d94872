//! `cargo xtask fixtures`: the reference models and mlx_lm's answers on them.
//!
//! A virtual environment with `mlx[cpu]` and `mlx-lm` (the versions the
//! project pins) lives in the per-user cache; `xtask/python/make_fixtures.py`
//! runs in it and writes `fixtures/` (gitignored). `fixtures/python` runs
//! the environment's interpreter, which the tests use for the `mlxlm`
//! backend. A stamp makes a second run a no-op.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build_mlx::{cache_root, run_logged, short_hash, MLX_VERSION};
use crate::process::{root, succeeds};

const MLX_LM_VERSION: &str = "0.32.2";
/// The official API clients the server's tests and `bench serve` drive
/// `mlx-infer serve` with.
const OPENAI_VERSION: &str = "3.54.0";
const ANTHROPIC_VERSION: &str = "2.12.0";
const SCRIPT: &str = include_str!("../python/make_fixtures.py");

/// The packages the environment holds: what makes the fixtures, and the
/// API clients.
fn requirements() -> Vec<String> {
    let mut reqs = model_requirements();
    reqs.push(format!("openai=={OPENAI_VERSION}"));
    reqs.push(format!("anthropic=={ANTHROPIC_VERSION}"));
    reqs
}

/// The packages the fixtures depend on (their stamp names these only, so
/// adding a client library does not remake them).
fn model_requirements() -> Vec<String> {
    let mlx = if cfg!(target_os = "linux") {
        format!("mlx[cpu]=={MLX_VERSION}")
    } else {
        format!("mlx=={MLX_VERSION}")
    };
    vec![mlx, format!("mlx-lm=={MLX_LM_VERSION}")]
}

/// Creates (once) the Python environment with mlx_lm; returns its interpreter.
pub fn python_env() -> Result<PathBuf> {
    let reqs = requirements();
    let dir = cache_root()?.join(format!("python-mlxlm-{}", short_hash(&reqs.join(" "))));
    let python = dir.join("bin/python");
    let stamp = dir.join("stamp.txt");
    if fs::read_to_string(&stamp).ok() == Some(reqs.join(" ")) && python.is_file() {
        return Ok(python);
    }
    if !succeeds("python3", &["-m", "venv", "--help"]) {
        bail!("python3 with venv is needed (install: apt-get install python3-venv)");
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(dir.parent().expect("cache has a parent"))?;
    let mut venv = Command::new("python3");
    venv.args(["-m", "venv"]).arg(&dir);
    crate::process::run_visible(venv, "python3 -m venv")?;
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
    ])
    .args(&reqs);
    run_logged(
        pip,
        &format!("pip install {}", reqs.join(" ")),
        &dir.join("pip.log"),
    )?;
    fs::write(&stamp, reqs.join(" "))?;
    Ok(python)
}

/// Runs `cargo xtask fixtures`; returns the fixtures folder.
pub fn run() -> Result<PathBuf> {
    let python = python_env()?;
    let out = root().join("fixtures");
    let key = format!("{}\n{}", model_requirements().join(" "), short_hash(SCRIPT));
    let stamp = out.join("stamp.txt");
    if fs::read_to_string(&stamp).ok() == Some(key.clone()) && out.join("index.json").is_file() {
        write_python_wrapper(&out, &python)?;
        println!("fixtures are up to date in {}", out.display());
        return Ok(out);
    }
    let tmp = root().join("fixtures.tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    let mut cmd = Command::new(&python);
    cmd.arg(root().join("xtask/python/make_fixtures.py"))
        .arg(&tmp);
    run_logged(
        cmd,
        "make fixtures with mlx_lm",
        &cache_root()?.join("fixtures.log"),
    )?;
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("cannot replace {}", out.display()))?;
    }
    fs::rename(&tmp, &out)?;
    fs::write(&stamp, key)?;
    write_python_wrapper(&out, &python)?;
    println!("fixtures written to {}", out.display());
    Ok(out)
}

/// Writes `fixtures/python`, a wrapper that runs the environment's
/// interpreter (a plain symlink would not activate the environment).
fn write_python_wrapper(out: &Path, python: &Path) -> Result<()> {
    let wrapper = out.join("python");
    let text = format!("#!/bin/sh\nexec \"{}\" \"$@\"\n", python.display());
    if fs::read_to_string(&wrapper).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let _ = fs::remove_file(&wrapper);
    fs::write(&wrapper, text)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}
