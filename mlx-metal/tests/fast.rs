//! Fused kernels against naive compositions of basic ops.

mod common;

use common::{assert_close, floats, randn};
use mlx_metal::fast::{self, AttentionMask};
use mlx_metal::{Array, Dtype};

fn naive_rms_norm(x: &Array, w: &Array, eps: f32) -> Array {
    let ms = x.square().unwrap().mean(&[-1], true).unwrap();
    x.multiply(&ms.add_scalar(eps).unwrap().rsqrt().unwrap())
        .unwrap()
        .multiply(w)
        .unwrap()
}

#[test]
fn rms_norm_matches_naive() {
    let x = randn(&[2, 5, 16], 1, 1.0);
    let w = randn(&[16], 2, 1.0);
    let fused = fast::rms_norm(&x, Some(&w), 1e-5).unwrap();
    assert_close(
        &floats(&fused),
        &floats(&naive_rms_norm(&x, &w, 1e-5)),
        1e-5,
    );
}

#[test]
fn layer_norm_matches_naive() {
    let x = randn(&[3, 8], 3, 2.0);
    let w = randn(&[8], 4, 1.0);
    let b = randn(&[8], 5, 1.0);
    let mean = x.mean(&[-1], true).unwrap();
    let var = x.var(&[-1], true, 0).unwrap();
    let naive = x
        .subtract(&mean)
        .unwrap()
        .multiply(&var.add_scalar(1e-5).unwrap().rsqrt().unwrap())
        .unwrap()
        .multiply(&w)
        .unwrap()
        .add(&b)
        .unwrap();
    let fused = fast::layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap();
    assert_close(&floats(&fused), &floats(&naive), 1e-4);
}

/// Rotate-half RoPE from basic ops: positions `offset..offset+seq`,
/// frequencies `base^(-2i/dims)` over the first `dims` features.
fn naive_rope(x: &Array, dims: i32, base: f32, offset: i32) -> Array {
    let shape = x.shape();
    let seq = shape[2];
    let half = dims / 2;
    let i = Array::arange(0.0, half as f64, 1.0, Dtype::Float32).unwrap();
    let inv = Array::scalar(base)
        .power(&i.mul_scalar(-2.0 / dims as f32).unwrap())
        .unwrap();
    let pos = Array::arange(offset as f64, (offset + seq) as f64, 1.0, Dtype::Float32)
        .unwrap()
        .reshape(&[seq, 1])
        .unwrap();
    let theta = pos.multiply(&inv.reshape(&[1, half]).unwrap()).unwrap(); // [seq, half]
    let (cos, sin) = (theta.cos().unwrap(), theta.sin().unwrap());
    let x1 = x.slice_axis(-1, 0, half).unwrap();
    let x2 = x.slice_axis(-1, half, dims).unwrap();
    let rest = x.slice_axis(-1, dims, shape[3]).unwrap();
    let o1 = x1
        .multiply(&cos)
        .unwrap()
        .subtract(&x2.multiply(&sin).unwrap())
        .unwrap();
    let o2 = x1
        .multiply(&sin)
        .unwrap()
        .add(&x2.multiply(&cos).unwrap())
        .unwrap();
    Array::concatenate(&[&o1, &o2, &rest], -1).unwrap()
}

#[test]
fn rope_matches_naive_with_offset_and_partial_dims() {
    let x = randn(&[1, 2, 6, 16], 6, 1.0);
    for (dims, offset) in [(16, 0), (16, 7), (8, 3)] {
        let fused = fast::rope(&x, dims, false, Some(10000.0), 1.0, offset, None).unwrap();
        let naive = naive_rope(&x, dims, 10000.0, offset);
        assert_close(&floats(&fused), &floats(&naive), 1e-4);
    }
}

#[test]
fn rope_with_explicit_freqs_matches_base() {
    // freqs are the wavelengths base^(2i/dims); MLX divides positions by them
    let x = randn(&[1, 1, 4, 8], 7, 1.0);
    let base = 500.0f32;
    let freqs: Vec<f32> = (0..4).map(|i| base.powf(2.0 * i as f32 / 8.0)).collect();
    let freqs = Array::from_vec(&freqs).unwrap();
    let a = fast::rope(&x, 8, false, None, 1.0, 2, Some(&freqs)).unwrap();
    let b = fast::rope(&x, 8, false, Some(base), 1.0, 2, None).unwrap();
    assert_close(&floats(&a), &floats(&b), 1e-5);
}

fn naive_attention(q: &Array, k: &Array, v: &Array, scale: f32, mask: Option<&Array>) -> Array {
    let scores = q
        .matmul(&k.swap_axes(-1, -2).unwrap())
        .unwrap()
        .mul_scalar(scale)
        .unwrap();
    let scores = match mask {
        Some(m) => scores.add(m).unwrap(),
        None => scores,
    };
    scores.softmax(&[-1], true).unwrap().matmul(v).unwrap()
}

fn causal_mask(q_len: i32, k_len: i32) -> Array {
    let mut m = vec![0.0f32; (q_len * k_len) as usize];
    for i in 0..q_len {
        for j in 0..k_len {
            if j > i + (k_len - q_len) {
                m[(i * k_len + j) as usize] = f32::NEG_INFINITY;
            }
        }
    }
    Array::from_slice(&m, &[q_len, k_len]).unwrap()
}

#[test]
fn sdpa_matches_naive_without_and_with_masks() {
    let q = randn(&[1, 2, 5, 8], 8, 1.0);
    let k = randn(&[1, 2, 5, 8], 9, 1.0);
    let v = randn(&[1, 2, 5, 8], 10, 1.0);
    let scale = 1.0 / 8f32.sqrt();
    let none = fast::scaled_dot_product_attention(&q, &k, &v, scale, AttentionMask::None).unwrap();
    assert_close(
        &floats(&none),
        &floats(&naive_attention(&q, &k, &v, scale, None)),
        1e-4,
    );

    let mask = causal_mask(5, 5);
    let causal =
        fast::scaled_dot_product_attention(&q, &k, &v, scale, AttentionMask::Causal).unwrap();
    let naive = naive_attention(&q, &k, &v, scale, Some(&mask));
    assert_close(&floats(&causal), &floats(&naive), 1e-4);
    let additive =
        fast::scaled_dot_product_attention(&q, &k, &v, scale, AttentionMask::Array(&mask)).unwrap();
    assert_close(&floats(&additive), &floats(&naive), 1e-4);
}

#[test]
fn sdpa_grouped_query_and_cached_keys() {
    // 4 query heads over 2 kv heads; 2 new queries against 6 keys (4 cached)
    let q = randn(&[1, 4, 2, 8], 11, 1.0);
    let k = randn(&[1, 2, 6, 8], 12, 1.0);
    let v = randn(&[1, 2, 6, 8], 13, 1.0);
    let scale = 0.3;
    let fused =
        fast::scaled_dot_product_attention(&q, &k, &v, scale, AttentionMask::Causal).unwrap();
    let rep = |a: &Array| {
        let parts: Vec<Array> = (0..2).map(|h| a.slice_axis(1, h, h + 1).unwrap()).collect();
        Array::concatenate(&[&parts[0], &parts[0], &parts[1], &parts[1]], 1).unwrap()
    };
    let naive = naive_attention(&q, &rep(&k), &rep(&v), scale, Some(&causal_mask(2, 6)));
    assert_close(&floats(&fused), &floats(&naive), 1e-4);
}
