//! `compile`: trace a Rust closure once and replay the fused graph.

use std::rc::Rc;

use mlx_metal_sys as sys;

use crate::closure::{tracing, Body, Closure};
use crate::status::call;
use crate::transforms::{ArrayFn, Scoped};
use crate::{Array, Result};

/// A closure compiled by MLX. Calling it with inputs of the shapes it was
/// traced with (any shapes, when `shapeless`) replays the optimised graph.
///
/// Calls made while another compiled closure is being traced run the Rust
/// closure directly, so nested compiled functions are inlined into the
/// outer trace.
pub struct Compiled {
    compiled: Closure,
    body: Rc<Body>,
}

/// Compiles `f`. Errors and panics inside `f` come back as
/// [`Error::Closure`](crate::Error::Closure) from [`Compiled::call`].
///
/// ```
/// use mlx_metal::{compile, Array};
///
/// let f = compile(|x: &[Array]| Ok(vec![x[0].multiply(&x[0])?.add(&x[0])?]), false)?;
/// let x = Array::from_vec(&[1.0f32, 2.0, 3.0])?;
/// assert_eq!(f.call(&[x])?[0].to_vec::<f32>()?, vec![2.0, 6.0, 12.0]);
/// # Ok::<(), mlx_metal::Error>(())
/// ```
pub fn compile<F>(f: F, shapeless: bool) -> Result<Compiled>
where
    F: Fn(&[Array]) -> Result<Vec<Array>> + 'static,
{
    let body: Rc<Body> = Rc::new(f);
    let traced = Closure::new(body.clone(), true);
    let mut compiled = Closure::empty();
    // SAFETY: `traced.raw` is valid; `compiled.raw` is owned by `compiled`.
    call(|| unsafe { sys::mlx_compile(&mut compiled.raw, traced.raw, shapeless) })?;
    Ok(Compiled { compiled, body })
}

/// Compiles `f`, which may borrow from its surroundings (a model), and
/// runs `body` with the compiled function; `f` is traced again whenever
/// the inputs' shapes change. The compiled function lives only as long as
/// `body` runs: MLX's trace cache entry goes with it.
///
/// ```
/// use mlx_metal::{with_compiled, Array};
///
/// let k = Array::from_vec(&[10.0f32])?;
/// let f = |x: &[Array]| Ok(vec![x[0].multiply(&k)?]);
/// let y = with_compiled(&f, false, |c| c.call(&[Array::from_vec(&[1.0f32, 2.0])?]))??;
/// assert_eq!(y[0].to_vec::<f32>()?, vec![10.0, 20.0]);
/// # Ok::<(), mlx_metal::Error>(())
/// ```
pub fn with_compiled<R>(
    f: &ArrayFn<'_>,
    shapeless: bool,
    body: impl FnOnce(&Compiled) -> R,
) -> Result<R> {
    let (guard, scoped) = Scoped::new(f);
    let traced = Closure::new(scoped.clone(), true);
    let mut compiled = Closure::empty();
    // SAFETY: `traced.raw` is valid; `compiled.raw` is owned by `compiled`.
    call(|| unsafe { sys::mlx_compile(&mut compiled.raw, traced.raw, shapeless) })?;
    let compiled = Compiled {
        compiled,
        body: scoped,
    };
    let out = body(&compiled);
    drop(compiled);
    drop(traced);
    drop(guard);
    Ok(out)
}

/// A compiled closure that may borrow from its surroundings for `'a` (a
/// model): it owns the closure, and MLX's trace cache entry goes with it
/// when dropped. It is traced again whenever the inputs' shapes change.
///
/// ```
/// use mlx_metal::{compile_borrowing, Array};
///
/// let k = Array::from_vec(&[10.0f32])?;
/// let f = compile_borrowing(Box::new(|x: &[Array]| Ok(vec![x[0].multiply(&k)?])), false)?;
/// let y = f.call(&[Array::from_vec(&[1.0f32, 2.0])?])?;
/// assert_eq!(y[0].to_vec::<f32>()?, vec![10.0, 20.0]);
/// # Ok::<(), mlx_metal::Error>(())
/// ```
pub struct CompiledBorrowing<'a> {
    // Dropped in this order: the compiled function, the closure MLX traces,
    // the guard (after which MLX can no longer reach `f`), then `f`.
    compiled: Compiled,
    _traced: Closure,
    _guard: Scoped,
    _f: Box<ArrayFn<'a>>,
}

/// Compiles `f`, which may borrow for `'a`; see [`CompiledBorrowing`].
pub fn compile_borrowing<'a>(
    f: Box<ArrayFn<'a>>,
    shapeless: bool,
) -> Result<CompiledBorrowing<'a>> {
    // `Scoped` points at the boxed closure, whose address stays put while
    // the box moves into the returned value.
    let (guard, scoped) = Scoped::new(f.as_ref());
    let traced = Closure::new(scoped.clone(), true);
    let mut compiled = Closure::empty();
    // SAFETY: `traced.raw` is valid; `compiled.raw` is owned by `compiled`.
    call(|| unsafe { sys::mlx_compile(&mut compiled.raw, traced.raw, shapeless) })?;
    Ok(CompiledBorrowing {
        compiled: Compiled {
            compiled,
            body: scoped,
        },
        _traced: traced,
        _guard: guard,
        _f: f,
    })
}

impl CompiledBorrowing<'_> {
    /// Runs the compiled function (inside another trace: the closure itself).
    pub fn call(&self, inputs: &[Array]) -> Result<Vec<Array>> {
        self.compiled.call(inputs)
    }
}

impl Compiled {
    /// Runs the compiled function (or, inside another trace, the closure itself).
    pub fn call(&self, inputs: &[Array]) -> Result<Vec<Array>> {
        if tracing() {
            return (self.body)(inputs);
        }
        self.compiled.apply(inputs)
    }
}
