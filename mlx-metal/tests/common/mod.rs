//! Helpers shared by the integration tests.
#![allow(dead_code)]

use mlx_metal::Array;

/// Asserts two float slices agree element-wise within `tol`.
pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol * (1.0 + e.abs()),
            "element {i}: got {a}, expected {e} (tol {tol})\nactual:   {actual:?}\nexpected: {expected:?}"
        );
    }
}

/// The elements of `a` as f32.
pub fn floats(a: &Array) -> Vec<f32> {
    a.to_vec::<f32>().expect("to_vec")
}

/// An f32 array of `shape` with values `start, start + step, ...`.
pub fn ramp(shape: &[i32], start: f32, step: f32) -> Array {
    let n: i32 = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| start + step * i as f32).collect();
    Array::from_slice(&data, shape).unwrap()
}

/// Deterministic pseudo-random f32 array (normal, std `scale`).
pub fn randn(shape: &[i32], seed: u64, scale: f32) -> Array {
    let key = mlx_metal::random::key(seed).unwrap();
    mlx_metal::random::normal(shape, mlx_metal::Dtype::Float32, 0.0, scale, Some(&key)).unwrap()
}

#[allow(unused_imports)]
pub use test_support::{fixture_models, fixtures, ids, reference};

/// A copy of a fixture model in a fresh temporary folder, removed when the
/// returned guard drops.
pub fn copy_model(from: &std::path::Path, name: &str) -> test_support::ScratchDir {
    test_support::ScratchDir::copy_of(from, name)
}
