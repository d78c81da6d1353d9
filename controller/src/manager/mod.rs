//! Worker supervision: one `opta-lmx-worker` process per loaded model, so one model's crash
//! never takes down the server or another model, and unloading a model ends its process, so
//! its memory certainly returns to the system.
//!
//! - [`supervisor`]: one owner task per model holds its process and state; callers send it
//!   commands and await replies (single-flight loads, no requests routed to a model that is
//!   stopping, crash detection and restart with backoff, idle TTL, stall timeouts).
//! - [`worker`]: spawning a worker (socket, process group, Hello/Ready deadline raced against
//!   its exit), its logs, and stopping it (Shutdown, SIGTERM, SIGKILL, always reaped).
//! - [`conn`]: one socket per worker, many requests multiplexed over it by request id.
//! - [`memory`]: the memory guard (estimate, limit, LRU eviction) and resident sizes.
//!
//! Sockets: `interprocess`'s tokio local-socket listener, bound in a short private directory
//! (macOS limits socket paths to about 104 bytes). Its descriptors are close-on-exec, so a
//! worker never inherits the listener or another worker's connection, and a worker whose
//! controller dies really sees EOF and exits.

mod conn;
pub mod memory;
mod supervisor;
mod worker;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use opta_lmx_shared::protocol::{
    Delta, EmbedRequest, ErrorKind, FinishReason, GenerateRequest, ModelFacts, Timings,
    TokenLogprob, Usage, WorkerStats,
};
use tokio::sync::oneshot;

pub use conn::GenerationStream;
use supervisor::{Command, Handle, UnloadOutcome};

/// How the manager starts and stops workers.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The `opta-lmx-worker` binary.
    pub worker_bin: PathBuf,
    /// Where worker sockets live. `None`: a fresh private directory under /tmp (mode 0700),
    /// removed on shutdown.
    pub socket_dir: Option<PathBuf>,
    /// Deadline for a started worker's Hello and Ready.
    pub load_timeout: Duration,
    /// Longest silence from a worker while a request is in flight (`server.timeout_sec`).
    pub request_timeout: Duration,
    /// Each step of a stop: Shutdown, then SIGTERM, then SIGKILL.
    pub stop_grace: Duration,
    pub max_memory_percent: u8,
    pub auto_evict_lru: bool,
    /// The worker's `--max-batch`: requests it decodes together.
    pub max_batch: u32,
    /// The worker's `--prompt-cache-mb`.
    pub prompt_cache_mb: u64,
    /// The worker's `--prompt-cache-dir` (None: no disk tier) and `--prompt-cache-disk-mb`.
    pub prompt_cache_dir: Option<PathBuf>,
    pub prompt_cache_disk_mb: u64,
    /// The worker's `--prefill-step`: prompt tokens per forward pass, progress after each.
    pub prefill_step: u32,
    /// Per model id, the worker's `--tool-syntax` (`models.tool_call_format`).
    pub tool_syntax: std::collections::BTreeMap<String, String>,
    /// Per model id, how it is split over ranks (`models.tensor_parallel`).
    pub tensor_parallel: std::collections::BTreeMap<String, TensorParallel>,
}

/// A model split over ranks of MLX's distributed engine. Rank 0 is the model's worker;
/// `ranks` starts the others on this machine (the ring over loopback), `hostfile` names every
/// rank's host for MLX (`MLX_HOSTFILE`), the others started on their machines with
/// `opta-lmx-worker follow`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorParallel {
    #[serde(default)]
    pub ranks: Option<u32>,
    #[serde(default)]
    pub hostfile: Option<PathBuf>,
    #[serde(default = "ring")]
    pub backend: String,
}

fn ring() -> String {
    "ring".into()
}

impl TensorParallel {
    /// MLX's distributed backends.
    pub const BACKENDS: &'static [&'static str] = &["ring", "jaccl", "mpi", "nccl", "any"];

    /// Why this entry cannot work, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !Self::BACKENDS.contains(&self.backend.as_str()) {
            return Err(format!(
                "backend must be one of {} (got {:?})",
                Self::BACKENDS.join(", "),
                self.backend
            ));
        }
        match (self.ranks, &self.hostfile) {
            (Some(n), None) if n >= 2 && self.backend == "ring" => Ok(()),
            (Some(n), None) if n >= 2 => {
                Err("ranks on this machine run over the ring backend only".into())
            }
            (Some(n), None) => Err(format!("ranks must be at least 2 (got {n})")),
            (None, Some(_)) => Ok(()),
            _ => Err("give either ranks (on this machine) or a hostfile, not both".into()),
        }
    }

    /// The worker's arguments and environment for rank 0.
    pub(crate) fn worker_args(&self) -> (Vec<String>, Vec<(String, PathBuf)>) {
        let mut args = vec!["--tensor-parallel".to_string(), self.backend.clone()];
        let mut env = Vec::new();
        if let Some(n) = self.ranks {
            args.extend(["--local-ranks".to_string(), n.to_string()]);
        }
        if let Some(hostfile) = &self.hostfile {
            env.push(("MLX_RANK".to_string(), PathBuf::from("0")));
            env.push(("MLX_HOSTFILE".to_string(), hostfile.clone()));
        }
        (args, env)
    }
}

/// Why a manager call failed. The messages are written for clients and can be sent as they
/// are. Suggested HTTP statuses: `NotLoaded` 404; `LoadFailed`, `ExitedBeforeReady`,
/// `Crashed`, `Spawn` 500 (502 for `Crashed` mid-stream); `Timeout` 504; `InsufficientMemory`
/// 507; `Unloading` 503; `Request` by its `kind`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManagerError {
    /// The model is not loaded (or a request came while it was still loading).
    #[error("model {0} is not loaded")]
    NotLoaded(String),
    /// The worker started and said why it cannot load the model (bad folder, unsupported
    /// architecture, ...).
    #[error("model {model} failed to load: {message}")]
    LoadFailed { model: String, message: String },
    /// The worker died (or hung up) before it was ready, without saying why.
    #[error(
        "the worker for model {model} exited before it was ready ({status}){}",
        tail_suffix(.stderr_tail)
    )]
    ExitedBeforeReady {
        model: String,
        status: String,
        stderr_tail: String,
    },
    /// The worker died while serving (or, for a request, while the request was in flight).
    #[error(
        "the worker for model {model} crashed ({status}){}",
        tail_suffix(.stderr_tail)
    )]
    Crashed {
        model: String,
        status: String,
        stderr_tail: String,
    },
    /// No Hello/Ready within `load_timeout`, or no word from the worker for
    /// `request_timeout` while a request was in flight.
    #[error("model {model} timed out: {what}")]
    Timeout { model: String, what: String },
    /// Loading would push system memory use past `max_memory_percent` (after evicting what
    /// could be evicted, with `auto_evict_lru`).
    #[error(
        "not enough memory to load model {model}: it needs about {} MiB, {} MiB are available \
         under memory.max_memory_percent",
        .needed_bytes / (1 << 20),
        .available_bytes / (1 << 20)
    )]
    InsufficientMemory {
        model: String,
        needed_bytes: u64,
        available_bytes: u64,
    },
    /// The worker refused or failed this one request; the model keeps serving.
    #[error("{message}")]
    Request { kind: ErrorKind, message: String },
    /// The model is being unloaded: requests in flight end with this, and new ones are
    /// refused.
    #[error("model {0} is being unloaded")]
    Unloading(String),
    /// The worker could not be started (missing binary, socket, protocol mismatch).
    #[error("cannot start a worker: {0}")]
    Spawn(String),
    /// The request's client stopped reading and its buffer filled; the request was cancelled
    /// so that the model's other streams go on.
    #[error("the client stopped reading the stream from model {model}; the request was cancelled")]
    ClientTooSlow { model: String },
}

fn tail_suffix(tail: &str) -> String {
    let last = tail.lines().rev().find(|l| !l.trim().is_empty());
    last.map(|l| format!(": {l}")).unwrap_or_default()
}

/// What a successful load reports.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub model_id: String,
    pub facts: ModelFacts,
    pub pid: u32,
    pub load_seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelState {
    /// A worker is starting (or waiting out a restart backoff).
    Loading,
    Ready,
    /// Its worker is being stopped; requests are refused.
    Unloading,
    /// Its worker died; `ModelStatus::crash` says how. The next load restarts it.
    Crashed,
}

#[derive(Clone, Debug)]
pub struct CrashInfo {
    pub status: String,
    pub stderr_tail: String,
    pub at: SystemTime,
}

/// One model as `models()` sees it. Stopped models are not listed.
#[derive(Clone, Debug)]
pub struct ModelStatus {
    pub model_id: String,
    /// The folder it was (last) loaded from.
    pub dir: PathBuf,
    pub state: ModelState,
    /// The worker's pid while it runs (ready or unloading).
    pub pid: Option<u32>,
    pub facts: Option<ModelFacts>,
    /// The worker's resident memory as the OS reports it, read on each `models()` call.
    pub resident_bytes: Option<u64>,
    pub in_flight: usize,
    pub loaded_at: Option<SystemTime>,
    /// When a request last started or ended (or a load found it ready).
    pub last_used: Option<SystemTime>,
    pub ttl: Option<Duration>,
    pub crash: Option<CrashInfo>,
    /// Loads that restarted it after a crash.
    pub restarts: u32,
    /// The worker's socket file while it runs.
    pub socket_path: Option<PathBuf>,
}

/// A request for a worker.
#[derive(Debug)]
// Always boxed where it is held (`Command::Generate`), so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Work {
    Generate(GenerateRequest),
    Embed(EmbedRequest),
}

/// One event of a generation.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    /// The worker templated and tokenized the prompt, and it fits the context.
    Accepted { prompt_tokens: u32 },
    /// Prefill progress: `done` of the prompt's `total` tokens are read.
    Progress { done: u32, total: u32 },
    /// Output, in order (text, reasoning, tool-call deltas).
    Chunk {
        deltas: Vec<Delta>,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        finish_reason: FinishReason,
        usage: Usage,
        timings: Timings,
    },
    /// Terminal.
    Error(ManagerError),
    /// Terminal, the only answer to an embedding request: one vector per input.
    Embeddings {
        vectors: Vec<Vec<f32>>,
        prompt_tokens: u32,
    },
}

impl StreamEvent {
    /// Whether nothing more follows this event.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            StreamEvent::Done { .. } | StreamEvent::Error(_) | StreamEvent::Embeddings { .. }
        )
    }
}

/// The manager's configuration plus the socket directory, shared with the owner tasks.
pub(crate) struct Settings {
    pub cfg: ManagerConfig,
    /// Created on first use; `None` again after `shutdown` removed a private one.
    dir: Mutex<Option<PathBuf>>,
    seq: AtomicU64,
}

/// Private socket directories of this process (several managers may run in one process).
static PRIVATE_DIRS: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Settings {
    /// A fresh socket path for the next worker.
    pub(crate) fn socket_path(&self) -> Result<PathBuf, ManagerError> {
        let dir = self.dir()?;
        Ok(worker::socket_path(
            &dir,
            self.seq.fetch_add(1, Ordering::Relaxed),
        ))
    }

    fn dir(&self) -> Result<PathBuf, ManagerError> {
        let mut dir = lock(&self.dir);
        if let Some(d) = dir.as_ref().filter(|d| d.is_dir()) {
            return Ok(d.clone());
        }
        let made = match &self.cfg.socket_dir {
            Some(d) => std::fs::create_dir_all(d).map(|()| d.clone()),
            None => create_private_dir(),
        };
        let made = made.map_err(|e| ManagerError::Spawn(format!("socket directory: {e}")))?;
        *dir = Some(made.clone());
        Ok(made)
    }

    fn remove_private_dir(&self) {
        if self.cfg.socket_dir.is_some() {
            return;
        }
        if let Some(dir) = lock(&self.dir).take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `/tmp/olmx-<pid>-<n>`, mode 0700: short (socket paths are limited to about 104 bytes on
/// macOS, where `$TMPDIR` alone is about 50) and private to this user.
fn create_private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    loop {
        let n = PRIVATE_DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/olmx-{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            // Left by an earlier process with the same pid: take the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Starts, serves and stops one worker process per model.
pub struct ModelManager {
    settings: Arc<Settings>,
    models: Mutex<BTreeMap<String, Handle>>,
    memory: memory::Memory,
}

impl ModelManager {
    pub fn new(cfg: ManagerConfig) -> Arc<Self> {
        Arc::new(ModelManager {
            settings: Arc::new(Settings {
                cfg,
                dir: Mutex::new(None),
                seq: AtomicU64::new(0),
            }),
            models: Mutex::new(BTreeMap::new()),
            memory: memory::Memory::new(),
        })
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.settings.cfg
    }

    fn handle(&self, model_id: &str) -> Option<Handle> {
        lock(&self.models).get(model_id).cloned()
    }

    fn handle_or_create(&self, model_id: &str) -> Handle {
        lock(&self.models)
            .entry(model_id.to_string())
            .or_insert_with(|| Handle::spawn(model_id, Arc::clone(&self.settings)))
            .clone()
    }

    /// Sends a command to the owner of `model_id` and waits for its answer; `None` when the
    /// owner is gone (it only ends if it panicked: the next call starts a new one).
    async fn ask<T>(
        &self,
        model_id: &str,
        handle: &Handle,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        if handle.tx.send(make(tx)).is_err() {
            self.forget_dead(model_id, handle);
            return None;
        }
        match rx.await {
            Ok(answer) => Some(answer),
            Err(_) => {
                self.forget_dead(model_id, handle);
                None
            }
        }
    }

    fn forget_dead(&self, model_id: &str, handle: &Handle) {
        tracing::error!(model = %model_id, "the model's owner task is gone; replacing it");
        let mut models = lock(&self.models);
        if models
            .get(model_id)
            .is_some_and(|h| h.tx.same_channel(&handle.tx))
        {
            models.remove(model_id);
        }
    }

    /// Loads `model_id` from the folder `dir`, or joins a load already in flight (single
    /// flight), or returns at once if it is ready (from whatever folder it was loaded from).
    /// Restarts a crashed model, after a backoff if it keeps crashing. `ttl`: unload after this
    /// long without requests (`None`: never, or keep the TTL it has).
    pub async fn load(
        &self,
        model_id: &str,
        dir: &Path,
        ttl: Option<Duration>,
    ) -> Result<ModelInfo, ManagerError> {
        let handle = self.handle_or_create(model_id);
        let state = supervisor::lock(&handle.published).state.clone();
        // Joining a load or finding the model ready needs no memory; a stale read here only
        // costs an extra check.
        let _reservation = match state {
            Some(ModelState::Ready | ModelState::Loading) => None,
            _ => Some(self.admit(model_id, dir).await?),
        };
        let dir = dir.to_path_buf();
        let answer = self
            .ask(model_id, &handle, |reply| Command::Load { dir, ttl, reply })
            .await;
        answer.unwrap_or_else(|| {
            Err(ManagerError::Spawn(format!(
                "the supervisor of model {model_id} stopped; try again"
            )))
        })
    }

    /// Checks that loading the model in `dir` fits under `max_memory_percent`, unloading
    /// least-recently-used idle models first when `auto_evict_lru` allows. The reservation
    /// counts the estimate against the limit until the load ends, so concurrent loads of
    /// different models cannot both take the same headroom.
    async fn admit(
        &self,
        model_id: &str,
        dir: &Path,
    ) -> Result<memory::Reservation<'_>, ManagerError> {
        if let Some(joined) = self.memory.join(model_id) {
            return Ok(joined);
        }
        let needed = memory::estimate_bytes(dir, &memory::WorkerLimits::of(&self.settings.cfg));
        let mut refused = HashSet::new();
        // Each round evicts one model or marks one as refusing; the cap only guards against
        // models being reloaded by others as fast as they are evicted.
        for _ in 0..64 {
            let (total, used) = self.memory.system();
            let limit = memory::limit_bytes(total, self.settings.cfg.max_memory_percent);
            let used = used.saturating_add(self.memory.reserved_except(model_id));
            if used.saturating_add(needed) <= limit {
                return Ok(self.memory.reserve(model_id, needed));
            }
            let insufficient = ManagerError::InsufficientMemory {
                model: model_id.to_string(),
                needed_bytes: needed,
                available_bytes: limit.saturating_sub(used),
            };
            if !self.settings.cfg.auto_evict_lru {
                return Err(insufficient);
            }
            let candidates = self.eviction_candidates(model_id, &refused);
            let plan = memory::plan_eviction(used, needed, limit, &candidates);
            // No plan: even evicting every idle model would not make room, so evict none.
            let Some(victim) = plan.and_then(|p| p.into_iter().next()) else {
                return Err(insufficient);
            };
            let Some(handle) = self.handle(&victim) else {
                refused.insert(victim);
                continue;
            };
            let evicted = self
                .ask(&victim, &handle, |reply| Command::EvictIfIdle { reply })
                .await;
            if evicted != Some(true) {
                // It got busy (or went away) since the snapshot; try the next one.
                refused.insert(victim);
            }
        }
        let (total, used) = self.memory.system();
        let limit = memory::limit_bytes(total, self.settings.cfg.max_memory_percent);
        Err(ManagerError::InsufficientMemory {
            model: model_id.to_string(),
            needed_bytes: needed,
            available_bytes: limit.saturating_sub(used),
        })
    }

    /// Ready models with nothing in flight, least recently used first, with the memory
    /// unloading each would free.
    fn eviction_candidates(&self, except: &str, refused: &HashSet<String>) -> Vec<(String, u64)> {
        let mut idle: Vec<(SystemTime, String, u64)> = self
            .models()
            .into_iter()
            .filter(|m| m.model_id != except && !refused.contains(&m.model_id))
            .filter(|m| m.state == ModelState::Ready && m.in_flight == 0)
            .map(|m| {
                let bytes = m
                    .resident_bytes
                    .or(m.facts.as_ref().map(|f| f.weights_bytes))
                    .unwrap_or(0);
                (
                    m.last_used.unwrap_or(SystemTime::UNIX_EPOCH),
                    m.model_id,
                    bytes,
                )
            })
            .collect();
        idle.sort();
        idle.into_iter().map(|(_, id, bytes)| (id, bytes)).collect()
    }

    /// Unloads the model and returns once its process is gone. Requests in flight end with
    /// [`ManagerError::Unloading`]. A crashed model is forgotten.
    pub async fn unload(&self, model_id: &str) -> Result<(), ManagerError> {
        let not_loaded = || ManagerError::NotLoaded(model_id.to_string());
        let handle = self.handle(model_id).ok_or_else(not_loaded)?;
        match self
            .ask(model_id, &handle, |reply| Command::Unload { reply })
            .await
        {
            Some(UnloadOutcome::Unloaded) => Ok(()),
            Some(UnloadOutcome::NotLoaded) | None => Err(not_loaded()),
        }
    }

    /// Unloads every model, all at once, and returns when every process is gone.
    pub async fn unload_all(&self) {
        let handles: Vec<(String, Handle)> = lock(&self.models)
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        let mut waits = tokio::task::JoinSet::new();
        for (id, handle) in handles {
            let (tx, rx) = oneshot::channel();
            if handle.tx.send(Command::Unload { reply: tx }).is_ok() {
                waits.spawn(async move {
                    let _ = rx.await;
                    id
                });
            }
        }
        while waits.join_next().await.is_some() {}
    }

    /// Starts a generation on a ready model; the manager assigns `request_id`. No loading
    /// happens here: call [`ModelManager::load`] first.
    pub async fn generate(
        &self,
        model_id: &str,
        req: GenerateRequest,
    ) -> Result<GenerationStream, ManagerError> {
        self.start(model_id, Work::Generate(req)).await
    }

    /// Starts an embedding request on a ready model; its stream's one event is
    /// `Embeddings` or `Error`.
    pub async fn embed(
        &self,
        model_id: &str,
        req: EmbedRequest,
    ) -> Result<GenerationStream, ManagerError> {
        self.start(model_id, Work::Embed(req)).await
    }

    async fn start(&self, model_id: &str, work: Work) -> Result<GenerationStream, ManagerError> {
        let not_loaded = || ManagerError::NotLoaded(model_id.to_string());
        let handle = self.handle(model_id).ok_or_else(not_loaded)?;
        self.ask(model_id, &handle, |reply| Command::Generate {
            work: Box::new(work),
            reply,
        })
        .await
        .unwrap_or_else(|| Err(not_loaded()))
    }

    /// Every model that is loading, ready, unloading or crashed, by id, with the resident
    /// memory of its worker as the OS reports it now.
    pub fn models(&self) -> Vec<ModelStatus> {
        let handles: Vec<(String, Handle)> = lock(&self.models)
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        let mut out: Vec<ModelStatus> = handles
            .into_iter()
            .filter_map(|(id, h)| {
                let p = supervisor::lock(&h.published);
                let state = p.state.clone()?;
                let (in_flight, last_used) = match &p.conn {
                    Some(c) => (c.in_flight(), Some(c.last_used())),
                    None => (0, p.last_used),
                };
                Some(ModelStatus {
                    model_id: id,
                    dir: p.dir.clone(),
                    state,
                    pid: p.pid,
                    facts: p.facts.clone(),
                    resident_bytes: None,
                    in_flight,
                    loaded_at: p.loaded_at,
                    last_used,
                    ttl: p.ttl,
                    crash: p.crash.clone(),
                    restarts: p.restarts,
                    socket_path: p.socket_path.clone(),
                })
            })
            .collect();
        let pids: Vec<u32> = out.iter().filter_map(|m| m.pid).collect();
        let resident = self.memory.resident(&pids);
        for m in &mut out {
            m.resident_bytes = m.pid.and_then(|pid| resident.get(&pid).copied());
        }
        out
    }

    /// The live stats of a ready model's worker (`GetStats`), or `None` when it is not ready
    /// or does not answer within `timeout` (it may be busy in a long step, or frozen).
    pub async fn worker_stats(&self, model_id: &str, timeout: Duration) -> Option<WorkerStats> {
        let conn = {
            let handle = self.handle(model_id)?;
            let p = supervisor::lock(&handle.published);
            if p.state != Some(ModelState::Ready) {
                return None;
            }
            Arc::clone(p.conn.as_ref()?)
        };
        let reply = conn.request_stats()?;
        tokio::time::timeout(timeout, reply).await.ok()?.ok()
    }

    pub fn is_ready(&self, model_id: &str) -> bool {
        self.handle(model_id)
            .is_some_and(|h| supervisor::lock(&h.published).state == Some(ModelState::Ready))
    }

    /// The context length the model's worker loaded, while it runs.
    pub fn context_length(&self, model_id: &str) -> Option<u32> {
        let handle = self.handle(model_id)?;
        let published = supervisor::lock(&handle.published);
        published.facts.as_ref().map(|f| f.context_length)
    }

    /// Stops every worker (for SIGTERM/Ctrl-C) and removes the private socket directory.
    pub async fn shutdown(&self) {
        self.unload_all().await;
        self.settings.remove_private_dir();
    }
}

impl Drop for ModelManager {
    fn drop(&mut self) {
        // The owner tasks stop their workers when their handles go; the directory only holds
        // sockets, which nobody needs once the manager is gone.
        self.settings.remove_private_dir();
    }
}
