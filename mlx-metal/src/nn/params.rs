//! The parameter tree: every layer names its arrays the way mlx_lm names
//! them (`model.layers.3.self_attn.q_proj.weight`, `...q_proj.lora_a`), and
//! one visitor walks them to read, update, freeze or replace them. Training,
//! adapters (save, load, fuse) and later tensor-parallel sharding all go
//! through this one mechanism.
//!
//! ```
//! use mlx_metal::nn::{params, Linear};
//! use mlx_metal::Array;
//!
//! let mut layer = Linear::Dense {
//!     weight: Array::zeros(&[2, 3], mlx_metal::Dtype::Float32)?,
//!     bias: None,
//! };
//! let named = params::named(&mut layer, "proj")?;
//! assert_eq!(named.keys().collect::<Vec<_>>(), ["proj.weight"]);
//! # Ok::<(), mlx_metal::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::nn::{Embedding, Linear};
use crate::{Array, Error, Result};

/// What a walk over the parameter tree does at each array and each linear
/// layer.
pub trait Visitor {
    /// Called for every array parameter under its full name.
    fn array(&mut self, name: &str, array: &mut Array) -> Result<()>;

    /// Called for every linear layer (name without `.weight`) before its
    /// arrays; returning `true` skips them (the visitor handled or replaced
    /// the layer).
    fn linear(&mut self, _name: &str, _layer: &mut Linear) -> Result<bool> {
        Ok(false)
    }

    /// Called for every embedding table (name without `.weight`) before
    /// its arrays; returning `true` skips them.
    fn embedding(&mut self, _name: &str, _table: &mut Embedding) -> Result<bool> {
        Ok(false)
    }
}

/// A layer or model whose parameters can be walked.
pub trait Module {
    /// Walks every parameter, names starting with `prefix` (empty for none).
    fn visit(&mut self, prefix: &str, v: &mut dyn Visitor) -> Result<()>;
}

/// `prefix.name`, or `name` when `prefix` is empty.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

struct Collect<'a, F: Fn(&str) -> bool> {
    out: BTreeMap<String, Array>,
    keep: &'a F,
}

impl<F: Fn(&str) -> bool> Visitor for Collect<'_, F> {
    fn array(&mut self, name: &str, array: &mut Array) -> Result<()> {
        if (self.keep)(name) {
            self.out.insert(name.to_string(), array.clone());
        }
        Ok(())
    }
}

/// Every parameter of `m` by name (the arrays share storage with the
/// model's).
pub fn named(m: &mut dyn Module, prefix: &str) -> Result<BTreeMap<String, Array>> {
    named_where(m, prefix, &|_| true)
}

/// The parameters of `m` whose names `keep` accepts.
pub fn named_where(
    m: &mut dyn Module,
    prefix: &str,
    keep: &dyn Fn(&str) -> bool,
) -> Result<BTreeMap<String, Array>> {
    let mut c = Collect {
        out: BTreeMap::new(),
        keep: &keep,
    };
    m.visit(prefix, &mut c)?;
    Ok(c.out)
}

struct Update<'a> {
    values: &'a BTreeMap<String, Array>,
    seen: BTreeSet<String>,
    check_shapes: bool,
}

impl Visitor for Update<'_> {
    fn array(&mut self, name: &str, array: &mut Array) -> Result<()> {
        if let Some(v) = self.values.get(name) {
            if self.check_shapes && v.shape() != array.shape() {
                return Err(Error::InvalidArgument(format!(
                    "parameter `{name}` has shape {:?}, the update {:?}",
                    array.shape(),
                    v.shape()
                )));
            }
            *array = v.clone();
            self.seen.insert(name.to_string());
        }
        Ok(())
    }
}

/// Replaces the parameters of `m` named in `values` (shapes must match);
/// returns an error naming any value that matches no parameter.
pub fn update(m: &mut dyn Module, prefix: &str, values: &BTreeMap<String, Array>) -> Result<()> {
    let mut u = Update {
        values,
        seen: BTreeSet::new(),
        check_shapes: true,
    };
    m.visit(prefix, &mut u)?;
    let unknown: Vec<&str> = values
        .keys()
        .filter(|k| !u.seen.contains(*k))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no parameter named {}",
            unknown.join(", ")
        )));
    }
    Ok(())
}

/// Which parameters training changes: a set of names, grown with
/// [`unfreeze`](Trainable::unfreeze) and shrunk with
/// [`freeze`](Trainable::freeze) by predicates over the names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trainable {
    names: BTreeSet<String>,
}

impl Trainable {
    /// Nothing trainable (everything frozen).
    pub fn none() -> Trainable {
        Trainable::default()
    }

    /// Marks trainable every parameter of `m` whose name `pick` accepts.
    pub fn unfreeze(&mut self, m: &mut dyn Module, pick: impl Fn(&str) -> bool) -> Result<()> {
        self.names.extend(named_where(m, "", &pick)?.into_keys());
        Ok(())
    }

    /// Freezes every parameter whose name `pick` accepts.
    pub fn freeze(&mut self, pick: impl Fn(&str) -> bool) {
        self.names.retain(|n| !pick(n));
    }

    /// Whether `name` is trainable.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// The trainable names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Number of trainable parameters (tensors).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether nothing is trainable.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The trainable parameters of `m`, by name.
    pub fn parameters(&self, m: &mut dyn Module) -> Result<BTreeMap<String, Array>> {
        named_where(m, "", &|n| self.names.contains(n))
    }
}
