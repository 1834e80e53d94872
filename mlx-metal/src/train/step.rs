//! One training update as a single function of arrays: the loss, its
//! gradients, clipping and the optimiser's update, so MLX can compile the
//! whole step (as mlx_lm compiles its `step`) and replay it with one fused
//! graph per batch shape.
//!
//! Inputs, in order: the trainable parameters (by name), each one's
//! optimiser state, the four [`Factors`](crate::train::optim::Factors) of
//! the update, the batch and its lengths. Outputs: the loss, the token
//! count, the new parameters and the new state, in the same order.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::llm::models::Architecture;
use crate::train::loss::loss_and_grads_at;
use crate::train::optim::{clip_grad_norm, update_one, Rule};
use crate::{Array, Error, Result};

/// The fixed part of a step: which parameters, which rule, which clip.
#[derive(Debug, Clone)]
pub struct StepLayout {
    /// Trainable parameter names, sorted (the order of the inputs).
    pub names: Vec<String>,
    /// State arrays per parameter.
    pub state_len: usize,
    /// The optimiser's rule.
    pub rule: Rule,
    /// Clip the global gradient norm to this value.
    pub clip: Option<f32>,
}

/// The split outputs of one step.
#[derive(Debug)]
pub struct StepOutputs {
    /// Mean token loss.
    pub loss: Array,
    /// Tokens that counted.
    pub ntoks: Array,
    /// New parameter values, by name.
    pub params: BTreeMap<String, Array>,
    /// New optimiser state, by name.
    pub state: BTreeMap<String, Vec<Array>>,
}

impl StepLayout {
    /// Number of inputs before the batch.
    fn fixed_inputs(&self) -> usize {
        self.names.len() * (1 + self.state_len) + 4
    }

    /// The inputs of one step, in order.
    pub fn inputs(
        &self,
        params: &BTreeMap<String, Array>,
        state: impl Fn(&str) -> Vec<Array>,
        factors: Vec<Array>,
        batch: &Array,
        lengths: &Array,
    ) -> Result<Vec<Array>> {
        let mut inputs = Vec::with_capacity(self.fixed_inputs() + 2);
        for name in &self.names {
            inputs.push(
                params
                    .get(name)
                    .ok_or_else(|| Error::InvalidArgument(format!("no parameter `{name}`")))?
                    .clone(),
            );
        }
        for name in &self.names {
            let s = state(name);
            if s.len() != self.state_len {
                return Err(Error::InvalidArgument(format!(
                    "`{name}` has {} state arrays, the rule needs {}",
                    s.len(),
                    self.state_len
                )));
            }
            inputs.extend(s);
        }
        inputs.extend(factors);
        inputs.push(batch.clone());
        inputs.push(lengths.clone());
        Ok(inputs)
    }

    /// The step itself: `inputs` as [`inputs`](Self::inputs) lays them out.
    pub fn run(&self, arch: &mut dyn Architecture, inputs: &[Array]) -> Result<Vec<Array>> {
        let n = self.names.len();
        let k = self.state_len;
        if inputs.len() != self.fixed_inputs() + 2 {
            return Err(Error::InvalidArgument(format!(
                "a training step takes {} inputs, got {}",
                self.fixed_inputs() + 2,
                inputs.len()
            )));
        }
        let params = &inputs[..n];
        let states = &inputs[n..n + n * k];
        let factors = &inputs[n + n * k..n + n * k + 4];
        let batch = &inputs[n + n * k + 4];
        let lengths = &inputs[n + n * k + 5];
        let (loss, ntoks, grads) = loss_and_grads_at(arch, &self.names, params, batch, lengths)?;
        let grads = match self.clip {
            Some(max) => {
                let named: BTreeMap<String, Array> =
                    self.names.iter().cloned().zip(grads).collect();
                let (clipped, _) = clip_grad_norm(&named, max)?;
                self.names
                    .iter()
                    .map(|name| clipped[name].clone())
                    .collect()
            }
            None => grads,
        };
        let mut new_params = Vec::with_capacity(n);
        let mut new_states = Vec::with_capacity(n * k);
        for (i, g) in grads.iter().enumerate() {
            let (w, s) = update_one(
                &self.rule,
                g,
                &params[i],
                &states[i * k..(i + 1) * k],
                factors,
            )?;
            new_params.push(w);
            new_states.extend(s);
        }
        let mut out = vec![loss, ntoks];
        out.extend(new_params);
        out.extend(new_states);
        Ok(out)
    }

    /// Names the outputs of [`run`](Self::run).
    pub fn outputs(&self, out: Vec<Array>) -> Result<StepOutputs> {
        let n = self.names.len();
        let k = self.state_len;
        if out.len() != 2 + n * (1 + k) {
            return Err(Error::Mlx(format!(
                "a training step returned {} outputs, expected {}",
                out.len(),
                2 + n * (1 + k)
            )));
        }
        let mut it = out.into_iter();
        let loss = it.next().expect("length checked");
        let ntoks = it.next().expect("length checked");
        let params = self.names.iter().cloned().zip(it.by_ref()).collect();
        let rest: Vec<Array> = it.collect();
        let state = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), rest[i * k..(i + 1) * k].to_vec()))
            .collect();
        Ok(StepOutputs {
            loss,
            ntoks,
            params,
            state,
        })
    }

    /// The step as a closure over `arch` (for [`with_compiled`](crate::with_compiled)).
    pub fn closure<'a, 'm: 'a>(
        &'a self,
        arch: &'a RefCell<&'m mut dyn Architecture>,
    ) -> impl Fn(&[Array]) -> Result<Vec<Array>> + use<'a, 'm> {
        move |x: &[Array]| {
            let mut arch = arch.try_borrow_mut().map_err(|_| {
                Error::Closure("the training step ran while the model was in use".into())
            })?;
            self.run(&mut **arch, x)
        }
    }
}
