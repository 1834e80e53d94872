//! Running a stack of blocks alone, under gradient checkpointing, or
//! spread over the ranks of an MLX group: tensor parallelism (every rank
//! holds a share of each block's heads and MLP units and the ranks sum
//! the block outputs) or pipeline parallelism (every rank holds a run of
//! whole blocks and hands its hidden states to the next rank).

use std::collections::BTreeSet;
use std::ops::Range;

use crate::distributed::Group;
use crate::nn::cache::KvCache;
use crate::nn::decoder::{checkpointed, window_masks, Block};
use crate::{Array, Error, Result};

/// How a model's blocks are spread over the ranks of a group.
#[derive(Debug)]
pub enum Parallel {
    /// Every rank holds a share of every block (mlx_lm's `shard`).
    Tensor(Group),
    /// Every rank holds the blocks in `layers`, in rank order.
    Pipeline {
        /// The ranks.
        group: Group,
        /// This rank's blocks.
        layers: Range<usize>,
    },
}

/// Which kind of parallelism to set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParallelKind {
    /// Split every block's heads and MLP units.
    Tensor,
    /// Split the stack of blocks into runs.
    Pipeline,
}

/// The blocks rank `rank` of `size` runs when `layers` blocks are split
/// into contiguous runs (the first ranks take one more when they do not
/// divide).
pub fn pipeline_layers(layers: usize, rank: usize, size: usize) -> Result<Range<usize>> {
    if size == 0 || rank >= size || layers < size {
        return Err(Error::InvalidArgument(format!(
            "{layers} blocks cannot be split over {size} pipeline ranks"
        )));
    }
    let (base, extra) = (layers / size, layers % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    Ok(start..start + len)
}

/// Runs `h` through `blocks` (their caches and windows alongside),
/// honouring `parallel` and, for uncached passes, `checkpoint`.
pub fn run_blocks<B: Block>(
    blocks: &[B],
    mut h: Array,
    caches: &mut [KvCache],
    parallel: Option<&Parallel>,
    checkpoint: Option<&BTreeSet<String>>,
) -> Result<Array> {
    let n = h.dim(1)?;
    let range = match parallel {
        Some(Parallel::Pipeline { layers, .. }) => layers.clone(),
        _ => 0..blocks.len(),
    };
    // Masks from this rank's own caches (the others stay empty here).
    let masks = window_masks(
        blocks[range.clone()].iter().map(Block::window),
        &caches[range.clone()],
        n,
    )?;
    if let Some(Parallel::Pipeline { group, .. }) = parallel {
        if group.rank() > 0 {
            h = group.recv_like(&h, group.rank() - 1)?;
        }
    }
    // One position per row (decoding): the blocks take `[B, hidden]`, so
    // every matrix product reads a matrix as it is, where `[B, 1, hidden]`
    // costs each product a flatten and an unflatten operation.
    let rows = (n == 1 && checkpoint.is_none()).then(|| h.shape());
    if let Some(shape) = &rows {
        h = h.reshape(&[shape[0], shape[2]])?;
    }
    let work = blocks[range.clone()]
        .iter()
        .zip(caches[range.clone()].iter_mut())
        .zip(&masks);
    for (j, ((b, cache), mask)) in work.enumerate() {
        let i = range.start + j;
        h = match (parallel, checkpoint) {
            (Some(Parallel::Tensor(group)), _) => b.forward_parallel(&h, mask, cache, group)?,
            (None, Some(names)) if cache.is_transient() => checkpointed(b, i, &h, mask, names)?,
            _ => b.forward(&h, mask, cache)?,
        };
    }
    if let Some(shape) = &rows {
        h = h.reshape(shape)?;
    }
    if let Some(Parallel::Pipeline { group, .. }) = parallel {
        let (rank, size) = (group.rank(), group.size());
        // The last rank's states reach every rank (the others add zeros
        // that wait for their send), so all sample the same token.
        let mine = if rank + 1 < size {
            let sent = group.send(&h, rank + 1)?;
            let zeros = Array::zeros(&h.shape(), h.dtype())?;
            Array::scalar(false).select(&sent, &zeros)?
        } else {
            h
        };
        h = group.all_sum(&mine)?;
    }
    Ok(h)
}

/// Shards `blocks` over `group` as `kind` says and returns the setting to
/// run them with; `shard_block` splits one block's heads and units.
pub fn spread<B>(
    blocks: &mut [B],
    group: Group,
    kind: ParallelKind,
    shard_block: impl Fn(&mut B, i32, i32) -> Result<()>,
) -> Result<Parallel> {
    let (rank, size) = (group.rank(), group.size());
    match kind {
        ParallelKind::Tensor => {
            if size > 1 {
                for b in blocks.iter_mut() {
                    shard_block(b, rank as i32, size as i32)?;
                }
            }
            Ok(Parallel::Tensor(group))
        }
        ParallelKind::Pipeline => {
            let layers = pipeline_layers(blocks.len(), rank, size)?;
            Ok(Parallel::Pipeline { group, layers })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pipeline_layers;

    #[test]
    fn pipeline_runs_cover_the_blocks_in_order() {
        assert_eq!(pipeline_layers(28, 0, 4).unwrap(), 0..7);
        assert_eq!(pipeline_layers(28, 3, 4).unwrap(), 21..28);
        let runs: Vec<_> = (0..3).map(|r| pipeline_layers(7, r, 3).unwrap()).collect();
        assert_eq!(runs, [0..3, 3..5, 5..7]);
        assert!(pipeline_layers(2, 0, 4).is_err());
    }
}
