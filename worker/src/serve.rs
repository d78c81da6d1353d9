//! `opta-lmx-worker serve`: the process side of "one worker per model".
//!
//! The controller binds a Unix socket and starts the worker with its path. The worker connects,
//! says `Hello` at once (so the controller knows the process is alive), loads the model, says
//! `Ready` (or `LoadFailed` and exits non-zero), then serves requests until `Shutdown` or EOF.
//!
//! Threads:
//! - the **engine thread** does all MLX work, the load included (MLX arrays are not `Sync` and
//!   MLX keeps its errors thread-local), and writes every frame after `Hello`;
//! - the **reader thread** reads `ToWorker` frames and forwards them over a channel; on EOF or a
//!   read error it ends the process at once, whatever the engine thread is doing, so a dead
//!   controller never leaves an orphaned worker holding a model's memory.
//!
//! A `Generate` is prepared the moment the engine thread sees it: its prompt is templated,
//! tokenized and checked against the model (`Engine::check_prompt`), and the worker answers at
//! once with `Accepted` or, if it cannot run, its only frame, `Error`. Up to
//! `Limits::max_batch` accepted requests run together through the continuous-batching
//! scheduler (`scheduler.rs`); the rest wait, already tokenized, in arrival order. Between
//! steps the engine thread drains the channel without blocking, which is where new requests
//! arrive and join, and cancellation, stats and shutdown take effect.
//!
//! An encoder (`bert`) is served by a simpler loop: each `Embed` is one forward pass over its
//! padded batch, answered with one `Embeddings` frame (`embed.rs`).
//!
//! A tensor-parallel model (`--tensor-parallel`) is served by rank 0, which hands each round's
//! messages to the other ranks (`follow`, below; `mirror.rs`) before it handles them.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use interprocess::local_socket::{prelude::*, GenericFilePath, Stream};
use opta_lmx_shared::model_dir::{QuantMode, QuantizationConfig};
use opta_lmx_shared::protocol::{
    read_frame_blocking, write_frame_blocking, EmbedInput, EmbedRequest, ErrorKind, FinishReason,
    FromWorker, GenerateRequest, ModelFacts, ProtocolError, Timings, ToWorker, Usage, WorkerStats,
    PROTOCOL_VERSION,
};

use crate::distributed::Group;
use crate::embed::{EmbedError, Encoder, Input};
use crate::engine::Engine;
use crate::mirror::{self, Mirrored};
use crate::model::LoadOptions;
use crate::prepare::{prepare, Output, Prepared};
use crate::request::{GenerateError, GenerateParams};
use crate::scheduler::{Admitted, Event, Scheduler, SchedulerConfig};
use crate::tool_syntax::ToolSyntax;

/// After `Shutdown`, how long the engine thread gets to stop and report before the process
/// ends anyway (it cannot notice `Shutdown` during a load or a long prefill).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The engine thread gets the main thread's usual stack, as the `generate` subcommand (which
/// runs the engine on the main thread) does.
const ENGINE_STACK_BYTES: usize = 8 * 1024 * 1024;

macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("opta-lmx-worker[{}]: {}", std::process::id(), format_args!($($arg)*))
    };
}

/// How much one worker runs at once.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests decoded together; more wait in arrival order.
    pub max_batch: usize,
    /// Bytes of key/value states kept for prompt prefixes; 0 turns the cache off.
    pub prompt_cache_bytes: u64,
    /// The tool-call syntax configured for this model (`None`: the template's).
    pub tool_syntax: Option<crate::tool_syntax::ToolSyntax>,
    /// Prompt tokens per prefill chunk; progress is reported after each.
    pub prefill_step: usize,
    /// The prompt cache's disk tier: its folder (one subfolder per model fingerprint) and byte
    /// budget; None or 0: memory only.
    pub prompt_cache_dir: Option<std::path::PathBuf>,
    pub prompt_cache_disk_bytes: u64,
    /// Serve as rank 0 of a tensor-parallel group.
    pub tensor_parallel: Option<TensorParallel>,
}

/// A tensor-parallel group as `serve` joins it.
#[derive(Debug, Clone)]
pub struct TensorParallel {
    /// MLX's backend: ring, jaccl, mpi, nccl or any.
    pub backend: String,
    /// Start this many ranks on this machine (ring over loopback), rank 0 included; `None`:
    /// the ranks come from MLX's environment (`MLX_RANK`, `MLX_HOSTFILE`), the others started
    /// on their machines with `opta-lmx-worker follow`.
    pub local_ranks: Option<u32>,
}

/// Runs the worker: connect to `socket`, load `model_dir`, serve until shutdown. Returns the
/// process's exit code; EOF and fatal socket errors end the process from inside instead.
pub fn run(socket: &Path, model_dir: &Path, limits: Limits) -> ExitCode {
    let link = match Link::connect(socket) {
        Ok(link) => Arc::new(link),
        Err(e) => {
            log!("cannot connect to {}: {e}", socket.display());
            return ExitCode::FAILURE;
        }
    };
    link.send(&FromWorker::Hello {
        protocol_version: PROTOCOL_VERSION,
        worker_version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
    });

    // The reader starts before the load, so a controller that gives up during a long load
    // (closing the socket) ends this process at once.
    let (tx, rx) = mpsc::channel();
    let reader_link = Arc::clone(&link);
    if let Err(e) = thread::Builder::new()
        .name("socket-reader".into())
        .spawn(move || read_loop(&reader_link, &tx))
    {
        log!("cannot start the reader thread: {e}");
        return ExitCode::FAILURE;
    }

    let dir = model_dir.to_path_buf();
    let engine = thread::Builder::new()
        .name("engine".into())
        .stack_size(ENGINE_STACK_BYTES)
        .spawn(move || engine_main(&link, &rx, &dir, limits));
    match engine.map(thread::JoinHandle::join) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => {
            // The panic message is already on stderr (default hook).
            log!("the engine thread panicked; exiting");
            ExitCode::FAILURE
        }
        Err(e) => {
            log!("cannot start the engine thread: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ends the process now, whatever the engine thread is doing (see `process::exit_now`).
fn die(code: i32) -> ! {
    crate::process::exit_now(code)
}

// ---------------------------------------------------------------------------------------------
// The socket
// ---------------------------------------------------------------------------------------------

/// The connection to the controller. Reads happen on the reader thread only; writes take
/// `write_lock` so that frames from different threads never interleave.
struct Link {
    /// `None` on a rank other than 0, which answers nobody.
    stream: Option<Stream>,
    write_lock: Mutex<()>,
}

impl Link {
    fn connect(socket: &Path) -> std::io::Result<Link> {
        let name = socket.to_fs_name::<GenericFilePath>()?;
        Ok(Link {
            stream: Some(Stream::connect(name)?),
            write_lock: Mutex::new(()),
        })
    }

    fn null() -> Link {
        Link {
            stream: None,
            write_lock: Mutex::new(()),
        }
    }

    /// Writes one whole frame. A failed write means the controller is gone (or the stream is
    /// out of step), so the process ends: nobody is left to serve.
    fn send(&self, msg: &FromWorker) {
        let Some(stream) = &self.stream else {
            return;
        };
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match write_frame_blocking(&mut &*stream, msg) {
            Ok(()) => {}
            Err(ProtocolError::Io(e)) => {
                log!("writing to the controller failed ({e}); exiting");
                die(1);
            }
            // Nothing was written, so the stream is still in step; only a message far beyond
            // any real size gets here.
            Err(e) => log!("cannot send a message: {e}"),
        }
    }
}

/// One message from the controller, stamped when it arrived (for `queue_ms`).
struct Inbound {
    msg: ToWorker,
    arrived: Instant,
}

/// The reader thread: forwards frames to the engine thread and ends the process when the
/// controller goes away.
fn read_loop(link: &Link, tx: &Sender<Inbound>) -> ! {
    let Some(stream) = &link.stream else {
        die(1);
    };
    let mut shutdown_armed = false;
    loop {
        match read_frame_blocking::<ToWorker, _>(&mut &*stream) {
            Ok(Some(msg)) => {
                if matches!(msg, ToWorker::Shutdown) && !shutdown_armed {
                    shutdown_armed = true;
                    arm_shutdown_deadline();
                }
                let inbound = Inbound {
                    msg,
                    arrived: Instant::now(),
                };
                // A closed channel means the engine thread has finished and main is exiting.
                let _ = tx.send(inbound);
            }
            Ok(None) => {
                log!("the controller closed the socket; exiting");
                die(0);
            }
            Err(e) => {
                log!("reading from the controller failed ({e}); exiting");
                die(1);
            }
        }
    }
}

fn arm_shutdown_deadline() {
    let spawned = thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(|| {
            thread::sleep(SHUTDOWN_GRACE);
            log!("the engine did not stop within {SHUTDOWN_GRACE:?} of Shutdown; exiting");
            die(0);
        });
    if spawned.is_err() {
        // Without a deadline thread, the next best thing to a prompt exit is an immediate one.
        log!("cannot start the shutdown deadline; exiting now");
        die(0);
    }
}

// ---------------------------------------------------------------------------------------------
// The engine thread
// ---------------------------------------------------------------------------------------------

fn engine_main(link: &Link, rx: &Receiver<Inbound>, dir: &Path, limits: Limits) -> ExitCode {
    log!("loading {}", dir.display());
    use opta_lmx_shared::model_dir::{read_config, ModelKind};
    let encoder = read_config(dir).is_ok_and(|c| ModelKind::of(dir, &c) == ModelKind::Embedding);
    if encoder {
        return encoder_main(link, rx, dir);
    }
    // A tensor-parallel rank 0 joins its group first: every rank loads only its share.
    let (group, mut local) = match &limits.tensor_parallel {
        None => (None, None),
        Some(tp) => match join_group(tp, dir) {
            Ok((group, local)) => (Some(group), local),
            Err(e) => return load_failed(link, e),
        },
    };
    let options = LoadOptions::for_this_machine();
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        Engine::load_sharded(dir, options, group.clone())
    }));
    let mut engine = match loaded {
        Ok(Ok(engine)) => engine,
        Ok(Err(e)) => return load_failed(link, format!("{e:#}")),
        Err(panic) => {
            return load_failed(
                link,
                format!("loading panicked: {}", panic_message(panic.as_ref())),
            )
        }
    };
    engine.tool_syntax = limits.tool_syntax;
    let facts = model_facts(&engine);
    log!(
        "ready: {} ({} layers, {}), loaded in {:.2} s",
        facts.model_type,
        facts.num_layers,
        facts.quantization,
        facts.load_seconds
    );
    let mut doorbells = local
        .as_mut()
        .map(|l| std::mem::take(&mut l.doorbells))
        .unwrap_or_default();
    if let Some(group) = &group {
        mirror::ring_doorbells(&mut doorbells);
        let start = Mirrored::Start {
            max_batch: limits.max_batch.max(1) as u32,
            prompt_cache_bytes: limits.prompt_cache_bytes,
            tool_syntax: limits.tool_syntax.map(|s| s.name().to_string()),
            prefill_step: saturating_u32(limits.prefill_step),
        };
        if let Err(e) = mirror::send(group, &start) {
            return load_failed(link, e.to_string());
        }
    }
    link.send(&FromWorker::Ready(facts));

    let config = SchedulerConfig {
        max_batch: limits.max_batch.max(1),
        prompt_cache_bytes: usize::try_from(limits.prompt_cache_bytes).unwrap_or(usize::MAX),
        prefill_step: limits.prefill_step.max(1),
    };
    let mut sched = Scheduler::new(&engine, config);
    // Ranks of a group must hold the same caches: only a lone worker reads from disk.
    if let (None, Some(disk)) = (&group, disk_tier(dir, &limits)) {
        sched.prefix_cache.set_disk(disk);
    }
    let mut server = Server {
        engine: &engine,
        link,
        rx,
        queue: VecDeque::new(),
        sched: if group.is_some() {
            sched.untimed()
        } else {
            sched
        },
        shutdown: false,
        sharded: group.is_some(),
        mirror: group,
        doorbells,
    };
    server.serve();
    server.sched.prefix_cache.finish_disk();
    log!("shut down");
    ExitCode::SUCCESS
}

/// The prompt cache's disk tier for the model in `dir`, when configured (and the memory tier
/// is on: entries pass through it). A tier that cannot be opened is logged and left out.
fn disk_tier(dir: &Path, limits: &Limits) -> Option<crate::disk_cache::DiskTier> {
    let root = limits.prompt_cache_dir.as_ref()?;
    if limits.prompt_cache_disk_bytes == 0 || limits.prompt_cache_bytes == 0 {
        return None;
    }
    let options = format!("{:?}", crate::model::LoadOptions::for_this_machine());
    let fingerprint = crate::disk_cache::fingerprint(dir, &options);
    match crate::disk_cache::DiskTier::open(root, &fingerprint, limits.prompt_cache_disk_bytes) {
        Ok(tier) => Some(tier),
        Err(e) => {
            log!("prompt cache on disk off: {}: {e}", root.display());
            None
        }
    }
}

/// Joins the group `tp` describes as rank 0, first starting the local ranks if asked to.
fn join_group(
    tp: &TensorParallel,
    dir: &Path,
) -> Result<(Arc<Group>, Option<mirror::LocalRanks>), String> {
    let local = match tp.local_ranks {
        Some(n) if n > 1 => {
            let ranks = mirror::start_local_ranks(n, dir)
                .map_err(|e| format!("cannot start the other ranks: {e}"))?;
            // MLX reads its peers from the environment when the group is joined, below.
            std::env::set_var("MLX_RANK", "0");
            std::env::set_var("MLX_HOSTFILE", &ranks.hostfile);
            Some(ranks)
        }
        _ => None,
    };
    let group = Group::init(&tp.backend).map_err(|e| e.to_string())?;
    if group.rank() != 0 {
        return Err(format!(
            "serve runs rank 0, but MLX_RANK makes this rank {}; the other ranks run \
             `opta-lmx-worker follow`",
            group.rank()
        ));
    }
    log!("rank 0 of {} ({})", group.size(), tp.backend);
    // A rank that ends breaks the group: end this one too, so the model restarts as a crashed
    // one does.
    let local = local.map(|mut ranks| {
        for (i, mut child) in ranks.children.drain(..).enumerate() {
            let watcher = thread::Builder::new()
                .name(format!("rank-{}", i + 1))
                .spawn(move || {
                    let status = child.wait();
                    log!(
                        "rank {} ended ({status:?}); the group is broken, exiting",
                        i + 1
                    );
                    die(1);
                });
            if watcher.is_err() {
                log!("cannot watch rank {}", i + 1);
            }
        }
        ranks
    });
    Ok((Arc::new(group), local))
}

/// `opta-lmx-worker follow`: a rank other than 0 of a tensor-parallel model. It loads its
/// share, then runs each round rank 0 hands it through the same scheduler, answering nobody.
/// `doorbell`: wait for rank 0's byte on stdin before each round (a rank rank 0 started).
pub fn follow(dir: &Path, backend: &str, doorbell: bool) -> ExitCode {
    let dir = dir.to_path_buf();
    let backend = backend.to_string();
    let engine = thread::Builder::new()
        .name("engine".into())
        .stack_size(ENGINE_STACK_BYTES)
        .spawn(move || follow_main(&dir, &backend, doorbell));
    match engine.map(thread::JoinHandle::join) {
        Ok(Ok(code)) => code,
        _ => ExitCode::FAILURE,
    }
}

fn follow_main(dir: &Path, backend: &str, doorbell: bool) -> ExitCode {
    // Rank 0 is gone when its doorbell pipe closes.
    let wait = || {
        if doorbell && !mirror::await_doorbell() {
            log!("rank 0 is gone; exiting");
            die(1);
        }
    };
    let group = match Group::init(backend) {
        Ok(g) if g.rank() != 0 => Arc::new(g),
        Ok(_) => {
            log!("follow runs ranks 1 and up; rank 0 is `serve`");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            log!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut engine =
        match Engine::load_sharded(dir, LoadOptions::for_this_machine(), Some(group.clone())) {
            Ok(engine) => engine,
            Err(e) => {
                log!("rank {}: loading failed: {e:#}", group.rank());
                return ExitCode::FAILURE;
            }
        };
    wait();
    let (max_batch, prompt_cache_bytes, prefill_step) = match mirror::receive(&group) {
        Ok(Mirrored::Start {
            max_batch,
            prompt_cache_bytes,
            tool_syntax,
            prefill_step,
        }) => {
            engine.tool_syntax = tool_syntax.as_deref().and_then(ToolSyntax::from_name);
            (
                max_batch as usize,
                prompt_cache_bytes,
                prefill_step as usize,
            )
        }
        Ok(Mirrored::Round(_)) => {
            log!("rank {}: rank 0 did not start the group", group.rank());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            log!("rank {}: {e}", group.rank());
            return ExitCode::FAILURE;
        }
    };
    log!("rank {} of {} ready", group.rank(), group.size());
    let link = Link::null();
    let (_tx, rx) = mpsc::channel();
    let config = SchedulerConfig {
        max_batch,
        prompt_cache_bytes: usize::try_from(prompt_cache_bytes).unwrap_or(usize::MAX),
        prefill_step: prefill_step.max(1),
    };
    let mut server = Server {
        engine: &engine,
        link: &link,
        rx: &rx,
        queue: VecDeque::new(),
        sched: Scheduler::new(&engine, config).untimed(),
        shutdown: false,
        mirror: None,
        doorbells: Vec::new(),
        sharded: true,
    };
    loop {
        wait();
        let msgs = match mirror::receive(&group) {
            Ok(Mirrored::Round(msgs)) => msgs,
            Ok(Mirrored::Start { .. }) => Vec::new(),
            Err(e) => {
                // Rank 0 is gone (unloaded, or crashed): nothing is left to serve.
                log!("rank {}: {e}; exiting", group.rank());
                return ExitCode::FAILURE;
            }
        };
        for msg in msgs {
            server.handle(Inbound {
                msg,
                arrived: Instant::now(),
            });
        }
        if server.shutdown {
            server.cancel_all();
            return ExitCode::SUCCESS;
        }
        server.admit();
        if !server.sched.is_empty() {
            server.step();
        }
    }
}

/// An encoder's worker: embeddings only, each request one forward pass, in arrival order.
fn encoder_main(link: &Link, rx: &Receiver<Inbound>, dir: &Path) -> ExitCode {
    let start = Instant::now();
    let encoder = match catch_unwind(AssertUnwindSafe(|| Encoder::load(dir))) {
        Ok(Ok(encoder)) => encoder,
        Ok(Err(e)) => return load_failed(link, format!("{e:#}")),
        Err(panic) => {
            return load_failed(
                link,
                format!("loading panicked: {}", panic_message(panic.as_ref())),
            )
        }
    };
    let facts = ModelFacts {
        model_type: encoder.model_type.clone(),
        num_layers: saturating_u32(encoder.num_layers),
        context_length: saturating_u32(encoder.max_tokens),
        vocab_size: saturating_u32(encoder.vocab_size),
        quantization: "none".into(),
        weights_bytes: encoder.weights_bytes as u64,
        load_seconds: start.elapsed().as_secs_f64(),
        eos_token_ids: Vec::new(),
    };
    log!(
        "ready: {} encoder, {} dimensions",
        facts.model_type,
        encoder.dims
    );
    link.send(&FromWorker::Ready(facts));
    while let Ok(inbound) = rx.recv() {
        match inbound.msg {
            ToWorker::Embed(req) => {
                let answer = catch_unwind(AssertUnwindSafe(|| embed(&encoder, &req)))
                    .unwrap_or_else(|p| Err(EmbedError::Engine(panic_message(p.as_ref()))));
                link.send(&match answer {
                    Ok((vectors, prompt_tokens)) => FromWorker::Embeddings {
                        request_id: req.request_id,
                        vectors,
                        prompt_tokens,
                    },
                    Err(e) => FromWorker::Error {
                        request_id: Some(req.request_id),
                        kind: embed_error_kind(&e),
                        message: e.to_string(),
                    },
                });
            }
            ToWorker::Generate(req) => link.send(&FromWorker::Error {
                request_id: Some(req.request_id),
                kind: ErrorKind::InvalidRequest,
                message: format!(
                    "{} is an embedding model: it answers /v1/embeddings, not completions",
                    encoder.model_type
                ),
            }),
            ToWorker::GetStats => link.send(&FromWorker::Stats(WorkerStats::default())),
            // Every request is answered before the next is read: nothing to cancel.
            ToWorker::Cancel { .. } => {}
            ToWorker::Shutdown => break,
        }
    }
    log!("shut down");
    ExitCode::SUCCESS
}

fn embed(encoder: &Encoder, req: &EmbedRequest) -> Result<(Vec<Vec<f32>>, u32), EmbedError> {
    let inputs: Vec<Input> = req
        .inputs
        .iter()
        .map(|i| match i {
            EmbedInput::Text(t) => Input::Text(t),
            EmbedInput::Tokens(ids) => Input::Tokens(ids),
        })
        .collect();
    let ids = encoder.tokenize(&inputs)?;
    let tokens = ids.iter().map(Vec::len).sum::<usize>();
    Ok((encoder.embed(&ids)?, saturating_u32(tokens)))
}

fn embed_error_kind(e: &EmbedError) -> ErrorKind {
    match e {
        EmbedError::TooLong { .. } => ErrorKind::ContextLengthExceeded,
        EmbedError::Empty { .. } | EmbedError::BadToken { .. } => ErrorKind::InvalidRequest,
        EmbedError::Engine(_) => ErrorKind::Engine,
    }
}

fn load_failed(link: &Link, message: String) -> ExitCode {
    log!("loading failed: {message}");
    link.send(&FromWorker::LoadFailed { message });
    ExitCode::FAILURE
}

/// What the controller learns about the loaded model.
pub fn model_facts(engine: &Engine) -> ModelFacts {
    let config = &engine.model.config;
    ModelFacts {
        model_type: config.model_type.clone(),
        num_layers: saturating_u32(config.num_hidden_layers),
        // No limit in config.json: the engine does not limit the context either.
        context_length: config
            .max_position_embeddings
            .map_or(u32::MAX, saturating_u32),
        vocab_size: saturating_u32(config.vocab_size),
        quantization: quantization_label(&config.quantization),
        weights_bytes: engine.model.weights_bytes() as u64,
        load_seconds: engine.load_seconds,
        eos_token_ids: engine.tokenizer.eos_ids().iter().copied().collect(),
    }
}

/// `4-bit g64`, `none`, with `(mixed)` when some modules differ from the default.
pub fn quantization_label(q: &QuantizationConfig) -> String {
    let mixed = q.overrides.values().any(|over| *over != q.default);
    match (q.default, mixed) {
        (Some(d), mixed) => {
            let mode = match d.mode {
                QuantMode::Affine => String::new(),
                m => format!(" {}", format!("{m:?}").to_lowercase()),
            };
            let mixed = if mixed { " (mixed)" } else { "" };
            format!("{}-bit g{}{mode}{mixed}", d.bits, d.group_size)
        }
        (None, true) => "mixed".to_string(),
        (None, false) => "none".to_string(),
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// An accepted request waiting for room in the batch, its prompt already tokenized.
struct Queued {
    request_id: u64,
    prompt: Vec<u32>,
    params: GenerateParams,
    output: Output,
    arrived: Instant,
}

/// The engine thread's serving state: the running batch and the requests waiting for room.
struct Server<'a> {
    engine: &'a Engine,
    link: &'a Link,
    rx: &'a Receiver<Inbound>,
    queue: VecDeque<Queued>,
    sched: Scheduler<'a>,
    shutdown: bool,
    /// Rank 0 of a tensor-parallel group: each round's messages go to the other ranks first.
    mirror: Option<Arc<Group>>,
    /// Rank 0: the local ranks' doorbells, rung before each round.
    doorbells: Vec<std::process::ChildStdin>,
    /// Any rank of a tensor-parallel group: a failed step ends the process, since the ranks
    /// may no longer make the same forward passes.
    sharded: bool,
}

impl Server<'_> {
    fn serve(&mut self) {
        loop {
            let mut round = Vec::new();
            if self.sched.is_empty() && self.queue.is_empty() {
                match self.rx.recv() {
                    Ok(inbound) => round.push(inbound),
                    // The reader never returns (it ends the process), so this is unreachable
                    // in practice; stopping is the only sensible answer.
                    Err(_) => return,
                }
            }
            // Take everything that already arrived, so a Cancel right behind its Generate
            // removes it before any work is done.
            while let Ok(inbound) = self.rx.try_recv() {
                round.push(inbound);
            }
            if let Some(group) = &self.mirror {
                mirror::ring_doorbells(&mut self.doorbells);
                hand_over(group, &mut round);
            }
            for inbound in round {
                self.handle(inbound);
            }
            if self.shutdown {
                self.cancel_all();
                return;
            }
            self.admit();
            if !self.sched.is_empty() {
                self.step();
            }
        }
    }

    fn handle(&mut self, inbound: Inbound) {
        match inbound.msg {
            ToWorker::Generate(req) => self.accept(req, inbound.arrived),
            ToWorker::Cancel { request_id } => {
                if let Some(pos) = self.queue.iter().position(|q| q.request_id == request_id) {
                    if let Some(job) = self.queue.remove(pos) {
                        self.send_cancelled(&job);
                    }
                } else if let Some(outcome) = self.sched.cancel(request_id) {
                    send_event(self.link, Event::Done(request_id, outcome));
                }
                // Otherwise it already finished: the protocol says nothing more is sent.
            }
            ToWorker::GetStats => self.link.send(&FromWorker::Stats(self.stats())),
            ToWorker::Shutdown => self.shutdown = true,
            ToWorker::Embed(req) => self.link.send(&FromWorker::Error {
                request_id: Some(req.request_id),
                kind: ErrorKind::InvalidRequest,
                message: format!(
                    "{} is a text generation model: it does not answer /v1/embeddings",
                    self.engine.model.config.model_type
                ),
            }),
        }
    }

    /// Prepares a newly arrived request: `Accepted` and into the queue if its prompt can run,
    /// else its `Error`, before any prompt processing either way.
    fn accept(&mut self, req: GenerateRequest, arrived: Instant) {
        let request_id = req.request_id;
        let params = generate_params(&req);
        let engine = self.engine;
        // A panic while templating fails this request, not the model.
        let prepared = catch_unwind(AssertUnwindSafe(|| {
            prepare(engine, req.prompt, &req.output, request_id)
        }))
        .unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
        match prepared {
            Ok(Prepared { ids, output }) => {
                self.link.send(&FromWorker::Accepted {
                    request_id,
                    prompt_tokens: saturating_u32(ids.len()),
                });
                self.queue.push_back(Queued {
                    request_id,
                    prompt: ids,
                    params,
                    output,
                    arrived,
                });
            }
            Err(e) => send_event(self.link, Event::Error(request_id, e)),
        }
    }

    /// Moves waiting requests into the batch while it has room.
    fn admit(&mut self) {
        while self.sched.has_room() {
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            let id = job.request_id;
            match self
                .sched
                .add_with(id, job.prompt, job.params, job.output, job.arrived)
            {
                Ok(Admitted::Running) => {}
                Ok(Admitted::Finished(outcome)) => {
                    send_event(self.link, Event::Done(id, outcome));
                }
                Err(e) => send_event(self.link, Event::Error(id, e)),
            }
        }
    }

    /// One scheduler round, streaming what it produced. A panic (a bug, or one inside MLX)
    /// fails the requests that were running, not the model; in a tensor-parallel group, a
    /// failed step (an MLX error or a panic) ends the process instead.
    fn step(&mut self) {
        let link = self.link;
        let sharded = self.sharded;
        let mut broken = false;
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.sched.step(&mut |event| {
                // A grammar's failure is its own request's, and the same on every rank.
                broken |= sharded
                    && matches!(&event, Event::Error(_, GenerateError::Engine(m))
                        if !m.starts_with("grammar:"));
                send_event(link, event)
            });
        }));
        if let Err(panic) = result {
            let message = panicked(panic.as_ref()).to_string();
            self.sched
                .fail_all(&message, &mut |event| send_event(link, event));
            broken |= sharded;
        }
        if broken {
            // The other ranks may not have failed alike: their next collectives would not
            // match. Exit, so the model restarts as a crashed one does.
            log!("a tensor-parallel step failed; exiting");
            die(1);
        }
    }

    /// Ends everything, running requests first (they arrived first).
    fn cancel_all(&mut self) {
        for id in self.sched.ids() {
            if let Some(outcome) = self.sched.cancel(id) {
                send_event(self.link, Event::Done(id, outcome));
            }
        }
        while let Some(job) = self.queue.pop_front() {
            self.send_cancelled(&job);
        }
    }

    /// `Done{Cancelled}` for a request that never started.
    fn send_cancelled(&self, job: &Queued) {
        self.link.send(&FromWorker::Done {
            request_id: job.request_id,
            finish_reason: FinishReason::Cancelled,
            usage: Usage::default(),
            timings: Timings {
                queue_ms: ms_since(job.arrived, Instant::now()),
                ..Timings::default()
            },
        });
    }

    fn stats(&self) -> WorkerStats {
        // A counter MLX cannot read is reported as 0 rather than failing the whole answer.
        let bytes = |r: mlx_rs::error::Result<usize>| r.map_or(0, |n| n as u64);
        WorkerStats {
            active_requests: saturating_u32(self.sched.len()),
            queued_requests: saturating_u32(self.queue.len()),
            prompt_cache_hits: self.sched.prefix_cache.hits,
            prompt_cache_tokens: self.sched.prefix_cache.hit_tokens,
            peak_memory_bytes: bytes(mlx_rs::memory::peak_memory()),
            active_memory_bytes: bytes(mlx_rs::memory::active_memory()),
        }
    }
}

/// Sends what the scheduler produced for one request.
/// Rank 0: hands this round's requests, cancellations and shutdown to the other ranks. A
/// request without a seed gets one here, so that every rank samples alike.
fn hand_over(group: &Group, round: &mut [Inbound]) {
    let mut msgs = Vec::new();
    for inbound in round.iter_mut() {
        match &mut inbound.msg {
            ToWorker::Generate(req) => {
                if req.sampling.seed.is_none() {
                    req.sampling.seed = Some(crate::sampling::fresh_seed());
                }
                msgs.push(inbound.msg.clone());
            }
            ToWorker::Cancel { .. } | ToWorker::Shutdown => msgs.push(inbound.msg.clone()),
            // Answered by rank 0 alone.
            ToWorker::GetStats | ToWorker::Embed(_) => {}
        }
    }
    if let Err(e) = mirror::send(group, &Mirrored::Round(msgs)) {
        log!("{e}; exiting");
        die(1);
    }
}

fn send_event(link: &Link, event: Event) {
    let msg = match event {
        // Always stream: whether the client streams only changes what the controller does.
        Event::Chunk(request_id, chunk) => FromWorker::Chunk {
            request_id,
            deltas: chunk.deltas,
            logprobs: chunk.logprobs,
        },
        Event::Done(request_id, outcome) => FromWorker::Done {
            request_id,
            finish_reason: outcome.finish_reason,
            usage: outcome.usage,
            timings: outcome.timings,
        },
        Event::Progress { id, done, total } => FromWorker::Progress {
            request_id: id,
            done: saturating_u32(done),
            total: saturating_u32(total),
        },
        Event::Error(request_id, e) => {
            log!("request {request_id} failed: {e}");
            FromWorker::Error {
                request_id: Some(request_id),
                kind: error_kind(&e),
                message: e.to_string(),
            }
        }
    };
    link.send(&msg);
}

fn panicked(payload: &(dyn std::any::Any + Send)) -> GenerateError {
    GenerateError::Panic(format!("the worker panicked: {}", panic_message(payload)))
}

/// The engine's parameters for a request.
pub fn generate_params(req: &GenerateRequest) -> GenerateParams {
    GenerateParams {
        sampling: req.sampling.clone(),
        max_tokens: req.max_tokens.map(|n| n as usize),
        stop: req.stop.clone(),
        logprobs: req.logprobs.map(|n| n as usize),
        ..GenerateParams::default()
    }
}

pub fn error_kind(e: &GenerateError) -> ErrorKind {
    match e {
        GenerateError::InvalidRequest(_) => ErrorKind::InvalidRequest,
        GenerateError::ContextLength { .. } => ErrorKind::ContextLengthExceeded,
        GenerateError::Engine(_) => ErrorKind::Engine,
        GenerateError::Panic(_) => ErrorKind::Internal,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

fn ms_since(earlier: Instant, later: Instant) -> f64 {
    later.saturating_duration_since(earlier).as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use opta_lmx_shared::model_dir::Quantization;
    use opta_lmx_shared::protocol::{OutputSpec, Prompt};

    #[test]
    fn quantization_labels() {
        let q4 = Some(Quantization {
            group_size: 64,
            bits: 4,
            mode: opta_lmx_shared::model_dir::QuantMode::Affine,
        });
        let mut q = QuantizationConfig::default();
        assert_eq!(quantization_label(&q), "none");
        q.default = q4;
        assert_eq!(quantization_label(&q), "4-bit g64");
        q.overrides.insert("lm_head".into(), q4);
        assert_eq!(quantization_label(&q), "4-bit g64");
        q.overrides.insert("model.embed_tokens".into(), None);
        assert_eq!(quantization_label(&q), "4-bit g64 (mixed)");
    }

    #[test]
    fn logprobs_map_to_the_engine_only_when_asked() {
        let mut req = GenerateRequest {
            request_id: 1,
            prompt: Prompt::Tokens(vec![1]),
            sampling: Default::default(),
            max_tokens: Some(3),
            stop: vec!["x".into()],
            logprobs: None,
            output: OutputSpec::default(),
        };
        assert_eq!(generate_params(&req).logprobs, None);
        req.logprobs = Some(0);
        assert_eq!(generate_params(&req).logprobs, Some(0));
        req.logprobs = Some(5);
        let p = generate_params(&req);
        assert_eq!(p.logprobs, Some(5));
        assert_eq!(p.max_tokens, Some(3));
        assert_eq!(p.stop, ["x"]);
    }
}
