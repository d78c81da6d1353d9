//! The prompt cache's disk tier: finished sequences' states written to a folder, so that a new
//! worker for the same model (after an unload, an idle-TTL eviction, a crash restart or a
//! daemon restart) starts a long shared prompt from disk instead of recomputing it.
//!
//! One entry is two files named by a hash of its tokens: `<stem>.safetensors` (every layer's
//! arrays) and `<stem>.json` (the tokens, what each layer holds, which prefixes it serves),
//! the second written last so that a half-written entry is never read. The folder is per model
//! fingerprint (config, weight files, load options), so a changed model never meets an old
//! cache. Arrays are copied to host memory on the worker's loop; a background thread writes
//! the files and keeps the folder under its byte budget, least recently used first. Unreadable
//! or foreign entries are removed when met.

use std::fs;
use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::SystemTime;

use mlx_rs::{Array, Dtype};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheState, Saved, Snapshot};

/// Bumped when the files' layout changes; other versions are removed.
const VERSION: u32 = 1;
/// Shorter prompts recompute in about the time reading them back would take.
pub const MIN_TOKENS: usize = 256;

/// An entry's description (`<stem>.json`).
#[derive(Serialize, Deserialize)]
struct Meta {
    version: u32,
    tokens: Vec<u32>,
    min_prefix: usize,
    points: Option<Vec<usize>>,
    layers: Vec<LayerMeta>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum LayerMeta {
    Kv { start: i32, window: Option<i32> },
    Recurrent { snapshots: Vec<SnapMeta> },
    Stateless,
}

#[derive(Serialize, Deserialize)]
struct SnapMeta {
    at: i32,
    conv: bool,
    state: bool,
}

/// One array's bytes, as the writer thread stores it.
struct HostTensor {
    name: String,
    dtype: &'static str,
    shape: Vec<i32>,
    data: Vec<u8>,
}

enum Job {
    Write {
        stem: String,
        meta: String,
        tensors: Vec<HostTensor>,
    },
    Remove {
        stem: String,
    },
}

/// An entry on disk, as the index knows it.
struct Indexed {
    stem: String,
    tokens: Vec<u32>,
    min_prefix: usize,
    points: Option<Vec<usize>>,
}

impl Indexed {
    /// The longest prefix of at most `len` tokens it can serve (as the memory tier's entries).
    fn servable(&self, len: usize) -> Option<usize> {
        let best = match &self.points {
            None => len,
            Some(points) => *points.iter().rev().find(|&&p| p <= len)?,
        };
        (best > 0 && best >= self.min_prefix).then_some(best)
    }
}

/// What a disk entry holds once read back.
pub struct Loaded {
    pub tokens: Vec<u32>,
    pub layers: Vec<Saved>,
}

pub struct DiskTier {
    dir: PathBuf,
    budget: u64,
    index: Vec<Indexed>,
    /// None once `finish` has run.
    writer: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Entries read back and written, for the worker's stats.
    pub reads: u64,
    pub writes: u64,
}

impl DiskTier {
    /// The tier for the model `fingerprint` under `root`, holding at most `budget` bytes.
    pub fn open(root: &Path, fingerprint: &str, budget: u64) -> std::io::Result<Self> {
        let dir = root.join(fingerprint);
        fs::create_dir_all(&dir)?;
        let mut index = Vec::new();
        for entry in fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                match read_meta(&path) {
                    Some(meta) if meta.version == VERSION => index.push(Indexed {
                        stem: stem_of(&path),
                        tokens: meta.tokens,
                        min_prefix: meta.min_prefix,
                        points: meta.points,
                    }),
                    _ => remove(&dir, &stem_of(&path)),
                }
            } else if path.extension().is_some_and(|e| e == "tmp") {
                // Left by a worker that died while writing.
                let _ = fs::remove_file(&path);
            }
        }
        let (writer, jobs) = mpsc::channel();
        let folder = dir.clone();
        let thread = std::thread::Builder::new()
            .name("prompt-cache-disk".into())
            .spawn(move || write_loop(&folder, budget, jobs))?;
        Ok(DiskTier {
            dir,
            budget,
            index,
            writer: Some(writer),
            thread: Some(thread),
            reads: 0,
            writes: 0,
        })
    }

    /// Finishes the writes queued so far (before the worker exits).
    pub fn finish(&mut self) {
        self.writer = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn send(&self, job: Job) {
        if let Some(w) = &self.writer {
            // A writer that died (a full disk, say) only costs the disk tier.
            let _ = w.send(job);
        }
    }

    /// The longest prefix of `prompt` (at most `limit` tokens) that an entry on disk serves.
    pub fn best(&self, prompt: &[u32], limit: usize) -> Option<usize> {
        self.index
            .iter()
            .filter_map(|e| e.servable(common_prefix(&e.tokens, prompt).min(limit)))
            .max()
    }

    /// Reads back the entry that serves the longest prefix of `prompt` (at most `limit`
    /// tokens); an unreadable one is removed and the next best tried. One still being written
    /// (no description yet) is passed over, not removed.
    pub fn load(&mut self, prompt: &[u32], limit: usize) -> Option<Loaded> {
        let mut candidates: Vec<(usize, String)> = self
            .index
            .iter()
            .filter_map(|e| {
                let len = e.servable(common_prefix(&e.tokens, prompt).min(limit))?;
                Some((len, e.stem.clone()))
            })
            .collect();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (_, stem) in candidates {
            if !self.dir.join(format!("{stem}.json")).exists() {
                continue;
            }
            if let Some(loaded) = self.read(&stem) {
                self.reads += 1;
                touch(&self.dir.join(format!("{stem}.safetensors")));
                return Some(loaded);
            }
            self.index.retain(|e| e.stem != stem);
            self.send(Job::Remove { stem });
        }
        None
    }

    fn read(&self, stem: &str) -> Option<Loaded> {
        let meta = read_meta(&self.dir.join(format!("{stem}.json")))?;
        let mut arrays =
            Array::load_safetensors(self.dir.join(format!("{stem}.safetensors"))).ok()?;
        let mut take = |name: String| arrays.remove(&name);
        let mut layers = Vec::with_capacity(meta.layers.len());
        for (i, layer) in meta.layers.iter().enumerate() {
            layers.push(match layer {
                LayerMeta::Kv { start, window } => Saved::Kv(CacheState {
                    keys: take(format!("{i}.k"))?,
                    values: take(format!("{i}.v"))?,
                    start: *start,
                    window: *window,
                }),
                LayerMeta::Recurrent { snapshots } => {
                    let mut snaps = Vec::with_capacity(snapshots.len());
                    for (j, s) in snapshots.iter().enumerate() {
                        let conv = if s.conv {
                            Some(take(format!("{i}.{j}.conv"))?)
                        } else {
                            None
                        };
                        let state = if s.state {
                            Some(take(format!("{i}.{j}.state"))?)
                        } else {
                            None
                        };
                        snaps.push(Snapshot::new(s.at, conv, state));
                    }
                    Saved::Recurrent(snaps)
                }
                LayerMeta::Stateless => Saved::Stateless,
            });
        }
        Some(Loaded {
            tokens: meta.tokens,
            layers,
        })
    }

    /// Writes a finished sequence's states in the background (the arrays are copied to host
    /// memory here). Entries it extends are removed.
    pub fn store(
        &mut self,
        tokens: &[u32],
        layers: &[Saved],
        min_prefix: usize,
        points: Option<Vec<usize>>,
    ) {
        if tokens.len() < MIN_TOKENS {
            return;
        }
        let stem = format!("{:016x}", hash_tokens(tokens));
        // The same prompt again (a resent request): already on disk.
        if let Some(e) = self
            .index
            .iter()
            .find(|e| e.stem == stem && e.tokens == tokens)
        {
            touch(&self.dir.join(format!("{}.safetensors", e.stem)));
            return;
        }
        let Some((meta, tensors)) = to_host(tokens, layers, min_prefix, points.clone()) else {
            return;
        };
        let bytes: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();
        if bytes > self.budget {
            return;
        }
        // The same rule as the memory tier: an entry the new one extends is redundant.
        let mut removed = Vec::new();
        self.index.retain(|e| {
            let covered = match (&e.points, &points) {
                (Some(old), Some(new)) => old.iter().all(|p| new.contains(p)),
                _ => true,
            };
            let redundant = covered && common_prefix(&e.tokens, tokens) == e.tokens.len();
            if redundant && e.stem != stem {
                removed.push(e.stem.clone());
            }
            !redundant
        });
        for stem in removed {
            self.send(Job::Remove { stem });
        }
        self.index.push(Indexed {
            stem: stem.clone(),
            tokens: tokens.to_vec(),
            min_prefix,
            points,
        });
        self.writes += 1;
        self.send(Job::Write {
            stem,
            meta,
            tensors,
        });
    }
}

/// The entry's description and every array's bytes.
fn to_host(
    tokens: &[u32],
    layers: &[Saved],
    min_prefix: usize,
    points: Option<Vec<usize>>,
) -> Option<(String, Vec<HostTensor>)> {
    let mut tensors = Vec::new();
    let mut metas = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        metas.push(match layer {
            Saved::Kv(state) => {
                tensors.push(host(format!("{i}.k"), &state.keys)?);
                tensors.push(host(format!("{i}.v"), &state.values)?);
                LayerMeta::Kv {
                    start: state.start,
                    window: state.window,
                }
            }
            Saved::Recurrent(snaps) => {
                let mut metas = Vec::with_capacity(snaps.len());
                for (j, s) in snaps.iter().enumerate() {
                    if let Some(conv) = s.conv() {
                        tensors.push(host(format!("{i}.{j}.conv"), conv)?);
                    }
                    if let Some(state) = s.state() {
                        tensors.push(host(format!("{i}.{j}.state"), state)?);
                    }
                    metas.push(SnapMeta {
                        at: s.at,
                        conv: s.conv().is_some(),
                        state: s.state().is_some(),
                    });
                }
                LayerMeta::Recurrent { snapshots: metas }
            }
            Saved::Stateless => LayerMeta::Stateless,
        });
    }
    let meta = Meta {
        version: VERSION,
        tokens: tokens.to_vec(),
        min_prefix,
        points,
        layers: metas,
    };
    Some((serde_json::to_string(&meta).ok()?, tensors))
}

/// `a`'s bytes in row-major order (a cache slice is copied out of its larger buffer first).
fn host(name: String, a: &Array) -> Option<HostTensor> {
    let dtype = match a.dtype() {
        Dtype::Float32 => "F32",
        Dtype::Bfloat16 => "BF16",
        Dtype::Float16 => "F16",
        _ => return None,
    };
    let bytes = a.contiguous().ok()?.view::<u8>().ok()?;
    bytes.eval().ok()?;
    let data = bytes.try_as_slice::<u8>().ok()?.to_vec();
    Some(HostTensor {
        name,
        dtype,
        shape: a.shape().to_vec(),
        data,
    })
}

fn write_loop(dir: &Path, budget: u64, jobs: mpsc::Receiver<Job>) {
    for job in jobs {
        match job {
            Job::Write {
                stem,
                meta,
                tensors,
            } => {
                let written = write_safetensors(&dir.join(format!("{stem}.safetensors")), &tensors)
                    .and_then(|()| {
                        write_atomic(&dir.join(format!("{stem}.json")), meta.as_bytes())
                    });
                if written.is_err() {
                    remove(dir, &stem);
                }
                evict(dir, budget);
            }
            Job::Remove { stem } => remove(dir, &stem),
        }
    }
}

/// A safetensors file of `tensors`, written beside its final name and renamed into place.
fn write_safetensors(path: &Path, tensors: &[HostTensor]) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for t in tensors {
        let end = at + t.data.len();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [at, end]}),
        );
        at = end;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    // The format asks for the data to start 8-byte aligned.
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + at);
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text.as_bytes());
    for t in tensors {
        out.extend(&t.data);
    }
    write_atomic(path, &out)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Removes the least recently used entries until the folder holds at most `budget` bytes.
fn evict(dir: &Path, budget: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, u64, String)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), stem_of(&e.path())))
        })
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    for (_, len, stem) in files {
        if total <= budget {
            break;
        }
        remove(dir, &stem);
        total -= len;
    }
}

fn remove(dir: &Path, stem: &str) {
    // The description first: without it the arrays are never read.
    let _ = fs::remove_file(dir.join(format!("{stem}.json")));
    let _ = fs::remove_file(dir.join(format!("{stem}.safetensors")));
}

/// Marks an entry recently used.
fn touch(path: &Path) {
    if let Ok(f) = fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn read_meta(path: &Path) -> Option<Meta> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn stem_of(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// FNV-1a: stable across builds, unlike std's hasher, so names and fingerprints persist.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn fnv() -> Fnv {
    Fnv(0xcbf2_9ce4_8422_2325)
}

fn hash_tokens(tokens: &[u32]) -> u64 {
    let mut h = fnv();
    for t in tokens {
        h.write(&t.to_le_bytes());
    }
    h.finish()
}

/// What identifies a model's caches: its config, its weight files (names, sizes, times) and
/// the load options (which decide the cache's dtype).
pub fn fingerprint(dir: &Path, options: &str) -> String {
    let mut h = fnv();
    h.write(&VERSION.to_le_bytes());
    h.write(options.as_bytes());
    h.write(&fs::read(dir.join("config.json")).unwrap_or_default());
    let mut files: Vec<_> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for path in files {
        if path.extension().is_some_and(|e| e == "safetensors") {
            h.write(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            if let Ok(m) = fs::metadata(&path) {
                h.write(&m.len().to_le_bytes());
                let secs = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                h.write(&secs.to_le_bytes());
            }
        }
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{KvCache, LayerCache, RecurrentCache};

    fn values(n: i32, dtype: Dtype) -> Array {
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        Array::from_slice(&data, &[1, 1, n, 1])
            .as_dtype(dtype)
            .unwrap()
    }

    fn same(a: &Array, b: &Array) -> bool {
        a.shape() == b.shape() && a.dtype() == b.dtype() && a.eq_values(b).unwrap()
    }

    /// Keys and values (float32 and bfloat16), a recurrent layer's snapshots and a layer
    /// without state, written and read back by a new tier as they were.
    #[test]
    fn entries_round_trip_through_a_new_tier() {
        let root = tempfile::tempdir().unwrap();
        let n = MIN_TOKENS as i32 + 4;
        let mut kv = KvCache::new(None);
        kv.update_and_fetch(&values(n, Dtype::Float32), &values(n, Dtype::Float32))
            .unwrap();
        let mut kv16 = KvCache::new(None);
        kv16.update_and_fetch(&values(n, Dtype::Bfloat16), &values(n, Dtype::Bfloat16))
            .unwrap();
        let mut first = RecurrentCache::default();
        first.conv = Some(values(3, Dtype::Float32));
        first.state = Some(values(8, Dtype::Float32));
        first.offset = 100;
        let mut rec = LayerCache::Recurrent(first);
        rec.mark();
        if let Some(r) = rec.recurrent() {
            r.offset = n;
            r.state = Some(
                values(8, Dtype::Float32)
                    .multiply(Array::from_f32(2.0))
                    .unwrap(),
            );
        }
        let caches = [
            LayerCache::Kv(kv),
            LayerCache::Kv(kv16),
            rec,
            LayerCache::Stateless,
        ];
        let layers: Vec<Saved> = caches.iter().map(|c| c.saved().unwrap()).collect();
        let tokens: Vec<u32> = (0..n as u32).collect();
        let mut tier = DiskTier::open(root.path(), "model", 1 << 30).unwrap();
        tier.store(&tokens, &layers, 0, Some(vec![100, n as usize]));
        tier.finish();

        let mut tier = DiskTier::open(root.path(), "model", 1 << 30).unwrap();
        let mut prompt = tokens.clone();
        prompt.push(7);
        // Only the recurrent layer's snapshot positions are servable.
        assert_eq!(tier.best(&prompt, prompt.len() - 1), Some(n as usize));
        assert_eq!(tier.best(&tokens[..150], 149), Some(100));
        let loaded = tier.load(&prompt, prompt.len() - 1).expect("read back");
        assert_eq!(loaded.tokens, tokens);
        for (a, b) in layers.iter().zip(&loaded.layers) {
            match (a, b) {
                (Saved::Kv(a), Saved::Kv(b)) => {
                    assert_eq!(a.keys.dtype(), b.keys.dtype());
                    assert!(same(&a.keys, &b.keys) && same(&a.values, &b.values));
                    assert_eq!((a.start, a.window), (b.start, b.window));
                }
                (Saved::Recurrent(a), Saved::Recurrent(b)) => {
                    let ats: Vec<i32> = b.iter().map(|s| s.at).collect();
                    assert_eq!(ats, [100, n]);
                    for (x, y) in a.iter().zip(b) {
                        let (cx, cy) = (x.conv().unwrap(), y.conv().unwrap());
                        let (sx, sy) = (x.state().unwrap(), y.state().unwrap());
                        assert!(same(cx, cy) && same(sx, sy));
                    }
                }
                (Saved::Stateless, Saved::Stateless) => {}
                _ => panic!("a layer changed kind"),
            }
        }
        assert_eq!(tier.reads, 1);
    }

    /// A short prompt is not written; an entry the next one extends is replaced; a corrupt
    /// one is removed when met; over budget, the oldest goes.
    #[test]
    fn the_folder_keeps_what_serves_and_fits() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("m");
        let saved = |n: i32| {
            let mut kv = KvCache::new(None);
            kv.update_and_fetch(&values(n, Dtype::Float32), &values(n, Dtype::Float32))
                .unwrap();
            vec![LayerCache::Kv(kv).saved().unwrap()]
        };
        let files = |ext: &str| {
            fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .count()
        };
        let tokens: Vec<u32> = (0..600).collect();
        let mut tier = DiskTier::open(root.path(), "m", 1 << 30).unwrap();
        tier.store(&tokens[..10], &saved(10), 0, None);
        tier.store(&tokens[..300], &saved(300), 0, None);
        tier.store(&tokens[..400], &saved(400), 0, None);
        tier.finish();
        assert_eq!(
            (files("json"), files("safetensors")),
            (1, 1),
            "extended entry replaced"
        );

        for e in fs::read_dir(&dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "safetensors") {
                fs::write(e.path(), b"garbage").unwrap();
            }
        }
        let mut tier = DiskTier::open(root.path(), "m", 1 << 30).unwrap();
        assert!(tier.load(&tokens, 599).is_none());
        tier.finish();
        assert_eq!(files("json"), 0, "the corrupt entry is gone");

        // Two entries of 400 positions (2 x 1600 bytes each) under a 5000-byte budget.
        let mut tier = DiskTier::open(root.path(), "m", 5000).unwrap();
        let other: Vec<u32> = (1000..1400).collect();
        tier.store(&tokens[..400], &saved(400), 0, None);
        tier.finish();
        let mut tier = DiskTier::open(root.path(), "m", 5000).unwrap();
        tier.store(&other, &saved(400), 0, None);
        tier.finish();
        assert_eq!(files("json"), 1, "the older entry went over budget");
        let tier = DiskTier::open(root.path(), "m", 5000).unwrap();
        assert_eq!(tier.best(&other, 399), Some(399));
        assert_eq!(tier.best(&tokens, 399), None);
    }
}
