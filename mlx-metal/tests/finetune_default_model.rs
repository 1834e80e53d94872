//! Fine-tuning the default model (SmolLM2-135M-Instruct, written dense as
//! bfloat16 from its GGUF file) on a small dataset that teaches one
//! invented fact (tests/data/zorblax): the validation loss falls and the
//! tuned model states the fact, which the base model does not.
//!
//! Runtime: about 1-2 minutes on 2 CPU cores (30 LoRA iterations of 4
//! rows; the quantised GGUF itself is far slower to train on MLX's CPU
//! backend, whose quantised matrix products are not BLAS-backed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use inference::{GenerateOptions, Message, TextModel};
use mlx_metal::llm::{gguf, NativeModel};
use mlx_metal::train::adapter;
use mlx_metal::train::data::Encoder;
use mlx_metal::train::finetune::{self, AdapterConfig};
use mlx_metal::train::optim::Optimizer;
use mlx_metal::train::trainer::{self, Hooks, Report, TrainArgs};
use mlx_metal::{Array, Dtype};
use test_support::ScratchDir;

fn model_file() -> PathBuf {
    inference::discover::default_model().unwrap_or_else(|| {
        panic!(
            "the default model is not in the cache ({:?}): run `{}`",
            inference::discover::default_model_path(),
            inference::discover::DEFAULT_MODEL_COMMAND
        )
    })
}

/// A scratch folder (removed when it drops) and a path in it not yet made.
fn scratch(name: &str) -> (ScratchDir, PathBuf) {
    let scratch = ScratchDir::new(&format!("tune-{name}"));
    let dir = scratch.join(name);
    (scratch, dir)
}

const QUESTION: &str = "What is the capital of Zorblax?";

fn answer(model: &mut NativeModel) -> String {
    let opts = GenerateOptions::default().max_tokens(24);
    model
        .chat(&[Message::user(QUESTION)], &opts)
        .map(|t| t.unwrap().text)
        .collect()
}

struct Record {
    val: Vec<f32>,
    train: Vec<f32>,
    dir: PathBuf,
}

impl Hooks for Record {
    fn report(&mut self, r: &Report) {
        match r {
            Report::Val { val_loss, .. } => self.val.push(*val_loss),
            Report::Train { train_loss, .. } => self.train.push(*train_loss),
            _ => {}
        }
    }

    fn save(&mut self, _: Option<usize>, w: &BTreeMap<String, Array>) -> mlx_metal::Result<()> {
        adapter::save_weights(&self.dir.join(adapter::WEIGHTS_FILE), w)
    }
}

#[test]
fn lora_teaches_the_default_model_a_new_fact() {
    let (_scratch, dense) = scratch("smollm2-bf16");
    gguf::convert_to(&model_file(), &dense, Some(Dtype::Bfloat16)).unwrap();
    let mut model = NativeModel::load(&dense).unwrap();
    let before = answer(&mut model);
    assert!(
        !before.contains("Quibbleton"),
        "the base model already knows: {before:?}"
    );

    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/zorblax");
    let data = Encoder {
        tokenizer: model.tokenizer(),
        template: model.chat_template(),
        mask_prompt: true,
    }
    .load_dir(&data_dir)
    .unwrap();
    mlx_metal::random::seed(0).unwrap();
    let config = AdapterConfig::default();
    let trainable = finetune::attach(model.architecture_mut(), &config).unwrap();
    let out = ScratchDir::new("tune-adapter");
    let mut record = Record {
        val: Vec::new(),
        train: Vec::new(),
        dir: out.to_path_buf(),
    };
    let args = TrainArgs {
        iters: 30,
        batch_size: 4,
        steps_per_report: 10,
        steps_per_eval: 30,
        val_batches: Some(4),
        save_every: 1000,
        ..TrainArgs::default()
    };
    let valid = data.valid.as_ref();
    let outcome = trainer::train(
        model.architecture_mut(),
        &trainable,
        &mut Optimizer::adam(5e-4),
        &data.train,
        valid,
        &args,
        &mut record,
    )
    .unwrap();
    assert_eq!(outcome.iterations, 30);
    assert_eq!(record.val.len(), 2, "validation at the start and the end");
    let (first, last) = (record.val[0], record.val[1]);
    eprintln!(
        "validation loss {first} -> {last}; training losses {:?}",
        record.train
    );
    assert!(
        last < 0.5 * first,
        "validation loss falls: {first} -> {last}"
    );

    let after = answer(&mut model);
    eprintln!("before: {before:?}\nafter: {after:?}");
    assert!(
        after.contains("Quibbleton"),
        "the tuned model states the fact: {after:?}"
    );

    // The saved adapter, loaded into a fresh copy of the base, does too.
    adapter::save_config(&out, &serde_json::to_value(&config).unwrap()).unwrap();
    let mut fresh = NativeModel::load(&dense).unwrap();
    fresh.load_adapter(&out).unwrap();
    assert_eq!(answer(&mut fresh), after);
}
