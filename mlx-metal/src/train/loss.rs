//! mlx_lm's `default_loss`: token cross-entropy of the next token over the
//! positions each row's `(offset, length)` marks, averaged over those
//! tokens; and its gradients with respect to the trainable parameters.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::llm::models::Architecture;
use crate::nn::params::{self, Trainable};
use crate::{value_and_grad_of, Array, Dtype, Error, Result};

/// Per-token cross-entropy `logsumexp(logits) - logits[target]` over the
/// last axis (mlx's `nn.losses.cross_entropy`, no reduction).
pub fn cross_entropy(logits: &Array, targets: &Array) -> Result<Array> {
    let score = logits
        .take_along_axis(&targets.expand_dims(&[-1])?, -1)?
        .squeeze(&[-1])?;
    logits.logsumexp(&[-1], false)?.subtract(&score)
}

/// `(loss, ntoks)` of `batch` (`[B, L]` int32 ids) with `lengths` (`[B, 2]`
/// int32: first predicted position and row length, as mlx_lm's batches):
/// the model reads `batch[:, :-1]`, predicts `batch[:, 1:]`, and only
/// steps `offset <= step <= length` (1-based) count.
pub fn default_loss(
    arch: &dyn Architecture,
    batch: &Array,
    lengths: &Array,
) -> Result<(Array, Array)> {
    let l = batch.dim(1)?;
    if l < 2 {
        return Err(Error::InvalidArgument(format!(
            "a training batch needs at least 2 positions, got {l}"
        )));
    }
    let inputs = batch.slice_axis(1, 0, l - 1)?;
    let targets = batch.slice_axis(1, 1, l)?;
    let logits = arch.forward_uncached(&inputs)?;
    let steps = Array::arange(1.0, l as f64, 1.0, Dtype::Int32)?;
    let starts = lengths.slice_axis(1, 0, 1)?;
    let ends = lengths.slice_axis(1, 1, 2)?;
    let mask = steps
        .greater_equal(&starts)?
        .logical_and(&steps.less_equal(&ends)?)?;
    let ce = cross_entropy(&logits, &targets)?.multiply(&mask.astype(logits.dtype())?)?;
    let ntoks = mask.astype(Dtype::Int32)?.sum(&[], false)?;
    let loss = ce
        .astype(Dtype::Float32)?
        .sum(&[], false)?
        .divide(&ntoks.astype(Dtype::Float32)?)?;
    Ok((loss, ntoks))
}

/// The loss of one batch and the gradients of every trainable parameter.
#[derive(Debug)]
pub struct Step {
    /// Mean token loss (float32 scalar).
    pub loss: Array,
    /// Number of tokens that counted (int32 scalar).
    pub ntoks: Array,
    /// Gradient of each trainable parameter, by name.
    pub grads: BTreeMap<String, Array>,
}

/// [`default_loss`] and its gradients with respect to the parameters
/// `trainable` names (the others are constants). The model's parameters
/// are the same after the call as before.
pub fn loss_and_grads(
    arch: &mut dyn Architecture,
    trainable: &Trainable,
    batch: &Array,
    lengths: &Array,
) -> Result<Step> {
    let originals = trainable.parameters(arch.module())?;
    if originals.is_empty() {
        return Err(Error::InvalidArgument(
            "nothing to train: no trainable parameters".into(),
        ));
    }
    let names: Vec<String> = originals.keys().cloned().collect();
    let inputs: Vec<Array> = originals.values().cloned().collect();
    let result = loss_and_grads_at(arch, &names, &inputs, batch, lengths);
    params::update(arch.module(), "", &originals)?;
    let (loss, ntoks, grads) = result?;
    Ok(Step {
        loss,
        ntoks,
        grads: names.into_iter().zip(grads).collect(),
    })
}

/// `(loss, ntoks, grads)` of `batch` with the parameters `names` set to
/// `values` (the gradients in the same order). Leaves those parameters
/// set to `values`. The one loss-and-gradient computation of the eager and
/// the compiled training step.
pub fn loss_and_grads_at(
    arch: &mut dyn Architecture,
    names: &[String],
    values: &[Array],
    batch: &Array,
    lengths: &Array,
) -> Result<(Array, Array, Vec<Array>)> {
    let argnums: Vec<i32> = (0..values.len() as i32).collect();
    let cell = RefCell::new(&mut *arch);
    let f = |x: &[Array]| -> Result<Vec<Array>> {
        let mut arch = cell.borrow_mut();
        let values: BTreeMap<String, Array> =
            names.iter().cloned().zip(x.iter().cloned()).collect();
        params::update(arch.module(), "", &values)?;
        let (loss, ntoks) = default_loss(&**arch, batch, lengths)?;
        Ok(vec![loss, ntoks])
    };
    let result = value_and_grad_of(&f, values, &argnums);
    let arch = cell.into_inner();
    let restore: BTreeMap<String, Array> =
        names.iter().cloned().zip(values.iter().cloned()).collect();
    params::update(arch.module(), "", &restore)?;
    let (outputs, grads) = result?;
    let [loss, ntoks]: [Array; 2] = outputs
        .try_into()
        .map_err(|_| Error::Mlx("the loss function returned the wrong number of outputs".into()))?;
    Ok((loss, ntoks, grads))
}

/// Mean loss and token count of `batch` without gradients.
pub fn evaluate(arch: &dyn Architecture, batch: &Array, lengths: &Array) -> Result<(Array, Array)> {
    default_loss(arch, batch, lengths)
}
