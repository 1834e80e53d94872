//! The backend crates chosen by features, linked into the program so that
//! their `inventory` registrations take effect.

/// The stand-in for the MLX layer in builds without MLX: it answers the
/// memory calls with a "no MLX" error that says how to get MLX.
#[cfg(not(feature = "metal"))]
pub use stub as native;

/// Keeps each enabled backend's registration in the program.
pub fn ensure_linked() {
    #[cfg(feature = "metal")]
    mlx_metal::ensure_registered();
    #[cfg(feature = "mlxlm")]
    mlxlm::ensure_registered();
}

/// Ends the program with `code`: through the MLX layer's exit where MLX is
/// linked (it skips OpenBLAS's exit handler, which can hang), else
/// `std::process::exit`. Callers flush stdout first where they can.
pub fn exit(code: i32) -> ! {
    #[cfg(feature = "metal")]
    mlx_metal::exit(code);
    #[cfg(not(feature = "metal"))]
    std::process::exit(code)
}
