//! The prompt (prefix) cache: key/value states of finished sequences, kept so that a request
//! whose prompt starts with the same tokens (a multi-turn chat resending its history, a shared
//! system prompt) skips recomputing them. Bounded by a byte budget, least recently used first
//! out. Key/value states serve any prefix of what they hold; a model with recurrent layers is
//! served only at the positions where those kept snapshots (see `cache`).

use crate::cache::{LayerCache, Saved};
use crate::disk_cache::DiskTier;

/// One finished sequence's states: `tokens[i]` produced position i of every layer's cache.
struct Entry {
    tokens: Vec<u32>,
    layers: Vec<Saved>,
    /// The shortest prefix the states can serve (sliding-window layers forget old positions).
    min_prefix: usize,
    /// The only prefix lengths it can serve, ascending, when recurrent layers hold snapshots.
    points: Option<Vec<usize>>,
    bytes: usize,
}

impl Entry {
    /// The longest prefix of at most `len` tokens that the states can serve, if any.
    fn servable(&self, len: usize) -> Option<usize> {
        let best = match &self.points {
            None => len,
            Some(points) => *points.iter().rev().find(|&&p| p <= len)?,
        };
        (best > 0 && best >= self.min_prefix).then_some(best)
    }
}

pub struct PrefixCache {
    /// Least recently used first.
    entries: Vec<Entry>,
    budget: usize,
    used: usize,
    /// Requests that reused at least one cached token, and the tokens they reused.
    pub hits: u64,
    pub hit_tokens: u64,
    /// Entries also written to disk, read back when memory lacks a prefix.
    disk: Option<DiskTier>,
}

impl PrefixCache {
    /// A cache holding at most `budget` bytes; 0 turns it off.
    pub fn new(budget: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            budget,
            used: 0,
            hits: 0,
            hit_tokens: 0,
            disk: None,
        }
    }

    /// Lets the disk tier finish its queued writes.
    pub fn finish_disk(&mut self) {
        if let Some(d) = &mut self.disk {
            d.finish();
        }
    }

    /// Adds a disk tier behind the memory one.
    pub fn set_disk(&mut self, disk: DiskTier) {
        self.disk = Some(disk);
    }

    pub fn bytes(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Caches for a new sequence with `prompt`, filled with the longest cached prefix, and its
    /// length. At least the prompt's last token is left to compute: its logits are the first
    /// decode step's.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(Vec<LayerCache>, usize)> {
        let limit = prompt.len().saturating_sub(1);
        if let Some(hit) = self.lookup_disk(prompt, limit) {
            return Some(hit);
        }
        let (best, len) = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                Some((i, e.servable(common_prefix(&e.tokens, prompt).min(limit))?))
            })
            .max_by_key(|&(i, len)| (len, i))?;
        let entry = self.entries.remove(best);
        let caches = entry
            .layers
            .iter()
            .map(|saved| LayerCache::from_saved(saved, len))
            .collect::<Option<Vec<_>>>();
        let Some(caches) = caches else {
            // Unreachable by `servable`; an unusable entry is dropped rather than served.
            self.used -= entry.bytes;
            return None;
        };
        self.entries.push(entry);
        self.hits += 1;
        self.hit_tokens += len as u64;
        Some((caches, len))
    }

    /// Caches from disk, when an entry there serves a longer prefix than memory does. The
    /// entry is kept in memory too if it fits; served either way, since one too large for the
    /// memory tier (a long prompt of a large model) is exactly what the disk tier is for.
    fn lookup_disk(&mut self, prompt: &[u32], limit: usize) -> Option<(Vec<LayerCache>, usize)> {
        let disk = self.disk.as_mut()?;
        let on_disk = disk.best(prompt, limit)?;
        let in_memory = self
            .entries
            .iter()
            .filter_map(|e| e.servable(common_prefix(&e.tokens, prompt).min(limit)))
            .max()
            .unwrap_or(0);
        if on_disk <= in_memory {
            return None;
        }
        let loaded = disk.load(prompt, limit)?;
        let (min_prefix, points) = limits(&loaded.layers);
        let entry = Entry {
            bytes: loaded.layers.iter().map(Saved::nbytes).sum(),
            tokens: loaded.tokens,
            layers: loaded.layers,
            min_prefix,
            points,
        };
        let len = entry.servable(common_prefix(&entry.tokens, prompt).min(limit))?;
        let caches = entry
            .layers
            .iter()
            .map(|saved| LayerCache::from_saved(saved, len))
            .collect::<Option<Vec<_>>>()?;
        self.hits += 1;
        self.hit_tokens += len as u64;
        self.keep(entry.tokens, entry.layers, entry.bytes);
        Some((caches, len))
    }

    /// Keeps a finished sequence's states. `tokens` are the tokens fed to the model, at least
    /// as many as the caches hold; the caches' own length decides how many are kept. With a
    /// disk tier, they are written there too.
    pub fn insert(&mut self, tokens: &[u32], caches: &[LayerCache]) {
        // A layer without state of its own reports no length: the others say how far it went.
        let Some(len) = caches.iter().map(|c| c.offset() as usize).max() else {
            return;
        };
        if len == 0 || len > tokens.len() {
            return;
        }
        let layers: Option<Vec<_>> = caches.iter().map(LayerCache::saved).collect();
        let Some(layers) = layers else { return };
        // The buffers behind the slices stay alive, so they are what the budget counts.
        let bytes = caches.iter().map(LayerCache::nbytes).sum();
        let tokens = tokens[..len].to_vec();
        if let Some(disk) = &mut self.disk {
            let (min_prefix, points) = limits(&layers);
            disk.store(&tokens, &layers, min_prefix, points);
        }
        self.keep(tokens, layers, bytes);
    }

    /// Adds an entry to the memory tier, dropping those it makes redundant and then the least
    /// recently used until it fits.
    fn keep(&mut self, tokens: Vec<u32>, layers: Vec<Saved>, bytes: usize) {
        if bytes > self.budget {
            return;
        }
        let (min_prefix, points) = limits(&layers);
        // An entry that the new one extends (or repeats) is redundant.
        self.entries.retain(|e| {
            // Recurrent states serve only their snapshots: the old entry must hold no
            // position the new one lacks.
            let covered = match (&e.points, &points) {
                (Some(old), Some(new)) => old.iter().all(|p| new.contains(p)),
                _ => true,
            };
            let redundant = covered && common_prefix(&e.tokens, &tokens) == e.tokens.len();
            if redundant {
                self.used -= e.bytes;
            }
            !redundant
        });
        while self.used + bytes > self.budget && !self.entries.is_empty() {
            let old = self.entries.remove(0);
            self.used -= old.bytes;
        }
        self.used += bytes;
        self.entries.push(Entry {
            tokens,
            layers,
            min_prefix,
            points,
            bytes,
        });
    }
}

/// The shortest prefix the layers serve and, with recurrent layers, the only lengths they do.
fn limits(layers: &[Saved]) -> (usize, Option<Vec<usize>>) {
    let min_prefix = layers.iter().map(Saved::min_prefix).max().unwrap_or(0);
    // Every recurrent layer is marked at the same positions; keep those all of them have.
    let points = layers
        .iter()
        .filter_map(Saved::points)
        .reduce(|a, b| a.into_iter().filter(|p| b.contains(p)).collect());
    (min_prefix, points)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::KvCache;
    use mlx_rs::ops::indexing::IndexOp;
    use mlx_rs::Array;

    /// One layer's cache with `n` positions whose values are the position numbers.
    fn caches(n: i32) -> Vec<LayerCache> {
        let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let k = Array::from_slice(&data, &[1, 1, n, 1]);
        let mut c = KvCache::default();
        c.update_and_fetch(&k, &k).unwrap();
        vec![LayerCache::Kv(c)]
    }

    fn kv(c: &mut LayerCache) -> &mut KvCache {
        c.kv().expect("a key/value cache")
    }

    #[test]
    fn trimmed_window_states_serve_only_prefixes_they_still_cover() {
        let (w, n) = (4, 700);
        let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let k = Array::from_slice(&data, &[1, 1, n, 1]);
        let mut c = KvCache::new(Some(w));
        c.update_and_fetch(&k.index((.., .., ..300)), &k.index((.., .., ..300)))
            .unwrap();
        c.update_and_fetch(&k.index((.., .., 300..)), &k.index((.., .., 300..)))
            .unwrap();
        let min = c.filled().unwrap().min_prefix();
        assert!(min > 0, "the window layer never trimmed");
        let tokens: Vec<u32> = (0..n as u32).collect();
        let mut pc = PrefixCache::new(1 << 30);
        pc.insert(&tokens, &[LayerCache::Kv(c)]);
        // A prompt that diverges after the kept range can reuse it...
        let mut prompt = tokens[..min + 10].to_vec();
        prompt.push(9999);
        assert_eq!(pc.lookup(&prompt).map(|(_, len)| len), Some(min + 10));
        // ...one that diverges before it cannot.
        let mut early = tokens[..min - 1].to_vec();
        early.push(9999);
        assert!(pc.lookup(&early).is_none());
    }

    /// An entry too large for the memory tier is still written to disk, and served from there
    /// by a later worker.
    #[test]
    fn the_disk_tier_serves_what_memory_cannot_hold() {
        let root = tempfile::tempdir().unwrap();
        let n = crate::disk_cache::MIN_TOKENS as i32 + 10;
        let tokens: Vec<u32> = (0..n as u32).collect();
        let open = || crate::disk_cache::DiskTier::open(root.path(), "m", 1 << 30).unwrap();
        let mut pc = PrefixCache::new(1);
        pc.set_disk(open());
        pc.insert(&tokens, &caches(n));
        assert!(pc.is_empty(), "too large for memory");
        pc.finish_disk();

        let mut pc = PrefixCache::new(1);
        pc.set_disk(open());
        let mut prompt = tokens.clone();
        prompt.push(9999);
        let (mut c, len) = pc.lookup(&prompt).expect("served from disk");
        assert_eq!((len, c[0].offset() as usize), (n as usize, n as usize));
        let state = kv(&mut c[0]).filled().unwrap();
        let last: f32 = state.keys.index((.., .., -1, ..)).item_exact();
        assert_eq!(last, (n - 1) as f32);
        assert_eq!((pc.hits, pc.hit_tokens), (1, n as u64));
    }

    #[test]
    fn longest_prefix_wins_and_leaves_one_token() {
        let mut pc = PrefixCache::new(1 << 30);
        pc.insert(&[1, 2, 3, 4, 5], &caches(5));
        pc.insert(&[1, 2, 9], &caches(3));
        let (c, len) = pc.lookup(&[1, 2, 3, 4, 7, 8]).unwrap();
        assert_eq!(len, 4);
        assert_eq!(c[0].offset(), 4);
        // The whole entry matches but the last prompt token must still be computed.
        let (_, len) = pc.lookup(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(len, 4);
        assert!(pc.lookup(&[7, 1, 2]).is_none());
        assert_eq!((pc.hits, pc.hit_tokens), (2, 8));
    }

    #[test]
    fn reused_states_are_the_cached_ones_and_stay_unwritten() {
        let mut pc = PrefixCache::new(1 << 30);
        pc.insert(&[1, 2, 3, 4], &caches(4));
        let (mut c, len) = pc.lookup(&[1, 2, 3, 6, 6]).unwrap();
        assert_eq!(len, 3);
        let new = Array::from_slice(&[100.0f32], &[1, 1, 1, 1]);
        let (k, _, _) = kv(&mut c[0]).update_and_fetch(&new, &new).unwrap();
        assert_eq!(k.as_slice::<f32>(), [0.0, 1.0, 2.0, 100.0]);
        // The entry still holds position 3 as it was.
        let (mut c2, _) = pc.lookup(&[1, 2, 3, 4, 9]).unwrap();
        let k2 = c2[0].kv().unwrap().filled().unwrap().keys;
        assert_eq!(k2.as_slice::<f32>(), [0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn budget_evicts_least_recently_used_and_drops_superseded() {
        let one = caches(4).iter().map(LayerCache::nbytes).sum::<usize>();
        let mut pc = PrefixCache::new(2 * one);
        pc.insert(&[1, 1, 1, 1], &caches(4));
        pc.insert(&[2, 2, 2, 2], &caches(4));
        assert!(pc.lookup(&[1, 1, 1, 1, 0]).is_some()); // [1..] is now the most recent
        pc.insert(&[3, 3, 3, 3], &caches(4));
        assert_eq!(pc.len(), 2);
        assert!(pc.lookup(&[2, 2, 2, 2, 0]).is_none());
        assert!(pc.lookup(&[1, 1, 1, 1, 0]).is_some());
        assert!(pc.bytes() <= 2 * one);
        // Extending an entry replaces it.
        pc.insert(&[3, 3, 3, 3, 3], &caches(5));
        assert!(pc.len() <= 2);
        assert_eq!(pc.lookup(&[3, 3, 3, 3, 3, 3]).map(|(_, n)| n), Some(5));
        // Off: nothing is kept.
        let mut off = PrefixCache::new(0);
        off.insert(&[1, 2], &caches(2));
        assert!(off.is_empty());
    }

    /// A recurrent layer whose state is its position, marked at 3 and 6 and ended at 8,
    /// beside a key/value layer: served at exactly the marked lengths, with their states.
    #[test]
    fn recurrent_states_serve_only_their_snapshots() {
        use crate::cache::RecurrentCache;
        let mut rec = LayerCache::Recurrent(RecurrentCache::default());
        for n in [3, 3, 2] {
            let r = rec.recurrent().unwrap();
            r.advance(n);
            r.state = Some(Array::from_int(r.offset));
            rec.mark();
        }
        let tokens: Vec<u32> = (0..8).collect();
        let mut pc = PrefixCache::new(1 << 30);
        pc.insert(&tokens, &[caches(8).remove(0), rec]);
        let state_at = |c: &mut Vec<LayerCache>| {
            let r = c[1].recurrent().unwrap();
            (r.offset, r.state.as_ref().unwrap().item_exact::<i32>())
        };
        // Diverging after 7 tokens: the snapshot at 6 is the longest usable.
        let mut prompt = tokens[..7].to_vec();
        prompt.push(99);
        let (mut c, len) = pc.lookup(&prompt).unwrap();
        assert_eq!((len, c[0].offset()), (6, 6));
        assert_eq!(state_at(&mut c), (6, 6));
        // The whole sequence resent and extended: its end state.
        let mut longer = tokens.clone();
        longer.extend([1, 2]);
        let (mut c, len) = pc.lookup(&longer).unwrap();
        assert_eq!((len, state_at(&mut c)), (8, (8, 8)));
        // Diverging before the first snapshot: nothing to serve.
        assert!(pc.lookup(&[0, 1, 7, 7]).is_none());
    }
}
