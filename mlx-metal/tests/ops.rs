//! Ops against known values.

mod common;

use common::{assert_close, floats, ramp};
use mlx_metal::{Array, Dtype};

fn v(data: &[f32]) -> Array {
    Array::from_vec(data).unwrap()
}

#[test]
fn arithmetic_broadcasts() {
    let a = v(&[1.0, 2.0, 3.0]);
    let b = Array::from_slice(&[10.0f32, 20.0], &[2, 1]).unwrap();
    let sum = a.add(&b).unwrap();
    assert_eq!(sum.shape(), vec![2, 3]);
    assert_eq!(floats(&sum), vec![11.0, 12.0, 13.0, 21.0, 22.0, 23.0]);
    assert_eq!(
        floats(&a.subtract(&v(&[1.0, 1.0, 1.0])).unwrap()),
        vec![0.0, 1.0, 2.0]
    );
    assert_eq!(floats(&a.multiply(&a).unwrap()), vec![1.0, 4.0, 9.0]);
    assert_eq!(
        floats(&a.divide(&v(&[2.0, 4.0, 8.0])).unwrap()),
        vec![0.5, 0.5, 0.375]
    );
    assert_eq!(
        floats(&a.power(&v(&[2.0, 3.0, 0.5])).unwrap())[..2],
        [1.0, 8.0]
    );
    assert_eq!(
        floats(&a.maximum(&v(&[2.0, 2.0, 2.0])).unwrap()),
        vec![2.0, 2.0, 3.0]
    );
    assert_eq!(
        floats(&a.minimum(&v(&[2.0, 2.0, 2.0])).unwrap()),
        vec![1.0, 2.0, 2.0]
    );
    assert_eq!(floats(&a.negative().unwrap()), vec![-1.0, -2.0, -3.0]);
    assert_eq!(floats(&v(&[4.0, 9.0]).sqrt().unwrap()), vec![2.0, 3.0]);
    assert_eq!(floats(&v(&[4.0, 16.0]).rsqrt().unwrap()), vec![0.5, 0.25]);
    assert_eq!(floats(&a.add_scalar(1.0).unwrap()), vec![2.0, 3.0, 4.0]);
    assert_eq!(floats(&a.mul_scalar(2.0).unwrap()), vec![2.0, 4.0, 6.0]);
}

#[test]
fn scalar_helpers_keep_the_dtype() {
    let a = v(&[1.0, 2.0]).astype(Dtype::Bfloat16).unwrap();
    assert_eq!(a.mul_scalar(3.0).unwrap().dtype(), Dtype::Bfloat16);
    assert_eq!(floats(&a.mul_scalar(3.0).unwrap()), vec![3.0, 6.0]);
}

#[test]
fn comparisons_and_where() {
    let a = v(&[1.0, 5.0, 3.0]);
    let b = v(&[2.0, 5.0, 1.0]);
    assert_eq!(
        a.less(&b).unwrap().to_vec::<bool>().unwrap(),
        vec![true, false, false]
    );
    assert_eq!(
        a.less_equal(&b).unwrap().to_vec::<bool>().unwrap(),
        vec![true, true, false]
    );
    assert_eq!(
        a.greater(&b).unwrap().to_vec::<bool>().unwrap(),
        vec![false, false, true]
    );
    assert_eq!(
        a.greater_equal(&b).unwrap().to_vec::<bool>().unwrap(),
        vec![false, true, true]
    );
    assert_eq!(
        a.equal(&b).unwrap().to_vec::<bool>().unwrap(),
        vec![false, true, false]
    );
    assert_eq!(
        a.not_equal(&b).unwrap().to_vec::<bool>().unwrap(),
        vec![true, false, true]
    );
    let picked = a.greater(&b).unwrap().select(&a, &b).unwrap();
    assert_eq!(floats(&picked), vec![2.0, 5.0, 3.0]);
    let m = Array::from_vec(&[true, false]).unwrap();
    let n = Array::from_vec(&[true, true]).unwrap();
    assert_eq!(
        m.logical_and(&n).unwrap().to_vec::<bool>().unwrap(),
        vec![true, false]
    );
    assert_eq!(
        m.logical_or(&n).unwrap().to_vec::<bool>().unwrap(),
        vec![true, true]
    );
    assert_eq!(
        m.logical_not().unwrap().to_vec::<bool>().unwrap(),
        vec![false, true]
    );
}

#[test]
fn matmul_and_addmm() {
    let a = ramp(&[2, 3], 1.0, 1.0); // [[1,2,3],[4,5,6]]
    let b = ramp(&[3, 2], 1.0, 1.0); // [[1,2],[3,4],[5,6]]
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.shape(), vec![2, 2]);
    assert_eq!(floats(&c), vec![22.0, 28.0, 49.0, 64.0]);
    let bias = v(&[1.0, -1.0]);
    let d = a.addmm(&bias, &b, 2.0, 1.0).unwrap();
    assert_eq!(floats(&d), vec![45.0, 55.0, 99.0, 127.0]);
}

#[test]
fn reshape_transpose_squeeze_expand() {
    let a = ramp(&[2, 3], 0.0, 1.0);
    let r = a.reshape(&[3, -1]).unwrap();
    assert_eq!(r.shape(), vec![3, 2]);
    let t = a.transpose().unwrap();
    assert_eq!(t.shape(), vec![3, 2]);
    assert_eq!(floats(&t), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let p = ramp(&[2, 3, 4], 0.0, 1.0)
        .transpose_axes(&[1, 0, 2])
        .unwrap();
    assert_eq!(p.shape(), vec![3, 2, 4]);
    assert_eq!(
        floats(&p)[..8],
        [0.0, 1.0, 2.0, 3.0, 12.0, 13.0, 14.0, 15.0]
    );
    assert_eq!(
        ramp(&[2, 3, 4], 0.0, 1.0).swap_axes(0, 2).unwrap().shape(),
        vec![4, 3, 2]
    );
    let e = a.expand_dims(&[0, 3]).unwrap();
    assert_eq!(e.shape(), vec![1, 2, 3, 1]);
    assert_eq!(e.squeeze(&[]).unwrap().shape(), vec![2, 3]);
    assert_eq!(e.squeeze(&[0]).unwrap().shape(), vec![2, 3, 1]);
    let b = v(&[1.0, 2.0]).broadcast_to(&[3, 2]).unwrap();
    assert_eq!(floats(&b), vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
}

#[test]
fn slicing_and_updates() {
    let a = ramp(&[3, 4], 0.0, 1.0);
    let s = a.slice(&[1, 0], &[3, 4], &[1, 2]).unwrap();
    assert_eq!(s.shape(), vec![2, 2]);
    assert_eq!(floats(&s), vec![4.0, 6.0, 8.0, 10.0]);
    assert_eq!(
        floats(&a.slice_axis(1, 1, 3).unwrap()),
        vec![1.0, 2.0, 5.0, 6.0, 9.0, 10.0]
    );
    assert_eq!(
        floats(&a.slice_axis(-2, 2, 3).unwrap()),
        vec![8.0, 9.0, 10.0, 11.0]
    );
    assert!(a.slice_axis(2, 0, 1).is_err());
    let u = Array::zeros(&[1, 2], Dtype::Float32).unwrap();
    let w = a.slice_update(&u, &[0, 1], &[1, 3], &[1, 1]).unwrap();
    assert_eq!(floats(&w)[..4], [0.0, 0.0, 0.0, 3.0]);
    // the source is unchanged
    assert_eq!(floats(&a)[..4], [0.0, 1.0, 2.0, 3.0]);
}

#[test]
fn concatenate_stack_split() {
    let a = v(&[1.0, 2.0]);
    let b = v(&[3.0]);
    let c = Array::concatenate(&[&a, &b], 0).unwrap();
    assert_eq!(floats(&c), vec![1.0, 2.0, 3.0]);
    let s = Array::stack(&[&a, &a], 0).unwrap();
    assert_eq!(s.shape(), vec![2, 2]);
    let parts = ramp(&[6], 0.0, 1.0).split(3, 0).unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(floats(&parts[2]), vec![4.0, 5.0]);
    let parts = ramp(&[2, 5], 0.0, 1.0).split_at(&[1, 4], 1).unwrap();
    assert_eq!(
        parts.iter().map(|p| p.shape()).collect::<Vec<_>>(),
        vec![vec![2, 1], vec![2, 3], vec![2, 1]]
    );
    assert_eq!(floats(&parts[2]), vec![4.0, 9.0]);
}

#[test]
fn take_and_take_along_axis() {
    let table = ramp(&[4, 2], 0.0, 1.0);
    let ids = Array::from_slice(&[3i32, 0, 3], &[3]).unwrap();
    let rows = table.take(&ids, 0).unwrap();
    assert_eq!(rows.shape(), vec![3, 2]);
    assert_eq!(floats(&rows), vec![6.0, 7.0, 0.0, 1.0, 6.0, 7.0]);
    let a = ramp(&[2, 3], 0.0, 1.0);
    let idx = Array::from_slice(&[2i32, 0], &[2, 1]).unwrap();
    assert_eq!(floats(&a.take_along_axis(&idx, 1).unwrap()), vec![2.0, 3.0]);
    let vals = Array::from_slice(&[-1.0f32, -2.0], &[2, 1]).unwrap();
    let put = a.put_along_axis(&idx, &vals, 1).unwrap();
    assert_eq!(floats(&put), vec![0.0, 1.0, -1.0, -2.0, 4.0, 5.0]);
}

#[test]
fn reductions() {
    let a = ramp(&[2, 3], 1.0, 1.0); // [[1,2,3],[4,5,6]]
    assert_eq!(a.sum(&[], false).unwrap().item::<f32>().unwrap(), 21.0);
    assert_eq!(floats(&a.sum(&[1], false).unwrap()), vec![6.0, 15.0]);
    assert_eq!(a.sum(&[1], true).unwrap().shape(), vec![2, 1]);
    assert_eq!(floats(&a.mean(&[0], false).unwrap()), vec![2.5, 3.5, 4.5]);
    assert_eq!(floats(&a.max(&[1], false).unwrap()), vec![3.0, 6.0]);
    assert_eq!(floats(&a.min(&[0], false).unwrap()), vec![1.0, 2.0, 3.0]);
    assert_close(
        &floats(&a.var(&[1], false, 0).unwrap()),
        &[2.0 / 3.0, 2.0 / 3.0],
        1e-6,
    );
    assert_close(&floats(&a.var(&[], false, 1).unwrap()), &[3.5], 1e-6);
    let lse = v(&[1.0, 2.0, 3.0])
        .logsumexp(&[0], false)
        .unwrap()
        .item::<f32>()
        .unwrap();
    let expected = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
    assert!((lse - expected).abs() < 1e-5);
}

#[test]
fn softmax_argmax_sort_partition_cumsum() {
    let a = v(&[1.0, 2.0, 3.0]);
    let sm = floats(&a.softmax(&[-1], true).unwrap());
    let z: f32 = [1f32, 2.0, 3.0].iter().map(|x| x.exp()).sum();
    assert_close(&sm, &[1f32.exp() / z, 2f32.exp() / z, 3f32.exp() / z], 1e-6);
    let m = Array::from_slice(&[0.1f32, 0.9, 0.5, 0.7, 0.2, 0.1], &[2, 3]).unwrap();
    assert_eq!(
        m.argmax(1, false).unwrap().to_vec::<u32>().unwrap(),
        vec![1, 0]
    );
    assert_eq!(m.argmax(-1, true).unwrap().shape(), vec![2, 1]);
    let u = v(&[3.0, 1.0, 2.0, 0.0]);
    assert_eq!(floats(&u.sort(0).unwrap()), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(
        u.argsort(0).unwrap().to_vec::<u32>().unwrap(),
        vec![3, 1, 2, 0]
    );
    let part = u.argpartition(1, 0).unwrap().to_vec::<u32>().unwrap();
    let mut low: Vec<u32> = part[..2].to_vec();
    low.sort();
    assert_eq!(low, vec![1, 3], "two smallest first: {part:?}");
    assert_eq!(
        floats(&v(&[1.0, 2.0, 3.0]).cumsum(0, false, true).unwrap()),
        vec![1.0, 3.0, 6.0]
    );
    assert_eq!(
        floats(&v(&[1.0, 2.0, 3.0]).cumsum(0, true, true).unwrap()),
        vec![6.0, 5.0, 3.0]
    );
    assert_eq!(
        floats(&v(&[1.0, 2.0, 3.0]).cumsum(0, false, false).unwrap()),
        vec![0.0, 1.0, 3.0]
    );
}

#[test]
fn elementwise_functions() {
    let xs = [-2.0f32, -0.5, 0.0, 0.7, 3.0];
    let a = v(&xs);
    let map = |f: fn(f32) -> f32| xs.iter().map(|&x| f(x)).collect::<Vec<f32>>();
    assert_close(&floats(&a.exp().unwrap()), &map(f32::exp), 1e-6);
    assert_close(
        &floats(&v(&[0.5, 1.0, 4.0]).log().unwrap()),
        &[0.5f32.ln(), 0.0, 4f32.ln()],
        1e-6,
    );
    assert_close(&floats(&a.tanh().unwrap()), &map(f32::tanh), 1e-6);
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    assert_close(&floats(&a.sigmoid().unwrap()), &map(sig), 1e-6);
    assert_close(
        &floats(&a.silu().unwrap()),
        &map(|x| x / (1.0 + (-x).exp())),
        1e-6,
    );
    // GELU reference values (exact erf form and tanh form), computed in f64.
    let gelu_exact = [
        -0.045_500_264f32,
        -0.154_268_77,
        0.0,
        0.530_625_44,
        2.995_950_3,
    ];
    assert_close(&floats(&a.gelu().unwrap()), &gelu_exact, 1e-5);
    let gelu_tanh = |x: f32| {
        let x = x as f64;
        (0.5 * x
            * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()))
            as f32
    };
    assert_close(&floats(&a.gelu_approx().unwrap()), &map(gelu_tanh), 1e-5);
}

#[test]
fn creation_and_astype() {
    assert_eq!(
        floats(&Array::zeros(&[2], Dtype::Float32).unwrap()),
        vec![0.0, 0.0]
    );
    assert_eq!(
        Array::ones(&[2, 2], Dtype::Int32)
            .unwrap()
            .to_vec::<i32>()
            .unwrap(),
        vec![1; 4]
    );
    assert_eq!(
        floats(&Array::full(&[3], 2.5, Dtype::Float32).unwrap()),
        vec![2.5; 3]
    );
    let r = Array::arange(0.0, 5.0, 2.0, Dtype::Int32).unwrap();
    assert_eq!(r.to_vec::<i32>().unwrap(), vec![0, 2, 4]);
    let h = v(&[1.5, -2.25]).astype(Dtype::Float16).unwrap();
    assert_eq!(h.dtype(), Dtype::Float16);
    assert_eq!(floats(&h), vec![1.5, -2.25]);
    assert_eq!(
        v(&[1.7, -2.7])
            .astype(Dtype::Int32)
            .unwrap()
            .to_vec::<i32>()
            .unwrap(),
        vec![1, -2]
    );
}
