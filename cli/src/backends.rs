//! `mlx-infer backends`: one line per registered backend.

use std::io::Write;

use anyhow::Result;

/// Prints name, availability (with the reason when not), version and device.
/// An available backend's line is its name, `available`, then fields
/// separated by two spaces, each a key and its value: `MLX <version>`,
/// `device <device>`, `priority <n>`, and where the backend says them
/// `blas <library>` and `dtype <what auto computes in>`.
pub fn run(out: &mut impl Write) -> Result<i32> {
    let all = inference::backends();
    for backend in &all {
        let status = backend.status();
        if status.available {
            let mut line = format!(
                "{:<6} available    MLX {}  device {}  priority {}",
                backend.name(),
                status.version.as_deref().unwrap_or("?"),
                status.device.as_deref().unwrap_or("?"),
                backend.priority()
            );
            if let Some(blas) = &status.blas {
                line.push_str(&format!("  blas {blas}"));
            }
            if let Some(dtype) = &status.dtype {
                line.push_str(&format!("  dtype {dtype}"));
            }
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{:<6} unavailable  {}",
                backend.name(),
                status.reason.as_deref().unwrap_or("unknown reason")
            )?;
        }
    }
    #[cfg(not(feature = "metal"))]
    if let Err(why) = crate::linked::native::active_memory() {
        let name = inference::native_backend_name();
        writeln!(out, "{name:<6} not built    {why}")?;
    }
    Ok(0)
}
