//! Fixture helpers for the mlxlm tests (fixtures come from `cargo xtask fixtures`).
#![allow(dead_code)]

use std::sync::Once;

#[allow(unused_imports)]
pub use test_support::{fixture_models as models, fixtures, ids, reference};

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
