//! Learning-rate schedules and gradient clipping against mlx's own
//! (`mlx.optimizers`), and the parameter tree's names against mlx_lm's.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use mlx_metal::llm::NativeModel;
use mlx_metal::nn::params;
use mlx_metal::train::finetune::{self, AdapterConfig};
use mlx_metal::train::optim::clip_grad_norm;
use mlx_metal::train::schedule::Schedule;
use mlx_metal::Array;
use test_support::python;

fn mlx(script: &str) -> serde_json::Value {
    let out = Command::new(python())
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn schedules_match_mlx() {
    let expected = mlx(r#"
import json, mlx.core as mx
import mlx.optimizers as opt
from mlx_lm.tuner.utils import build_schedule
cos = opt.cosine_decay(1e-3, 10, 1e-5)
lin = opt.linear_schedule(0.0, 1e-3, 4)
warm = build_schedule({"name": "cosine_decay", "arguments": [1e-3, 10, 0.0], "warmup": 3, "warmup_init": 1e-6})
steps = range(16)
print(json.dumps([[f(mx.array(s)).item() for s in steps] for f in (cos, lin, warm)]))
"#);
    let ours = [
        Schedule::cosine(1e-3, 10, 1e-5).unwrap(),
        Schedule::Linear {
            init: 0.0,
            end: 1e-3,
            steps: 4,
        },
        Schedule::cosine(1e-3, 10, 0.0)
            .unwrap()
            .with_warmup(3, 1e-6),
    ];
    for (i, s) in ours.iter().enumerate() {
        for step in 0..16u64 {
            let e = expected[i][step as usize].as_f64().unwrap() as f32;
            let got = s.at(step);
            assert!(
                (got - e).abs() <= 1e-9 + 1e-6 * e.abs(),
                "schedule {i} step {step}: {got} vs mlx {e}"
            );
        }
    }
}

#[test]
fn gradient_clipping_matches_mlx() {
    let expected = mlx(r#"
import json, mlx.core as mx
from mlx.optimizers import clip_grad_norm
g = {"a": mx.array([[3.0, -4.0], [1.0, 2.0]]), "b": mx.array([0.5, -7.0, 2.0])}
out = []
for m in (100.0, 2.0):
    c, n = clip_grad_norm(g, m)
    out.append([n.item(), c["a"].flatten().tolist(), c["b"].tolist()])
print(json.dumps(out))
"#);
    let grads = BTreeMap::from([
        (
            "a".to_string(),
            Array::from_slice(&[3.0f32, -4.0, 1.0, 2.0], &[2, 2]).unwrap(),
        ),
        (
            "b".to_string(),
            Array::from_slice(&[0.5f32, -7.0, 2.0], &[3]).unwrap(),
        ),
    ]);
    for (i, max) in [100.0f32, 2.0].into_iter().enumerate() {
        let (clipped, norm) = clip_grad_norm(&grads, max).unwrap();
        let e = &expected[i];
        assert!((norm.item::<f32>().unwrap() as f64 - e[0].as_f64().unwrap()).abs() < 1e-5);
        for (k, j) in [("a", 1), ("b", 2)] {
            let want: Vec<f32> = serde_json::from_value(e[j].clone()).unwrap();
            common::assert_close(&clipped[k].to_vec::<f32>().unwrap(), &want, 1e-6);
        }
    }
}

#[test]
fn parameter_names_match_mlx_lm() {
    for fixture in ["llama", "phi3", "qwen3-4bit"] {
        let dir = common::fixtures().join(fixture);
        let mut model = NativeModel::load(&dir).unwrap();
        mlx_metal::random::seed(0).unwrap();
        finetune::attach(model.architecture_mut(), &AdapterConfig::default()).unwrap();
        let ours: Vec<(String, Vec<i32>)> = params::named(model.architecture_mut().module(), "")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.shape()))
            .collect();
        let script = format!(
            r#"
import json
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.tuner.utils import linear_to_lora_layers
model, _ = load("{}")
model.freeze()
linear_to_lora_layers(model, 16, {{"rank": 8, "scale": 20.0, "dropout": 0.0}})
print(json.dumps(sorted([k, list(v.shape)] for k, v in tree_flatten(model.parameters()))))
"#,
            dir.display()
        );
        let theirs: Vec<(String, Vec<i32>)> = serde_json::from_value(mlx(&script)).unwrap();
        assert_eq!(ours, theirs, "{fixture}: parameter names and shapes");
    }
}
