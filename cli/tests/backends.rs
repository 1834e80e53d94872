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

/// The fields of an available backend's line (separated by two spaces).
#[cfg(feature = "metal")]
fn native_fields(env: &[(&str, &str)]) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlx-infer"));
    cmd.arg("backends")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("OPENBLAS_NUM_THREADS")
        .env_remove("OMP_NUM_THREADS")
        .env_remove("GOTO_NUM_THREADS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run mlx-infer");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let name = if cfg!(all(target_os = "macos", target_arch = "aarch64")) {
        "metal"
    } else {
        "mlx"
    };
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{stdout}"));
    line.split("  ")
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(feature = "metal")]
fn field<'a>(fields: &'a [String], key: &str) -> &'a str {
    fields
        .iter()
        .find_map(|f| f.strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no `{key}` field in {fields:?}"))
}

#[cfg(feature = "metal")]
#[test]
fn the_native_line_names_its_blas_and_what_auto_computes_in() {
    let fields = native_fields(&[]);
    // the earlier fields are unchanged
    assert!(field(&fields, "MLX").starts_with("0.32.2"), "{fields:?}");
    assert_eq!(field(&fields, "priority"), "100");
    let device = field(&fields, "device");
    let dtype = field(&fields, "dtype");
    if device == "cpu" {
        assert_eq!(
            dtype, "auto: float32 for bfloat16/float16 weights (cpu)",
            "{fields:?}"
        );
    } else {
        assert!(
            dtype.starts_with("auto: the weights' own type"),
            "{fields:?}"
        );
    }
    let blas = field(&fields, "blas");
    let openblas = std::path::PathBuf::from(format!(
        "/usr/lib/{}-linux-gnu/openblas-pthread/libblas.so.3",
        std::env::consts::ARCH
    ));
    if !cfg!(target_os = "linux") {
        eprintln!("skipped the OpenBLAS check: not Linux (blas {blas})");
        return;
    }
    if !openblas.is_file() {
        eprintln!(
            "skipped the OpenBLAS check: {} is missing (apt-get install libopenblas0-pthread); blas {blas}",
            openblas.display()
        );
        assert!(blas.starts_with("reference"), "{fields:?}");
        return;
    }
    let cores = std::thread::available_parallelism().unwrap().get();
    let threads = if cores == 1 { "thread" } else { "threads" };
    assert!(blas.starts_with("OpenBLAS 0."), "{fields:?}");
    assert!(
        blas.ends_with(&format!(", {cores} {threads}")),
        "OpenBLAS should use the {cores} cores this process may use: {fields:?}"
    );
    // a count the user chose is kept
    let fields = native_fields(&[("OPENBLAS_NUM_THREADS", "1")]);
    assert!(field(&fields, "blas").ends_with(", 1 thread"), "{fields:?}");
}
