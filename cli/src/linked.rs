//! The backend crates chosen by features, linked into the program so that
//! their `inventory` registrations take effect.

/// The in-process MLX layer, or its stand-in in builds without MLX: both
/// answer `metal_available()` and the memory calls.
#[cfg(feature = "metal")]
pub use mlx_metal as native;
#[cfg(not(feature = "metal"))]
pub use stub as native;

/// Touches each enabled backend crate.
pub fn ensure_linked() {
    std::hint::black_box(native::metal_available());
    #[cfg(feature = "mlxlm")]
    std::hint::black_box(mlxlm::BACKEND_NAME);
}
