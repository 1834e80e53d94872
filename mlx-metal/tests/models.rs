//! Native models against mlx_lm's recorded logits and greedy tokens on every
//! fixture (from `cargo xtask fixtures`).

mod common;

use std::path::PathBuf;

use mlx_metal::llm::config::Config;
use mlx_metal::llm::models;
use mlx_metal::{Array, Dtype};
use serde_json::Value;

fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    assert!(
        dir.join("index.json").is_file(),
        "no fixtures: run `cargo xtask fixtures`"
    );
    dir
}

fn fixture_models() -> Vec<PathBuf> {
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("index.json")).unwrap())
            .unwrap();
    let mut names: Vec<String> = index.as_object().unwrap().keys().cloned().collect();
    names.sort();
    names.into_iter().map(|n| fixtures().join(n)).collect()
}

fn reference(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<i32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect()
}

#[test]
fn last_position_logits_match_mlx_lm() {
    for dir in fixture_models() {
        let r = reference(&dir);
        let (config, path) = Config::load(&dir).unwrap();
        let model = models::load(&dir, &config, &path).unwrap();
        for part in ["raw", "chat"] {
            let prompt = ids(&r[part]["prompt_ids"]);
            let tokens = Array::from_slice(&prompt, &[1, prompt.len() as i32]).unwrap();
            let mut caches = model.make_caches();
            let logits = model.forward(&tokens, &mut caches).unwrap();
            let n = prompt.len() as i32;
            let last = logits
                .slice_axis(1, n - 1, n)
                .unwrap()
                .astype(Dtype::Float32)
                .unwrap();
            let got = last.to_vec::<f32>().unwrap();
            let want: Vec<f32> = r[part]["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 1e-4,
                "{} {part}: max |diff| {worst}",
                dir.display()
            );
        }
    }
}
