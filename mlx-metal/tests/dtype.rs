//! The compute dtype (`LoadOptions::dtype`): half-precision weights compute
//! in float32 on the CPU by default, `model` keeps their type, quantised
//! weights stay quantised with their scales in the compute type.

mod common;

use std::path::Path;

use common::{copy_model, fixtures};
use inference::{ComputeDtype, GenerateOptions, TextModel};
use mlx_metal::llm::config::Config;
use mlx_metal::llm::dtype::default_device_is_cpu;
use mlx_metal::llm::weights::Weights;
use mlx_metal::llm::NativeModel;
use mlx_metal::nn::Linear;
use mlx_metal::{load_safetensors, save_safetensors, Array, Dtype};
use test_support::ScratchDir;

/// A copy of fixture `name` whose floating-point tensors are `edit`ed.
fn variant(name: &str, tag: &str, edit: impl Fn(&Array) -> Array) -> ScratchDir {
    let dir = copy_model(&fixtures().join(name), &format!("dtype-{name}-{tag}"));
    let st = load_safetensors(fixtures().join(name).join("model.safetensors")).unwrap();
    let tensors = st
        .tensors
        .iter()
        .map(|(k, v)| {
            let v = if v.dtype().is_float() {
                edit(v)
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    save_safetensors(dir.join("model.safetensors"), &tensors, &st.metadata).unwrap();
    dir
}

/// The fixture stored in `half`, and the same values stored as float32
/// (`test` keeps the folders of tests running in parallel apart).
fn half_and_rounded(name: &str, half: Dtype, test: &str) -> (ScratchDir, ScratchDir) {
    let stored = variant(name, &format!("{test}-{half}"), |v| v.astype(half).unwrap());
    let rounded = variant(name, &format!("{test}-{half}-as-f32"), |v| {
        v.astype(half).unwrap().astype(Dtype::Float32).unwrap()
    });
    (stored, rounded)
}

/// Last-position logits of a fixed prompt.
fn logits(model: &NativeModel) -> Array {
    let ids = Array::from_slice(&[1i32, 5, 9, 3, 7], &[1, 5]).unwrap();
    let mut caches = model.architecture().make_caches();
    model
        .architecture()
        .forward(&ids, &mut caches)
        .unwrap()
        .slice_axis(1, 4, 5)
        .unwrap()
}

fn floats(a: &Array) -> Vec<f32> {
    a.astype(Dtype::Float32).unwrap().to_vec::<f32>().unwrap()
}

fn info_dtypes(model: &NativeModel) -> (String, String) {
    let info = model.info();
    (
        info.weights_dtype.clone().unwrap(),
        info.compute_dtype.clone().unwrap(),
    )
}

#[test]
fn auto_computes_half_precision_weights_in_float32_on_the_cpu() {
    let on_cpu = default_device_is_cpu().unwrap();
    for half in [Dtype::Bfloat16, Dtype::Float16] {
        let (stored, rounded) = half_and_rounded("qwen3", half, "auto");
        let auto = NativeModel::load_with_dtype(&stored, ComputeDtype::Auto).unwrap();
        let want = if on_cpu { Dtype::Float32 } else { half };
        let got = logits(&auto);
        assert_eq!(got.dtype(), want, "{half}");
        assert_eq!(
            info_dtypes(&auto),
            (half.to_string(), want.to_string()),
            "{half}"
        );
        if on_cpu {
            // the cast is exact: the same numbers as float32 weights holding
            // the half-precision values
            let reference = NativeModel::load_with_dtype(&rounded, ComputeDtype::Model).unwrap();
            common::assert_close(&floats(&got), &floats(&logits(&reference)), 1e-6);
        }
        // NativeModel::load is the default, Auto
        let default = NativeModel::load(&stored).unwrap();
        assert_eq!(logits(&default).dtype(), want, "{half}");
    }
}

#[test]
fn model_keeps_the_weights_type() {
    for half in [Dtype::Bfloat16, Dtype::Float16] {
        let (stored, _) = half_and_rounded("llama", half, "model");
        let mut model = NativeModel::load_with_dtype(&stored, ComputeDtype::Model).unwrap();
        assert_eq!(logits(&model).dtype(), half);
        assert_eq!(info_dtypes(&model), (half.to_string(), half.to_string()));
        let n = model
            .generate("abc", &GenerateOptions::default().max_tokens(5))
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .len();
        assert_eq!(n, 5);
    }
}

#[test]
fn explicit_types_cast_float32_weights() {
    let dir = fixtures().join("gemma3_text");
    for (requested, want) in [
        (ComputeDtype::Float32, Dtype::Float32),
        (ComputeDtype::Bfloat16, Dtype::Bfloat16),
        (ComputeDtype::Float16, Dtype::Float16),
        (ComputeDtype::Auto, Dtype::Float32),
        (ComputeDtype::Model, Dtype::Float32),
    ] {
        let model = NativeModel::load_with_dtype(&dir, requested).unwrap();
        assert_eq!(logits(&model).dtype(), want, "{requested}");
        assert_eq!(
            info_dtypes(&model),
            ("float32".to_string(), want.to_string()),
            "{requested}"
        );
    }
}

/// The first attention projection of a qwen3 fixture, after the dtype.
fn q_proj(dir: &Path, requested: ComputeDtype) -> (Linear, mlx_metal::llm::dtype::DtypeChoice) {
    let (config, _) = Config::load(dir).unwrap();
    let mut w = Weights::load(dir, &config, None).unwrap();
    let choice = w.apply_compute_dtype(requested).unwrap();
    let linear = w
        .linear("model.layers.0.self_attn.q_proj", 64, 4 * 32, false)
        .unwrap();
    (linear, choice)
}

#[test]
fn quantised_weights_stay_quantised_with_scales_in_the_compute_type() {
    let on_cpu = default_device_is_cpu().unwrap();
    let (stored, rounded) = half_and_rounded("qwen3-4bit", Dtype::Bfloat16, "quant");
    let compute = if on_cpu {
        Dtype::Float32
    } else {
        Dtype::Bfloat16
    };
    for (requested, scales) in [
        (ComputeDtype::Auto, compute),
        (ComputeDtype::Model, Dtype::Bfloat16),
        (ComputeDtype::Float32, Dtype::Float32),
    ] {
        let (linear, choice) = q_proj(&stored, requested);
        let Linear::Quantized { weight, .. } = linear else {
            panic!("{requested}: the layer was dequantised");
        };
        assert_eq!(weight.weight.dtype(), Dtype::Uint32, "{requested}");
        assert_eq!(weight.bits, 4);
        assert_eq!(weight.scales.dtype(), scales, "{requested}");
        assert_eq!(weight.biases.dtype(), scales, "{requested}");
        assert_eq!(choice.weights, Some(Dtype::Bfloat16));
        assert_eq!(choice.compute, Some(scales));
    }

    let mut auto = NativeModel::load_with_dtype(&stored, ComputeDtype::Auto).unwrap();
    assert_eq!(auto.info().quantization_bits, Some(4));
    assert_eq!(
        info_dtypes(&auto),
        ("bfloat16".to_string(), compute.to_string())
    );
    let got = logits(&auto);
    assert_eq!(got.dtype(), compute);
    if on_cpu {
        let reference = NativeModel::load_with_dtype(&rounded, ComputeDtype::Model).unwrap();
        common::assert_close(&floats(&got), &floats(&logits(&reference)), 1e-6);
    }
    let n = auto
        .generate("abc", &GenerateOptions::default().max_tokens(5))
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .len();
    assert_eq!(n, 5);
}

#[test]
fn the_backend_applies_load_options_dtype() {
    mlx_metal::ensure_registered();
    let (stored, _) = half_and_rounded("qwen3", Dtype::Bfloat16, "backend");
    let on_cpu = default_device_is_cpu().unwrap();
    for (requested, want) in [
        (ComputeDtype::Model, "bfloat16"),
        (
            ComputeDtype::Auto,
            if on_cpu { "float32" } else { "bfloat16" },
        ),
        (ComputeDtype::Float16, "float16"),
    ] {
        let model = inference::load_model_with(
            &stored,
            inference::LoadOptions::default()
                .backend(mlx_metal::backend_name())
                .dtype(requested),
        )
        .unwrap();
        let info = model.info();
        assert_eq!(info.compute_dtype.as_deref(), Some(want), "{requested}");
        assert_eq!(info.weights_dtype.as_deref(), Some("bfloat16"));
        assert!(info.blas.is_some());
    }
}
