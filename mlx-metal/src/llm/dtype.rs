//! The floating-point type a model computes in ([`ComputeDtype`]).
//!
//! MLX's CPU backend has no fast half-precision matrix product: bfloat16
//! and float16 products run in a plain loop (about 6 GFLOP/s on the 2-core
//! CI machine), while float32 ones go through BLAS (70 to 200 GFLOP/s with
//! OpenBLAS, depending on the shapes). So by default ([`ComputeDtype::Auto`]) a model whose weights
//! are bfloat16/float16 computes in float32 on the CPU; on a GPU it keeps
//! the weights' type. The cast is exact (every bfloat16/float16 value is a
//! float32 value) and costs twice the weight memory.

use inference::ComputeDtype;

use crate::{Device, DeviceType, Dtype, Result};

/// The floating-point type of a model's weights and the one it computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtypeChoice {
    /// The weights' type as stored (for quantised weights, their scales');
    /// `None` when no weight is floating point.
    pub weights: Option<Dtype>,
    /// The type the model computes in.
    pub compute: Option<Dtype>,
}

/// The type floating-point weights stored as `weights` are cast to for
/// `requested`, or `None` to keep them as they are.
pub fn resolve(requested: ComputeDtype, weights: Option<Dtype>, on_cpu: bool) -> Option<Dtype> {
    let target = match requested {
        ComputeDtype::Model => return None,
        ComputeDtype::Auto => {
            let half = matches!(weights, Some(Dtype::Bfloat16 | Dtype::Float16));
            return (on_cpu && half).then_some(Dtype::Float32);
        }
        ComputeDtype::Float32 => Dtype::Float32,
        ComputeDtype::Bfloat16 => Dtype::Bfloat16,
        ComputeDtype::Float16 => Dtype::Float16,
    };
    Some(target)
}

/// True when MLX computes on the CPU by default here.
pub fn default_device_is_cpu() -> Result<bool> {
    Ok(Device::default_device()?.kind()? == DeviceType::Cpu)
}

/// What [`ComputeDtype::Auto`] means on this machine, in words.
pub fn auto_description() -> String {
    match default_device_is_cpu() {
        Ok(true) => "auto: float32 for bfloat16/float16 weights (cpu)".into(),
        Ok(false) => "auto: the weights' own type (gpu)".into(),
        Err(e) => format!("auto (device unknown: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_upcasts_half_precision_on_the_cpu_only() {
        use ComputeDtype as C;
        for half in [Dtype::Bfloat16, Dtype::Float16] {
            assert_eq!(resolve(C::Auto, Some(half), true), Some(Dtype::Float32));
            assert_eq!(resolve(C::Auto, Some(half), false), None);
            assert_eq!(resolve(C::Model, Some(half), true), None);
        }
        assert_eq!(resolve(C::Auto, Some(Dtype::Float32), true), None);
        assert_eq!(resolve(C::Auto, None, true), None);
        for (c, d) in [
            (C::Float32, Dtype::Float32),
            (C::Bfloat16, Dtype::Bfloat16),
            (C::Float16, Dtype::Float16),
        ] {
            for on_cpu in [true, false] {
                assert_eq!(resolve(c, Some(Dtype::Float32), on_cpu), Some(d));
                assert_eq!(resolve(c, Some(Dtype::Bfloat16), on_cpu), Some(d));
            }
        }
    }
}
