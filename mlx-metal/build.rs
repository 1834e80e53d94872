//! Puts the MLX library folders into the rpath of this crate's tests and
//! examples, and hands them on to dependents as `DEP_MLX_METAL_RPATH`, so
//! that nothing needs LD_LIBRARY_PATH.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLXC_RPATH");
    let rpath = std::env::var("DEP_MLXC_RPATH").unwrap_or_default();
    for dir in rpath.split(':').filter(|d| !d.is_empty()) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rpath={rpath}");
}
