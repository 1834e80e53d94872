//! The process-wide mlx-c error handler and the checks every FFI call goes
//! through.
//!
//! mlx-c reports a failure by calling its error handler and returning a
//! non-zero status. The handler installed here keeps the message in a
//! thread-local slot; [`check`] turns the status into an [`Error::Mlx`]
//! carrying it. Rust closures run by MLX park their own failure in a second
//! slot, which wins, so the caller sees the closure's error rather than
//! mlx-c's generic "closure returned a non-zero value".

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::sync::Once;

use mlx_metal_sys as sys;

use crate::{Error, Result};

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
    static CLOSURE_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

extern "C" fn handler(msg: *const c_char, _data: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        let text = if msg.is_null() {
            "unknown MLX error".to_string()
        } else {
            // SAFETY: mlx-c passes a NUL-terminated message that lives for the call.
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        };
        LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(without_source_path(&text)));
    });
}

/// mlx-c ends each message with ` at <source file>:<line>` of its own
/// sources; that means nothing to a user, so it goes.
fn without_source_path(text: &str) -> String {
    match text.rfind(" at ") {
        Some(i) => {
            let tail = &text[i + 4..];
            let is_location = tail.rsplit_once(':').is_some_and(|(file, line)| {
                !file.is_empty() && !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
            });
            if is_location {
                text[..i].trim_end().to_string()
            } else {
                text.to_string()
            }
        }
        None => text.to_string(),
    }
}

/// Installs the error handler once per process, and sizes BLAS's thread
/// pool (see [`crate::blas`]). Every entry point into mlx-c calls this
/// first, so MLX's default handler (print and `exit`) never runs.
pub(crate) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: `handler` is a plain function valid for the whole process and
        // takes no data, so no destructor is needed.
        unsafe { sys::mlx_set_error_handler(Some(handler), std::ptr::null_mut(), None) };
        crate::blas::configure_threads();
    });
}

/// Records the failure of a Rust closure run by MLX.
pub(crate) fn set_closure_error(message: String) {
    CLOSURE_ERROR.with(|slot| *slot.borrow_mut() = Some(message));
}

/// Turns an mlx-c status into a `Result`, collecting the handler's message.
pub(crate) fn check(status: i32) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    let mlx = LAST_ERROR.with(|slot| slot.borrow_mut().take());
    if let Some(closure) = CLOSURE_ERROR.with(|slot| slot.borrow_mut().take()) {
        return Err(Error::Closure(closure));
    }
    Err(Error::Mlx(mlx.unwrap_or_else(|| {
        format!("mlx-c call failed with status {status}")
    })))
}

/// Runs an mlx-c call after making sure the handler is installed, and checks
/// its status.
pub(crate) fn call(f: impl FnOnce() -> i32) -> Result<()> {
    init();
    check(f())
}

/// Runs an mlx-c call that writes an `mlx_string` and returns its text.
pub(crate) fn read_string(f: impl FnOnce(*mut sys::mlx_string) -> i32) -> Result<String> {
    init();
    // SAFETY: a fresh string handle, freed below.
    let mut s = unsafe { sys::mlx_string_new() };
    let text = call(|| f(&mut s)).map(|()| {
        // SAFETY: after a successful call `s` holds a NUL-terminated string
        // owned by the handle, copied out before the handle is freed.
        unsafe { CStr::from_ptr(sys::mlx_string_data(s)) }
            .to_string_lossy()
            .into_owned()
    });
    // SAFETY: created above, freed exactly once.
    unsafe { sys::mlx_string_free(s) };
    text
}

#[cfg(test)]
mod tests {
    use super::without_source_path;

    #[test]
    fn source_locations_are_dropped() {
        assert_eq!(
            without_source_path("[reshape] Cannot reshape array of size 4 into shape (3). at /build/mlx-c/mlx/c/ops.cpp:2201"),
            "[reshape] Cannot reshape array of size 4 into shape (3)."
        );
        assert_eq!(without_source_path("look at this"), "look at this");
        assert_eq!(without_source_path("at a:b"), "at a:b");
    }

    #[test]
    fn mlx_errors_reach_the_caller_without_paths() {
        let a = crate::Array::from_vec(&[1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let e = a.reshape(&[3]).unwrap_err().to_string();
        assert!(e.contains("reshape"), "{e}");
        assert!(!e.contains(".cpp"), "{e}");
    }
}
