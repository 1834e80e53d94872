//! Generates bindings to mlx-c and links `mlxc` and `mlx`.
//!
//! Where the libraries are: `MLX_C_DIR` (an install prefix holding
//! `include/mlx/c/mlx.h` and `lib/libmlxc.*`), else `dist/` at the workspace
//! root as `cargo xtask build-mlx` leaves it. `dist/paths.txt` (written by the
//! xtask) names the folder of `libmlx`; `MLX_LIB_DIR` overrides it.
//!
//! Dependents receive `DEP_MLXC_RPATH` (folders joined by `:`) to put into
//! their binaries' rpath.

use std::env;
use std::path::{Path, PathBuf};

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

fn read_paths(dist: &Path) -> Vec<(String, PathBuf)> {
    let Ok(text) = std::fs::read_to_string(dist.join("paths.txt")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), PathBuf::from(v.trim())))
        .collect()
}

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dist = manifest
        .parent()
        .expect("crate lives in the workspace")
        .join("dist");
    println!("cargo:rerun-if-env-changed=MLX_C_DIR");
    println!("cargo:rerun-if-env-changed=MLX_LIB_DIR");
    println!(
        "cargo:rerun-if-changed={}",
        dist.join("paths.txt").display()
    );

    let paths = read_paths(&dist);
    let lookup = |key: &str| paths.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let prefix = env::var_os("MLX_C_DIR")
        .map(PathBuf::from)
        .or_else(|| lookup("mlxc"))
        .unwrap_or_else(|| dist.join("mlxc"));
    let header = prefix.join("include/mlx/c/mlx.h");
    if !header.is_file() {
        fail(&format!(
            "mlx-c not found at {} (no include/mlx/c/mlx.h): run `cargo xtask build-mlx` first, or set MLX_C_DIR",
            prefix.display()
        ));
    }
    let mut lib_dirs = vec![prefix.join("lib")];
    if let Some(dir) = env::var_os("MLX_LIB_DIR")
        .map(PathBuf::from)
        .or_else(|| lookup("mlx_lib"))
    {
        lib_dirs.push(dir);
    }
    for dir in &lib_dirs {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    println!("cargo:rustc-link-lib=dylib=mlxc");
    if lib_dirs.len() > 1 {
        println!("cargo:rustc-link-lib=dylib=mlx");
    }
    let rpath = lib_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    // Read by dependents as DEP_MLXC_RPATH.
    println!("cargo:rpath={rpath}");
    println!("cargo:include={}", prefix.join("include").display());
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
        for dir in &lib_dirs {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        }
    }

    let bindings = bindgen::Builder::default()
        .header(header.display().to_string())
        .clang_arg(format!("-I{}", prefix.join("include").display()))
        .allowlist_function("_?mlx_.*")
        // For mlx_print_graph, which writes to a C stream.
        .allowlist_function("fopen|fclose")
        .allowlist_type("_?mlx_.*")
        .default_enum_style(bindgen::EnumVariation::Rust {
            non_exhaustive: false,
        })
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed on {}: {e}", header.display())));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("bindings.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", out.display())));
}
