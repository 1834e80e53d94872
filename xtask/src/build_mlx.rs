//! `cargo xtask build-mlx`: MLX from PyPI, mlx-c from the crates.io package
//! `mlx-sys` (or `MLX_C_SRC`), built with CMake and installed into a
//! per-user cache that `dist/` links to, so every clone on a machine shares
//! one build. A second run checks a stamp and returns at once. On Linux the
//! wheel's bundled reference BLAS is replaced by OpenBLAS (see [`crate::blas`]).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::blas::{self, OpenBlas};
use crate::process::{root, succeeds};

/// MLX version the bindings are written against.
pub const MLX_VERSION: &str = "0.32.2";
/// mlx-c version (the one the crates.io package `mlx-sys` 0.7.0 carries).
pub const MLX_C_VERSION: &str = "0.7.0";
const MLX_SYS_VERSION: &str = "0.7.0";

/// Options of `cargo xtask build-mlx`.
#[derive(clap::Args, Default, Debug)]
pub struct Options {
    /// Use MLX's CUDA build (`mlx-cuda-12` or `mlx-cuda-13`) instead of the CPU one.
    #[arg(long, value_name = "12|13", num_args = 0..=1, default_missing_value = "13")]
    pub cuda: Option<u32>,
}

/// Where MLX comes from.
enum MlxSource {
    /// A PyPI wheel installed with `pip --target`.
    Wheel(&'static str),
    /// An existing install named by `MLX_DIR`.
    Existing(PathBuf),
}

fn mlx_source(opts: &Options) -> Result<MlxSource> {
    if let Some(dir) = std::env::var_os("MLX_DIR") {
        return Ok(MlxSource::Existing(PathBuf::from(dir)));
    }
    Ok(MlxSource::Wheel(match opts.cuda {
        Some(12) => "mlx-cuda-12",
        Some(13) => "mlx-cuda-13",
        Some(other) => bail!("--cuda takes 12 or 13, not {other}"),
        None if cfg!(target_os = "macos") => "mlx-metal",
        None => "mlx-cpu",
    }))
}

/// The per-user cache root: `MLX_INFER_CACHE`, else `$XDG_CACHE_HOME/mlx-infer`,
/// else `~/.cache/mlx-infer`.
pub fn cache_root() -> Result<PathBuf> {
    inference::discover::cache_root().context("HOME is not set; set MLX_INFER_CACHE")
}

/// A short stable hash for cache keys (FNV-1a).
pub fn short_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:08x}", h as u32)
}

/// The BLAS build-mlx gives a wheel's MLX: OpenBLAS when the machine has
/// it, else the wheel's bundled reference BLAS. `None` where nothing is
/// changed (macOS, `MLX_DIR`).
fn blas_for(source: &MlxSource) -> Option<Option<OpenBlas>> {
    (cfg!(target_os = "linux") && matches!(source, MlxSource::Wheel(_))).then(blas::find)
}

/// What a build is made of; it names the cache folder and fills the stamp.
/// The BLAS is part of it, so that installing OpenBLAS later makes a new
/// build rather than reusing one wired to the reference BLAS.
fn build_key(source: &MlxSource, blas: Option<&Option<OpenBlas>>) -> String {
    let mlx = match source {
        MlxSource::Wheel(name) => name.to_string(),
        MlxSource::Existing(dir) => format!("mlxdir-{}", short_hash(&dir.display().to_string())),
    };
    let blas = match blas {
        Some(Some(_)) => "_openblas",
        Some(None) => "_refblas",
        None => "",
    };
    let src = std::env::var("MLX_C_SRC")
        .map(|s| format!("-src-{}", short_hash(&s)))
        .unwrap_or_default();
    let compat = short_hash(include_str!("../native/format_compat.h"));
    format!(
        "mlx-{MLX_VERSION}_mlxc-{MLX_C_VERSION}_{mlx}{src}{blas}_{}-{}_{compat}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Runs `cargo xtask build-mlx`.
pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let source = mlx_source(opts)?;
    let blas = blas_for(&source);
    let key = build_key(&source, blas.as_ref());
    let prefix = cache_root()?.join(&key);
    let dist = root().join("dist");
    let stamp = prefix.join("stamp.txt");

    if fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str())
        && installed(&prefix)
        && blas_in_place(&prefix, blas.as_ref())
    {
        link_dist(&dist, &prefix)?;
        println!(
            "MLX {MLX_VERSION} and mlx-c {MLX_C_VERSION} are up to date in {}{} ({:.1}s)",
            dist.display(),
            blas_note(blas.as_ref()),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    check_prerequisites(&source, blas.as_ref())?;
    fs::create_dir_all(&prefix).with_context(|| format!("cannot create {}", prefix.display()))?;
    let mlx_cmake_dir = install_mlx(&source, &prefix)?;
    match &blas {
        Some(Some(openblas)) => {
            let n = blas::wire(&prefix.join("python"), openblas)?;
            println!(
                "  BLAS: {n} bundled reference libraries of the wheel now lead to OpenBLAS ({})",
                openblas.blas.display()
            );
        }
        Some(None) => println!("{}", blas::fallback_message()),
        None => {}
    }
    let mlx_lib = mlx_lib_dir(&mlx_cmake_dir)?;
    let src = mlx_c_sources(&prefix)?;
    build_mlx_c(&src, &mlx_cmake_dir, &mlx_lib, &prefix)?;

    fs::write(
        prefix.join("paths.txt"),
        format!(
            "mlxc={}\nmlx_lib={}\nmlx_cmake={}\n",
            prefix.join("mlxc").display(),
            mlx_lib.display(),
            mlx_cmake_dir.display()
        ),
    )?;
    fs::write(&stamp, &key)?;
    link_dist(&dist, &prefix)?;
    println!(
        "MLX {MLX_VERSION} and mlx-c {MLX_C_VERSION} installed in {} -> {} ({:.0}s)",
        dist.display(),
        prefix.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether the wheel's BLAS is as the key says (links to OpenBLAS that
/// still resolve); builds that change nothing always are.
fn blas_in_place(prefix: &Path, blas: Option<&Option<OpenBlas>>) -> bool {
    match blas {
        Some(Some(openblas)) => blas::is_wired(&prefix.join("python"), openblas),
        _ => true,
    }
}

/// What the up-to-date line says about the BLAS.
fn blas_note(blas: Option<&Option<OpenBlas>>) -> String {
    match blas {
        Some(Some(_)) => ", BLAS: OpenBLAS".into(),
        Some(None) => format!(
            ", BLAS: MLX's bundled reference BLAS (slow; apt-get install {} and run again for OpenBLAS)",
            blas::PACKAGE
        ),
        None => String::new(),
    }
}

fn installed(prefix: &Path) -> bool {
    prefix.join("paths.txt").is_file()
        && prefix.join("mlxc/include/mlx/c/mlx.h").is_file()
        && ["lib/libmlxc.so", "lib/libmlxc.dylib"]
            .iter()
            .any(|l| prefix.join("mlxc").join(l).is_file())
}

/// Points `dist` at `prefix`. A `dist` that is not ours (a real folder
/// without our stamp, or a file) is left alone and reported.
fn link_dist(dist: &Path, prefix: &Path) -> Result<()> {
    match fs::symlink_metadata(dist) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(dist)? == prefix {
                return Ok(());
            }
            fs::remove_file(dist)?;
        }
        Ok(_) => bail!(
            "{} exists and is not a link made by build-mlx; move it away and run again",
            dist.display()
        ),
        Err(_) => {}
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(prefix, dist)
        .with_context(|| format!("cannot link {} -> {}", dist.display(), prefix.display()))?;
    #[cfg(not(unix))]
    bail!("build-mlx supports Linux and macOS only");
    // mlx-metal-sys rebuilds when dist/paths.txt is newer than its last
    // build; a build made earlier (another checkout's) is not, so renew it.
    let paths = prefix.join("paths.txt");
    if let Ok(text) = fs::read(&paths) {
        fs::write(&paths, text)?;
    }
    Ok(())
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Fails, listing every missing tool with its install command, when a
/// required one is missing; OpenBLAS (optional: without it MLX falls back
/// to its reference BLAS) is named in that list when it is missing too.
fn check_prerequisites(source: &MlxSource, blas: Option<&Option<OpenBlas>>) -> Result<()> {
    let linux = cfg!(target_os = "linux");
    let hint = |debian: &str, mac: &str| {
        if linux {
            debian.to_string()
        } else {
            mac.to_string()
        }
    };
    let mut missing = Vec::new();
    if matches!(source, MlxSource::Wheel(_)) && !succeeds(&python(), &["-m", "pip", "--version"]) {
        missing.push(format!(
            "python3 with pip (install: {})",
            hint("apt-get install python3 python3-pip", "brew install python")
        ));
    }
    if !succeeds("cmake", &["--version"]) {
        missing.push(format!(
            "cmake (install: {})",
            hint("apt-get install cmake", "brew install cmake")
        ));
    }
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if !succeeds(&cxx, &["--version"]) {
        missing.push(format!(
            "a C++ compiler `{cxx}` (install: {})",
            hint("apt-get install g++", "xcode-select --install")
        ));
    }
    if linux && !libclang_present() {
        missing.push("libclang, used by bindgen (install: apt-get install libclang-dev)".into());
    }
    if !missing.is_empty() {
        if let Some(None) = blas {
            missing.push(format!(
                "OpenBLAS, optional: without it MLX uses its slow reference BLAS (install: apt-get install {})",
                blas::PACKAGE
            ));
        }
        bail!("missing prerequisites:\n  - {}", missing.join("\n  - "));
    }
    Ok(())
}

fn libclang_present() -> bool {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LIBCLANG_PATH")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.extend(
        [
            "/usr/lib",
            "/usr/lib64",
            "/usr/local/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .map(PathBuf::from),
    );
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("llvm"))
                .map(|e| e.path().join("lib")),
        );
    }
    dirs.iter().any(|d| {
        fs::read_dir(d).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("libclang")
                    && e.file_name().to_string_lossy().contains(".so")
            })
        })
    })
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed:>4}] {prefix}: {wide_msg}")
            .expect("valid template"),
    );
    bar.set_prefix(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Runs `cmd`, showing its latest output line on a spinner and keeping the
/// whole output in `log`; on failure the end of the log is shown.
pub fn run_logged(mut cmd: Command, what: &str, log: &Path) -> Result<()> {
    let bar = spinner(what);
    let mut file =
        fs::File::create(log).with_context(|| format!("cannot write {}", log.display()))?;
    writeln!(file, "$ {cmd:?}")?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        writeln!(file, "{line}")?;
        bar.set_message(line);
    }
    let status = child.wait()?;
    let err_lines = err_thread.join().unwrap_or_default();
    for line in &err_lines {
        writeln!(file, "{line}")?;
    }
    bar.finish_and_clear();
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{what} failed ({status}); last lines of {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    println!("  {what}: done");
    Ok(())
}

/// Installs MLX (or checks `MLX_DIR`); returns the folder with MLXConfig.cmake.
fn install_mlx(source: &MlxSource, prefix: &Path) -> Result<PathBuf> {
    match source {
        MlxSource::Existing(dir) => {
            for candidate in [
                dir.clone(),
                dir.join("share/cmake/MLX"),
                dir.join("mlx/share/cmake/MLX"),
            ] {
                if candidate.join("MLXConfig.cmake").is_file() {
                    return Ok(candidate);
                }
            }
            bail!("MLX_DIR={} has no MLXConfig.cmake (looked in it, share/cmake/MLX and mlx/share/cmake/MLX)", dir.display())
        }
        MlxSource::Wheel(name) => {
            let target = prefix.join("python");
            let cmake_dir = target.join("mlx/share/cmake/MLX");
            if !cmake_dir.join("MLXConfig.cmake").is_file() {
                let mut cmd = Command::new(python());
                cmd.args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--upgrade",
                    "--target",
                ])
                .arg(&target)
                .arg(format!("{name}=={MLX_VERSION}"));
                run_logged(
                    cmd,
                    &format!("pip install {name}=={MLX_VERSION}"),
                    &prefix.join("pip.log"),
                )?;
            }
            if !cmake_dir.join("MLXConfig.cmake").is_file() {
                bail!(
                    "{name}=={MLX_VERSION} installed but {} has no MLXConfig.cmake",
                    cmake_dir.display()
                );
            }
            Ok(cmake_dir)
        }
    }
}

/// The folder holding libmlx, found next to MLXConfig.cmake (`<prefix>/lib`).
fn mlx_lib_dir(cmake_dir: &Path) -> Result<PathBuf> {
    let lib = cmake_dir
        .ancestors()
        .nth(3)
        .map(|p| p.join("lib"))
        .context("unexpected MLX layout")?;
    if ["libmlx.so", "libmlx.dylib"]
        .iter()
        .any(|f| lib.join(f).is_file())
    {
        Ok(lib)
    } else {
        bail!(
            "no libmlx next to {} (looked in {})",
            cmake_dir.display(),
            lib.display()
        )
    }
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

fn find_in_registry() -> Result<Option<PathBuf>> {
    let src = cargo_home()?.join("registry/src");
    let Ok(indexes) = fs::read_dir(&src) else {
        return Ok(None);
    };
    Ok(indexes
        .flatten()
        .map(|e| {
            e.path()
                .join(format!("mlx-sys-{MLX_SYS_VERSION}/src/mlx-c"))
        })
        .find(|p| p.join("CMakeLists.txt").is_file()))
}

/// mlx-c's source tree: `MLX_C_SRC`, or the one inside the crates.io
/// package `mlx-sys`, fetched by cargo into its registry when missing.
fn mlx_c_sources(prefix: &Path) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MLX_C_SRC") {
        let dir = PathBuf::from(dir);
        if !dir.join("CMakeLists.txt").is_file() {
            bail!("MLX_C_SRC={} has no CMakeLists.txt", dir.display());
        }
        return Ok(dir);
    }
    if let Some(dir) = find_in_registry()? {
        return Ok(dir);
    }
    let fetch = prefix.join("fetch-mlx-sys");
    fs::create_dir_all(fetch.join("src"))?;
    fs::write(
        fetch.join("Cargo.toml"),
        format!(
            "[package]\nname = \"fetch-mlx-c-sources\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [dependencies]\nmlx-sys = \"={MLX_SYS_VERSION}\"\n\n[workspace]\n"
        ),
    )?;
    fs::write(fetch.join("src/lib.rs"), "")?;
    let mut cmd = crate::process::cargo();
    cmd.current_dir(&fetch)
        .args(["fetch", "--manifest-path"])
        .arg(fetch.join("Cargo.toml"));
    run_logged(
        cmd,
        &format!("cargo fetch mlx-sys {MLX_SYS_VERSION} (mlx-c sources)"),
        &prefix.join("fetch.log"),
    )?;
    find_in_registry()?.with_context(|| {
        format!(
            "cargo fetched mlx-sys {MLX_SYS_VERSION} but its src/mlx-c was not found under {}",
            cargo_home()
                .map(|h| h.display().to_string())
                .unwrap_or_default()
        )
    })
}

fn build_mlx_c(src: &Path, mlx_cmake_dir: &Path, mlx_lib: &Path, prefix: &Path) -> Result<()> {
    let build = prefix.join("build-mlxc");
    let install = prefix.join("mlxc");
    fs::create_dir_all(&build)?;
    let compat = root().join("xtask/native/format_compat.h");
    let rpath = if cfg!(target_os = "macos") {
        mlx_lib.display().to_string()
    } else {
        format!("$ORIGIN;{}", mlx_lib.display())
    };
    let mut configure = Command::new("cmake");
    configure
        .arg("-S")
        .arg(src)
        .arg("-B")
        .arg(&build)
        .arg("-DCMAKE_BUILD_TYPE=Release")
        .arg("-DMLX_C_USE_SYSTEM_MLX=ON")
        .arg(format!("-DMLX_DIR={}", mlx_cmake_dir.display()))
        .arg("-DBUILD_SHARED_LIBS=ON")
        .arg("-DMLX_C_BUILD_EXAMPLES=OFF")
        .arg(format!("-DCMAKE_INSTALL_PREFIX={}", install.display()))
        .arg("-DCMAKE_INSTALL_LIBDIR=lib")
        .arg(format!("-DCMAKE_INSTALL_RPATH={rpath}"))
        .arg(format!("-DCMAKE_CXX_FLAGS=-include {}", compat.display()));
    run_logged(
        configure,
        &format!("cmake configure mlx-c {MLX_C_VERSION}"),
        &prefix.join("cmake-configure.log"),
    )?;

    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut compile = Command::new("cmake");
    compile.arg("--build").arg(&build).args([
        "--config",
        "Release",
        "--parallel",
        &jobs.to_string(),
    ]);
    run_logged(
        compile,
        &format!("build mlx-c {MLX_C_VERSION}"),
        &prefix.join("cmake-build.log"),
    )?;

    let mut inst = Command::new("cmake");
    inst.arg("--install").arg(&build);
    run_logged(inst, "install mlx-c", &prefix.join("cmake-install.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_prerequisites_name_their_install_commands() {
        let empty = test_support::ScratchDir::new("xtask-empty-path");
        // This test binary has no other test that reads these variables.
        std::env::set_var("PATH", empty.path());
        std::env::set_var("PYTHON", empty.join("python3"));
        std::env::set_var("CXX", empty.join("c++"));
        let err = check_prerequisites(&MlxSource::Wheel("mlx-cpu"), Some(&None))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("missing prerequisites:"), "{err}");
        assert!(
            err.contains("python3 with pip (install: apt-get install python3 python3-pip)"),
            "{err}"
        );
        assert!(
            err.contains("cmake (install: apt-get install cmake)"),
            "{err}"
        );
        assert!(err.contains("a C++ compiler"), "{err}");
        assert!(
            err.contains("OpenBLAS, optional")
                && err.contains("apt-get install libopenblas0-pthread"),
            "{err}"
        );
        // an existing MLX install needs no pip, and its BLAS is its own
        let err = check_prerequisites(&MlxSource::Existing(empty.to_path_buf()), None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("pip"), "{err}");
        assert!(!err.contains("OpenBLAS"), "{err}");
    }

    #[test]
    fn cache_keys_change_with_what_is_built() {
        let openblas = Some(Some(OpenBlas {
            blas: "/usr/lib/x/libblas.so.3".into(),
            lapack: "/usr/lib/x/liblapack.so.3".into(),
        }));
        let cpu = build_key(&MlxSource::Wheel("mlx-cpu"), openblas.as_ref());
        let cuda = build_key(&MlxSource::Wheel("mlx-cuda-13"), openblas.as_ref());
        assert_ne!(cpu, cuda);
        assert!(
            cpu.contains(MLX_VERSION) && cpu.contains(MLX_C_VERSION),
            "{cpu}"
        );
        assert_eq!(
            cpu,
            build_key(&MlxSource::Wheel("mlx-cpu"), openblas.as_ref()),
            "stable"
        );
        // the BLAS is part of the key, and a build from before it was is never reused
        let reference = build_key(&MlxSource::Wheel("mlx-cpu"), Some(&None));
        assert_ne!(cpu, reference);
        assert!(cpu.contains("_openblas_"), "{cpu}");
        assert!(reference.contains("_refblas_"), "{reference}");
        assert_ne!(build_key(&MlxSource::Wheel("mlx-cpu"), None), cpu);
    }
}
