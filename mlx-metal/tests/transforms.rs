//! Gradients, compile and evaluation.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::{assert_close, floats, randn};
use mlx_metal::{async_eval, compile, eval, value_and_grad, vjp, Array, Error};

#[test]
fn vjp_of_polynomial_matches_analytic() {
    // f(x) = x^3 + 2x, f'(x) = 3x^2 + 2
    let x = Array::from_vec(&[-1.0f32, 0.5, 2.0]).unwrap();
    let (out, grads) = vjp(
        |a: &[Array]| {
            Ok(vec![a[0]
                .power(&Array::scalar(3.0f32))?
                .add(&a[0].mul_scalar(2.0)?)?])
        },
        &[x],
        &[Array::from_vec(&[1.0f32, 1.0, 2.0]).unwrap()],
    )
    .unwrap();
    assert_close(&floats(&out[0]), &[-3.0, 1.125, 12.0], 1e-6);
    assert_close(&floats(&grads[0]), &[5.0, 2.75, 28.0], 1e-5);
}

#[test]
fn value_and_grad_of_two_arguments() {
    // f(w, b) = sum((w * x + b - y)^2)
    let x = Array::from_vec(&[1.0f32, 2.0, 3.0]).unwrap();
    let y = Array::from_vec(&[2.0f32, 3.0, 5.0]).unwrap();
    let (xc, yc) = (x.clone(), y.clone());
    let g = value_and_grad(
        move |a: &[Array]| {
            let r = a[0].multiply(&xc)?.add(&a[1])?.subtract(&yc)?;
            Ok(vec![r.square()?.sum(&[], false)?])
        },
        &[0, 1],
    )
    .unwrap();
    let (w, b) = (Array::scalar(1.5f32), Array::scalar(0.5f32));
    let (value, grads) = g.apply(&[w, b]).unwrap();
    // residuals r = 1.5x + 0.5 - y = [0, 0.5, 0]
    assert_close(&[value[0].item::<f32>().unwrap()], &[0.25], 1e-6);
    // df/dw = sum(2 r x) = 2, df/db = sum(2 r) = 1
    assert_close(&[grads[0].item::<f32>().unwrap()], &[2.0], 1e-6);
    assert_close(&[grads[1].item::<f32>().unwrap()], &[1.0], 1e-6);
    assert!(value_and_grad(|a: &[Array]| Ok(a.to_vec()), &[]).is_err());
}

#[test]
fn grad_of_softmax_cross_entropy() {
    // d/dlogits of -log softmax(logits)[t] = softmax(logits) - onehot(t)
    let logits = Array::from_vec(&[0.5f32, -1.0, 2.0]).unwrap();
    let g = value_and_grad(
        |a: &[Array]| {
            let lse = a[0].logsumexp(&[0], false)?;
            Ok(vec![lse.subtract(&a[0].slice_axis(0, 2, 3)?.squeeze(&[])?)?])
        },
        &[0],
    )
    .unwrap();
    let (_, grads) = g.apply(std::slice::from_ref(&logits)).unwrap();
    let mut expected = floats(&logits.softmax(&[0], true).unwrap());
    expected[2] -= 1.0;
    assert_close(&floats(&grads[0]), &expected, 1e-6);
}

fn mlp(a: &[Array]) -> mlx_metal::Result<Vec<Array>> {
    let h = a[0].matmul(&a[1])?.silu()?;
    Ok(vec![h.matmul(&a[2])?.gelu_approx()?, h.sum(&[], false)?])
}

#[test]
fn compiled_closure_gives_the_same_values() {
    let x = randn(&[4, 8], 31, 1.0);
    let w1 = randn(&[8, 16], 32, 0.3);
    let w2 = randn(&[16, 8], 33, 0.3);
    let plain = mlp(&[x.clone(), w1.clone(), w2.clone()]).unwrap();
    let compiled = compile(mlp, false).unwrap();
    for _ in 0..3 {
        let out = compiled.call(&[x.clone(), w1.clone(), w2.clone()]).unwrap();
        assert_eq!(out.len(), 2);
        assert_close(&floats(&out[0]), &floats(&plain[0]), 1e-5);
        assert_close(&floats(&out[1]), &floats(&plain[1]), 1e-4);
    }
}

#[test]
fn compiled_closure_traces_once_per_shape() {
    let traces = Rc::new(Cell::new(0));
    let t = traces.clone();
    let f = compile(
        move |a: &[Array]| {
            t.set(t.get() + 1);
            Ok(vec![a[0].exp()?.add_scalar(1.0)?])
        },
        false,
    )
    .unwrap();
    for _ in 0..4 {
        f.call(&[randn(&[3], 34, 1.0)]).unwrap()[0].eval().unwrap();
    }
    assert_eq!(traces.get(), 1, "one trace for one shape");
    f.call(&[randn(&[5], 35, 1.0)]).unwrap()[0].eval().unwrap();
    assert_eq!(traces.get(), 2, "a new shape traces again");

    let shapeless_traces = Rc::new(Cell::new(0));
    let t = shapeless_traces.clone();
    let g = compile(
        move |a: &[Array]| {
            t.set(t.get() + 1);
            Ok(vec![a[0].mul_scalar(2.0)?])
        },
        true,
    )
    .unwrap();
    assert_eq!(
        floats(&g.call(&[randn(&[3], 36, 1.0)]).unwrap()[0]).len(),
        3
    );
    let out = g
        .call(&[Array::from_vec(&[1.0f32, 2.0, 3.0, 4.0]).unwrap()])
        .unwrap();
    assert_eq!(floats(&out[0]), vec![2.0, 4.0, 6.0, 8.0]);
    assert_eq!(shapeless_traces.get(), 1, "shapeless compile traces once");
}

#[test]
fn independent_compiled_closures_do_not_share_results() {
    let x = Array::from_vec(&[1.0f32, 2.0]).unwrap();
    let a = compile(|a: &[Array]| Ok(vec![a[0].add_scalar(1.0)?]), false).unwrap();
    assert_eq!(
        floats(&a.call(std::slice::from_ref(&x)).unwrap()[0]),
        vec![2.0, 3.0]
    );
    drop(a);
    let b = compile(|a: &[Array]| Ok(vec![a[0].mul_scalar(10.0)?]), false).unwrap();
    assert_eq!(floats(&b.call(&[x]).unwrap()[0]), vec![10.0, 20.0]);
}

#[test]
fn nested_compile_is_inlined_while_tracing() {
    let inner = Rc::new(compile(|a: &[Array]| Ok(vec![a[0].square()?]), false).unwrap());
    let inner_calls = inner.clone();
    let outer = compile(
        move |a: &[Array]| {
            let sq = inner_calls.call(a)?;
            Ok(vec![sq[0].add_scalar(1.0)?])
        },
        false,
    )
    .unwrap();
    let x = Array::from_vec(&[1.0f32, 3.0]).unwrap();
    assert_eq!(
        floats(&outer.call(std::slice::from_ref(&x)).unwrap()[0]),
        vec![2.0, 10.0]
    );
    assert_eq!(floats(&inner.call(&[x]).unwrap()[0]), vec![1.0, 9.0]);
}

#[test]
fn a_panic_in_a_compiled_closure_is_an_error() {
    let f = compile(
        |_: &[Array]| -> mlx_metal::Result<Vec<Array>> { panic!("boom in closure") },
        false,
    )
    .unwrap();
    let e = f.call(&[Array::scalar(1.0f32)]).unwrap_err();
    assert!(
        matches!(&e, Error::Closure(m) if m.contains("boom in closure")),
        "{e}"
    );
    // the process and MLX keep working
    assert_eq!(
        Array::scalar(2.0f32)
            .mul_scalar(2.0)
            .unwrap()
            .item::<f32>()
            .unwrap(),
        4.0
    );
}

#[test]
fn an_error_in_a_closure_is_returned() {
    let f = compile(|a: &[Array]| Ok(vec![a[0].reshape(&[7])?]), false).unwrap();
    let e = f
        .call(&[Array::from_vec(&[1.0f32, 2.0]).unwrap()])
        .unwrap_err();
    assert!(
        matches!(&e, Error::Closure(m) if m.contains("reshape")),
        "{e}"
    );
    let e = vjp(
        |_: &[Array]| Err(Error::InvalidArgument("nope".into())),
        &[Array::scalar(1.0f32)],
        &[Array::scalar(1.0f32)],
    )
    .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn eval_and_async_eval_compute_values() {
    let a = Array::from_vec(&[1.0f32, 2.0])
        .unwrap()
        .mul_scalar(3.0)
        .unwrap();
    let b = a.add_scalar(1.0).unwrap();
    eval(&[&a, &b]).unwrap();
    async_eval(&[&b]).unwrap();
    assert_eq!(floats(&b), vec![4.0, 7.0]);
}
