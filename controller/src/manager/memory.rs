//! The memory guard: estimate what a model will take before starting its worker, and refuse
//! (or evict least-recently-used idle models) when it would push the system past
//! `memory.max_memory_percent`.
//!
//! Estimate = weights + caches + 256 MiB for the worker process itself (MLX, the tokenizer,
//! buffers):
//! - weights: the folder's `*.safetensors` bytes, with quantized weights counted as float32
//!   where a CPU worker expands them (up to `CPU_DEQUANTIZE_LIMIT`, as the worker does);
//! - caches: one sequence at the model's context (`max_position_embeddings`, the worker's own
//!   limit) up to [`LONG_SEQUENCE`] positions, each other sequence it may batch (`max_batch`)
//!   at [`SHORT_SEQUENCE`], each layer counted by kind as the worker stores it
//!   (`opta_lmx_shared::cache_size`: keys and values, windows, latents, recurrent states,
//!   shared layers), plus the prompt cache's whole budget (`prompt_cache_mb`). Embedding models
//!   keep no cache. Every slot at a 262k context would refuse a 27B model on a 64 GB Mac for
//!   memory it only needs if eight clients each fill the whole context at once; the estimate
//!   sizes a load for what sessions reach, and lets the caches grow from there.
//!
//! "Used" is total minus available memory as the OS reports it (page cache that can be dropped
//! does not count as used).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use opta_lmx_shared::cache_size::{self, SequenceShape};
use opta_lmx_shared::model_dir::{self, ModelConfig, ModelKind};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::ManagerConfig;

/// Fixed per-worker allowance on top of the weights.
pub const WORKER_OVERHEAD_BYTES: u64 = 256 * 1024 * 1024;
/// Positions counted for the longest sequence (at most the model's context): a long agent
/// session.
pub const LONG_SEQUENCE: u64 = 32_768;
/// Positions counted for each other sequence decoded beside it.
pub const SHORT_SEQUENCE: u64 = 4_096;

/// What a worker is started with that bounds its caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Sequences it decodes together (`--max-batch`).
    pub sequences: u64,
    /// The prompt cache's budget (`--prompt-cache-mb`, in bytes; 0: off).
    pub prompt_cache_bytes: u64,
    /// Prompt tokens per forward pass (`--prefill-step`): a windowed cache makes room for them.
    pub prefill_step: u64,
}

impl WorkerLimits {
    /// The limits the manager starts every worker with.
    pub fn of(cfg: &ManagerConfig) -> WorkerLimits {
        WorkerLimits {
            sequences: u64::from(cfg.max_batch.max(1)),
            prompt_cache_bytes: cfg.prompt_cache_mb.saturating_mul(1024 * 1024),
            prefill_step: u64::from(cfg.prefill_step.max(1)),
        }
    }
}

/// Bytes of `*.safetensors` directly in `dir` (unreadable entries count as 0: the worker
/// will report the real problem when it loads).
pub fn weights_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Whether this machine's workers run MLX on the CPU and so expand quantized weights: not on
/// macOS (Metal) nor with an NVIDIA driver present (CUDA), nor with `OPTA_LMX_EXACT=1`, which
/// workers inherit.
pub fn workers_expand_weights() -> bool {
    let exact = std::env::var("OPTA_LMX_EXACT").is_ok_and(|v| v == "1");
    !cfg!(target_os = "macos") && !Path::new("/dev/nvidiactl").exists() && !exact
}

/// What loading the model in `dir` is expected to take, in a worker started with `limits`.
pub fn estimate_bytes(dir: &Path, limits: &WorkerLimits) -> u64 {
    estimate_bytes_for(dir, limits, workers_expand_weights())
}

/// [`estimate_bytes`] for a worker that does (`expands`) or does not expand quantized weights.
pub fn estimate_bytes_for(dir: &Path, limits: &WorkerLimits, expands: bool) -> u64 {
    let mut weights = weights_bytes(dir);
    // Without a readable config the worker will not load: the weights are all there is to count.
    let Ok(config) = model_dir::read_config(dir) else {
        return weights.saturating_add(WORKER_OVERHEAD_BYTES);
    };
    let mut quantized = false;
    if expands {
        let (expanded, stored) = model_dir::quantized_footprint(dir, &config);
        quantized = expanded > 0;
        if expanded <= model_dir::CPU_DEQUANTIZE_LIMIT {
            weights = weights.saturating_sub(stored).saturating_add(expanded);
        }
    }
    // A CPU worker runs a quantized model in float32, expanded or not (its scales are float32).
    let cache = cache_bytes(dir, &config, limits, expands && quantized);
    tracing::debug!(dir = %dir.display(), weights, cache, "memory estimate");
    weights
        .saturating_add(cache)
        .saturating_add(WORKER_OVERHEAD_BYTES)
}

/// The caches a worker is expected to fill: one long sequence, the others short (see the module
/// comment), plus the prompt cache's budget. `cpu_float32`: the activations, and so the cache,
/// are float32.
pub fn cache_bytes(
    dir: &Path,
    config: &ModelConfig,
    limits: &WorkerLimits,
    cpu_float32: bool,
) -> u64 {
    // Embedders read each batch whole, without a cache.
    if ModelKind::of(dir, config) == ModelKind::Embedding {
        return 0;
    }
    let context = cache_size::context(config);
    let shape = |positions: u64| SequenceShape {
        positions: context.min(positions),
        dtype_bytes: cache_size::dtype_bytes(config, cpu_float32),
        largest_append: limits.prefill_step,
        snapshots: limits.prompt_cache_bytes > 0,
    };
    let long = cache_size::sequence_bytes(config, &shape(LONG_SEQUENCE));
    let short = cache_size::sequence_bytes(config, &shape(SHORT_SEQUENCE));
    long.saturating_add(short.saturating_mul(limits.sequences.max(1) - 1))
        .saturating_add(limits.prompt_cache_bytes)
}

/// The byte limit `max_memory_percent` sets on `total`.
pub fn limit_bytes(total: u64, max_percent: u8) -> u64 {
    let pct = u128::from(max_percent.min(100));
    u64::try_from(u128::from(total) * pct / 100).unwrap_or(u64::MAX)
}

/// Which idle models to unload, least recently used first, so that `needed` more bytes fit
/// under `limit`. `candidates` are `(model_id, resident_bytes)` in LRU order. `None`: even
/// unloading all of them would not make room, so nothing should be unloaded.
pub fn plan_eviction(
    used: u64,
    needed: u64,
    limit: u64,
    candidates: &[(String, u64)],
) -> Option<Vec<String>> {
    let fits = |used: u64| used.saturating_add(needed) <= limit;
    let mut projected = used;
    let mut plan = Vec::new();
    if fits(projected) {
        return Some(plan);
    }
    for (id, resident) in candidates {
        projected = projected.saturating_sub(*resident);
        plan.push(id.clone());
        if fits(projected) {
            return Some(plan);
        }
    }
    None
}

/// System memory readings and the bytes promised to loads in progress.
pub(crate) struct Memory {
    sys: Mutex<System>,
    /// model id -> (estimate, loads in flight for it): joined loads share one reservation.
    reserved: Mutex<HashMap<String, (u64, usize)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Memory {
    pub(crate) fn new() -> Memory {
        Memory {
            sys: Mutex::new(System::new()),
            reserved: Mutex::new(HashMap::new()),
        }
    }

    /// `(total, used)` bytes now.
    pub(crate) fn system(&self) -> (u64, u64) {
        let mut sys = lock(&self.sys);
        sys.refresh_memory();
        let total = sys.total_memory();
        (total, total.saturating_sub(sys.available_memory()))
    }

    /// Resident bytes of each pid that still exists.
    pub(crate) fn resident(&self, pids: &[u32]) -> HashMap<u32, u64> {
        if pids.is_empty() {
            return HashMap::new();
        }
        let pids: Vec<Pid> = pids.iter().map(|p| Pid::from_u32(*p)).collect();
        // A fresh System each time: a long-lived one keeps every process it ever saw (and an
        // open /proc/<pid>/stat for it) unless that pid is asked for again, so each worker
        // that came and went leaked a file descriptor.
        let mut sys = System::new();
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        pids.iter()
            .filter_map(|pid| sys.process(*pid).map(|p| (pid.as_u32(), p.memory())))
            .collect()
    }

    /// Bytes reserved by loads in progress for models other than `model`.
    pub(crate) fn reserved_except(&self, model: &str) -> u64 {
        lock(&self.reserved)
            .iter()
            .filter(|(id, _)| id.as_str() != model)
            .map(|(_, (bytes, _))| *bytes)
            .sum()
    }

    /// Joins the reservation of a load of `model` already in progress, if there is one.
    pub(crate) fn join(&self, model: &str) -> Option<Reservation<'_>> {
        let mut reserved = lock(&self.reserved);
        let entry = reserved.get_mut(model)?;
        entry.1 += 1;
        Some(Reservation {
            memory: self,
            model: model.to_string(),
        })
    }

    pub(crate) fn reserve(&self, model: &str, bytes: u64) -> Reservation<'_> {
        let mut reserved = lock(&self.reserved);
        let entry = reserved.entry(model.to_string()).or_insert((bytes, 0));
        entry.1 += 1;
        Reservation {
            memory: self,
            model: model.to_string(),
        }
    }
}

/// Counts a load's estimate as used until the load ends (then the worker's real memory is).
pub(crate) struct Reservation<'a> {
    memory: &'a Memory,
    model: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = lock(&self.memory.reserved);
        if let Some(entry) = reserved.get_mut(&self.model) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                reserved.remove(&self.model);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn c(id: &str, bytes: u64) -> (String, u64) {
        (id.to_string(), bytes)
    }

    #[test]
    fn fits_without_evicting() {
        assert_eq!(plan_eviction(4 * GIB, GIB, 10 * GIB, &[]), Some(vec![]));
        assert_eq!(
            plan_eviction(4 * GIB, GIB, 10 * GIB, &[c("a", GIB)]),
            Some(vec![])
        );
    }

    #[test]
    fn evicts_least_recently_used_first_and_only_as_many_as_needed() {
        let cands = [c("old", 2 * GIB), c("mid", 2 * GIB), c("new", 2 * GIB)];
        assert_eq!(
            plan_eviction(9 * GIB, 2 * GIB, 10 * GIB, &cands),
            Some(vec!["old".to_string()])
        );
        assert_eq!(
            plan_eviction(9 * GIB, 4 * GIB, 10 * GIB, &cands),
            Some(vec!["old".to_string(), "mid".to_string()])
        );
    }

    #[test]
    fn evicts_nothing_when_even_everything_would_not_be_enough() {
        let cands = [c("a", GIB), c("b", GIB)];
        assert_eq!(plan_eviction(9 * GIB, 5 * GIB, 10 * GIB, &cands), None);
    }

    #[test]
    fn limit_is_a_percentage_of_total() {
        assert_eq!(limit_bytes(100, 90), 90);
        assert_eq!(limit_bytes(u64::MAX, 100), u64::MAX);
        assert_eq!(limit_bytes(1000, 0), 0);
    }

    /// A worker of 2 sequences without a prompt cache.
    const TWO: WorkerLimits = WorkerLimits {
        sequences: 2,
        prompt_cache_bytes: 0,
        prefill_step: 2048,
    };

    /// Without a config the worker will not load: only the weights and the process count.
    #[test]
    fn estimate_without_a_config_counts_safetensors_and_the_process() {
        let dir = std::env::temp_dir().join(format!("opta-lmx-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model-00001.safetensors"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.join("model-00002.safetensors"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.join("tokenizer.json"), vec![0u8; 5000]).unwrap();
        assert_eq!(weights_bytes(&dir), 2000);
        assert_eq!(
            estimate_bytes_for(&dir, &TWO, false),
            2000 + WORKER_OVERHEAD_BYTES
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(estimate_bytes(&dir, &TWO), WORKER_OVERHEAD_BYTES);
    }

    /// The manager's settings as the worker gets them: 1 sequence at least, MiB as bytes.
    #[test]
    fn limits_follow_the_worker_flags() {
        let cfg = ManagerConfig {
            worker_bin: "w".into(),
            socket_dir: None,
            load_timeout: std::time::Duration::from_secs(1),
            request_timeout: std::time::Duration::from_secs(1),
            stop_grace: std::time::Duration::from_secs(1),
            max_memory_percent: 90,
            auto_evict_lru: false,
            max_batch: 0,
            prompt_cache_mb: 512,
            prompt_cache_dir: None,
            prompt_cache_disk_mb: 0,
            prefill_step: 512,
            tool_syntax: Default::default(),
            tensor_parallel: Default::default(),
        };
        let limits = WorkerLimits::of(&cfg);
        assert_eq!(
            limits,
            WorkerLimits {
                sequences: 1,
                prompt_cache_bytes: 512 << 20,
                prefill_step: 512
            }
        );
    }

    fn tiny(name: &str) -> Option<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.deps/models/opta")
            .join(name);
        if dir.join("config.json").exists() {
            Some(dir)
        } else {
            eprintln!("skipped: {} is not installed", dir.display());
            None
        }
    }

    /// The tiny Qwen3.5 (float32, dense: nothing to expand) in a worker of 8 sequences with a
    /// 512 MiB prompt cache: each sequence holds 2 attention layers of 512 bytes a position for
    /// all 4096 positions (4 MiB) and 2 Gated DeltaNet states of 10,496 bytes, three of each
    /// with the prompt cache's snapshots after two 2048-token prefill chunks (62,976 bytes).
    #[test]
    fn tiny_qwen35_counts_its_caches_for_every_sequence_and_the_prompt_cache() {
        let Some(dir) = tiny("tiny-random-qwen3.5") else {
            return;
        };
        let limits = WorkerLimits {
            sequences: 8,
            prompt_cache_bytes: 512 << 20,
            prefill_step: 2048,
        };
        let per_sequence = 2 * 4096 * 512 + 3 * 2 * 10_496;
        assert_eq!(per_sequence, 4_257_280);
        let expected = weights_bytes(&dir) + 8 * per_sequence + (512 << 20) + WORKER_OVERHEAD_BYTES;
        assert_eq!(estimate_bytes_for(&dir, &limits, true), expected);
        assert_eq!(estimate_bytes_for(&dir, &limits, false), expected);
    }

    /// An embedder keeps no cache between requests: weights and the process only.
    #[test]
    fn an_embedding_model_counts_no_cache() {
        let Some(dir) = tiny("tiny-random-bert") else {
            return;
        };
        let limits = WorkerLimits {
            sequences: 8,
            prompt_cache_bytes: 512 << 20,
            prefill_step: 2048,
        };
        assert_eq!(
            estimate_bytes_for(&dir, &limits, false),
            weights_bytes(&dir) + WORKER_OVERHEAD_BYTES
        );
    }

    /// A 4-bit [64, 256] layer: 8 KiB packed plus scales and biases as stored, 64 KiB as the
    /// float32 a CPU worker expands it to.
    #[test]
    fn a_cpu_worker_is_counted_with_its_quantized_weights_expanded() {
        let dir = std::env::temp_dir().join(format!("opta-lmx-memq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 1,
                "intermediate_size": 64, "num_attention_heads": 4, "vocab_size": 64,
                "quantization": {"group_size": 64, "bits": 4}}"#,
        )
        .unwrap();
        let (packed, groups) = (64 * 32 * 4, 64 * 4 * 2);
        let header = format!(
            r#"{{"l.weight": {{"dtype": "U32", "shape": [64, 32], "data_offsets": [0, {packed}]}},
                "l.scales": {{"dtype": "BF16", "shape": [64, 4], "data_offsets": [{packed}, {a}]}},
                "l.biases": {{"dtype": "BF16", "shape": [64, 4], "data_offsets": [{a}, {b}]}},
                "n.weight": {{"dtype": "F32", "shape": [256], "data_offsets": [{b}, {c}]}}}}"#,
            a = packed + groups,
            b = packed + 2 * groups,
            c = packed + 2 * groups + 1024,
        );
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header.as_bytes());
        file.extend(vec![0u8; packed + 2 * groups + 1024]);
        std::fs::write(dir.join("model.safetensors"), &file).unwrap();
        let stored = file.len() as u64;
        let expanded = stored - (packed + 2 * groups) as u64 + 64 * 256 * 4;
        // 1 layer of 4 KV heads of 64: the long sequence at 32768 positions (no
        // `max_position_embeddings`: the fallback context) is 2 * 4 * 64 * 32768 = 16 Mi
        // values, the second at 4096 positions 2 Mi: bf16 on a GPU worker, float32 on a CPU
        // worker, which runs a quantized model in float32.
        let cache = |bytes: u64| ((16 << 20) + (2 << 20)) * bytes;
        assert_eq!(
            estimate_bytes_for(&dir, &TWO, false),
            stored + cache(2) + WORKER_OVERHEAD_BYTES
        );
        assert_eq!(
            estimate_bytes_for(&dir, &TWO, true),
            expanded + cache(4) + WORKER_OVERHEAD_BYTES
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
