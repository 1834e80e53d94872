//! The BLAS behind MLX's CPU matrix products, as `cargo xtask build-mlx`
//! leaves it.

mod common;

use mlx_metal::{blas_info, BlasKind};

/// OpenBLAS's interface library as Debian's `libopenblas0-pthread` installs it.
fn system_openblas() -> std::path::PathBuf {
    std::path::PathBuf::from(format!(
        "/usr/lib/{}-linux-gnu/openblas-pthread/libblas.so.3",
        std::env::consts::ARCH
    ))
}

#[test]
fn float32_matmuls_run_on_openblas_after_build_mlx() {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: build-mlx wires OpenBLAS on Linux only (macOS uses Accelerate)");
        return;
    }
    if !system_openblas().is_file() {
        eprintln!(
            "skipped: OpenBLAS is not installed here ({} is missing), so build-mlx kept \
             MLX's reference BLAS; apt-get install libopenblas0-pthread and run build-mlx",
            system_openblas().display()
        );
        return;
    }
    // a product that goes through BLAS, checked
    let a = common::ramp(&[64, 32], -1.0, 0.001);
    let b = common::ramp(&[32, 16], 0.5, -0.002);
    let c = a.matmul(&b).unwrap();
    let (av, bv) = (common::floats(&a), common::floats(&b));
    let want: Vec<f32> = (0..64)
        .flat_map(|i| {
            let (av, bv) = (&av, &bv);
            (0..16).map(move |j| (0..32).map(|k| av[i * 32 + k] * bv[k * 16 + j]).sum())
        })
        .collect();
    common::assert_close(&common::floats(&c), &want, 1e-5);

    let info = blas_info();
    assert_eq!(info.kind, BlasKind::OpenBlas, "{info:?}");
    assert!(info.is_optimized());
    let library = info.library.as_ref().expect("the library is named");
    assert!(
        library.to_string_lossy().contains("openblas"),
        "cblas_sgemm comes from {}",
        library.display()
    );
    assert!(
        info.version.as_deref().is_some_and(|v| v.starts_with("0.")),
        "{info:?}"
    );
    assert!(info.to_string().starts_with("OpenBLAS 0."), "{info}");
    if std::env::var_os("OPENBLAS_NUM_THREADS").is_none()
        && std::env::var_os("OMP_NUM_THREADS").is_none()
        && std::env::var_os("GOTO_NUM_THREADS").is_none()
    {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(info.threads, Some(cores), "{info:?}");
    }
}
