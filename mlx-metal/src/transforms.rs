//! Evaluation and automatic differentiation.

use std::rc::Rc;

use mlx_metal_sys as sys;

use crate::closure::{Body, Closure};
use crate::status::call;
use crate::vector::VectorArray;
use crate::{Array, Error, Result};

/// Computes all `arrays` (sharing work between them).
pub fn eval(arrays: &[&Array]) -> Result<()> {
    let v = VectorArray::from_arrays(arrays.iter().copied());
    // SAFETY: `v` holds valid handles for the call.
    call(|| unsafe { sys::mlx_eval(v.raw) })
}

/// Starts computing `arrays` and returns at once; reading them (or
/// [`eval`]) waits for the result. Lets the next step's graph be built while
/// this one runs.
pub fn async_eval(arrays: &[&Array]) -> Result<()> {
    let v = VectorArray::from_arrays(arrays.iter().copied());
    // SAFETY: `v` holds valid handles for the call.
    call(|| unsafe { sys::mlx_async_eval(v.raw) })
}

/// Vector-Jacobian product: runs `f` on `primals` and pulls `cotangents`
/// (one per output) back to the inputs. Returns `(outputs, vjps)`.
///
/// ```
/// use mlx_metal::{vjp, Array};
///
/// // d/dx (x^2) at x = 3, times cotangent 1
/// let (out, grads) = vjp(
///     |x: &[Array]| Ok(vec![x[0].square()?]),
///     &[Array::scalar(3.0f32)],
///     &[Array::scalar(1.0f32)],
/// )?;
/// assert_eq!(out[0].item::<f32>()?, 9.0);
/// assert_eq!(grads[0].item::<f32>()?, 6.0);
/// # Ok::<(), mlx_metal::Error>(())
/// ```
pub fn vjp<F>(f: F, primals: &[Array], cotangents: &[Array]) -> Result<(Vec<Array>, Vec<Array>)>
where
    F: Fn(&[Array]) -> Result<Vec<Array>> + 'static,
{
    let closure = Closure::new(Rc::new(f) as Rc<Body>, false);
    let p = VectorArray::from_arrays(primals);
    let c = VectorArray::from_arrays(cotangents);
    let mut outs = VectorArray::new();
    let mut grads = VectorArray::new();
    // SAFETY: all handles are valid; the out-vectors are owned by `outs`/`grads`.
    call(|| unsafe { sys::mlx_vjp(&mut outs.raw, &mut grads.raw, closure.raw, p.raw, c.raw) })?;
    Ok((outs.to_vec()?, grads.to_vec()?))
}

/// A function that returns its value and its gradient with respect to
/// chosen arguments. Made by [`value_and_grad`].
pub struct ValueAndGrad {
    raw: sys::mlx_closure_value_and_grad,
}

/// Wraps `f` (whose first output must be a scalar loss) so that calling the
/// result gives `(outputs, gradients)` with respect to the inputs at
/// `argnums`.
///
/// ```
/// use mlx_metal::{value_and_grad, Array};
///
/// // f(x, y) = sum(x * y); df/dx = y
/// let g = value_and_grad(|a: &[Array]| Ok(vec![a[0].multiply(&a[1])?.sum(&[], false)?]), &[0])?;
/// let x = Array::from_vec(&[1.0f32, 2.0])?;
/// let y = Array::from_vec(&[3.0f32, 4.0])?;
/// let (value, grads) = g.apply(&[x, y])?;
/// assert_eq!(value[0].item::<f32>()?, 11.0);
/// assert_eq!(grads[0].to_vec::<f32>()?, vec![3.0, 4.0]);
/// # Ok::<(), mlx_metal::Error>(())
/// ```
pub fn value_and_grad<F>(f: F, argnums: &[i32]) -> Result<ValueAndGrad>
where
    F: Fn(&[Array]) -> Result<Vec<Array>> + 'static,
{
    if argnums.is_empty() {
        return Err(Error::InvalidArgument(
            "value_and_grad needs at least one argument index".into(),
        ));
    }
    let closure = Closure::new(Rc::new(f) as Rc<Body>, false);
    crate::status::init();
    // SAFETY: creates a handle owned by the returned value.
    let mut out = ValueAndGrad {
        raw: unsafe { sys::mlx_closure_value_and_grad_new() },
    };
    // SAFETY: `closure.raw` is valid; `argnums` is valid for its length.
    call(|| unsafe {
        sys::mlx_value_and_grad(&mut out.raw, closure.raw, argnums.as_ptr(), argnums.len())
    })?;
    Ok(out)
}

impl ValueAndGrad {
    /// Evaluates the function and its gradients at `inputs`.
    pub fn apply(&self, inputs: &[Array]) -> Result<(Vec<Array>, Vec<Array>)> {
        let input = VectorArray::from_arrays(inputs);
        let mut values = VectorArray::new();
        let mut grads = VectorArray::new();
        // SAFETY: all handles are valid; out-vectors are owned by `values`/`grads`.
        call(|| unsafe {
            sys::mlx_closure_value_and_grad_apply(
                &mut values.raw,
                &mut grads.raw,
                self.raw,
                input.raw,
            )
        })?;
        Ok((values.to_vec()?, grads.to_vec()?))
    }
}

impl Drop for ValueAndGrad {
    fn drop(&mut self) {
        // SAFETY: `raw` is owned by this value and freed exactly once.
        unsafe { sys::mlx_closure_value_and_grad_free(self.raw) };
    }
}

/// The signature of a function that [`value_and_grad_of`] differentiates.
pub type ArrayFn<'a> = dyn Fn(&[Array]) -> Result<Vec<Array>> + 'a;

/// Calls `f` through MLX while `f` is alive: MLX gets a `'static` closure
/// that reaches `f` through a slot this guard empties when the scope ends,
/// so a call after the scope gets an error, never a dangling reference.
pub(crate) struct Scoped {
    slot: Rc<std::cell::Cell<Option<*const ArrayFn<'static>>>>,
}

impl Scoped {
    pub(crate) fn new(f: &ArrayFn<'_>) -> (Scoped, Rc<Body>) {
        let ptr: *const ArrayFn<'_> = f;
        // SAFETY: only the lifetime bound of the trait object changes; the
        // pointer is dereferenced only while the slot holds it, and `Scoped`'s
        // drop empties the slot before `f`'s borrow ends.
        let ptr: *const ArrayFn<'static> = unsafe { std::mem::transmute(ptr) };
        let slot = Rc::new(std::cell::Cell::new(Some(ptr)));
        let inner = Rc::clone(&slot);
        let body = move |x: &[Array]| -> Result<Vec<Array>> {
            match inner.get() {
                // SAFETY: the slot is set only while the referent is borrowed
                // by the live `Scoped` (see `Scoped::new`).
                Some(p) => unsafe { (*p)(x) },
                None => Err(Error::Closure(
                    "a scoped function was called after its scope ended".into(),
                )),
            }
        };
        (Scoped { slot }, Rc::new(body) as Rc<Body>)
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        self.slot.set(None);
    }
}

/// Value and gradient of `f` (first output a scalar loss) at `inputs`, with
/// respect to the inputs at `argnums`. Unlike [`value_and_grad`], `f` may
/// borrow from its surroundings (a model, a batch): it is called only
/// during this call.
///
/// ```
/// use mlx_metal::{value_and_grad_of, Array};
///
/// let w = Array::from_vec(&[3.0f32, 4.0])?; // borrowed, not moved
/// let (value, grads) = value_and_grad_of(
///     &|x: &[Array]| Ok(vec![x[0].multiply(&w)?.sum(&[], false)?]),
///     &[Array::from_vec(&[1.0f32, 2.0])?],
///     &[0],
/// )?;
/// assert_eq!(value[0].item::<f32>()?, 11.0);
/// assert_eq!(grads[0].to_vec::<f32>()?, vec![3.0, 4.0]);
/// # Ok::<(), mlx_metal::Error>(())
/// ```
pub fn value_and_grad_of(
    f: &ArrayFn<'_>,
    inputs: &[Array],
    argnums: &[i32],
) -> Result<(Vec<Array>, Vec<Array>)> {
    if argnums.is_empty() {
        return Err(Error::InvalidArgument(
            "value_and_grad needs at least one argument index".into(),
        ));
    }
    let (guard, body) = Scoped::new(f);
    let closure = Closure::new(body, false);
    crate::status::init();
    // SAFETY: creates a handle owned by `vag`.
    let mut vag = ValueAndGrad {
        raw: unsafe { sys::mlx_closure_value_and_grad_new() },
    };
    // SAFETY: `closure.raw` is valid; `argnums` is valid for its length.
    call(|| unsafe {
        sys::mlx_value_and_grad(&mut vag.raw, closure.raw, argnums.as_ptr(), argnums.len())
    })?;
    let out = vag.apply(inputs);
    drop(vag);
    drop(closure);
    drop(guard);
    out
}

/// Wraps `f` in MLX's gradient checkpoint: its intermediate values are not
/// kept for the backward pass but recomputed there, trading compute for
/// memory. `f` must not borrow (MLX may call it again during a later
/// backward pass).
pub fn checkpoint<F>(f: F) -> Result<Checkpointed>
where
    F: Fn(&[Array]) -> Result<Vec<Array>> + 'static,
{
    let closure = Closure::new(Rc::new(f) as Rc<Body>, false);
    let out = Closure::empty();
    let mut out = Checkpointed { closure: out };
    // SAFETY: `closure.raw` is valid; `out.closure.raw` is an owned handle mlx-c writes.
    call(|| unsafe { sys::mlx_checkpoint(&mut out.closure.raw, closure.raw) })?;
    Ok(out)
}

/// A function wrapped by [`checkpoint`].
pub struct Checkpointed {
    closure: Closure,
}

impl Checkpointed {
    /// Calls the wrapped function.
    pub fn apply(&self, inputs: &[Array]) -> Result<Vec<Array>> {
        self.closure.apply(inputs)
    }
}
