//! `mlx-infer backends`: one line per registered backend.

use std::io::Write;

use anyhow::Result;

/// Prints name, availability (with the reason when not), version and device.
pub fn run(out: &mut impl Write) -> Result<i32> {
    let all = inference::backends();
    for backend in &all {
        let status = backend.status();
        if status.available {
            writeln!(
                out,
                "{:<6} available    MLX {}  device {}  priority {}",
                backend.name(),
                status.version.as_deref().unwrap_or("?"),
                status.device.as_deref().unwrap_or("?"),
                backend.priority()
            )?;
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
