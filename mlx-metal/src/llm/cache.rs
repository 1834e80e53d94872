//! Key/value caches, as mlx_lm keeps them: a standard cache grown in steps
//! of 256 positions and a rotating cache for sliding-window layers.

use crate::fast::AttentionMask;
use crate::{Array, Dtype, Result};

const STEP: i32 = 256;

/// The mask a layer's attention uses for `n` new queries.
#[derive(Debug, Clone)]
pub enum Mask {
    /// Every query sees every cached key (single-token decode).
    None,
    /// Bottom-right aligned causal mask, done inside the kernel.
    Causal,
    /// An explicit boolean keep-mask `[n, keys]`.
    Array(Array),
}

impl Mask {
    /// As the attention kernel takes it.
    pub fn as_attention(&self) -> AttentionMask<'_> {
        match self {
            Mask::None => AttentionMask::None,
            Mask::Causal => AttentionMask::Causal,
            Mask::Array(a) => AttentionMask::Array(a),
        }
    }
}

/// `[n, offset + n]` keep-mask: query `offset + i` sees keys `j <= offset + i`
/// (and `j > offset + i - window` with a window).
pub fn causal_mask(n: i32, offset: i32, window: Option<i32>) -> Result<Array> {
    let rinds =
        Array::arange(0.0, (offset + n) as f64, 1.0, Dtype::Int32)?.reshape(&[1, offset + n])?;
    let linds =
        Array::arange(offset as f64, (offset + n) as f64, 1.0, Dtype::Int32)?.reshape(&[n, 1])?;
    let mut mask = linds.greater_equal(&rinds)?;
    if let Some(w) = window {
        let upper = rinds.add(&Array::scalar(w))?;
        mask = mask.logical_and(&linds.less(&upper)?)?;
    }
    Ok(mask)
}

/// One layer's cache.
#[derive(Debug)]
pub enum KvCache {
    /// Keeps every position.
    Standard(StandardCache),
    /// Keeps the last `max_size` positions.
    Rotating(RotatingCache),
}

impl KvCache {
    /// A standard cache.
    pub fn standard() -> KvCache {
        KvCache::Standard(StandardCache::default())
    }

    /// A rotating cache of `max_size` positions.
    pub fn rotating(max_size: i32) -> KvCache {
        KvCache::Rotating(RotatingCache {
            max_size,
            ..Default::default()
        })
    }

    /// Positions processed so far.
    pub fn offset(&self) -> i32 {
        match self {
            KvCache::Standard(c) => c.offset,
            KvCache::Rotating(c) => c.offset,
        }
    }

    /// Appends `keys`/`values` (`[B, heads, n, dim]`) and returns what the
    /// attention should read.
    pub fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        match self {
            KvCache::Standard(c) => c.update_and_fetch(keys, values),
            KvCache::Rotating(c) => c.update_and_fetch(keys, values),
        }
    }

    /// The mask for `n` new queries, taken before this step's update.
    pub fn make_mask(&self, n: i32, window: Option<i32>) -> Result<Mask> {
        match self {
            KvCache::Standard(c) => match window {
                Some(w) => Ok(Mask::Array(causal_mask(n, c.offset, Some(w))?)),
                None if n == 1 => Ok(Mask::None),
                None => Ok(Mask::Causal),
            },
            KvCache::Rotating(c) => c.make_mask(n, window),
        }
    }

    /// The arrays to evaluate to materialise the cache.
    pub fn state(&self) -> Vec<&Array> {
        let (k, v) = match self {
            KvCache::Standard(c) => (&c.keys, &c.values),
            KvCache::Rotating(c) => (&c.keys, &c.values),
        };
        k.iter().chain(v.iter()).collect()
    }
}

/// Grows in steps of 256 positions; reads are a slice of the buffer.
#[derive(Debug, Default)]
pub struct StandardCache {
    keys: Option<Array>,
    values: Option<Array>,
    offset: i32,
}

fn upto(a: &Array, n: i32) -> Result<Array> {
    a.slice_axis(2, 0, n)
}

fn write(buffer: &Array, update: &Array, at: i32) -> Result<Array> {
    let mut start = vec![0; 4];
    let mut stop = buffer.shape();
    start[2] = at;
    stop[2] = at + update.dim(2)?;
    buffer.slice_update(update, &start, &stop, &[1, 1, 1, 1])
}

impl StandardCache {
    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        let prev = self.offset;
        let s = keys.dim(2)?;
        let capacity = match &self.keys {
            Some(k) => k.dim(2)?,
            None => 0,
        };
        if self.keys.is_none() || prev + s > capacity {
            let (ks, vs) = (keys.shape(), values.shape());
            let n_steps = (STEP + s - 1) / STEP;
            let new_k = Array::zeros(&[ks[0], ks[1], n_steps * STEP, ks[3]], keys.dtype())?;
            let new_v = Array::zeros(&[vs[0], vs[1], n_steps * STEP, vs[3]], values.dtype())?;
            match (self.keys.take(), self.values.take()) {
                (Some(mut k), Some(mut v)) => {
                    if prev % STEP != 0 {
                        k = upto(&k, prev)?;
                        v = upto(&v, prev)?;
                    }
                    self.keys = Some(Array::concatenate(&[&k, &new_k], 2)?);
                    self.values = Some(Array::concatenate(&[&v, &new_v], 2)?);
                }
                _ => {
                    self.keys = Some(new_k);
                    self.values = Some(new_v);
                }
            }
        }
        self.offset += s;
        let k = write(self.keys.as_ref().expect("allocated above"), keys, prev)?;
        let v = write(self.values.as_ref().expect("allocated above"), values, prev)?;
        let out = if self.offset < k.dim(2)? {
            (upto(&k, self.offset)?, upto(&v, self.offset)?)
        } else {
            (k.clone(), v.clone())
        };
        self.keys = Some(k);
        self.values = Some(v);
        Ok(out)
    }
}

/// Keeps the most recent `max_size` positions in a ring buffer (multi-token
/// updates keep `max_size - 1` old positions plus the new ones so every
/// query sees a full window).
#[derive(Debug, Default)]
pub struct RotatingCache {
    keys: Option<Array>,
    values: Option<Array>,
    offset: i32,
    max_size: i32,
    idx: i32,
}

impl RotatingCache {
    /// Rearranges the buffer into temporal order, dropping unused slots.
    fn temporal_order(&self, v: &Array) -> Result<Array> {
        let len = v.dim(2)?;
        if self.idx == len {
            Ok(v.clone())
        } else if self.idx < self.offset {
            let tail = v.slice_axis(2, self.idx, len)?;
            let head = v.slice_axis(2, 0, self.idx)?;
            Array::concatenate(&[&tail, &head], 2)
        } else {
            v.slice_axis(2, 0, self.idx)
        }
    }

    fn trim(trim: i32, v: &Array, append: Option<&Array>) -> Result<Array> {
        let kept = if trim > 0 {
            v.slice_axis(2, trim, v.dim(2)?)?
        } else {
            v.clone()
        };
        match append {
            Some(a) => Array::concatenate(&[&kept, a], 2),
            None => Ok(kept),
        }
    }

    fn update_concat(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        match (self.keys.take(), self.values.take()) {
            (Some(k), Some(v)) => {
                let k = self.temporal_order(&k)?;
                let v = self.temporal_order(&v)?;
                self.idx = k.dim(2)?;
                let trim = self.idx - self.max_size + 1;
                self.keys = Some(Self::trim(trim, &k, Some(keys))?);
                self.values = Some(Self::trim(trim, &v, Some(values))?);
            }
            _ => {
                self.keys = Some(keys.clone());
                self.values = Some(values.clone());
            }
        }
        self.offset += keys.dim(2)?;
        let k = self.keys.clone().expect("set above");
        self.idx = k.dim(2)?;
        Ok((k, self.values.clone().expect("set above")))
    }

    fn update_in_place(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        let (ks, vs) = (keys.shape(), values.shape());
        let s = ks[2];
        let prev = self.offset;
        let capacity = match &self.keys {
            Some(k) => k.dim(2)?,
            None => 0,
        };
        if self.keys.is_none() || (prev >= capacity && capacity < self.max_size) {
            let new_size = STEP.min(self.max_size - prev);
            let new_k = Array::zeros(&[ks[0], ks[1], new_size, ks[3]], keys.dtype())?;
            let new_v = Array::zeros(&[vs[0], vs[1], new_size, vs[3]], values.dtype())?;
            match (self.keys.take(), self.values.take()) {
                (Some(k), Some(v)) => {
                    self.keys = Some(Array::concatenate(&[&k, &new_k], 2)?);
                    self.values = Some(Array::concatenate(&[&v, &new_v], 2)?);
                }
                _ => {
                    self.keys = Some(new_k);
                    self.values = Some(new_v);
                }
            }
            self.idx = prev;
        }
        let mut k = self.keys.take().expect("allocated above");
        let mut v = self.values.take().expect("allocated above");
        let trim = k.dim(2)? - self.max_size;
        if trim > 0 {
            k = Self::trim(trim, &k, None)?;
            v = Self::trim(trim, &v, None)?;
            self.idx = self.max_size;
        }
        if self.idx == self.max_size {
            self.idx = 0;
        }
        k = write(&k, keys, self.idx)?;
        v = write(&v, values, self.idx)?;
        self.offset += s;
        self.idx += s;
        let out = if self.offset < k.dim(2)? {
            (upto(&k, self.offset)?, upto(&v, self.offset)?)
        } else {
            (k.clone(), v.clone())
        };
        self.keys = Some(k);
        self.values = Some(v);
        Ok(out)
    }

    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        if keys.dim(2)? == 1 {
            self.update_in_place(keys, values)
        } else {
            self.update_concat(keys, values)
        }
    }

    fn make_mask(&self, n: i32, window: Option<i32>) -> Result<Mask> {
        if n > 1 {
            let window = window.unwrap_or(self.max_size);
            let offset = (self.max_size - 1).min(self.offset);
            if offset + n > window {
                return Ok(Mask::Array(causal_mask(n, offset, Some(window))?));
            }
            return Ok(Mask::Causal);
        }
        match window {
            Some(w) if self.offset >= w && self.max_size > w => {
                let idx = if self.idx >= self.max_size {
                    0
                } else {
                    self.idx
                };
                let size = if self.offset < self.max_size {
                    self.offset + 1
                } else {
                    self.max_size
                };
                let keep: Vec<bool> = (0..size).map(|i| i >= size - w).collect();
                let shift = (idx + 1) % size;
                let mut rolled = vec![false; size as usize];
                for (i, k) in keep.iter().enumerate() {
                    rolled[(i + shift as usize) % size as usize] = *k;
                }
                Ok(Mask::Array(Array::from_vec(&rolled)?))
            }
            _ => Ok(Mask::None),
        }
    }
}
