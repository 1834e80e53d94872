//! Without a Python that imports mlx_lm the backend says so (own process:
//! the availability answer is cached per process).

#[test]
fn missing_python_makes_the_backend_unavailable_with_a_reason() {
    std::env::set_var("MLXLM_PYTHON", "/no/such/python3");
    mlxlm::ensure_registered();
    let backend = inference::backends()
        .into_iter()
        .find(|b| b.name() == "mlxlm")
        .unwrap();
    let status = backend.status();
    assert!(!status.available);
    let reason = status.reason.unwrap();
    assert!(
        reason.contains("/no/such/python3") && reason.contains("MLXLM_PYTHON"),
        "{reason}"
    );
    let err = inference::load_model_with(
        env!("CARGO_MANIFEST_DIR"),
        inference::LoadOptions::default().backend("mlxlm"),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, inference::Error::BackendUnavailable { .. }),
        "{err}"
    );
}
