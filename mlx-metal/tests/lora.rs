//! LoRA / DoRA / QLoRA training against mlx_lm's tuner on the fixtures:
//! one step's loss and every adapter gradient, and ten optimiser steps.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use inference::ComputeDtype;
use mlx_metal::llm::NativeModel;
use mlx_metal::nn::params::{self, Trainable};
use mlx_metal::train::adapter;
use mlx_metal::train::finetune::{self, AdapterConfig, FineTuneType, LoraParameters};
use mlx_metal::train::loss;
use mlx_metal::train::optim::{Optimizer, Rule};
use mlx_metal::{load_safetensors, random, Array, Dtype};
use test_support::{python, ScratchDir};

fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("lora-{name}"))
}

fn model_dir(name: &str) -> PathBuf {
    common::fixtures().join(name)
}

/// Token ids of a batch's rows.
type Rows = Vec<Vec<i32>>;
/// `(offset, length)` of a batch's rows.
type Lengths = Vec<[i32; 2]>;

/// Two rows padded with zeros and their `(offset, length)` pairs: the
/// first row counts from its first prediction, the second from position 3
/// (a masked prompt) to its length 9.
fn batches() -> (Vec<Rows>, Vec<Lengths>) {
    let row = |seed: i32, n: usize| -> Vec<i32> {
        (0..13)
            .map(|i| {
                if i < n {
                    (seed * 37 + i as i32 * 91) % 600 + 5
                } else {
                    0
                }
            })
            .collect()
    };
    (
        vec![vec![row(1, 13), row(2, 9)], vec![row(3, 11), row(4, 13)]],
        vec![vec![[0, 13], [3, 9]], vec![[2, 11], [0, 13]]],
    )
}

fn batch_arrays(i: usize) -> (Array, Array) {
    let (b, l) = batches();
    let ids: Vec<i32> = b[i].iter().flatten().copied().collect();
    let lens: Vec<i32> = l[i].iter().flatten().copied().collect();
    (
        Array::from_slice(&ids, &[b[i].len() as i32, b[i][0].len() as i32]).unwrap(),
        Array::from_slice(&lens, &[l[i].len() as i32, 2]).unwrap(),
    )
}

/// Loads `fixture` with its stored dtypes, attaches adapters as `config`
/// says (seeded), makes `lora_b` non-zero so every gradient is, and saves
/// the initial adapter (mlx_lm layout) to a fresh folder.
fn prepare(
    fixture: &str,
    config: &AdapterConfig,
    tag: &str,
) -> (NativeModel, Trainable, ScratchDir) {
    let mut model = NativeModel::load_with_dtype(&model_dir(fixture), ComputeDtype::Model).unwrap();
    random::seed(7).unwrap();
    let trainable = finetune::attach(model.architecture_mut(), config).unwrap();
    let mut init = trainable
        .parameters(model.architecture_mut().module())
        .unwrap();
    let key = random::key(11).unwrap();
    for (name, value) in init.iter_mut() {
        if name.ends_with("lora_b") {
            *value = random::normal(&value.shape(), Dtype::Float32, 0.0, 0.05, Some(&key)).unwrap();
        }
    }
    params::update(model.architecture_mut().module(), "", &init).unwrap();
    let dir = scratch(&format!("{fixture}-{tag}"));
    adapter::save_weights(&dir.join(adapter::WEIGHTS_FILE), &init).unwrap();
    adapter::save_config(&dir, &serde_json::to_value(config).unwrap()).unwrap();
    (model, trainable, dir)
}

fn run_reference(request: serde_json::Value) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tuner_reference.py");
    let out = Command::new(python())
        .arg(script)
        .arg(request.to_string())
        .output()
        .expect("run the mlx_lm environment's python");
    assert!(
        out.status.success(),
        "mlx_lm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON")
}

fn max_abs_diff(a: &Array, b: &Array) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let a = a.astype(Dtype::Float32).unwrap().to_vec::<f32>().unwrap();
    let b = b.astype(Dtype::Float32).unwrap().to_vec::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn lora_config(kind: FineTuneType) -> AdapterConfig {
    AdapterConfig {
        fine_tune_type: kind,
        num_layers: 16,
        lora_parameters: Some(LoraParameters::default()),
    }
}

/// One step: loss and every adapter gradient agree with mlx_lm's.
fn check_one_step(fixture: &str, config: AdapterConfig, tol: f32) {
    let tag = format!("grad-{}", config.fine_tune_type);
    let (mut model, trainable, dir) = prepare(fixture, &config, &tag);
    let (batch, lengths) = batch_arrays(0);
    let step =
        loss::loss_and_grads(model.architecture_mut(), &trainable, &batch, &lengths).unwrap();

    let (b, l) = batches();
    let out = dir.join("grads.safetensors");
    let reference = run_reference(serde_json::json!({
        "model": model_dir(fixture), "adapter": dir.path(), "mode": "grad",
        "batches": b, "lengths": l, "out": out,
    }));
    let expected_loss = reference["loss"].as_f64().unwrap() as f32;
    let loss = step.loss.item::<f32>().unwrap();
    assert!(
        (loss - expected_loss).abs() <= tol * expected_loss.abs().max(1.0),
        "{fixture}: loss {loss} vs mlx_lm {expected_loss}"
    );
    assert_eq!(
        step.ntoks.item::<i32>().unwrap() as i64,
        reference["ntoks"].as_i64().unwrap()
    );

    let expected = load_safetensors(&out).unwrap().tensors;
    let got: BTreeMap<_, _> = step.grads;
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        {
            let mut k: Vec<_> = expected.keys().collect();
            k.sort();
            k
        },
        "{fixture}: gradient names"
    );
    let mut worst = 0.0f32;
    for (name, g) in &got {
        let d = max_abs_diff(g, &expected[name]);
        assert!(d <= tol, "{fixture}: gradient of {name} differs by {d}");
        worst = worst.max(d);
    }
    let nonzero = got.values().all(|g| {
        g.abs()
            .unwrap()
            .max(&[], false)
            .unwrap()
            .item::<f32>()
            .unwrap()
            > 0.0
    });
    assert!(nonzero, "{fixture}: every adapter gradient is non-zero");
    eprintln!(
        "{fixture} {}: loss {loss} (mlx_lm {expected_loss}), max grad diff {worst:e}",
        config.fine_tune_type
    );
}

#[test]
fn one_lora_step_matches_mlx_lm_on_float32_fixtures() {
    for fixture in [
        "llama",
        "qwen2",
        "qwen3",
        "mistral",
        "phi3",
        "gemma2",
        "gemma3_text",
    ] {
        check_one_step(fixture, lora_config(FineTuneType::Lora), 1e-4);
    }
}

#[test]
fn one_qlora_step_matches_mlx_lm_on_quantised_fixtures() {
    for fixture in ["llama-4bit", "qwen3-8bit", "phi3-4bit"] {
        check_one_step(fixture, lora_config(FineTuneType::Lora), 1e-4);
    }
}

#[test]
fn one_dora_step_matches_mlx_lm() {
    for fixture in ["llama", "qwen3", "llama-4bit"] {
        check_one_step(fixture, lora_config(FineTuneType::Dora), 1e-4);
    }
}

/// Ten optimiser steps over two alternating batches: the adapter weights
/// agree with mlx_lm's after them.
fn check_ten_steps(fixture: &str, optimizer: &str, lr: f32) {
    check_steps(fixture, optimizer, lr, 10, false)
}

/// Runs `steps` updates through the compiled step of the training loop.
fn compiled_steps(
    model: &mut NativeModel,
    trainable: &Trainable,
    opt: &mut Optimizer,
    steps: usize,
) {
    use mlx_metal::train::step::StepLayout;
    let arch = model.architecture_mut();
    let names: Vec<String> = trainable
        .parameters(arch.module())
        .unwrap()
        .into_keys()
        .collect();
    let layout = StepLayout {
        names,
        state_len: opt.state_len(),
        rule: opt.rule,
        clip: None,
    };
    let cell = std::cell::RefCell::new(arch);
    let f = layout.closure(&cell);
    mlx_metal::with_compiled(&f, false, |compiled| {
        for i in 0..steps {
            let (batch, lengths) = batch_arrays(i % 2);
            let current = trainable.parameters(cell.borrow_mut().module()).unwrap();
            for (name, w) in &current {
                opt.ensure_state(name, w).unwrap();
            }
            let factors = opt.next_factors().to_arrays();
            let inputs = layout
                .inputs(
                    &current,
                    |n| opt.state_of(n).to_vec(),
                    factors,
                    &batch,
                    &lengths,
                )
                .unwrap();
            let out = layout.outputs(compiled.call(&inputs).unwrap()).unwrap();
            for (name, state) in out.state {
                opt.set_state(&name, state);
            }
            params::update(cell.borrow_mut().module(), "", &out.params).unwrap();
        }
    })
    .unwrap();
}

/// `optimizer` is `adam`, `adamw`, `sgd` or `adam-bc` (Adam with bias
/// correction).
fn check_steps(fixture: &str, optimizer: &str, lr: f32, steps: usize, compiled: bool) {
    let config = lora_config(FineTuneType::Lora);
    let (mut model, trainable, dir) = prepare(
        fixture,
        &config,
        // tests run in parallel: the compiled and eager runs of one
        // optimiser need folders of their own
        &format!("train-{optimizer}-compiled{compiled}"),
    );
    let (name, bias_correction) = match optimizer.strip_suffix("-bc") {
        Some(name) => (name, true),
        None => (optimizer, false),
    };
    let mut opt = Optimizer::by_name(name, lr).unwrap();
    if let Rule::Adam {
        bias_correction: bc,
        ..
    } = &mut opt.rule
    {
        *bc = bias_correction;
    }
    if compiled {
        compiled_steps(&mut model, &trainable, &mut opt, steps);
    }
    for i in 0..if compiled { 0 } else { steps } {
        let (batch, lengths) = batch_arrays(i % 2);
        let arch = model.architecture_mut();
        let step = loss::loss_and_grads(arch, &trainable, &batch, &lengths).unwrap();
        let current = trainable.parameters(arch.module()).unwrap();
        let updated = opt.apply(&step.grads, &current).unwrap();
        params::update(arch.module(), "", &updated).unwrap();
    }
    let (b, l) = batches();
    let out = dir.join("trained.safetensors");
    let reference = run_reference(serde_json::json!({
        "model": model_dir(fixture), "adapter": dir.path(), "mode": "train",
        "batches": b, "lengths": l, "out": out, "optimizer": name,
        "optimizer_args": if bias_correction { serde_json::json!({"bias_correction": true}) } else { serde_json::json!({}) },
        "lr": lr, "steps": steps,
    }));
    let expected = load_safetensors(&out).unwrap().tensors;
    let got = trainable
        .parameters(model.architecture_mut().module())
        .unwrap();
    assert_eq!(got.len(), expected.len());
    let mut worst = 0.0f32;
    for (name, w) in &got {
        let d = max_abs_diff(w, &expected[name]);
        assert!(
            d <= 1e-4,
            "{fixture} {optimizer}: {name} differs by {d} after {steps} steps"
        );
        worst = worst.max(d);
    }
    eprintln!(
        "{fixture} {optimizer}: max weight diff after {steps} steps {worst:e}; mlx_lm losses {}",
        reference["losses"]
    );
}

#[test]
fn ten_adam_and_adamw_steps_match_mlx_lm() {
    check_ten_steps("llama", "adam", 1e-4);
    check_ten_steps("llama", "adamw", 1e-4);
    check_ten_steps("llama", "adam-bc", 1e-4);
    check_ten_steps("qwen3-4bit", "adam", 1e-4);
}

/// The compiled step (one MLX graph for loss, gradients and update, as the
/// training loop runs it) lands where mlx_lm's compiled step does.
#[test]
fn ten_compiled_steps_match_mlx_lm() {
    check_steps("llama", "adam", 1e-4, 10, true);
    check_steps("llama", "adamw-bc", 1e-4, 10, true);
    check_steps("qwen3-4bit", "adam", 1e-4, 10, true);
    check_steps("qwen2", "sgd", 1e-3, 10, true);
}

#[test]
fn ten_sgd_steps_match_mlx_lm() {
    check_ten_steps("qwen2", "sgd", 1e-3);
}

#[test]
fn grad_checkpoint_gives_the_same_loss_and_gradients() {
    for (fixture, kind) in [
        ("llama", FineTuneType::Lora),
        ("qwen3-4bit", FineTuneType::Dora),
        ("gemma3_text", FineTuneType::Lora),
        ("gemma2", FineTuneType::Lora),
    ] {
        let (mut model, trainable, _dir) = prepare(fixture, &lora_config(kind), "checkpoint");
        let (batch, lengths) = batch_arrays(1);
        let plain =
            loss::loss_and_grads(model.architecture_mut(), &trainable, &batch, &lengths).unwrap();
        finetune::set_grad_checkpoint(model.architecture_mut(), Some(&trainable)).unwrap();
        let ckpt =
            loss::loss_and_grads(model.architecture_mut(), &trainable, &batch, &lengths).unwrap();
        assert_eq!(
            plain.loss.item::<f32>().unwrap(),
            ckpt.loss.item::<f32>().unwrap()
        );
        assert_eq!(plain.grads.len(), ckpt.grads.len());
        for (name, g) in &plain.grads {
            let d = max_abs_diff(g, &ckpt.grads[name]);
            assert!(
                d <= 1e-6,
                "{fixture}: {name} differs by {d} under checkpointing"
            );
        }
        // Generation still works (checkpointing applies to uncached passes only).
        let ids = Array::from_slice(&[1i32, 2, 3], &[1, 3]).unwrap();
        let mut caches = model.architecture().make_caches();
        model
            .architecture()
            .forward(&ids, &mut caches)
            .unwrap()
            .eval()
            .unwrap();
    }
}

#[test]
fn one_full_fine_tuning_step_matches_mlx_lm() {
    let config = AdapterConfig {
        fine_tune_type: FineTuneType::Full,
        num_layers: 1,
        lora_parameters: None,
    };
    // Gemma's norms store `w` and scale by `1 + w`: their gradients are
    // the stored weight's, named as mlx_lm names them.
    for fixture in ["llama", "qwen3", "gemma3_text", "gemma2"] {
        check_one_step(fixture, config.clone(), 1e-4);
    }
}

struct Quiet;

impl mlx_metal::train::trainer::Hooks for Quiet {
    fn report(&mut self, _: &mlx_metal::train::trainer::Report) {}
    fn save(&mut self, _: Option<usize>, _: &BTreeMap<String, Array>) -> mlx_metal::Result<()> {
        Ok(())
    }
}

/// The training loop gives the same weights with its step compiled as op
/// by op, clipping and gradient checkpointing included.
#[test]
fn the_compiled_loop_matches_the_eager_loop() {
    use mlx_metal::train::data::{Dataset, Example, Format};
    use mlx_metal::train::trainer::{train, TrainArgs};
    let examples = (0..8)
        .map(|i| Example {
            tokens: (3 + i..20 + 2 * i).collect(),
            offset: 2,
        })
        .collect();
    let ds = Dataset {
        path: "memory".into(),
        format: Format::Text,
        examples,
    };
    let run = |compile: bool, checkpoint: bool| -> BTreeMap<String, Array> {
        let (mut model, trainable, _dir) = prepare(
            "qwen3",
            &lora_config(FineTuneType::Lora),
            &format!("compiled{compile}{checkpoint}"),
        );
        if checkpoint {
            finetune::set_grad_checkpoint(model.architecture_mut(), Some(&trainable)).unwrap();
        }
        let args = TrainArgs {
            iters: 6,
            batch_size: 2,
            clip_grad_norm: Some(0.5),
            compile,
            ..TrainArgs::default()
        };
        let mut opt = Optimizer::adamw(1e-3);
        train(
            model.architecture_mut(),
            &trainable,
            &mut opt,
            &ds,
            None,
            &args,
            &mut Quiet,
        )
        .unwrap();
        assert_eq!(opt.step(), 6);
        trainable
            .parameters(model.architecture_mut().module())
            .unwrap()
    };
    let (mut model, trainable, _dir) = prepare("qwen3", &lora_config(FineTuneType::Lora), "c0");
    let initial = trainable
        .parameters(model.architecture_mut().module())
        .unwrap();
    let eager = run(false, false);
    let moved = eager
        .iter()
        .map(|(name, w)| max_abs_diff(w, &initial[name]))
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "training moved the adapter ({moved})");
    for (compiled, checkpoint) in [(true, false), (true, true)] {
        let got = run(compiled, checkpoint);
        let mut worst = 0.0f32;
        for (name, w) in &eager {
            // Fused kernels round differently from op-by-op ones: the
            // same tolerance as against mlx_lm.
            let d = max_abs_diff(w, &got[name]);
            assert!(
                d <= 1e-4,
                "{name} differs by {d} (compiled, checkpoint {checkpoint})"
            );
            worst = worst.max(d);
        }
        eprintln!("compiled (checkpoint {checkpoint}): worst {worst:e}, moved {moved:e}");
    }
}

/// Two accumulated batches make one update with their mean gradient: with
/// identical batches, the same update as one plain iteration.
#[test]
fn gradient_accumulation_averages_the_batches() {
    use mlx_metal::train::data::{Dataset, Example, Format};
    use mlx_metal::train::trainer::{train, TrainArgs};
    let example = Example {
        tokens: (5..30).collect(),
        offset: 3,
    };
    let ds = Dataset {
        path: "memory".into(),
        format: Format::Text,
        examples: vec![example; 4],
    };
    let run = |iters: usize, accum: usize| -> BTreeMap<String, Array> {
        let (mut model, trainable, _dir) = prepare(
            "llama",
            &lora_config(FineTuneType::Lora),
            &format!("accum{accum}"),
        );
        let args = TrainArgs {
            iters,
            batch_size: 2,
            grad_accumulation_steps: accum,
            ..TrainArgs::default()
        };
        let mut opt = Optimizer::sgd(1e-2);
        train(
            model.architecture_mut(),
            &trainable,
            &mut opt,
            &ds,
            None,
            &args,
            &mut Quiet,
        )
        .unwrap();
        assert_eq!(opt.step(), 1, "one update");
        trainable
            .parameters(model.architecture_mut().module())
            .unwrap()
    };
    let (once, accumulated) = (run(1, 1), run(2, 2));
    let (mut model, trainable, _dir) = prepare("llama", &lora_config(FineTuneType::Lora), "accum0");
    let initial = trainable
        .parameters(model.architecture_mut().module())
        .unwrap();
    let mut moved = 0.0f32;
    for (name, w) in &once {
        let d = max_abs_diff(w, &accumulated[name]);
        assert!(d <= 1e-6, "{name} differs by {d}");
        moved = moved.max(max_abs_diff(w, &initial[name]));
    }
    assert!(moved > 1e-4, "the update changed the adapter ({moved})");
}
