//! Prompt prefixes whose KV caches are kept for reuse: a bounded,
//! least-recently-used list of per-row caches keyed by the tokens they
//! have read. A request whose prompt starts with a stored prefix starts
//! from a copy of that cache and prefills only the rest.
//!
//! Sliding-window layers: an entry is stored only when every layer still
//! holds the row's whole history (a window layer's batch cache drops
//! columns no row can see any more, once a step of them has left the
//! window); resuming from a whole history with the window mask applied is
//! the same computation as a fresh prefill.

use crate::nn::cache::KvCache;
use crate::{Array, Result};

/// One stored prefix: the tokens and, per layer, their keys and values
/// (`[1, heads, n, dim]`).
struct Entry {
    /// The adapter the keys and values were computed with.
    adapter: Option<usize>,
    tokens: Vec<u32>,
    layers: Vec<(Array, Array)>,
}

/// A bounded LRU of prefix caches.
pub(crate) struct PrefixCache {
    capacity: usize,
    /// Least recently used first.
    entries: Vec<Entry>,
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// Keeps at most `capacity` prefixes (0: none).
    pub fn new(capacity: usize) -> PrefixCache {
        PrefixCache {
            capacity,
            entries: Vec::new(),
        }
    }

    /// Prefixes stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The longest stored prefix of `prompt` (computed with `adapter`) that
    /// leaves at least one prompt token to run (the logits come from it):
    /// its length and the
    /// one-row batch caches that have read it (`windows`: each layer's
    /// sliding window). `None` when nothing is shared.
    pub fn lookup(
        &mut self,
        prompt: &[u32],
        adapter: Option<usize>,
        windows: &[Option<i32>],
    ) -> Result<Option<(usize, Vec<KvCache>)>> {
        let usable = prompt.len().saturating_sub(1);
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.adapter == adapter)
            .map(|(i, e)| (common_prefix(&e.tokens, prompt).min(usable), i))
            .max();
        let Some((n, i)) = best.filter(|&(n, _)| n > 0) else {
            return Ok(None);
        };
        let entry = self.entries.remove(i);
        let caches = entry
            .layers
            .iter()
            .zip(windows)
            .map(|((k, v), &window)| {
                let (k, v) = if n < entry.tokens.len() {
                    (k.slice_axis(2, 0, n as i32)?, v.slice_axis(2, 0, n as i32)?)
                } else {
                    (k.clone(), v.clone())
                };
                KvCache::batch_from_kv(k, v, window)
            })
            .collect::<Result<Vec<_>>>()?;
        self.entries.push(entry);
        Ok(Some((n, caches)))
    }

    /// Stores what row `r` of `caches` has read, whose tokens begin
    /// `tokens`, computed with `adapter`; nothing when the cache is off or a layer no longer holds
    /// the row's whole history. An entry that is a prefix of the new one is
    /// replaced by it; a new one that is a prefix of an entry only
    /// refreshes that entry.
    pub fn store(
        &mut self,
        tokens: &[u32],
        adapter: Option<usize>,
        caches: &[KvCache],
        r: usize,
    ) -> Result<()> {
        if self.capacity == 0 {
            return Ok(());
        }
        // What every layer holds of the row, before copying anything: a
        // prompt that is already stored only refreshes its entry.
        let mut n = None;
        for c in caches {
            match (c.row_len(r)?, n) {
                (None, _) => return Ok(()),
                (Some(len), Some(m)) if len != m => return Ok(()),
                (Some(len), _) => n = Some(len),
            }
        }
        let Some(n) = n else {
            return Ok(());
        };
        let n = n as usize;
        if n == 0 || n > tokens.len() {
            return Ok(());
        }
        let tokens = &tokens[..n];
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.adapter == adapter && e.tokens.len() >= n && e.tokens[..n] == *tokens)
        {
            let entry = self.entries.remove(i);
            self.entries.push(entry);
            return Ok(());
        }
        let mut layers = Vec::with_capacity(caches.len());
        for c in caches {
            match c.row_kv(r)? {
                Some(kv) => layers.push(kv),
                None => return Ok(()),
            }
        }
        self.entries.retain(|e| {
            !(e.adapter == adapter
                && e.tokens.len() < n
                && tokens[..e.tokens.len()] == e.tokens[..])
        });
        // Copied out of the batch in the background: waiting here would
        // stall the engine's step on the device (a finished row's copy
        // waits for the step in flight), and once computed the copies no
        // longer hold the batch's buffers.
        let state: Vec<&Array> = layers.iter().flat_map(|(k, v)| [k, v]).collect();
        crate::async_eval(&state)?;
        self.entries.push(Entry {
            adapter,
            tokens: tokens.to_vec(),
            layers,
        });
        while self.entries.len() > self.capacity {
            self.entries.remove(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefixes() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
