//! Fine-tuning: LoRA / DoRA / full, as mlx_lm's tuner does it, with
//! adapters mlx_lm reads and writes.
//!
//! - [`finetune`] attaches adapters to a model and says what is trainable;
//! - [`loss`] is the masked token cross-entropy and its gradients over the
//!   named trainable parameters;
//! - [`optim`] holds Adam, AdamW and SGD with mlx's update formulas,
//!   [`schedule`] the learning-rate schedules;
//! - [`data`] reads `train.jsonl` / `valid.jsonl` / `test.jsonl` and builds
//!   padded batches;
//! - [`step`] is one whole update (loss, gradients, clipping, optimiser)
//!   as a function of arrays, which the loop compiles;
//! - [`trainer`] runs the loop (reports, validation, saving, stopping);
//! - [`adapter`] saves and loads `adapters.safetensors` +
//!   `adapter_config.json`, [`fuse`] merges an adapter into the weights.
//!
//! ```no_run
//! use mlx_metal::llm::NativeModel;
//! use mlx_metal::train::{finetune::{self, AdapterConfig}, loss, optim::Optimizer};
//!
//! let mut model = NativeModel::load("models/smollm2".as_ref())?;
//! let config = AdapterConfig::default(); // rank 8, scale 20, last 16 blocks
//! let trainable = finetune::attach(model.architecture_mut(), &config)?;
//! let mut opt = Optimizer::adam(1e-5);
//! let batch = mlx_metal::Array::from_slice(&[1i32, 2, 3, 4], &[1, 4])?;
//! let lengths = mlx_metal::Array::from_slice(&[0i32, 4], &[1, 2])?;
//! let step = loss::loss_and_grads(model.architecture_mut(), &trainable, &batch, &lengths)?;
//! let params = trainable.parameters(model.architecture_mut().module())?;
//! let updated = opt.apply(&step.grads, &params)?;
//! mlx_metal::nn::params::update(model.architecture_mut().module(), "", &updated)?;
//! # Ok::<(), mlx_metal::Error>(())
//! ```

pub mod adapter;
pub mod data;
pub mod finetune;
pub mod fuse;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod step;
pub mod trainer;
