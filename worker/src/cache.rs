//! The per-layer key/value cache of one sequence. It grows in steps of 256 positions and is
//! written in place, as mlx-lm's `KVCache` does, so a long generation does not copy the whole
//! history on every token.

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::{IndexOp, TryIndexMutOp};
use mlx_rs::{ops, Array};

const STEP: i32 = 256;

#[derive(Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    offset: i32,
}

impl KvCache {
    /// A cache holding the first `len` positions of `keys`/`values` ([1, kv_heads, n,
    /// head_dim], n >= len). The slices share storage with the originals; the first append
    /// grows into a fresh buffer, so the originals are never written.
    pub fn from_prefix(keys: &Array, values: &Array, len: i32) -> Self {
        KvCache {
            keys: Some(keys.index((.., .., ..len))),
            values: Some(values.index((.., .., ..len))),
            offset: len,
        }
    }

    /// The cached positions as (keys, values), without the unused capacity.
    pub fn filled(&self) -> Option<(Array, Array)> {
        let (keys, values) = (self.keys.as_ref()?, self.values.as_ref()?);
        Some((
            keys.index((.., .., ..self.offset)),
            values.index((.., .., ..self.offset)),
        ))
    }

    /// Positions already cached: the RoPE offset of the next token.
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// Appends `k`/`v` ([batch, kv_heads, new, head_dim]) and returns the whole cached history.
    pub fn update_and_fetch(&mut self, k: &Array, v: &Array) -> Result<(Array, Array), Exception> {
        let prev = self.offset;
        let new = k.shape()[2];
        let capacity = self.keys.as_ref().map_or(0, |a| a.shape()[2]);
        if prev + new > capacity {
            let steps = (STEP + new - 1) / STEP;
            self.keys = Some(grow(self.keys.take(), k, prev, steps * STEP)?);
            self.values = Some(grow(self.values.take(), v, prev, steps * STEP)?);
        }
        self.offset += new;
        let (Some(keys), Some(values)) = (self.keys.as_mut(), self.values.as_mut()) else {
            unreachable!("allocated above");
        };
        keys.try_index_mut((.., .., prev..self.offset), k)?;
        values.try_index_mut((.., .., prev..self.offset), v)?;
        Ok((
            keys.index((.., .., ..self.offset)),
            values.index((.., .., ..self.offset)),
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

/// A buffer with `extra` more positions than `old` holds up to `used`.
fn grow(old: Option<Array>, like: &Array, used: i32, extra: i32) -> Result<Array, Exception> {
    let s = like.shape();
    let fresh = ops::zeros_dtype(&[s[0], s[1], extra, s[3]], like.dtype())?;
    Ok(match old {
        None => fresh,
        Some(old) => {
            let old = if old.shape()[2] != used {
                old.index((.., .., ..used))
            } else {
                old
            };
            ops::concatenate(&[old, fresh], 2)?
        }
    })
}
