//! The compiled decode step against the per-step graph and mlx_lm: the same
//! logits token after token (past the capacity the fixed caches start
//! with, and past every fixture's sliding window), and mlx_lm's greedy ids
//! on every fixture.

mod common;

use mlx_metal::llm::compiled_decode::{CompiledDecode, GROW};
use mlx_metal::llm::config::Config;
use mlx_metal::llm::models::{self, Architecture};
use mlx_metal::nn::cache::KvCache;
use mlx_metal::{Array, Dtype};

use common::{fixture_models, reference};

fn load(dir: &std::path::Path) -> Box<dyn Architecture> {
    let (config, path) = Config::load(dir).unwrap();
    models::load(dir, &config, &path).unwrap()
}

fn row(ids: &[i32]) -> Array {
    Array::from_slice(ids, &[1, ids.len() as i32]).unwrap()
}

/// Last-position logits of `forward` as f32.
fn last(logits: &Array) -> Vec<f32> {
    let n = logits.dim(-2).unwrap();
    let l = if logits.ndim() == 3 {
        logits.slice_axis(1, n - 1, n).unwrap()
    } else {
        logits.clone()
    };
    l.astype(Dtype::Float32).unwrap().to_vec::<f32>().unwrap()
}

fn argmax(v: &[f32]) -> i32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as i32
}

#[test]
fn compiled_steps_give_the_per_step_logits_past_the_capacity_and_the_windows() {
    // Past the first growth of the fixed caches and, on the windowed
    // fixtures (Mistral 16, Gemma 3 8), many times round their windows.
    let steps = GROW + 20;
    for dir in fixture_models() {
        let model = load(&dir);
        let prompt: Vec<i32> = (0..11).map(|i| (i * 37 + 5) % 600).collect();
        let mut eager = model.make_caches();
        let mut prefilled = model.make_caches();
        model.forward(&row(&prompt), &mut eager).unwrap();
        model.forward(&row(&prompt), &mut prefilled).unwrap();
        let mut compiled = CompiledDecode::new(model.as_ref(), prefilled).unwrap();
        let mut worst = 0.0f32;
        for t in 0..steps {
            let token = (t * 53 + 7) % 600;
            let want = last(&model.forward(&row(&[token]), &mut eager).unwrap());
            let got = last(
                &compiled
                    .step(&Array::from_slice(&[token], &[1]).unwrap())
                    .unwrap(),
            );
            assert_eq!(got.len(), want.len());
            // |diff| relative to 1 + |logit| (the random fixtures' logits
            // reach tens). Over 276 steps most fixtures stay within 3e-5;
            // Gemma 2 (soft-capped attention and logits: tanh in fused
            // kernels) reaches 1.5e-4, its keys and values drifting as
            // the step's own outputs feed later steps.
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0.0f32, f32::max);
            worst = worst.max(diff);
            assert!(
                diff <= 2e-4,
                "{} step {t}: max |diff| / (1 + |logit|) {diff}",
                dir.display()
            );
        }
        assert_eq!(compiled.offset(), prompt.len() as i32 + steps);
        eprintln!(
            "{}: worst relative |diff| {worst:e} over {steps} steps",
            dir.display()
        );
    }
}

#[test]
fn compiled_greedy_decoding_gives_mlx_lms_ids() {
    for dir in fixture_models() {
        let r = reference(&dir);
        let model = load(&dir);
        for part in ["raw", "chat"] {
            let prompt: Vec<i32> = common::ids(&r[part]["prompt_ids"])
                .into_iter()
                .map(|i| i as i32)
                .collect();
            let want: Vec<i32> = common::ids(&r[part]["greedy_ids"])
                .into_iter()
                .map(|i| i as i32)
                .collect();
            let mut caches = model.make_caches();
            let mut token = argmax(&last(&model.forward(&row(&prompt), &mut caches).unwrap()));
            let mut compiled = CompiledDecode::new(model.as_ref(), caches).unwrap();
            let mut got = vec![token];
            // mlx_lm's list stops before an end-of-sequence id.
            while got.len() < want.len() {
                let logits = compiled
                    .step(&Array::from_slice(&[token], &[1]).unwrap())
                    .unwrap();
                token = argmax(&last(&logits));
                got.push(token);
            }
            assert_eq!(got, want, "{} {part}", dir.display());
        }
    }
}

#[test]
fn only_a_prefilled_single_sequence_cache_becomes_a_fixed_cache() {
    let dir = fixture_models().into_iter().next().unwrap();
    let model = load(&dir);
    let err = CompiledDecode::new(model.as_ref(), model.make_caches())
        .err()
        .unwrap();
    assert!(err.to_string().contains("run the prompt first"), "{err}");
    let err = CompiledDecode::new(model.as_ref(), model.make_batch_caches(&[0, 1]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("single-sequence"), "{err}");
    let mut caches = model.make_caches();
    model.forward(&row(&[1, 2, 3]), &mut caches).unwrap();
    let err = caches.pop().unwrap().into_fixed(3).err().unwrap();
    assert!(err.to_string().contains("cannot hold 3"), "{err}");
    assert!(KvCache::standard().into_kv().is_err());
}

#[test]
fn a_compiled_step_is_fewer_operations_than_the_per_step_graph() {
    use mlx_metal::graph::count_operations;
    for name in ["qwen3", "gemma3_text", "llama-4bit"] {
        let dir = common::fixtures().join(name);
        let model = load(&dir);
        let prompt = row(&[3, 1, 4, 1, 5, 9, 2, 6]);
        let mut eager = model.make_caches();
        let mut prefilled = model.make_caches();
        model.forward(&prompt, &mut eager).unwrap();
        let first = model.forward(&prompt, &mut prefilled).unwrap();
        mlx_metal::eval(&[&first]).unwrap();
        let pending: Vec<&Array> = eager.iter().flat_map(|c| c.state()).collect();
        mlx_metal::eval(&pending).unwrap();
        let per_step = model.forward(&row(&[7]), &mut eager).unwrap();
        let per_step = count_operations(&[&per_step]).unwrap();
        let mut compiled = CompiledDecode::new(model.as_ref(), prefilled).unwrap();
        let step = compiled
            .step(&Array::from_slice(&[7], &[1]).unwrap())
            .unwrap();
        let fused = count_operations(&[&step]).unwrap();
        let (a, b) = (
            per_step.values().sum::<usize>(),
            fused.values().sum::<usize>(),
        );
        eprintln!(
            "{name}: per-step graph {a} operations, compiled {b}\n  {per_step:?}\n  {fused:?}"
        );
        assert!(b < a, "{name}: compiled {b} operations, per-step {a}");
    }
}
