//! Affine quantisation round trips.

mod common;

use common::{floats, randn};

#[test]
fn quantize_dequantize_error_is_bounded() {
    let w = randn(&[32, 128], 21, 0.5);
    let orig = floats(&w);
    for bits in [4, 8] {
        let q = w.quantize(64, bits).unwrap();
        assert_eq!(q.weight.shape(), vec![32, 128 * bits / 32]);
        assert_eq!(q.scales.shape(), vec![32, 2]);
        let back = floats(&q.dequantize().unwrap());
        // Per group the step is (max - min) / (2^bits - 1). MLX anchors the
        // grid at the extreme of larger magnitude and rounds the scale so that
        // extreme is exact, which can shift the far end by up to one step:
        // every element is within one step, and on average within a quarter
        // step (plain rounding error).
        let mut total = 0.0f32;
        for (g, chunk) in orig.chunks(64).enumerate() {
            let (lo, hi) = chunk
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            let step = (hi - lo) / ((1 << bits) - 1) as f32;
            for (i, &x) in chunk.iter().enumerate() {
                let err = (back[g * 64 + i] - x).abs();
                assert!(
                    err <= step + 1e-5,
                    "bits {bits} group {g}: error {err} > step {step}"
                );
                total += err / step;
            }
        }
        let mean = total / orig.len() as f32;
        assert!(mean <= 0.3, "bits {bits}: mean error {mean} steps");
    }
}

#[test]
fn quantized_matmul_equals_matmul_with_dequantized_weights() {
    let w = randn(&[16, 64], 22, 0.5);
    let x = randn(&[3, 64], 23, 1.0);
    let q = w.quantize(32, 4).unwrap();
    let fused = floats(&x.quantized_matmul(&q, true).unwrap());
    let dense = floats(
        &x.matmul(&q.dequantize().unwrap().transpose().unwrap())
            .unwrap(),
    );
    common::assert_close(&fused, &dense, 1e-4);
}

#[test]
fn bad_group_size_is_an_error() {
    let w = randn(&[4, 30], 24, 1.0);
    let e = w.quantize(64, 4).unwrap_err();
    assert!(matches!(e, mlx_metal::Error::Mlx(_)), "{e}");
}
