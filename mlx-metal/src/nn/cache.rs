//! Key/value caches, as mlx_lm keeps them: a standard cache grown in steps
//! of 256 positions, a rotating cache for sliding-window layers, and a
//! batch cache holding many left-padded rows, each at its own position;
//! and a fixed cache whose position is an array, which a compiled decode
//! step reads and writes without changing shape from token to token.

use crate::fast::AttentionMask;
use crate::nn::Positions;
use crate::{Array, Dtype, Error, Result};

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
    /// Many rows, left-padded, each at its own position.
    Batch(BatchCache),
    /// Fixed size, written at a position held in an array (one token a
    /// step): see [`FixedCache`].
    Fixed(FixedCache),
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

    /// Positions processed so far (for a batch cache: the columns
    /// written); `None` for a fixed cache, whose position is an array.
    pub fn offset(&self) -> Option<i32> {
        match self {
            KvCache::Standard(c) => Some(c.offset),
            KvCache::Rotating(c) => Some(c.offset),
            KvCache::Batch(c) => Some(c.start + c.idx),
            KvCache::Fixed(_) => None,
        }
    }

    /// Where this step's new tokens start, for RoPE.
    pub fn positions(&self) -> Result<Positions> {
        match self {
            KvCache::Standard(c) => Ok(Positions::Same(c.offset)),
            KvCache::Rotating(c) => Ok(Positions::Same(c.offset)),
            KvCache::Batch(c) => c.positions(),
            KvCache::Fixed(c) => c.positions(),
        }
    }

    /// Appends `keys`/`values` (`[B, heads, n, dim]`) and returns what the
    /// attention should read.
    pub fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        match self {
            KvCache::Standard(c) => c.update_and_fetch(keys, values),
            KvCache::Rotating(c) => c.update_and_fetch(keys, values),
            KvCache::Batch(c) => c.update_and_fetch(keys, values),
            KvCache::Fixed(c) => c.update_and_fetch(keys, values),
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
            KvCache::Batch(c) => c.make_mask(n, window),
            KvCache::Fixed(c) => c.make_mask(n),
        }
    }

    /// The arrays to evaluate to materialise the cache.
    pub fn state(&self) -> Vec<&Array> {
        let kv = match self {
            KvCache::Standard(c) => &c.kv,
            KvCache::Rotating(c) => &c.kv,
            KvCache::Batch(c) => &c.kv,
            KvCache::Fixed(c) => return vec![&c.kv.0, &c.kv.1],
        };
        kv.iter().flat_map(|(k, v)| [k, v]).collect()
    }

    /// A fixed cache over `keys`/`values` (`[1, heads, len, dim]`, as
    /// [`into_fixed`](Self::into_fixed) lays them out) whose next token
    /// goes to position `offset` (an int32 scalar array); `window` for
    /// sliding-window layers.
    pub fn fixed(keys: Array, values: Array, offset: Array, window: Option<i32>) -> KvCache {
        KvCache::Fixed(FixedCache {
            kv: (keys, values),
            offset,
            window,
        })
    }

    /// This single-sequence cache's keys and values laid out as a fixed
    /// cache of `capacity` positions: a full-attention layer's first
    /// `offset` positions followed by empty ones up to `capacity`; a
    /// sliding-window layer's last positions in `min(window, capacity)`
    /// slots, position `p` at slot `p % slots`. `capacity` must exceed the
    /// positions processed. Batch and fixed caches are refused.
    pub fn into_fixed(self, capacity: i32) -> Result<Kv> {
        let (kv, offset, window) = match self {
            KvCache::Standard(c) => {
                let kv = match c.kv {
                    Some(kv) => Some(positions(&kv, 0, c.offset)?),
                    None => None,
                };
                (kv, c.offset, None)
            }
            KvCache::Rotating(c) => {
                let kv = match c.kv.clone() {
                    Some(kv) => {
                        let kv = c.temporal_order(kv)?;
                        let len = kv.0.dim(2)?;
                        Some(positions(&kv, (len - c.max_size).max(0), len)?)
                    }
                    None => None,
                };
                (kv, c.offset, Some(c.max_size))
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "only a single-sequence cache becomes a fixed cache".into(),
                ))
            }
        };
        if capacity <= offset {
            return Err(Error::InvalidArgument(format!(
                "a fixed cache of {capacity} positions cannot hold {} already processed",
                offset
            )));
        }
        let slots = fixed_slots(window, capacity);
        let Some(kv) = kv else {
            return Err(Error::InvalidArgument(
                "an empty cache has no shape to lay out (run the prompt first)".into(),
            ));
        };
        let held = kv.0.dim(2)?;
        let kv = if held == slots {
            // A full window: position p goes to slot p % slots.
            let shift = offset % slots;
            if shift == 0 {
                kv
            } else {
                join(
                    &positions(&kv, slots - shift, slots)?,
                    &positions(&kv, 0, slots - shift)?,
                )?
            }
        } else {
            // Positions 0..held at their own slots.
            grow_fixed(kv, window, capacity)?
        };
        Ok(kv)
    }

    /// A fixed cache's keys and values.
    pub fn into_kv(self) -> Result<Kv> {
        match self {
            KvCache::Fixed(c) => Ok(c.kv),
            _ => Err(Error::InvalidArgument("not a fixed cache".into())),
        }
    }
}

/// The int32 index array of `rows`, for taking those rows (axis 0) of a
/// batch's arrays.
pub(crate) fn row_index(rows: &[usize]) -> Result<Array> {
    let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
    Array::from_vec(&idx)
}

/// The slots of a fixed cache of `capacity` positions for a layer with
/// sliding window `window` (`None`: full attention).
pub fn fixed_slots(window: Option<i32>, capacity: i32) -> i32 {
    window.map_or(capacity, |w| w.min(capacity))
}

/// A fixed cache's keys and values (or a single-sequence cache's first
/// positions) with empty slots appended up to [`fixed_slots`]`(window,
/// capacity)`; unchanged when they have as many already.
pub fn grow_fixed(kv: Kv, window: Option<i32>, capacity: i32) -> Result<Kv> {
    let more = fixed_slots(window, capacity) - kv.0.dim(2)?;
    if more <= 0 {
        return Ok(kv);
    }
    let (k, v) = kv.clone();
    grow(Some(kv), &k, &v, more)
}

/// A cache of fixed size whose write position is an int32 scalar array
/// (the tokens before this step): what a compiled decode step reads and
/// writes, so its shapes stay the same from one token to the next and the
/// step is traced once. Full-attention layers keep `capacity` positions,
/// position `p` at slot `p`; sliding-window layers keep `min(window,
/// capacity)` slots, position `p` at slot `p % slots` (the order of keys
/// does not matter to attention: RoPE is applied before they are stored).
/// Attention reads every slot through a mask that hides the ones not
/// written yet. One token a step.
#[derive(Debug)]
pub struct FixedCache {
    kv: Kv,
    offset: Array,
    window: Option<i32>,
}

impl FixedCache {
    fn slots(&self) -> Result<i32> {
        self.kv.0.dim(2)
    }

    fn positions(&self) -> Result<Positions> {
        Ok(Positions::PerRow(self.offset.reshape(&[1])?))
    }

    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<Kv> {
        if keys.dim(2)? != 1 {
            return Err(Error::InvalidArgument(
                "a fixed cache takes one token a step".into(),
            ));
        }
        let slot = match self.window {
            Some(_) => self.offset.remainder(&Array::scalar(self.slots()?))?,
            None => self.offset.clone(),
        }
        .reshape(&[1])?;
        let (k, v) = &self.kv;
        self.kv = (
            k.slice_update_dynamic(keys, &slot, &[2])?,
            v.slice_update_dynamic(values, &slot, &[2])?,
        );
        Ok(self.kv.clone())
    }

    /// `[1, slots]`: the slots written so far, this step's included (a
    /// window's slots hold only its positions once it is full).
    fn make_mask(&self, n: i32) -> Result<Mask> {
        if n != 1 {
            return Err(Error::InvalidArgument(
                "a fixed cache takes one token a step".into(),
            ));
        }
        let slots = self.slots()?;
        let cols = Array::arange(0.0, slots as f64, 1.0, Dtype::Int32)?.reshape(&[1, slots])?;
        Ok(Mask::Array(cols.less_equal(&self.offset)?))
    }
}

/// Many sequences in one cache, as mlx_lm's `BatchKVCache`: rows are
/// left-padded so that all write at the same column; each row's tokens
/// start at its own column, so each has its own position. A sliding-window
/// layer's batch cache drops the columns no row can see any more, so its
/// memory stays bounded by the window (plus a step).
///
/// Columns are counted from a fixed origin (`start` is the origin column of
/// the buffer's first slot), so dropping old columns or merging two batches
/// never moves a row's positions.
#[derive(Debug, Default)]
pub struct BatchCache {
    kv: Option<Kv>,
    /// Origin column of buffer slot 0.
    start: i32,
    /// Slots written.
    idx: i32,
    /// Column of each row's first real token.
    left: Vec<i32>,
    /// Per row, the first column whose keys and values this cache still
    /// holds (after `left` once a window layer dropped some of the row's
    /// own columns: merging may then pad those columns back with zeros,
    /// and the row's history is no longer whole).
    held_from: Vec<i32>,
    window: Option<i32>,
    /// Keeps nothing: one forward pass whose keys and values are not needed
    /// afterwards (classification).
    transient: bool,
}

impl KvCache {
    /// An empty batch cache for rows left-padded by `left_padding` columns;
    /// `window` for sliding-window layers.
    pub fn batch(left_padding: &[i32], window: Option<i32>) -> KvCache {
        KvCache::Batch(BatchCache {
            left: left_padding.to_vec(),
            held_from: left_padding.to_vec(),
            window,
            ..Default::default()
        })
    }

    /// A batch cache for a single forward pass whose keys and values are
    /// not kept (prefill-only work such as classification): no buffer is
    /// allocated or written; a second pass is an error.
    pub fn batch_transient(left_padding: &[i32], window: Option<i32>) -> KvCache {
        KvCache::Batch(BatchCache {
            left: left_padding.to_vec(),
            held_from: left_padding.to_vec(),
            window,
            transient: true,
            ..Default::default()
        })
    }

    /// The batch cache, or an error for a single-sequence cache.
    fn as_batch(&mut self) -> Result<&mut BatchCache> {
        match self {
            KvCache::Batch(c) => Ok(c),
            _ => Err(Error::InvalidArgument("not a batch cache".into())),
        }
    }

    /// Whether this is a [`batch_transient`](Self::batch_transient) cache
    /// (one forward pass whose keys and values are not kept).
    pub fn is_transient(&self) -> bool {
        matches!(self, KvCache::Batch(c) if c.transient)
    }

    /// Keeps only `rows` (in that order) of a batch cache.
    pub fn filter(&mut self, rows: &[usize]) -> Result<()> {
        self.as_batch()?.filter(rows)
    }

    /// Appends the rows of `other` (a batch cache of the same layer) below
    /// this one's, aligning both at their last written column.
    pub fn extend(&mut self, other: KvCache) -> Result<()> {
        self.extend_many(vec![other])
    }

    /// [`extend`](Self::extend) with the rows of several batch caches at
    /// once (in order): one concatenation instead of one per cache.
    pub fn extend_many(&mut self, others: Vec<KvCache>) -> Result<()> {
        let others = others
            .into_iter()
            .map(|o| match o {
                KvCache::Batch(c) => Ok(c),
                _ => Err(Error::InvalidArgument("not a batch cache".into())),
            })
            .collect::<Result<Vec<_>>>()?;
        self.as_batch()?.extend_many(others)
    }

    /// Row `r`'s keys and values without its padding (`[1, heads, n,
    /// dim]` each, copied out of the batch buffer), or `None` when the
    /// cache no longer holds the row's whole history (a sliding-window
    /// layer dropped its oldest columns) or holds nothing for it.
    pub fn row_kv(&self, r: usize) -> Result<Option<(Array, Array)>> {
        let (KvCache::Batch(c), Some(from)) = (self, self.row_start(r)?) else {
            return Ok(None);
        };
        let Some((k, v)) = &c.kv else {
            return Ok(None);
        };
        let row = |a: &Array| -> Result<Array> {
            a.slice_axis(0, r as i32, r as i32 + 1)?
                .slice_axis(2, from, c.idx)?
                .contiguous()
        };
        Ok(Some((row(k)?, row(v)?)))
    }

    /// How many positions [`row_kv`](Self::row_kv) would give for row `r`
    /// (`None` where it gives none), without copying anything.
    pub fn row_len(&self, r: usize) -> Result<Option<i32>> {
        let KvCache::Batch(c) = self else {
            return Err(Error::InvalidArgument("not a batch cache".into()));
        };
        Ok(self.row_start(r)?.map(|from| c.idx - from))
    }

    /// The buffer slot of row `r`'s first position, when the cache holds
    /// the row's whole history.
    fn row_start(&self, r: usize) -> Result<Option<i32>> {
        let KvCache::Batch(c) = self else {
            return Err(Error::InvalidArgument("not a batch cache".into()));
        };
        let (Some(_), Some(&left)) = (&c.kv, c.left.get(r)) else {
            return Ok(None);
        };
        if c.held_from[r] > left {
            return Ok(None);
        }
        let from = left - c.start;
        Ok((from >= 0 && from < c.idx).then_some(from))
    }

    /// A one-row batch cache that has read the positions in `keys` and
    /// `values` (`[1, heads, n, dim]`, as [`row_kv`](Self::row_kv) gives
    /// them); `window` as for [`batch`](Self::batch).
    pub fn batch_from_kv(keys: Array, values: Array, window: Option<i32>) -> Result<KvCache> {
        let idx = keys.dim(2)?;
        Ok(KvCache::Batch(BatchCache {
            kv: Some((keys, values)),
            idx,
            left: vec![0],
            held_from: vec![0],
            window,
            ..Default::default()
        }))
    }

    /// The window a cache was made for (`None`: full attention).
    pub fn window(&self) -> Option<i32> {
        match self {
            KvCache::Standard(_) => None,
            KvCache::Rotating(c) => Some(c.max_size),
            KvCache::Batch(c) => c.window,
            KvCache::Fixed(c) => c.window,
        }
    }
}

impl BatchCache {
    fn end(&self) -> i32 {
        self.start + self.idx
    }

    fn positions(&self) -> Result<Positions> {
        let end = self.end();
        let offsets: Vec<i32> = self.left.iter().map(|l| end - l).collect();
        Ok(Positions::PerRow(Array::from_vec(&offsets)?))
    }

    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<Kv> {
        let prev = self.idx;
        let s = keys.dim(2)?;
        if self.transient {
            if prev > 0 {
                return Err(Error::InvalidArgument(
                    "a transient batch cache serves one forward pass".into(),
                ));
            }
            self.idx = s;
            return Ok((keys.clone(), values.clone()));
        }
        let capacity = match &self.kv {
            Some((k, _)) => k.dim(2)?,
            None => 0,
        };
        if self.kv.is_none() || prev + s > capacity {
            let mut kv = self.kv.take();
            if prev < capacity {
                kv = kv.map(|kv| positions(&kv, 0, prev)).transpose()?;
            }
            self.kv = Some(grow(kv, keys, values, STEP * ((STEP + s - 1) / STEP))?);
        }
        self.idx += s;
        let (kv, out) = store(
            self.kv.as_ref().expect("allocated above"),
            keys,
            values,
            prev,
            self.idx,
        )?;
        self.kv = Some(kv);
        self.drop_old()?;
        Ok(out)
    }

    /// Drops the columns that left every row's window, once there are more
    /// than a step of them (the next queries see only the last `window`).
    fn drop_old(&mut self) -> Result<()> {
        let Some(w) = self.window else {
            return Ok(());
        };
        let excess = self.idx - w;
        if excess < STEP {
            return Ok(());
        }
        if let Some(kv) = self.kv.take() {
            let cap = kv.0.dim(2)?;
            self.kv = Some(positions(&kv, excess, cap)?);
        }
        self.start += excess;
        self.idx -= excess;
        let start = self.start;
        self.held_from.iter_mut().for_each(|h| *h = (*h).max(start));
        Ok(())
    }

    /// `[B, 1, n, keys]` keep-mask for `n` new queries (taken before the
    /// update): a row sees its own real columns, causally, within the window.
    fn make_mask(&self, n: i32, window: Option<i32>) -> Result<Mask> {
        // No padding, nothing cached, no window (whole training rows, or a
        // batch prefill of equal lengths): plain causal attention, which
        // MLX's fused kernels take without a mask array.
        let window = window.or(self.window);
        if self.idx == 0 && self.start == 0 && window.is_none() && self.left.iter().all(|&l| l == 0)
        {
            return Ok(Mask::Causal);
        }
        let total = self.idx + n;
        let b = self.left.len() as i32;
        let cols =
            Array::arange(0.0, total as f64, 1.0, Dtype::Int32)?.reshape(&[1, 1, 1, total])?;
        let queries = Array::arange(self.idx as f64, total as f64, 1.0, Dtype::Int32)?
            .reshape(&[1, 1, n, 1])?;
        let left: Vec<i32> = self.left.iter().map(|l| l - self.start).collect();
        let left = Array::from_slice(&left, &[b, 1, 1, 1])?;
        // A padding query sees only itself, so no row of the attention is
        // empty (an empty row would be NaN and spread through the values).
        let mut mask = cols
            .greater_equal(&left)?
            .logical_or(&cols.equal(&queries)?)?
            .logical_and(&cols.less_equal(&queries)?)?;
        if let Some(w) = window {
            mask = mask.logical_and(&cols.greater(&queries.add(&Array::scalar(-w))?)?)?;
        }
        Ok(Mask::Array(mask))
    }

    fn filter(&mut self, rows: &[usize]) -> Result<()> {
        if rows.iter().any(|&r| r >= self.left.len()) {
            return Err(Error::InvalidArgument(format!(
                "row out of range (the batch has {})",
                self.left.len()
            )));
        }
        let idx = row_index(rows)?;
        if let Some((k, v)) = self.kv.take() {
            self.kv = Some((k.take(&idx, 0)?, v.take(&idx, 0)?));
        }
        self.left = rows.iter().map(|&r| self.left[r]).collect();
        self.held_from = rows.iter().map(|&r| self.held_from[r]).collect();
        // Columns before every remaining row's first token are padding only.
        let unused = self
            .left
            .iter()
            .map(|l| l - self.start)
            .min()
            .unwrap_or(0)
            .clamp(0, self.idx);
        if unused > 0 {
            if let Some(kv) = self.kv.take() {
                let cap = kv.0.dim(2)?;
                self.kv = Some(positions(&kv, unused, cap)?);
            }
            self.start += unused;
            self.idx -= unused;
        }
        Ok(())
    }

    /// Appends the rows of every cache of `others`, in order, aligning all
    /// at this cache's last written column, with one concatenation of the
    /// keys and one of the values whatever their number.
    fn extend_many(&mut self, mut others: Vec<BatchCache>) -> Result<()> {
        // Move the others into this cache's columns: all end at the same column.
        let end = self.end();
        for o in &mut others {
            let shift = end - o.end();
            o.start += shift;
            o.left.iter_mut().for_each(|l| *l += shift);
            o.held_from.iter_mut().for_each(|h| *h += shift);
        }
        if self.kv.is_none() || others.iter().any(|o| o.kv.is_none()) {
            // Some side has written nothing yet: nothing to align, one at a
            // time.
            for o in others {
                let (start, idx) = if self.kv.is_some() {
                    (self.start, self.idx)
                } else {
                    (o.start, o.idx)
                };
                self.kv = self.kv.take().or(o.kv);
                self.start = start;
                self.idx = idx;
                self.left.extend(o.left);
                self.held_from.extend(o.held_from);
            }
            return Ok(());
        }
        // Pad the shorter histories on the left (padding is masked for its rows).
        let pad = |kv: Kv, n: i32| -> Result<Kv> {
            if n == 0 {
                return Ok(kv);
            }
            let (ks, vs) = (kv.0.shape(), kv.1.shape());
            let zeros = (
                Array::zeros(&[ks[0], ks[1], n, ks[3]], kv.0.dtype())?,
                Array::zeros(&[vs[0], vs[1], n, vs[3]], kv.1.dtype())?,
            );
            join(&zeros, &kv)
        };
        let start = others.iter().map(|o| o.start).fold(self.start, i32::min);
        let mut parts = Vec::with_capacity(others.len() + 1);
        let own = self.kv.take().expect("checked above");
        parts.push(pad(positions(&own, 0, self.idx)?, self.start - start)?);
        for o in &mut others {
            let kv = o.kv.take().expect("checked above");
            parts.push(pad(positions(&kv, 0, o.idx)?, o.start - start)?);
        }
        let keys: Vec<&Array> = parts.iter().map(|p| &p.0).collect();
        let values: Vec<&Array> = parts.iter().map(|p| &p.1).collect();
        self.kv = Some((
            Array::concatenate(&keys, 0)?,
            Array::concatenate(&values, 0)?,
        ));
        self.idx = end - start;
        self.start = start;
        for o in others {
            self.left.extend(o.left);
            self.held_from.extend(o.held_from);
        }
        Ok(())
    }
}

/// Keys and values, `[B, heads, positions, dim]` each.
pub type Kv = (Array, Array);

/// `buffer[..., at:at + n, :] = update`.
fn write(buffer: &Array, update: &Array, at: i32) -> Result<Array> {
    let mut start = vec![0; 4];
    let mut stop = buffer.shape();
    start[2] = at;
    stop[2] = at + update.dim(2)?;
    buffer.slice_update(update, &start, &stop, &[1, 1, 1, 1])
}

/// Positions `from..to` of both.
fn positions((k, v): &Kv, from: i32, to: i32) -> Result<Kv> {
    Ok((k.slice_axis(2, from, to)?, v.slice_axis(2, from, to)?))
}

/// Both joined along the positions.
fn join(a: &Kv, b: &Kv) -> Result<Kv> {
    Ok((
        Array::concatenate(&[&a.0, &b.0], 2)?,
        Array::concatenate(&[&a.1, &b.1], 2)?,
    ))
}

/// `size` empty positions shaped like `keys`/`values`, appended to `kv`.
fn grow(kv: Option<Kv>, keys: &Array, values: &Array, size: i32) -> Result<Kv> {
    let (ks, vs) = (keys.shape(), values.shape());
    let empty = (
        Array::zeros(&[ks[0], ks[1], size, ks[3]], keys.dtype())?,
        Array::zeros(&[vs[0], vs[1], size, vs[3]], values.dtype())?,
    );
    match kv {
        Some(kv) => join(&kv, &empty),
        None => Ok(empty),
    }
}

/// Writes `keys`/`values` at `at`; returns the new buffer and the first
/// `visible` positions of it (what attention reads).
fn store(kv: &Kv, keys: &Array, values: &Array, at: i32, visible: i32) -> Result<(Kv, Kv)> {
    let kv = (write(&kv.0, keys, at)?, write(&kv.1, values, at)?);
    let out = if visible < kv.0.dim(2)? {
        positions(&kv, 0, visible)?
    } else {
        kv.clone()
    };
    Ok((kv, out))
}

/// Grows in steps of 256 positions; reads are a slice of the buffer.
#[derive(Debug, Default)]
pub struct StandardCache {
    kv: Option<Kv>,
    offset: i32,
}

impl StandardCache {
    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<Kv> {
        let prev = self.offset;
        let s = keys.dim(2)?;
        let capacity = match &self.kv {
            Some((k, _)) => k.dim(2)?,
            None => 0,
        };
        if self.kv.is_none() || prev + s > capacity {
            let mut kv = self.kv.take();
            if prev % STEP != 0 {
                kv = kv.map(|kv| positions(&kv, 0, prev)).transpose()?;
            }
            self.kv = Some(grow(kv, keys, values, STEP * ((STEP + s - 1) / STEP))?);
        }
        self.offset += s;
        let (kv, out) = store(
            self.kv.as_ref().expect("allocated above"),
            keys,
            values,
            prev,
            self.offset,
        )?;
        self.kv = Some(kv);
        Ok(out)
    }
}

/// Keeps the most recent `max_size` positions in a ring buffer (multi-token
/// updates keep `max_size - 1` old positions plus the new ones so every
/// query sees a full window).
#[derive(Debug, Default)]
pub struct RotatingCache {
    kv: Option<Kv>,
    offset: i32,
    max_size: i32,
    idx: i32,
}

impl RotatingCache {
    /// Rearranges the buffer into temporal order, dropping unused slots.
    fn temporal_order(&self, kv: Kv) -> Result<Kv> {
        let len = kv.0.dim(2)?;
        if self.idx == len {
            Ok(kv)
        } else if self.idx < self.offset {
            join(
                &positions(&kv, self.idx, len)?,
                &positions(&kv, 0, self.idx)?,
            )
        } else {
            positions(&kv, 0, self.idx)
        }
    }

    /// Drops the oldest `n` positions.
    fn trim(n: i32, kv: Kv) -> Result<Kv> {
        if n > 0 {
            let len = kv.0.dim(2)?;
            positions(&kv, n, len)
        } else {
            Ok(kv)
        }
    }

    fn update_concat(&mut self, keys: &Array, values: &Array) -> Result<Kv> {
        let new = (keys.clone(), values.clone());
        let kv = match self.kv.take() {
            Some(kv) => {
                let kv = self.temporal_order(kv)?;
                self.idx = kv.0.dim(2)?;
                join(&Self::trim(self.idx - self.max_size + 1, kv)?, &new)?
            }
            None => new,
        };
        self.offset += keys.dim(2)?;
        self.idx = kv.0.dim(2)?;
        self.kv = Some(kv.clone());
        Ok(kv)
    }

    fn update_in_place(&mut self, keys: &Array, values: &Array) -> Result<Kv> {
        let s = keys.dim(2)?;
        let prev = self.offset;
        let capacity = match &self.kv {
            Some((k, _)) => k.dim(2)?,
            None => 0,
        };
        if self.kv.is_none() || (prev >= capacity && capacity < self.max_size) {
            let size = STEP.min(self.max_size - prev);
            self.kv = Some(grow(self.kv.take(), keys, values, size)?);
            self.idx = prev;
        }
        let mut kv = self.kv.take().expect("allocated above");
        let excess = kv.0.dim(2)? - self.max_size;
        if excess > 0 {
            kv = Self::trim(excess, kv)?;
            self.idx = self.max_size;
        }
        if self.idx == self.max_size {
            self.idx = 0;
        }
        let at = self.idx;
        self.offset += s;
        self.idx += s;
        let (kv, out) = store(&kv, keys, values, at, self.offset)?;
        self.kv = Some(kv);
        Ok(out)
    }

    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<Kv> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys `[1, 1, n, 1]` holding positions `from..from + n`.
    fn positions_from(from: i32, n: i32) -> Array {
        let data: Vec<f32> = (from..from + n).map(|p| p as f32).collect();
        Array::from_slice(&data, &[1, 1, n, 1]).unwrap()
    }

    fn update(cache: &mut KvCache, from: i32, n: i32) -> Vec<f32> {
        let k = positions_from(from, n);
        let (keys, _) = cache.update_and_fetch(&k, &k).unwrap();
        keys.to_vec::<f32>().unwrap()
    }

    #[test]
    fn extending_by_many_equals_extending_one_at_a_time() {
        let make = |from: i32, n: i32| {
            let mut c = KvCache::batch(&[0], None);
            update(&mut c, from, n);
            c
        };
        let mut one = make(0, 3);
        one.extend(make(10, 5)).unwrap();
        one.extend(make(20, 2)).unwrap();
        let mut many = make(0, 3);
        many.extend_many(vec![make(10, 5), make(20, 2)]).unwrap();
        let read = |c: &KvCache| -> Vec<Vec<f32>> {
            c.state()
                .iter()
                .map(|a| a.to_vec::<f32>().unwrap())
                .collect()
        };
        assert_eq!(read(&one), read(&many));
        assert_eq!(one.offset(), many.offset());
        let rows = |c: &KvCache| match c.positions().unwrap() {
            Positions::PerRow(p) => p.to_vec::<i32>().unwrap(),
            Positions::Same(p) => vec![p],
        };
        assert_eq!(rows(&one), rows(&many));
        // three rows, left-padded to the longest history (5 positions)
        assert_eq!(many.state()[0].shape(), vec![3, 1, 5, 1]);
    }

    #[test]
    fn a_row_whose_window_columns_were_dropped_is_not_whole_after_a_merge() {
        // A window layer's batch cache over a long row drops the columns
        // that left the window, the short row's own columns among them.
        let window = Some(4);
        let mut long = KvCache::batch(&[0], window);
        update(&mut long, 0, 300);
        let mut short = KvCache::batch(&[0], window);
        update(&mut short, 0, 3);
        long.extend(short).unwrap();
        for _ in 0..STEP {
            let k = positions_from(0, 1).broadcast_to(&[2, 1, 1, 1]).unwrap();
            long.update_and_fetch(&k, &k).unwrap();
        }
        assert_eq!(long.row_len(1).unwrap(), None, "the short row lost columns");
        // Merging in a row that goes back to the short row's first column
        // (as many columns as a window cache keeps before dropping) pads
        // the buffer back to it with zeros: the short row's history is
        // still not whole.
        let short_left = {
            let c = long.as_batch().unwrap();
            c.left[1]
        };
        let end = long.as_batch().unwrap().end();
        let mut old = KvCache::batch(&[0], window);
        update(&mut old, 0, end - short_left);
        long.extend(old).unwrap();
        assert!(
            long.as_batch().unwrap().start <= short_left,
            "the merge padded"
        );
        assert_eq!(long.row_len(1).unwrap(), None);
        assert!(long.row_kv(1).unwrap().is_none());
        // A row that joined whole stays whole.
        let mut fresh = KvCache::batch(&[0], window);
        update(&mut fresh, 0, 5);
        long.extend(fresh).unwrap();
        assert_eq!(long.row_len(3).unwrap(), Some(5));
    }

    #[test]
    fn rotating_cache_wraps_around_in_place() {
        let mut c = KvCache::rotating(4);
        for p in 0..4 {
            let seen = update(&mut c, p, 1);
            assert_eq!(seen, (0..=p).map(|x| x as f32).collect::<Vec<_>>());
        }
        // Past the window each new position overwrites the oldest slot.
        assert_eq!(update(&mut c, 4, 1), [4., 1., 2., 3.]);
        assert_eq!(update(&mut c, 5, 1), [4., 5., 2., 3.]);
        assert_eq!(update(&mut c, 6, 1), [4., 5., 6., 3.]);
        assert_eq!(update(&mut c, 7, 1), [4., 5., 6., 7.]);
        assert_eq!(update(&mut c, 8, 1), [8., 5., 6., 7.]);
        assert_eq!(c.offset(), Some(9));
    }

    #[test]
    fn rotating_cache_multi_token_updates_keep_a_full_window() {
        let mut c = KvCache::rotating(4);
        assert_eq!(update(&mut c, 0, 3), [0., 1., 2.]);
        // A chunk keeps max_size - 1 old positions in temporal order, then
        // the new ones, so every new query sees a full window.
        assert_eq!(update(&mut c, 3, 3), [0., 1., 2., 3., 4., 5.]);
        assert_eq!(update(&mut c, 6, 2), [3., 4., 5., 6., 7.]);
        assert_eq!(c.offset(), Some(8));
        // Back to single steps: trimmed to the window, then ring order.
        assert_eq!(update(&mut c, 8, 1), [8., 5., 6., 7.]);
        assert_eq!(update(&mut c, 9, 1), [8., 9., 6., 7.]);
    }

    #[test]
    fn rotating_masks_hide_what_left_the_window() {
        let mut c = KvCache::rotating(4);
        for p in 0..6 {
            update(&mut c, p, 1);
        }
        // A window of 4 over a buffer of 4 needs no mask for one query.
        assert!(matches!(c.make_mask(1, Some(4)).unwrap(), Mask::None));
        // A prefill of 3 past the window keeps 3 old positions: bottom-right
        // causal with the window.
        match c.make_mask(3, Some(4)).unwrap() {
            Mask::Array(m) => {
                let keep = m.to_vec::<bool>().unwrap();
                assert_eq!(keep.len(), 3 * 6);
                let row = |i: usize| keep[i * 6..(i + 1) * 6].to_vec();
                assert_eq!(row(0), [true, true, true, true, false, false]);
                assert_eq!(row(2), [false, false, true, true, true, true]);
            }
            other => panic!("expected an explicit mask, got {other:?}"),
        }
    }

    #[test]
    fn standard_cache_grows_in_steps_and_reads_what_was_written() {
        let mut c = KvCache::standard();
        assert_eq!(update(&mut c, 0, 3), [0., 1., 2.]);
        let seen = update(&mut c, 3, 300);
        assert_eq!(seen.len(), 303);
        assert_eq!(seen[302], 302.0);
        assert_eq!(c.offset(), Some(303));
        assert!(matches!(c.make_mask(1, None).unwrap(), Mask::None));
        assert!(matches!(c.make_mask(2, None).unwrap(), Mask::Causal));
    }
}
