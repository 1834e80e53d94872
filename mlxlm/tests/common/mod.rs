//! Fixture helpers for the mlxlm tests (fixtures come from `cargo xtask fixtures`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Once;

use serde_json::Value;

/// The fixtures folder; fails with the command to run when it is missing.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("MLX_INFER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures"));
    assert!(
        dir.join("index.json").is_file(),
        "no fixtures in {}: run `cargo xtask fixtures` (or `cargo xtask test`)",
        dir.display()
    );
    dir
}

/// Points the backend at the fixtures' Python (unless MLXLM_PYTHON is set).
pub fn use_fixture_python() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        mlxlm::ensure_registered();
        if std::env::var_os("MLXLM_PYTHON").is_none() {
            std::env::set_var("MLXLM_PYTHON", fixtures().join("python"));
        }
    });
}

/// Every fixture model folder.
pub fn models() -> Vec<PathBuf> {
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("index.json")).unwrap())
            .unwrap();
    let mut names: Vec<&String> = index.as_object().unwrap().keys().collect();
    names.sort();
    names.into_iter().map(|n| fixtures().join(n)).collect()
}

/// The recorded mlx_lm answers of a model.
pub fn reference(model: &std::path::Path) -> Value {
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
