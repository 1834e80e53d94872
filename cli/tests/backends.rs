//! The `mlx-infer` binary: version and backend listing.

use std::process::Command;

fn mlx_infer(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-infer"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run mlx-infer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_is_printed() {
    let (ok, stdout, _) = mlx_infer(&["--version"]);
    assert!(ok);
    assert_eq!(
        stdout.trim(),
        format!("mlx-infer {}", env!("CARGO_PKG_VERSION"))
    );
}

#[cfg(feature = "metal")]
#[test]
fn mlx_backend_is_listed_as_available_with_its_version() {
    let (ok, stdout, stderr) = mlx_infer(&["backends"]);
    assert!(ok, "{stderr}");
    let name = inference::native_backend_name();
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[1], "available", "{line}");
    assert!(line.contains("MLX 0.32.2"), "{line}");
    assert!(line.contains("device "), "{line}");
}

#[test]
fn unknown_command_fails_with_usage() {
    let (ok, _, stderr) = mlx_infer(&["frobnicate"]);
    assert!(!ok);
    assert!(stderr.contains("Usage"), "{stderr}");
}
