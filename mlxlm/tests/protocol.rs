//! A bridge that answers garbage is an error, not a hang (own process: it
//! replaces the interpreter with a fake one).

use std::os::unix::fs::PermissionsExt;

#[test]
fn invalid_json_from_the_process_is_a_protocol_error() {
    let dir = test_support::ScratchDir::new("mlxlm-fake");
    let fake = dir.join("python");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho '{\"ready\": true}'\nread line\necho 'this is not json'\necho 'fake bridge exploded' >&2\nsleep 5\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    std::env::set_var("MLXLM_PYTHON", &fake);
    let started = std::time::Instant::now();
    let err = mlxlm::MlxLmModel::load(&dir).err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("invalid line") && text.contains("this is not json"),
        "{text}"
    );
    assert!(
        text.contains("fake bridge exploded"),
        "stderr tail missing: {text}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}
