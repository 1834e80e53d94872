//! Rust closures handed to MLX (`compile`, `vjp`, `value_and_grad`).
//!
//! The closure travels to mlx-c as an opaque payload pointer with a
//! destructor, so MLX owns it exactly as long as it needs it. The trampoline
//! that MLX calls catches panics and errors, parks their message for
//! [`check`](crate::status::check) and returns a failure status: nothing
//! unwinds through C++.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use mlx_metal_sys as sys;

use crate::status::{call, check, init, set_closure_error};
use crate::vector::VectorArray;
use crate::{Array, Result};

/// The shape of every closure given to MLX: arrays in, arrays out.
pub(crate) type Body = dyn Fn(&[Array]) -> Result<Vec<Array>>;

struct Payload {
    body: Rc<Body>,
    /// Set for closures being traced by `compile`.
    traced: bool,
}

thread_local! {
    static TRACING: Cell<u32> = const { Cell::new(0) };
}

/// True while this thread is inside a closure being traced by `compile`.
pub(crate) fn tracing() -> bool {
    TRACING.with(|t| t.get() > 0)
}

struct TracingGuard;

impl TracingGuard {
    fn enter() -> TracingGuard {
        TRACING.with(|t| t.set(t.get() + 1));
        TracingGuard
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        TRACING.with(|t| t.set(t.get() - 1));
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

extern "C" fn trampoline(
    res: *mut sys::mlx_vector_array,
    input: sys::mlx_vector_array,
    payload: *mut c_void,
) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
        // SAFETY: `payload` is the `Payload` boxed in `Closure::new`, alive
        // until mlx-c calls `drop_payload`.
        let payload = unsafe { &*(payload as *const Payload) };
        let inputs = VectorArray::read(input)?;
        let _guard = payload.traced.then(TracingGuard::enter);
        let outputs = (payload.body)(&inputs)?;
        let raws: Vec<sys::mlx_array> = outputs.iter().map(Array::raw).collect();
        // SAFETY: `res` is mlx-c's live out-vector; `raws` are valid handles it copies.
        check(unsafe { sys::mlx_vector_array_set_data(res, raws.as_ptr(), raws.len()) })
    }));
    match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            set_closure_error(e.to_string());
            1
        }
        Err(p) => {
            set_closure_error(format!("panicked: {}", panic_message(p.as_ref())));
            1
        }
    }
}

extern "C" fn drop_payload(payload: *mut c_void) {
    let _ = catch_unwind(|| {
        // SAFETY: `payload` came from `Box::into_raw` in `Closure::new` and mlx-c
        // calls this destructor exactly once.
        drop(unsafe { Box::from_raw(payload as *mut Payload) });
    });
}

/// An owned `mlx_closure`.
pub(crate) struct Closure {
    pub(crate) raw: sys::mlx_closure,
}

impl Closure {
    /// Wraps `body`; `traced` marks closures that `compile` traces.
    pub(crate) fn new(body: Rc<Body>, traced: bool) -> Closure {
        init();
        let payload = Box::into_raw(Box::new(Payload { body, traced })) as *mut c_void;
        // SAFETY: `trampoline` matches the callback type; mlx-c takes ownership
        // of `payload` and frees it through `drop_payload`.
        let raw = unsafe {
            sys::mlx_closure_new_func_payload(Some(trampoline), payload, Some(drop_payload))
        };
        Closure { raw }
    }

    /// An empty handle for mlx-c to write into.
    pub(crate) fn empty() -> Closure {
        init();
        // SAFETY: creates a handle this value owns.
        Closure {
            raw: unsafe { sys::mlx_closure_new() },
        }
    }

    /// Calls the closure through MLX.
    pub(crate) fn apply(&self, inputs: &[Array]) -> Result<Vec<Array>> {
        let input = VectorArray::from_arrays(inputs);
        let mut out = VectorArray::new();
        // SAFETY: all handles are valid; `out.raw` is owned by `out`.
        call(|| unsafe { sys::mlx_closure_apply(&mut out.raw, self.raw, input.raw) })?;
        out.to_vec()
    }
}

impl Drop for Closure {
    fn drop(&mut self) {
        // SAFETY: `raw` is owned by this value and freed exactly once.
        unsafe { sys::mlx_closure_free(self.raw) };
    }
}
