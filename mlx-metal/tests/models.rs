//! Native models against mlx_lm's recorded logits and greedy tokens on every
//! fixture (from `cargo xtask fixtures`).

mod common;

use mlx_metal::llm::config::Config;
use mlx_metal::llm::models;
use mlx_metal::{Array, Dtype};
use serde_json::Value;

use common::{fixture_models, reference};

fn ids(v: &Value) -> Vec<i32> {
    common::ids(v).into_iter().map(|i| i as i32).collect()
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
