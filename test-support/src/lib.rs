//! Helpers the workspace's tests share: where the reference fixtures are
//! (made by `cargo xtask fixtures`), which models they hold, and mlx_lm's
//! recorded answers on each.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The fixtures folder (`MLX_INFER_FIXTURES`, else `fixtures/` at the
/// workspace root); panics with the command to run when it is missing.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("MLX_INFER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures"));
    assert!(
        dir.join("index.json").is_file(),
        "no fixtures in {}: run `cargo xtask fixtures` (or `cargo xtask test`)",
        dir.display()
    );
    dir
}

/// Every fixture model folder, sorted by name.
pub fn fixture_models() -> Vec<PathBuf> {
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("index.json")).unwrap())
            .unwrap();
    let mut names: Vec<&String> = index.as_object().unwrap().keys().collect();
    names.sort();
    names.into_iter().map(|n| fixtures().join(n)).collect()
}

/// mlx_lm's recorded answers for a fixture model.
pub fn reference(model: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(model.join("reference.json")).unwrap()).unwrap()
}

/// Token ids of a JSON array.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The Python of the fixtures' mlx_lm environment (`MLXLM_PYTHON`, else
/// `fixtures/python`).
pub fn python() -> PathBuf {
    std::env::var_os("MLXLM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures().join("python"))
}

/// Runs `cmd` with `stdin` written to its standard input (then closed) and
/// its standard output and error captured.
pub fn output_with_stdin(cmd: &mut std::process::Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Each line of `stdout` as JSON; a line that is not JSON fails the test,
/// naming it.
pub fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Runs `cmd` with `stdin` piped in: its exit code (-1 when killed by a
/// signal), its standard output's JSON lines and its standard error.
pub fn run_json(cmd: &mut std::process::Command, stdin: &[u8]) -> (i32, Vec<Value>, String) {
    let out = output_with_stdin(cmd, stdin);
    (
        out.status.code().unwrap_or(-1),
        json_lines(&out.stdout),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh path under the system's temporary folder whose name holds
/// `name`, this process id and a number no other scratch path of this
/// process has.
fn scratch_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "mlx-infer-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// A scratch directory under the system's temporary folder, removed (with
/// its contents) on drop. It dereferences to its path: keep the
/// `ScratchDir` itself (not a copy of its path) for as long as the
/// directory is used.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A fresh empty directory whose name holds `name` and this process id.
    pub fn new(name: &str) -> ScratchDir {
        let dir = scratch_path(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }

    /// A copy of the files of `model` (a fixture folder).
    pub fn copy_of(model: &Path, name: &str) -> ScratchDir {
        let dir = ScratchDir::new(name);
        for entry in std::fs::read_dir(model).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
        dir
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Reads, edits and writes back its `config.json`.
    pub fn edit_config(&self, edit: impl FnOnce(&mut Value)) {
        let path = self.0.join("config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    }

    /// Rewrites `file` (a safetensors file in the directory) after `edit`
    /// has changed its JSON header and/or its data bytes.
    pub fn edit_safetensors(&self, file: &str, edit: impl FnOnce(&mut Value, &mut Vec<u8>)) {
        let path = self.0.join(file);
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let mut data = bytes[8 + n..].to_vec();
        edit(&mut header, &mut data);
        let header = serde_json::to_vec(&header).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        std::fs::write(&path, out).unwrap();
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The path of a scratch file under the system's temporary folder (not
/// made here), removed on drop if it was made. It dereferences to its
/// path: keep the `ScratchFile` itself for as long as the file is used.
pub struct ScratchFile(PathBuf);

impl ScratchFile {
    /// A fresh path whose name holds `name` (its extension included) and
    /// this process id.
    pub fn new(name: &str) -> ScratchFile {
        let path = scratch_path(name);
        let _ = std::fs::remove_file(&path);
        ScratchFile(path)
    }

    /// A scratch file holding `contents`.
    pub fn with_contents(name: &str, contents: impl AsRef<[u8]>) -> ScratchFile {
        let file = ScratchFile::new(name);
        std::fs::write(&file.0, contents).unwrap();
        file
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for ScratchFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchFile {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_paths_are_removed_on_drop() {
        let dir = ScratchDir::new("guard");
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/c.txt"), "x").unwrap();
        let file = ScratchFile::with_contents("guard.txt", "y");
        let unmade = ScratchFile::new("unmade.txt");
        let (d, f, u) = (dir.to_path_buf(), file.to_path_buf(), unmade.to_path_buf());
        assert_ne!(d, f);
        assert!(d.is_dir() && f.is_file() && !u.exists());
        drop((dir, file, unmade));
        assert!(!d.exists() && !f.exists() && !u.exists());
    }
}
