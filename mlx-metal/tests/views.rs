//! Creating arrays from Rust data and reading them back, including
//! non-contiguous views.

mod common;

use common::{floats, ramp};
use half::{bf16, f16};
use mlx_metal::{Array, Dtype, Error};

#[test]
fn round_trips_every_element_type() {
    let f = [1.0f32, -2.5, 3.25];
    assert_eq!(Array::from_vec(&f).unwrap().to_vec::<f32>().unwrap(), f);
    let h: Vec<f16> = f.iter().map(|&x| f16::from_f32(x)).collect();
    let a = Array::from_vec(&h).unwrap();
    assert_eq!(a.dtype(), Dtype::Float16);
    assert_eq!(a.to_vec::<f16>().unwrap(), h);
    let b: Vec<bf16> = f.iter().map(|&x| bf16::from_f32(x)).collect();
    let a = Array::from_vec(&b).unwrap();
    assert_eq!(a.dtype(), Dtype::Bfloat16);
    assert_eq!(a.to_vec::<bf16>().unwrap(), b);
    assert_eq!(a.to_vec::<f32>().unwrap(), f, "converted on the way out");
    assert_eq!(
        Array::from_vec(&[-7i32, 8])
            .unwrap()
            .to_vec::<i32>()
            .unwrap(),
        vec![-7, 8]
    );
    assert_eq!(
        Array::from_vec(&[7u32, u32::MAX])
            .unwrap()
            .to_vec::<u32>()
            .unwrap(),
        vec![7, u32::MAX]
    );
    assert_eq!(
        Array::from_vec(&[true, false, true])
            .unwrap()
            .to_vec::<bool>()
            .unwrap(),
        vec![true, false, true]
    );
    assert_eq!(Array::scalar(4.5f32).item::<f32>().unwrap(), 4.5);
    assert_eq!(Array::scalar(4.5f32).shape(), Vec::<i32>::new());
    assert_eq!(Array::scalar(9i32).item::<i32>().unwrap(), 9);
}

#[test]
fn metadata() {
    let a = ramp(&[2, 3, 4], 0.0, 1.0);
    assert_eq!(a.shape(), vec![2, 3, 4]);
    assert_eq!(a.ndim(), 3);
    assert_eq!(a.size(), 24);
    assert_eq!(a.nbytes(), 96);
    assert_eq!(a.dim(-1).unwrap(), 4);
    assert!(a.dim(3).is_err());
    assert_eq!(a.dtype(), Dtype::Float32);
}

#[test]
fn bad_shapes_are_rejected_before_mlx() {
    let e = Array::from_slice(&[1.0f32, 2.0, 3.0], &[2, 2]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("4 elements but 3"), "{e}");
    assert!(Array::from_slice(&[1.0f32], &[-1]).is_err());
    assert!(ramp(&[2, 2], 0.0, 1.0).item::<f32>().is_err());
}

#[test]
fn transposed_view_reads_in_logical_order() {
    let a = ramp(&[2, 3], 0.0, 1.0);
    assert_eq!(
        floats(&a.transpose().unwrap()),
        vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    );
}

#[test]
fn broadcast_view_reads_every_element() {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3, 1]).unwrap();
    let b = a.broadcast_to(&[3, 2]).unwrap();
    assert_eq!(floats(&b), vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    let s = Array::scalar(7.0f32).broadcast_to(&[2, 2]).unwrap();
    assert_eq!(floats(&s), vec![7.0; 4]);
}

#[test]
fn sliced_views_read_only_their_elements() {
    let a = ramp(&[4, 4], 0.0, 1.0);
    // column block: not contiguous
    let cols = a.slice(&[0, 1], &[4, 3], &[1, 1]).unwrap();
    assert_eq!(
        floats(&cols),
        vec![1.0, 2.0, 5.0, 6.0, 9.0, 10.0, 13.0, 14.0]
    );
    // row block: contiguous but offset
    let rows = a.slice(&[2, 0], &[4, 4], &[1, 1]).unwrap();
    assert_eq!(floats(&rows), (8..16).map(|x| x as f32).collect::<Vec<_>>());
    // strided
    let strided = a.slice(&[0, 0], &[4, 4], &[2, 3]).unwrap();
    assert_eq!(floats(&strided), vec![0.0, 3.0, 8.0, 11.0]);
    // a view of a view
    let t = cols.transpose().unwrap();
    assert_eq!(floats(&t), vec![1.0, 5.0, 9.0, 13.0, 2.0, 6.0, 10.0, 14.0]);
}

#[test]
fn clones_share_data_and_drop_independently() {
    let a = ramp(&[3], 1.0, 1.0);
    let b = a.clone();
    drop(a);
    assert_eq!(floats(&b), vec![1.0, 2.0, 3.0]);
}

#[test]
fn debug_prints_values() {
    let text = format!("{:?}", Array::from_vec(&[1.0f32, 2.0]).unwrap());
    assert!(text.contains('1') && text.contains('2'), "{text}");
}
