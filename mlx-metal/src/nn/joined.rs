//! Linear layers that read the same input, joined into one matrix product
//! (q/k/v, gate/up) for inference.
//!
//! One product with the outputs of all the parts is one kernel instead of
//! several on a GPU and a larger, better-packed GEMM on the CPU. The parts
//! stay what they were by name — their weights become views of the joined
//! ones, so the join costs no memory — and the join is dropped as soon as
//! anything replaces one of the parts' arrays (an adapter, a training
//! update, a shard), after which the parts run on their own again.
//!
//! A dense join also keeps its weight transposed (a view, made once), so
//! a product adds no transpose operation to each step's graph; a single
//! dense layer is "joined" for that alone ([`Joined::single`]).

use std::borrow::Borrow;

use crate::nn::linear::dense_product;
use crate::nn::Linear;
use crate::{Array, QuantizedWeight, Result};

/// Several linear layers joined along their outputs.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    linear: Linear,
    /// Where each part's outputs start, after the first.
    splits: Vec<i32>,
    /// The parts' array handles when they were joined.
    handles: Vec<usize>,
    /// A dense join's weight, transposed.
    weight_t: Option<Array>,
}

/// The handles of a plain (dense or quantised) layer's arrays; `None` for
/// a layer with adapters.
fn handles(l: &Linear) -> Option<Vec<usize>> {
    match l {
        Linear::Dense { weight, bias } => {
            let mut h = vec![weight.handle_addr()];
            h.extend(bias.iter().map(Array::handle_addr));
            Some(h)
        }
        Linear::Quantized { weight, bias } => {
            let mut h = vec![
                weight.weight.handle_addr(),
                weight.scales.handle_addr(),
                weight.biases.handle_addr(),
            ];
            h.extend(bias.iter().map(Array::handle_addr));
            Some(h)
        }
        Linear::Lora(_) | Linear::Adapters(_) => None,
    }
}

fn all_handles(parts: &[&Linear]) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for p in parts {
        out.extend(handles(p)?);
    }
    Some(out)
}

/// `arrays` joined along axis 0, and each part as a view of the result.
fn join_rows(arrays: &[&Array]) -> Result<JoinedRows> {
    let joined = Array::concatenate(arrays, 0)?;
    let mut views = Vec::with_capacity(arrays.len());
    let mut start = 0;
    for a in arrays {
        let end = start + a.dim(0)?;
        views.push(joined.slice_axis(0, start, end)?);
        start = end;
    }
    Ok((joined, views))
}

/// A joined array and its parts as views of it.
type JoinedRows = (Array, Vec<Array>);

/// The biases of `parts` joined, when all have one; `Some(None)` when none
/// has; `None` when only some have.
fn join_biases(biases: &[Option<&Array>]) -> Result<Option<Option<JoinedRows>>> {
    if biases.iter().all(Option::is_none) {
        return Ok(Some(None));
    }
    let all: Option<Vec<&Array>> = biases.iter().copied().collect();
    match all {
        Some(b) => Ok(Some(Some(join_rows(&b)?))),
        None => Ok(None),
    }
}

impl Joined {
    /// Joins `parts` when they can be (all dense of one dtype and input
    /// width, or all quantised alike; biases on all or none), making each
    /// part's arrays views of the joined ones. `None` leaves them as they
    /// were.
    pub(crate) fn join(parts: &mut [&mut Linear]) -> Result<Option<Joined>> {
        if parts.len() < 2 {
            return Ok(None);
        }
        let mut splits = Vec::new();
        let mut rows = 0;
        for p in parts.iter() {
            let (out, _) = p.dims()?;
            if rows > 0 {
                splits.push(rows);
            }
            rows += out;
        }
        let biases: Vec<Option<&Array>> = parts.iter().map(|p| p.bias()).collect();
        let Some(bias) = join_biases(&biases)? else {
            return Ok(None);
        };
        let dense: Option<Vec<&Array>> = parts
            .iter()
            .map(|p| match &**p {
                Linear::Dense { weight, .. } => Some(weight),
                _ => None,
            })
            .collect();
        let quantised: Option<Vec<&QuantizedWeight>> = parts
            .iter()
            .map(|p| match &**p {
                Linear::Quantized { weight, .. } => Some(weight),
                _ => None,
            })
            .collect();
        let (bias, bias_views) = match bias {
            Some((b, views)) => (Some(b), views.into_iter().map(Some).collect()),
            None => (None, vec![None; parts.len()]),
        };
        let linear = if let Some(w) = dense {
            let (dtype, width) = (w[0].dtype(), w[0].dim(1)?);
            for x in &w {
                if x.dtype() != dtype || x.ndim() != 2 || x.dim(1)? != width {
                    return Ok(None);
                }
            }
            let (weight, views) = join_rows(&w)?;
            for ((p, view), b) in parts.iter_mut().zip(views).zip(&bias_views) {
                **p = Linear::Dense {
                    weight: view,
                    bias: b.clone(),
                };
            }
            Linear::Dense { weight, bias }
        } else if let Some(q) = quantised {
            let first = q[0];
            for x in &q {
                if (x.bits, x.group_size) != (first.bits, first.group_size)
                    || x.weight.dim(1)? != first.weight.dim(1)?
                    || x.scales.dtype() != first.scales.dtype()
                {
                    return Ok(None);
                }
            }
            let (weight, wv) = join_rows(&q.iter().map(|x| &x.weight).collect::<Vec<_>>())?;
            let (scales, sv) = join_rows(&q.iter().map(|x| &x.scales).collect::<Vec<_>>())?;
            let (qbiases, bv) = join_rows(&q.iter().map(|x| &x.biases).collect::<Vec<_>>())?;
            let (bits, group_size) = (first.bits, first.group_size);
            let views = wv.into_iter().zip(sv).zip(bv);
            for ((p, ((w, s), b)), bias) in parts.iter_mut().zip(views).zip(&bias_views) {
                **p = Linear::Quantized {
                    weight: QuantizedWeight {
                        weight: w,
                        scales: s,
                        biases: b,
                        group_size,
                        bits,
                    },
                    bias: bias.clone(),
                };
            }
            Linear::Quantized {
                weight: QuantizedWeight {
                    weight,
                    scales,
                    biases: qbiases,
                    group_size,
                    bits,
                },
                bias,
            }
        } else {
            return Ok(None);
        };
        let views: Vec<&Linear> = parts.iter().map(|p| &**p).collect();
        let Some(handles) = all_handles(&views) else {
            return Ok(None);
        };
        Joined::made(linear, splits, handles).map(Some)
    }

    /// A single dense layer with its weight kept transposed; `None` for
    /// any other kind of layer.
    pub(crate) fn single(part: &Linear) -> Result<Option<Joined>> {
        match (part, handles(part)) {
            (Linear::Dense { .. }, Some(handles)) => {
                Joined::made(part.clone(), Vec::new(), handles).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn made(linear: Linear, splits: Vec<i32>, handles: Vec<usize>) -> Result<Joined> {
        let weight_t = match &linear {
            Linear::Dense { weight, .. } => Some(weight.transpose()?),
            _ => None,
        };
        Ok(Joined {
            linear,
            splits,
            handles,
            weight_t,
        })
    }

    /// Drops `joined` once `parts` are no longer the layers it was made
    /// from (a visitor replaced one of their arrays); the parts then run
    /// on their own.
    pub(crate) fn drop_if_replaced<J: Borrow<Joined>>(joined: &mut Option<J>, parts: &[&Linear]) {
        if joined.as_ref().is_some_and(|j| !j.borrow().matches(parts)) {
            *joined = None;
        }
    }

    /// Whether `parts` are still the layers this join was made from (no
    /// array of theirs replaced since).
    pub(crate) fn matches(&self, parts: &[&Linear]) -> bool {
        all_handles(parts).is_some_and(|h| h == self.handles)
    }

    /// Each part's output for `x`, from one product.
    pub(crate) fn forward(&self, x: &Array) -> Result<Vec<Array>> {
        self.product(x)?.split_at(&self.splits, -1)
    }

    /// The product of all the parts (the layer's output for a single one).
    pub(crate) fn product(&self, x: &Array) -> Result<Array> {
        match (&self.linear, &self.weight_t) {
            (Linear::Dense { weight, bias }, Some(wt)) => {
                dense_product(x, weight, Some(wt), bias.as_ref())
            }
            _ => self.linear.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Joined;
    use crate::nn::params::{join, Module, Visitor};
    use crate::nn::Linear;
    use crate::{random, Array, Dtype, Result};

    fn normal(shape: &[i32], key: u64) -> Array {
        let k = random::key(key).unwrap();
        random::normal(shape, Dtype::Float32, 0.0, 1.0, Some(&k)).unwrap()
    }

    fn dense(out: i32, inp: i32, bias: bool, key: u64) -> Linear {
        Linear::Dense {
            weight: normal(&[out, inp], key),
            bias: bias.then(|| Array::arange(0.0, out as f64, 1.0, Dtype::Float32).unwrap()),
        }
    }

    fn max_diff(a: &Array, b: &Array) -> f32 {
        a.subtract(b)
            .unwrap()
            .abs()
            .unwrap()
            .max(&[], false)
            .unwrap()
            .item::<f32>()
            .unwrap()
    }

    /// Replaces every array it is shown (as a training update does).
    struct Replace;
    impl Visitor for Replace {
        fn array(&mut self, _: &str, a: &mut Array) -> Result<()> {
            *a = a.clone();
            Ok(())
        }
    }

    /// `parts` (reading `width` features) joined give what they give
    /// alone, still compute alone as views, and a replaced part ends the
    /// join.
    fn check(mut parts: Vec<Linear>, width: i32) {
        let x = normal(&[2, 3, width], 9);
        let alone: Vec<Array> = parts.iter().map(|p| p.forward(&x).unwrap()).collect();
        let mut refs: Vec<&mut Linear> = parts.iter_mut().collect();
        let joined = Joined::join(&mut refs).unwrap().expect("joinable");
        let together = joined.forward(&x).unwrap();
        assert_eq!(together.len(), alone.len());
        for (a, t) in alone.iter().zip(&together) {
            assert_eq!(a.shape(), t.shape());
            assert!(max_diff(a, t) < 1e-5);
        }
        // the parts, now views of the joined arrays, still compute alone
        for (p, a) in parts.iter().zip(&alone) {
            assert!(max_diff(&p.forward(&x).unwrap(), a) < 1e-5);
        }
        let views: Vec<&Linear> = parts.iter().collect();
        assert!(joined.matches(&views));
        parts[1].visit(&join("", "k_proj"), &mut Replace).unwrap();
        let views: Vec<&Linear> = parts.iter().collect();
        assert!(!joined.matches(&views), "a replaced part ends the join");
    }

    #[test]
    fn dense_parts_join_into_one_product_with_the_same_outputs() {
        check(
            vec![
                dense(8, 16, false, 1),
                dense(4, 16, false, 2),
                dense(4, 16, false, 3),
            ],
            16,
        );
        check(vec![dense(8, 16, true, 1), dense(4, 16, true, 2)], 16);
    }

    #[test]
    fn quantised_parts_join_into_one_product_with_the_same_outputs() {
        let q = |out, key| {
            let Linear::Dense { weight, .. } = dense(out, 64, false, key) else {
                unreachable!()
            };
            Linear::Quantized {
                weight: weight.quantize(32, 4).unwrap(),
                bias: None,
            }
        };
        check(vec![q(8, 5), q(16, 6)], 64);
    }

    #[test]
    fn a_single_dense_layer_keeps_its_weight_transposed_until_replaced() {
        for bias in [false, true] {
            let mut layer = dense(8, 16, bias, 4);
            let x = normal(&[2, 16], 7);
            let want = layer.forward(&x).unwrap();
            let prepared = Joined::single(&layer).unwrap().expect("dense");
            let y = prepared.product(&x).unwrap();
            assert!(max_diff(&y, &want) < 1e-6);
            // the product's graph transposes nothing (the plain layer's does)
            let ops = |a: &Array| crate::graph::count_operations(&[a]).unwrap();
            assert!(!ops(&y).contains_key("Transpose"), "{:?}", ops(&y));
            assert!(ops(&layer.forward(&x).unwrap()).contains_key("Transpose"));
            assert!(prepared.matches(&[&layer]));
            layer.visit("o_proj", &mut Replace).unwrap();
            assert!(!prepared.matches(&[&layer]), "a replaced weight ends it");
        }
        let Linear::Dense { weight, .. } = dense(8, 64, false, 5) else {
            unreachable!()
        };
        let q = Linear::Quantized {
            weight: weight.quantize(32, 4).unwrap(),
            bias: None,
        };
        assert!(
            Joined::single(&q).unwrap().is_none(),
            "nothing to transpose"
        );
    }

    #[test]
    fn unlike_parts_stay_apart() {
        let mut parts = [dense(8, 16, true, 1), dense(4, 16, false, 2)];
        let mut refs: Vec<&mut Linear> = parts.iter_mut().collect();
        assert!(
            Joined::join(&mut refs).unwrap().is_none(),
            "bias on only one"
        );
        let mut parts = [dense(8, 16, false, 1), dense(4, 8, false, 2)];
        let mut refs: Vec<&mut Linear> = parts.iter_mut().collect();
        assert!(
            Joined::join(&mut refs).unwrap().is_none(),
            "different input widths"
        );
    }
}
