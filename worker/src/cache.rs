//! The per-layer key/value cache of one sequence. It grows in steps of 256 positions and is
//! written in place, as mlx-lm's `KVCache` does, so a long generation does not copy the whole
//! history on every token.
//!
//! A sliding-window layer (Gemma 3's local layers) only ever attends to its last `window`
//! positions, so its cache drops older ones whenever it grows: it holds at most
//! `window - 1 + SLACK` positions before the new ones. Unlike mlx-lm's `RotatingKVCache` it keeps
//! them in order, so a slice of it is still a valid prefix state for the prompt cache, and the
//! `SLACK` lets a later prompt that diverges near the end still reuse it.
//!
//! A recurrent layer (Qwen3.5's Gated DeltaNet) holds a fixed-size state instead, which cannot
//! be cut back to an earlier position: it keeps snapshots at the positions the scheduler marks
//! (each prefill chunk's end, so the prompt's end too), and the prompt cache serves exactly
//! those lengths.

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::{IndexOp, TryIndexMutOp};
use mlx_rs::{ops, Array};

const STEP: i32 = 256;
/// Positions a windowed cache keeps beyond what its window needs (see the module comment).
const SLACK: i32 = 256;

#[derive(Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    /// Positions seen so far: the RoPE offset of the next token.
    offset: i32,
    /// The position held at index 0 of the buffers (above 0 once a windowed cache trimmed).
    start: i32,
    /// The attention window of a sliding-window layer.
    window: Option<i32>,
}

/// A cache's contents as the prompt cache keeps them.
pub struct CacheState {
    pub keys: Array,
    pub values: Array,
    pub start: i32,
    pub window: Option<i32>,
}

impl CacheState {
    /// The shortest prefix these states can serve: a windowed layer that trimmed must still
    /// hold the `window - 1` positions before the first new token.
    pub fn min_prefix(&self) -> usize {
        match self.window {
            Some(w) if self.start > 0 => (self.start + w - 1) as usize,
            _ => 0,
        }
    }
}

/// One layer's cache, of the kind its mixer needs.
pub enum LayerCache {
    Kv(KvCache),
    Recurrent(RecurrentCache),
    /// Nothing of its own: the layer attends over an earlier layer's cache (Gemma 4's
    /// KV-shared layers) or works on each position alone (Nemotron-H's MLP and expert blocks).
    Stateless,
}

/// What the prompt cache keeps of one layer.
pub enum Saved {
    Kv(CacheState),
    /// Snapshots in position order, the last one the state at the sequence's end.
    Recurrent(Vec<Snapshot>),
    Stateless,
}

impl Saved {
    /// The shortest prefix these states can serve.
    pub fn min_prefix(&self) -> usize {
        match self {
            Saved::Kv(state) => state.min_prefix(),
            Saved::Recurrent(_) | Saved::Stateless => 0,
        }
    }

    /// Bytes of the arrays it holds.
    pub fn nbytes(&self) -> usize {
        match self {
            Saved::Kv(state) => state.keys.nbytes() + state.values.nbytes(),
            Saved::Recurrent(snaps) => snaps
                .iter()
                .map(|s| {
                    s.conv.as_ref().map_or(0, Array::nbytes)
                        + s.state.as_ref().map_or(0, Array::nbytes)
                })
                .sum(),
            Saved::Stateless => 0,
        }
    }

    /// The prefix lengths a recurrent layer can serve (None: any from `min_prefix` on).
    pub fn points(&self) -> Option<Vec<usize>> {
        match self {
            Saved::Kv(_) | Saved::Stateless => None,
            Saved::Recurrent(snaps) => Some(snaps.iter().map(|s| s.at as usize).collect()),
        }
    }
}

impl LayerCache {
    /// Positions already cached: the RoPE offset of the next token.
    pub fn offset(&self) -> i32 {
        match self {
            LayerCache::Kv(c) => c.offset(),
            LayerCache::Recurrent(c) => c.offset,
            LayerCache::Stateless => 0,
        }
    }

    /// Bytes held, a recurrent layer's snapshots included.
    pub fn nbytes(&self) -> usize {
        match self {
            LayerCache::Kv(c) => c.nbytes(),
            LayerCache::Recurrent(c) => c.nbytes(),
            LayerCache::Stateless => 0,
        }
    }

    /// The arrays to evaluate after a prefill chunk.
    pub fn state(&self) -> Box<dyn Iterator<Item = &Array> + '_> {
        match self {
            LayerCache::Kv(c) => Box::new(c.state()),
            LayerCache::Recurrent(c) => Box::new(c.conv.iter().chain(c.state.iter())),
            LayerCache::Stateless => Box::new(std::iter::empty()),
        }
    }

    /// Records the current state as one the prompt cache may serve later (recurrent layers;
    /// a key/value cache can serve any prefix anyway).
    pub fn mark(&mut self) {
        if let LayerCache::Recurrent(c) = self {
            c.mark();
        }
    }

    /// What the prompt cache keeps of this layer (None: nothing cached yet).
    pub fn saved(&self) -> Option<Saved> {
        match self {
            LayerCache::Kv(c) => c.filled().map(Saved::Kv),
            LayerCache::Recurrent(c) => {
                let mut snaps = c.snapshots.clone();
                if c.offset > 0 && snaps.last().is_none_or(|s| s.at != c.offset) {
                    snaps.push(c.snapshot());
                }
                (!snaps.is_empty()).then_some(Saved::Recurrent(snaps))
            }
            LayerCache::Stateless => Some(Saved::Stateless),
        }
    }

    /// A cache holding the first `len` positions of `saved`: any `len` from
    /// [`Saved::min_prefix`] on for keys and values, one of [`Saved::points`] for a recurrent
    /// layer (None otherwise).
    pub fn from_saved(saved: &Saved, len: usize) -> Option<Self> {
        match saved {
            Saved::Kv(state) => Some(LayerCache::Kv(KvCache::from_prefix(state, len as i32))),
            Saved::Recurrent(snaps) => {
                let snap = snaps.iter().find(|s| s.at as usize == len)?;
                Some(LayerCache::Recurrent(RecurrentCache {
                    conv: snap.conv.clone(),
                    state: snap.state.clone(),
                    offset: snap.at,
                    snapshots: vec![snap.clone()],
                }))
            }
            Saved::Stateless => Some(LayerCache::Stateless),
        }
    }

    pub(crate) fn kv(&mut self) -> Option<&mut KvCache> {
        match self {
            LayerCache::Kv(c) => Some(c),
            LayerCache::Recurrent(_) | LayerCache::Stateless => None,
        }
    }

    pub(crate) fn recurrent(&mut self) -> Option<&mut RecurrentCache> {
        match self {
            LayerCache::Recurrent(c) => Some(c),
            LayerCache::Kv(_) | LayerCache::Stateless => None,
        }
    }
}

/// Snapshots a recurrent cache keeps at most; past this every other older one goes, so they
/// stay spread over the whole prompt.
const MAX_SNAPSHOTS: usize = 8;

/// A recurrent layer's state after `offset` tokens: the last `kernel - 1` inputs of its
/// short convolution ([1, kernel - 1, channels]) and its recurrent matrices
/// ([1, heads, value_dim, key_dim], float32).
#[derive(Default, Clone)]
pub struct RecurrentCache {
    pub(crate) conv: Option<Array>,
    pub(crate) state: Option<Array>,
    pub(crate) offset: i32,
    snapshots: Vec<Snapshot>,
}

/// A recurrent layer's state at position `at`. MLX arrays are immutable and shared, so a
/// snapshot costs the memory of the state it keeps alive, and no copy.
#[derive(Clone)]
pub struct Snapshot {
    pub at: i32,
    conv: Option<Array>,
    state: Option<Array>,
}

impl Snapshot {
    /// A state read back from elsewhere (the prompt cache's disk tier).
    pub fn new(at: i32, conv: Option<Array>, state: Option<Array>) -> Self {
        Snapshot { at, conv, state }
    }

    pub fn conv(&self) -> Option<&Array> {
        self.conv.as_ref()
    }

    pub fn state(&self) -> Option<&Array> {
        self.state.as_ref()
    }
}

impl RecurrentCache {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: self.offset,
            conv: self.conv.clone(),
            state: self.state.clone(),
        }
    }

    fn mark(&mut self) {
        if self.offset == 0 || self.snapshots.last().is_some_and(|s| s.at == self.offset) {
            return;
        }
        self.snapshots.push(self.snapshot());
        if self.snapshots.len() > MAX_SNAPSHOTS {
            let last = self.snapshots.len() - 1;
            let mut i = 0;
            self.snapshots.retain(|_| {
                i += 1;
                i % 2 == 1 || i - 1 == last
            });
        }
    }

    fn nbytes(&self) -> usize {
        let bytes = |c: &Option<Array>, s: &Option<Array>| {
            c.as_ref().map_or(0, Array::nbytes) + s.as_ref().map_or(0, Array::nbytes)
        };
        let kept: usize = self
            .snapshots
            .iter()
            .filter(|s| s.at != self.offset)
            .map(|s| bytes(&s.conv, &s.state))
            .sum();
        kept + bytes(&self.conv, &self.state)
    }

    /// Advances the position after the mixer consumed `n` tokens.
    pub(crate) fn advance(&mut self, n: i32) {
        self.offset += n;
    }
}

impl KvCache {
    /// An empty cache; `window` for a sliding-window layer.
    pub fn new(window: Option<i32>) -> Self {
        KvCache {
            window,
            ..KvCache::default()
        }
    }

    /// A cache holding the first `len` positions of `state` (`len` at least
    /// [`CacheState::min_prefix`]). The slices share storage with the originals; the first append
    /// grows into a fresh buffer, so the originals are never written.
    pub fn from_prefix(state: &CacheState, len: i32) -> Self {
        let used = len - state.start;
        KvCache {
            keys: Some(state.keys.index((.., .., ..used))),
            values: Some(state.values.index((.., .., ..used))),
            offset: len,
            start: state.start,
            window: state.window,
        }
    }

    /// The cached positions, without the unused capacity.
    pub fn filled(&self) -> Option<CacheState> {
        let (keys, values) = (self.keys.as_ref()?, self.values.as_ref()?);
        let used = self.offset - self.start;
        Some(CacheState {
            keys: keys.index((.., .., ..used)),
            values: values.index((.., .., ..used)),
            start: self.start,
            window: self.window,
        })
    }

    /// Positions already cached: the RoPE offset of the next token.
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// Appends `k`/`v` ([batch, kv_heads, new, head_dim]) and returns the cached history with
    /// the position of its first entry: (keys, values, first).
    pub fn update_and_fetch(
        &mut self,
        k: &Array,
        v: &Array,
    ) -> Result<(Array, Array, i32), Exception> {
        let new = k.shape()[2];
        let used = self.offset - self.start;
        let capacity = self.keys.as_ref().map_or(0, |a| a.shape()[2]);
        if used + new > capacity {
            // A windowed layer forgets what no future token can attend to (plus the slack).
            let drop = match self.window {
                Some(w) => (self.offset - (w - 1) - SLACK - self.start).max(0),
                None => 0,
            };
            let kept = used - drop;
            let steps = (STEP + new - 1) / STEP;
            self.keys = Some(grow(self.keys.take(), k, drop, kept, steps * STEP)?);
            self.values = Some(grow(self.values.take(), v, drop, kept, steps * STEP)?);
            self.start += drop;
        }
        let at = self.offset - self.start;
        self.offset += new;
        let end = self.offset - self.start;
        let (Some(keys), Some(values)) = (self.keys.as_mut(), self.values.as_mut()) else {
            unreachable!("allocated above");
        };
        keys.try_index_mut((.., .., at..end), k)?;
        values.try_index_mut((.., .., at..end), v)?;
        Ok((
            keys.index((.., .., ..end)),
            values.index((.., .., ..end)),
            self.start,
        ))
    }

    /// Bytes held by the cache buffers.
    pub fn nbytes(&self) -> usize {
        self.keys.as_ref().map_or(0, Array::nbytes) + self.values.as_ref().map_or(0, Array::nbytes)
    }

    /// The arrays to evaluate after a prefill chunk.
    pub fn state(&self) -> impl Iterator<Item = &Array> {
        self.keys.iter().chain(self.values.iter())
    }
}

/// A buffer holding `old`'s positions `drop..drop + kept` followed by `extra` free ones.
fn grow(
    old: Option<Array>,
    like: &Array,
    drop: i32,
    kept: i32,
    extra: i32,
) -> Result<Array, Exception> {
    let s = like.shape();
    let fresh = ops::zeros_dtype(&[s[0], s[1], extra, s[3]], like.dtype())?;
    Ok(match old {
        None => fresh,
        Some(old) => {
            let old = if drop > 0 || old.shape()[2] != kept {
                old.index((.., .., drop..drop + kept))
            } else {
                old
            };
            ops::concatenate(&[old, fresh], 2)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(from: i32, n: i32) -> Array {
        let data: Vec<f32> = (from..from + n).map(|i| i as f32).collect();
        Array::from_slice(&data, &[1, 1, n, 1])
    }

    #[test]
    fn windowed_cache_trims_in_order_and_keeps_what_the_window_needs() {
        let w = 8;
        let mut c = KvCache::new(Some(w));
        let mut pos = 0;
        // Long enough to trim several times, in single steps and in chunks.
        for n in [300, 1, 1, 250, 7, 400] {
            let (k, _, first) = c
                .update_and_fetch(&positions(pos, n), &positions(pos, n))
                .unwrap();
            pos += n;
            let got = k.as_slice::<f32>();
            // In order, contiguous, ending at the newest position.
            assert_eq!(got.len() as i32, pos - first);
            assert!(got
                .iter()
                .enumerate()
                .all(|(i, &x)| x == (first + i as i32) as f32));
            // Every new token still sees its whole window.
            assert!(first <= (pos - n - (w - 1)).max(0));
        }
        assert!(c.start > 0, "the cache never trimmed");
        assert!(c.offset - c.start <= w - 1 + SLACK + 400 + STEP);
        // Its state serves prefixes from min_prefix on, and reads back the same positions.
        let state = c.filled().unwrap();
        let min = state.min_prefix() as i32;
        assert_eq!(min, state.start + w - 1);
        let mut again = KvCache::from_prefix(&state, min);
        let (k, _, first) = again
            .update_and_fetch(&positions(min, 1), &positions(min, 1))
            .unwrap();
        assert_eq!(first, state.start);
        assert_eq!(*k.as_slice::<f32>().last().unwrap(), min as f32);
    }

    #[test]
    fn full_cache_never_trims() {
        let mut c = KvCache::new(None);
        let (_, _, first) = c
            .update_and_fetch(&positions(0, 600), &positions(0, 600))
            .unwrap();
        assert_eq!(first, 0);
        let (k, _, first) = c
            .update_and_fetch(&positions(600, 1), &positions(600, 1))
            .unwrap();
        assert_eq!((first, k.shape()[2]), (0, 601));
        assert_eq!(c.filled().unwrap().min_prefix(), 0);
    }
}
