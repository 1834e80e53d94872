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
