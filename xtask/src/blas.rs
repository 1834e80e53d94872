//! OpenBLAS for MLX's Linux CPU wheel.
//!
//! The `mlx-cpu` wheel carries its own copy of the reference (netlib)
//! BLAS and LAPACK in `mlx_cpu.libs/` (`libblas-<hash>.so.3.10.0`,
//! `liblapack-<hash>.so.3.10.0`), which `libmlx.so` finds through its
//! RPATH. Float32 matrix products through it run at a few GFLOP/s; with
//! OpenBLAS they run about thirty times faster. build-mlx replaces those
//! two files in the cache's copy of the wheel by links to the system's
//! OpenBLAS (Debian's `libopenblas0-pthread`), so that every binary, test
//! and the CLI use it with no environment variable. The originals are kept
//! under `mlx_cpu.libs/reference/`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The Debian/Ubuntu package that provides the optimised BLAS and LAPACK.
pub const PACKAGE: &str = "libopenblas0-pthread";

/// Where the bundled originals are kept once replaced.
const KEPT: &str = "reference";

/// OpenBLAS's BLAS and LAPACK interface libraries on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBlas {
    /// `libblas.so.3` of OpenBLAS (CBLAS and Fortran BLAS).
    pub blas: PathBuf,
    /// `liblapack.so.3` of OpenBLAS.
    pub lapack: PathBuf,
}

/// The folder Debian installs `libopenblas0-pthread`'s interface libraries in.
pub fn debian_dir() -> PathBuf {
    PathBuf::from(format!(
        "/usr/lib/{}-linux-gnu/openblas-pthread",
        std::env::consts::ARCH
    ))
}

/// OpenBLAS in `dir`, if both of its interface libraries are there.
pub fn find_in(dir: &Path) -> Option<OpenBlas> {
    let found = OpenBlas {
        blas: dir.join("libblas.so.3"),
        lapack: dir.join("liblapack.so.3"),
    };
    (found.blas.is_file() && found.lapack.is_file()).then_some(found)
}

/// OpenBLAS on this machine (Linux only; macOS uses Accelerate).
pub fn find() -> Option<OpenBlas> {
    if cfg!(target_os = "linux") {
        find_in(&debian_dir())
    } else {
        None
    }
}

/// The one message printed when MLX stays on its reference BLAS.
pub fn fallback_message() -> String {
    format!(
        "note: OpenBLAS was not found (no {}); MLX keeps the reference BLAS bundled \
         with its wheel, which makes float32 matrix products about 30x slower on the CPU. \
         For the fast one: apt-get install {PACKAGE}, then run `cargo xtask build-mlx` again.",
        debian_dir().join("libblas.so.3").display()
    )
}

/// Which bundled library a file of a wheel's `*.libs` folder is, if any.
fn bundled_kind(name: &str) -> Option<&'static str> {
    if !name.contains(".so") {
        return None;
    }
    if name.starts_with("libblas-") {
        Some("blas")
    } else if name.starts_with("liblapack-") {
        Some("lapack")
    } else {
        None
    }
}

/// The bundled BLAS/LAPACK files of the wheels installed in `site`
/// (`<site>/*.libs/libblas-*.so*`, `liblapack-*.so*`), sorted.
fn bundled(site: &Path) -> Result<Vec<(PathBuf, &'static str)>> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(site) else {
        return Ok(found);
    };
    for dir in entries.flatten().map(|e| e.path()) {
        if !dir.is_dir() || dir.extension() != Some(std::ffi::OsStr::new("libs")) {
            continue;
        }
        for entry in fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .flatten()
        {
            if let Some(kind) = bundled_kind(&entry.file_name().to_string_lossy()) {
                found.push((entry.path(), kind));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Points the bundled BLAS and LAPACK of the wheels in `site` at OpenBLAS,
/// keeping each original under `reference/` next to it. Idempotent;
/// returns how many libraries now lead to OpenBLAS (0 when the wheel
/// bundles none).
pub fn wire(site: &Path, openblas: &OpenBlas) -> Result<usize> {
    let mut linked = 0;
    for (path, kind) in bundled(site)? {
        let target = if kind == "blas" {
            &openblas.blas
        } else {
            &openblas.lapack
        };
        let meta = fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            if fs::read_link(&path)? == *target {
                linked += 1;
                continue;
            }
            fs::remove_file(&path)?;
        } else {
            let dir = path.parent().context("a bundled library has no folder")?;
            let kept = dir.join(KEPT);
            fs::create_dir_all(&kept)?;
            let name = path.file_name().context("a bundled library has no name")?;
            fs::rename(&path, kept.join(name))
                .with_context(|| format!("cannot move {} aside", path.display()))?;
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(target, &path)
            .with_context(|| format!("cannot link {} -> {}", path.display(), target.display()))?;
        linked += 1;
    }
    Ok(linked)
}

/// True when every bundled library of `site` is a working link to OpenBLAS.
pub fn is_wired(site: &Path, openblas: &OpenBlas) -> bool {
    bundled(site).is_ok_and(|libs| {
        libs.iter().all(|(path, kind)| {
            let target = if *kind == "blas" {
                &openblas.blas
            } else {
                &openblas.lapack
            };
            fs::read_link(path).is_ok_and(|t| t == *target) && path.is_file()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> test_support::ScratchDir {
        test_support::ScratchDir::new(&format!("xtask-blas-{name}"))
    }

    #[test]
    fn bundled_reference_libraries_become_links_to_openblas() {
        let root = scratch("wire");
        let system = root.join("system");
        fs::create_dir_all(&system).unwrap();
        fs::write(system.join("libblas.so.3"), "openblas blas").unwrap();
        fs::write(system.join("liblapack.so.3"), "openblas lapack").unwrap();
        let openblas = find_in(&system).expect("both libraries present");

        let site = root.join("site");
        let libs = site.join("mlx_cpu.libs");
        fs::create_dir_all(&libs).unwrap();
        fs::write(libs.join("libblas-bd8a282c.so.3.10.0"), "reference blas").unwrap();
        fs::write(
            libs.join("liblapack-86b2c207.so.3.10.0"),
            "reference lapack",
        )
        .unwrap();
        fs::write(libs.join("libgfortran-f7379c93.so.5.0.0"), "gfortran").unwrap();
        assert!(!is_wired(&site, &openblas));

        assert_eq!(wire(&site, &openblas).unwrap(), 2);
        assert!(is_wired(&site, &openblas));
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(
            read(libs.join("libblas-bd8a282c.so.3.10.0")),
            "openblas blas"
        );
        assert_eq!(
            read(libs.join("liblapack-86b2c207.so.3.10.0")),
            "openblas lapack"
        );
        assert_eq!(
            read(libs.join("reference/libblas-bd8a282c.so.3.10.0")),
            "reference blas"
        );
        // other bundled libraries are left alone
        assert!(
            !fs::symlink_metadata(libs.join("libgfortran-f7379c93.so.5.0.0"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // a second run changes nothing and keeps the originals
        assert_eq!(wire(&site, &openblas).unwrap(), 2);
        assert_eq!(
            read(libs.join("reference/liblapack-86b2c207.so.3.10.0")),
            "reference lapack"
        );

        // OpenBLAS gone: the links break and the check says so
        fs::remove_file(system.join("libblas.so.3")).unwrap();
        assert!(!is_wired(&site, &openblas));
        assert_eq!(find_in(&system), None);
    }

    #[test]
    fn a_wheel_without_bundled_blas_is_left_alone() {
        let root = scratch("none");
        fs::create_dir_all(root.join("site/mlx/lib")).unwrap();
        let openblas = OpenBlas {
            blas: root.join("libblas.so.3"),
            lapack: root.join("liblapack.so.3"),
        };
        assert_eq!(wire(&root.join("site"), &openblas).unwrap(), 0);
        assert_eq!(wire(&root.join("missing"), &openblas).unwrap(), 0);
    }

    #[test]
    fn the_fallback_message_names_the_package() {
        let m = fallback_message();
        assert!(m.contains("apt-get install libopenblas0-pthread"), "{m}");
        assert!(m.contains("reference BLAS"), "{m}");
        assert_eq!(m.lines().count(), 1, "{m}");
    }
}
