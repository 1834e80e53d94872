//! What `generate`, `chat` and `bench` share about loading: the `--dtype`
//! value and the one-line load summary.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use inference::{ComputeDtype, ModelInfo};

/// Parses `--dtype` (`auto`, `model`, `float32`, `bfloat16`, `float16`);
/// anything else is clap's usage error listing the accepted values.
pub fn dtype_parser() -> impl TypedValueParser<Value = ComputeDtype> {
    PossibleValuesParser::new(ComputeDtype::NAMES).try_map(|s| s.parse::<ComputeDtype>())
}

/// `loaded ARCH from DIR on BACKEND: weights W, compute C, BLAS B`, with the
/// parts the backend did not report left out.
pub fn summary(info: &ModelInfo) -> String {
    let mut parts = Vec::new();
    if let Some(w) = &info.weights_dtype {
        parts.push(format!("weights {w}"));
    }
    if let Some(c) = &info.compute_dtype {
        parts.push(format!("compute {c}"));
    }
    if let Some(b) = &info.blas {
        parts.push(format!("BLAS {b}"));
    }
    let mut line = format!(
        "loaded {} from {} on {}",
        info.architecture,
        info.path.display(),
        info.backend
    );
    if let Some(bits) = info.quantization_bits {
        line.push_str(&format!(" ({bits}-bit)"));
    }
    if !parts.is_empty() {
        line.push_str(": ");
        line.push_str(&parts.join(", "));
    }
    if let Some(a) = &info.adapter_path {
        line.push_str(&format!(" with adapter {}", a.display()));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_dtypes_and_blas() {
        let mut info = ModelInfo::new("mlx", "qwen3", "/m");
        info.quantization_bits = Some(4);
        info.weights_dtype = Some("bfloat16".into());
        info.compute_dtype = Some("float32".into());
        info.blas = Some("OpenBLAS 0.3.21, 2 threads".into());
        assert_eq!(
            summary(&info),
            "loaded qwen3 from /m on mlx (4-bit): weights bfloat16, compute float32, BLAS OpenBLAS 0.3.21, 2 threads"
        );
        let bare = ModelInfo::new("x", "llama", "/m");
        assert_eq!(summary(&bare), "loaded llama from /m on x");
    }
}
