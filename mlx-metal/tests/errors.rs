//! MLX failures come back as values carrying MLX's own message.

use mlx_metal::{Array, Dtype, Error};

#[test]
fn shape_error_returns_mlx_text() {
    let a = Array::zeros(&[2, 3], Dtype::Float32).unwrap();
    let b = Array::zeros(&[4, 5], Dtype::Float32).unwrap();
    let e = a.add(&b).unwrap_err();
    match &e {
        Error::Mlx(m) => assert!(
            m.contains("cannot be broadcast") && m.contains("(2,3)"),
            "{m}"
        ),
        other => panic!("expected Error::Mlx, got {other:?}"),
    }
    let e = a.matmul(&a).unwrap_err();
    assert!(e.to_string().starts_with("MLX: "), "{e}");
    assert!(e.to_string().contains("matmul"), "{e}");
    let e = a.reshape(&[5]).unwrap_err();
    assert!(e.to_string().contains("reshape"), "{e}");
}

#[test]
fn each_error_is_reported_by_the_call_that_caused_it() {
    let a = Array::zeros(&[2], Dtype::Float32).unwrap();
    let e1 = a.reshape(&[3]).unwrap_err().to_string();
    // a successful call in between does not see the old message
    assert!(a.add_scalar(1.0).is_ok());
    let e2 = a.transpose_axes(&[0, 1]).unwrap_err().to_string();
    assert_ne!(e1, e2);
    assert!(e2.contains("transpose"), "{e2}");
}

#[test]
fn errors_on_other_threads_stay_there() {
    let handle = std::thread::spawn(|| {
        let a = Array::zeros(&[2], Dtype::Float32).unwrap();
        a.reshape(&[3]).unwrap_err().to_string()
    });
    let msg = handle.join().unwrap();
    assert!(msg.contains("reshape"), "{msg}");
    let a = Array::zeros(&[2], Dtype::Float32).unwrap();
    assert!(a.add_scalar(1.0).is_ok());
}
