//! Gate activations of gated MLPs, compiled with MLX `compile` (shapeless,
//! so one trace serves prefill and decode): MLX fuses `act(gate) * up` into
//! one kernel instead of one per op.

use crate::{compile, Array, Compiled, Result};

/// The gate activation of a gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (Llama, Qwen, Mistral, Phi-3).
    Silu,
    /// `gelu_tanh(gate) * up` (Gemma).
    GeluApprox,
}

thread_local! {
    static SILU_GATE: Option<Compiled> = compile(
        |a: &[Array]| Ok(vec![a[0].silu()?.multiply(&a[1])?]),
        true,
    ).ok();
    static GELU_GATE: Option<Compiled> = compile(
        |a: &[Array]| Ok(vec![a[0].gelu_approx()?.multiply(&a[1])?]),
        true,
    ).ok();
}

/// `act(gate) * up`, compiled once per thread (falls back to plain ops if
/// compilation is unavailable).
pub fn gated(activation: Activation, gate: &Array, up: &Array) -> Result<Array> {
    let slot = match activation {
        Activation::Silu => &SILU_GATE,
        Activation::GeluApprox => &GELU_GATE,
    };
    let compiled = slot.with(|c| c.as_ref().map(|c| c.call(&[gate.clone(), up.clone()])));
    match compiled {
        Some(out) => Ok(out?.into_iter().next().expect("one output")),
        None => match activation {
            Activation::Silu => gate.silu()?.multiply(up),
            Activation::GeluApprox => gate.gelu_approx()?.multiply(up),
        },
    }
}
