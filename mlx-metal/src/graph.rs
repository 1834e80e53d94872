//! The graph behind lazy arrays, as MLX prints it: which operations a step
//! is made of, counted before it runs.

use std::collections::BTreeMap;
use std::ffi::CString;

use mlx_metal_sys as sys;

use crate::status::call;
use crate::vector::VectorArray;
use crate::{Array, Error, Result};

/// MLX's listing of the graph that computes `outputs` (`mlx_print_graph`):
/// the inputs, then one line per operation in the order it would run,
/// `Name[ ...] inputs -> outputs`. Only the operations still to run are
/// listed: evaluated arrays are inputs.
pub fn print_graph(outputs: &[&Array]) -> Result<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "mlx-graph-{}-{}.txt",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let c_path = CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| Error::InvalidArgument("temporary path holds a NUL byte".into()))?;
    let outs = VectorArray::from_arrays(outputs.iter().copied());
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let file = unsafe { sys::fopen(c_path.as_ptr(), c"w".as_ptr()) };
    if file.is_null() {
        return Err(Error::File {
            path,
            message: "cannot be created for the graph listing".into(),
        });
    }
    // SAFETY: `file` is an open stream, the namer a fresh handle freed
    // below, `outs` valid handles.
    let printed = call(|| unsafe {
        let namer = sys::mlx_node_namer_new();
        let status = sys::mlx_print_graph(file as *mut _, namer, outs.raw);
        sys::mlx_node_namer_free(namer);
        status
    });
    // SAFETY: `file` is open and closed exactly once.
    unsafe { sys::fclose(file) };
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    printed?;
    text.map_err(|e| Error::File {
        path,
        message: e.to_string(),
    })
}

/// How many operations of each kind [`print_graph`] lists for `outputs`.
pub fn count_operations(outputs: &[&Array]) -> Result<BTreeMap<String, usize>> {
    let text = print_graph(outputs)?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some((name, _)) = line.split_once(' ') else {
            continue;
        };
        if line.contains("->") {
            *counts.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}
