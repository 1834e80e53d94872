//! Puts the MLX library folders (from `mlx-metal`, when the `metal` feature
//! is on) into the binary's rpath so it runs without LD_LIBRARY_PATH.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_METAL_RPATH");
    if let Ok(rpath) = std::env::var("DEP_MLX_METAL_RPATH") {
        for dir in rpath.split(':').filter(|d| !d.is_empty()) {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
