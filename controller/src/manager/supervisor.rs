//! The owner task of one model: it alone holds the model's process and state, and everyone
//! else sends it a [`Command`] and awaits the reply, so no caller acts on a stale copy.
//!
//! States: stopped -> loading -> ready -> stopping (unload, or death) -> stopped or crashed.
//! Every transition answers every waiter it concerns (loads joining a load in flight, unloads
//! waiting for the process to be gone), so no caller is left waiting on a wake-up that never
//! comes. Slow work (starting a worker, stopping one) runs in a spawned task whose result is
//! one more event here, so the owner keeps answering while it runs.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use opta_lmx_shared::protocol::{ModelFacts, ToWorker};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};

use super::conn::{ConnShared, GenerationStream};
use super::worker::{self, ExitReport, Launch, Worker};
use super::{CrashInfo, ManagerError, ModelInfo, ModelState, Settings, Work};
use crate::metrics::{self, Lifecycle};

/// How often the owner checks for stalled requests and idle TTLs.
const TICK: Duration = Duration::from_millis(250);
/// Crashes closer together than this count as one streak for the restart backoff.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// Longest wait before restarting a model that keeps crashing.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

pub(crate) type LoadReply = oneshot::Sender<Result<ModelInfo, ManagerError>>;

pub(crate) enum Command {
    Load {
        dir: PathBuf,
        ttl: Option<Duration>,
        reply: LoadReply,
    },
    /// Answered once the process is gone.
    Unload {
        reply: oneshot::Sender<UnloadOutcome>,
    },
    Generate {
        // Boxed: the request is the largest command by far, and commands queue.
        work: Box<Work>,
        reply: oneshot::Sender<Result<GenerationStream, ManagerError>>,
    },
    /// Unload only if ready with nothing in flight (decided here, not on a stale snapshot);
    /// answered `true` once the process is gone, `false` at once otherwise.
    EvictIfIdle { reply: oneshot::Sender<bool> },
}

pub(crate) enum UnloadOutcome {
    Unloaded,
    NotLoaded,
}

enum UnloadWaiter {
    Unload(oneshot::Sender<UnloadOutcome>),
    Evict(oneshot::Sender<bool>),
}

impl UnloadWaiter {
    fn done(self) {
        // A caller that stopped waiting does not need the answer.
        match self {
            UnloadWaiter::Unload(tx) => {
                let _ = tx.send(UnloadOutcome::Unloaded);
            }
            UnloadWaiter::Evict(tx) => {
                let _ = tx.send(true);
            }
        }
    }
}

/// What the owner publishes for `models()`; written only by the owner.
#[derive(Default)]
pub(crate) struct Published {
    /// `None`: stopped (not listed).
    pub state: Option<ModelState>,
    pub dir: PathBuf,
    pub pid: Option<u32>,
    pub facts: Option<ModelFacts>,
    pub loaded_at: Option<SystemTime>,
    pub ttl: Option<Duration>,
    pub crash: Option<CrashInfo>,
    pub restarts: u32,
    pub socket_path: Option<PathBuf>,
    /// The live connection, for in-flight counts and last use.
    pub conn: Option<Arc<ConnShared>>,
    /// Last use of a worker that is gone.
    pub last_used: Option<SystemTime>,
}

/// How the rest of the manager reaches one model's owner.
#[derive(Clone)]
pub(crate) struct Handle {
    pub tx: mpsc::UnboundedSender<Command>,
    pub published: Arc<Mutex<Published>>,
}

pub(crate) fn lock(p: &Mutex<Published>) -> MutexGuard<'_, Published> {
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Handle {
    /// Starts the owner task of `model`. It runs until every `Handle` is dropped.
    pub(crate) fn spawn(model: &str, settings: Arc<Settings>) -> Handle {
        let (tx, rx) = mpsc::unbounded_channel();
        let published = Arc::new(Mutex::new(Published::default()));
        let sup = Supervisor {
            model: model.to_string(),
            settings,
            rx,
            published: Arc::clone(&published),
            phase: Phase::Stopped,
            dir: PathBuf::new(),
            ttl: None,
            crash_streak: 0,
            last_crash: None,
            restarts: 0,
            last_used: None,
        };
        tokio::spawn(sup.run());
        Handle { tx, published }
    }
}

struct Loading {
    task: JoinHandle<Result<Box<Worker>, ManagerError>>,
    /// Taken when an unload asks the load to stop.
    cancel: Option<oneshot::Sender<()>>,
    waiters: Vec<LoadReply>,
    unload_waiters: Vec<UnloadWaiter>,
    /// Loads that arrived after the unload: they start a fresh load once this one is gone.
    next_load: Vec<LoadReply>,
}

#[derive(PartialEq)]
enum Cause {
    Unload,
    Died,
}

struct Stopping {
    task: JoinHandle<ExitReport>,
    cause: Cause,
    pid: u32,
    socket_path: PathBuf,
    conn: Arc<ConnShared>,
    unload_waiters: Vec<UnloadWaiter>,
    next_load: Vec<LoadReply>,
}

enum Phase {
    Stopped,
    Loading(Loading),
    Ready(Box<Worker>),
    Stopping(Stopping),
    Crashed(CrashInfo),
}

enum Event {
    Command(Option<Command>),
    Loaded(Result<Result<Box<Worker>, ManagerError>, JoinError>),
    Exited(io::Result<ExitStatus>),
    ConnClosed,
    Stopped(Result<ExitReport, JoinError>),
    Tick,
}

struct Supervisor {
    model: String,
    settings: Arc<Settings>,
    rx: mpsc::UnboundedReceiver<Command>,
    published: Arc<Mutex<Published>>,
    phase: Phase,
    dir: PathBuf,
    ttl: Option<Duration>,
    crash_streak: u32,
    last_crash: Option<Instant>,
    restarts: u32,
    last_used: Option<SystemTime>,
}

impl Supervisor {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = match &mut self.phase {
                Phase::Loading(l) => tokio::select! {
                    c = self.rx.recv() => Event::Command(c),
                    r = &mut l.task => Event::Loaded(r),
                },
                Phase::Ready(w) => {
                    let w = &mut **w;
                    tokio::select! {
                        c = self.rx.recv() => Event::Command(c),
                        s = w.child.wait() => Event::Exited(s),
                        () = w.conn.closed() => Event::ConnClosed,
                        _ = tick.tick() => Event::Tick,
                    }
                }
                Phase::Stopping(s) => tokio::select! {
                    c = self.rx.recv() => Event::Command(c),
                    r = &mut s.task => Event::Stopped(r),
                },
                Phase::Stopped | Phase::Crashed(_) => Event::Command(self.rx.recv().await),
            };
            match event {
                Event::Command(Some(cmd)) => self.command(cmd),
                Event::Command(None) => break,
                Event::Loaded(r) => self.loaded(r),
                Event::Exited(status) => {
                    match &status {
                        Ok(s) => tracing::warn!(
                            model = %self.model,
                            "the worker exited: {}",
                            worker::describe_exit(*s)
                        ),
                        Err(e) => {
                            tracing::warn!(model = %self.model, "waiting for the worker failed: {e}")
                        }
                    }
                    self.begin_stop(Cause::Died, Vec::new());
                }
                Event::ConnClosed => {
                    tracing::warn!(model = %self.model, "the worker's connection closed");
                    self.begin_stop(Cause::Died, Vec::new());
                }
                Event::Stopped(r) => self.stopped(r),
                Event::Tick => self.tick(),
            }
            self.publish();
        }
        // Every handle is gone (the manager was dropped): leave nothing running.
        self.finish().await;
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Load { dir, ttl, reply } => self.load(dir, ttl, reply),
            Command::Unload { reply } => self.unload(UnloadWaiter::Unload(reply)),
            Command::EvictIfIdle { reply } => match &self.phase {
                Phase::Ready(w) if w.conn.shared().in_flight() == 0 => {
                    tracing::info!(
                        model = %self.model,
                        "unloading to make room (least recently used)"
                    );
                    self.unload(UnloadWaiter::Evict(reply));
                }
                _ => {
                    let _ = reply.send(false);
                }
            },
            Command::Generate { work, reply } => {
                let _ = reply.send(self.generate(*work));
            }
        }
    }

    fn load(&mut self, dir: PathBuf, ttl: Option<Duration>, reply: LoadReply) {
        if ttl.is_some() {
            self.ttl = ttl;
        }
        match &mut self.phase {
            Phase::Ready(w) => {
                // Loaded already (from whatever folder it was loaded from); a load counts as
                // a use, so the idle TTL starts again.
                w.conn.shared().touch();
                let _ = reply.send(Ok(model_info(&self.model, w)));
            }
            Phase::Loading(l) if l.cancel.is_some() => l.waiters.push(reply),
            Phase::Loading(l) => {
                self.dir = dir;
                l.next_load.push(reply);
            }
            Phase::Stopping(s) => {
                self.dir = dir;
                s.next_load.push(reply);
            }
            Phase::Stopped | Phase::Crashed(_) => {
                self.dir = dir;
                self.start_load(vec![reply]);
            }
        }
    }

    /// How long to hold off a restart: nothing after one crash, then 1 s, 2 s, 4 s, ... (at
    /// most 30 s) for each further crash less than a minute after the one before.
    fn restart_delay(&self) -> Duration {
        let Some(last) = self.last_crash else {
            return Duration::ZERO;
        };
        if self.crash_streak < 2 {
            return Duration::ZERO;
        }
        let exp = (self.crash_streak - 2).min(16);
        let backoff = Duration::from_secs(1u64 << exp).min(MAX_RESTART_DELAY);
        backoff.saturating_sub(last.elapsed())
    }

    fn start_load(&mut self, waiters: Vec<LoadReply>) {
        let socket_path = match self.settings.socket_path() {
            Ok(p) => p,
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
                return;
            }
        };
        let after_crash = matches!(self.phase, Phase::Crashed(_));
        if after_crash {
            self.restarts += 1;
            metrics::global().lifecycle(&self.model, Lifecycle::Restarted);
        }
        let delay = if after_crash {
            self.restart_delay()
        } else {
            Duration::ZERO
        };
        let cfg = &self.settings.cfg;
        let launch = Launch {
            model: self.model.clone(),
            dir: self.dir.clone(),
            worker_bin: cfg.worker_bin.clone(),
            socket_path,
            load_timeout: cfg.load_timeout,
            stop_grace: cfg.stop_grace,
            max_batch: cfg.max_batch,
            prompt_cache_mb: cfg.prompt_cache_mb,
            prompt_cache_dir: cfg.prompt_cache_dir.clone(),
            prompt_cache_disk_mb: cfg.prompt_cache_disk_mb,
            prefill_step: cfg.prefill_step,
            tool_syntax: cfg.tool_syntax.get(&self.model).cloned(),
            tensor_parallel: cfg.tensor_parallel.get(&self.model).cloned(),
        };
        let (cancel_tx, mut cancel_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            if !delay.is_zero() {
                tracing::warn!(
                    model = %launch.model,
                    "the model keeps crashing; restarting it in {:.1} s",
                    delay.as_secs_f64()
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = &mut cancel_rx => return Err(ManagerError::Unloading(launch.model)),
                }
            }
            worker::launch(launch, &mut cancel_rx).await.map(Box::new)
        });
        self.phase = Phase::Loading(Loading {
            task,
            cancel: Some(cancel_tx),
            waiters,
            unload_waiters: Vec::new(),
            next_load: Vec::new(),
        });
    }

    /// The load task ended. The new state is published before anyone is answered, so a
    /// caller that reads `models()` or `is_ready()` right after its answer sees it.
    fn loaded(&mut self, result: Result<Result<Box<Worker>, ManagerError>, JoinError>) {
        let Phase::Loading(l) = std::mem::replace(&mut self.phase, Phase::Stopped) else {
            return;
        };
        let result = result
            .unwrap_or_else(|e| Err(ManagerError::Spawn(format!("the load task failed: {e}"))));
        match result {
            Ok(worker) if l.cancel.is_none() => {
                // Became ready just as an unload asked the load to stop: stop it properly.
                self.phase = Phase::Ready(worker);
                self.begin_stop(Cause::Unload, l.unload_waiters);
                if let Phase::Stopping(s) = &mut self.phase {
                    s.next_load = l.next_load;
                }
                self.publish();
                for w in l.waiters {
                    let _ = w.send(Err(ManagerError::Unloading(self.model.clone())));
                }
            }
            Ok(worker) => {
                metrics::global().lifecycle(&self.model, Lifecycle::Loaded);
                let info = model_info(&self.model, &worker);
                self.phase = Phase::Ready(worker);
                self.publish();
                for w in l.waiters {
                    let _ = w.send(Ok(info.clone()));
                }
            }
            Err(err) => {
                tracing::warn!(model = %self.model, "load failed: {err}");
                if let ManagerError::ExitedBeforeReady {
                    status,
                    stderr_tail,
                    ..
                } = &err
                {
                    if l.unload_waiters.is_empty() {
                        // A worker that dies while loading is a crash (it counts towards
                        // the backoff); one that reports a bad folder is just a failed load.
                        self.record_crash();
                        self.phase = Phase::Crashed(CrashInfo {
                            status: status.clone(),
                            stderr_tail: stderr_tail.clone(),
                            at: SystemTime::now(),
                        });
                    }
                }
                self.publish();
                for w in l.waiters {
                    let _ = w.send(Err(err.clone()));
                }
                for w in l.unload_waiters {
                    w.done();
                }
                if !l.next_load.is_empty() {
                    self.start_load(l.next_load);
                }
            }
        }
    }

    fn record_crash(&mut self) {
        metrics::global().lifecycle(&self.model, Lifecycle::Crashed);
        let now = Instant::now();
        self.crash_streak = match self.last_crash {
            Some(t) if now.duration_since(t) < CRASH_WINDOW => self.crash_streak + 1,
            _ => 1,
        };
        self.last_crash = Some(now);
    }

    fn unload(&mut self, waiter: UnloadWaiter) {
        match &mut self.phase {
            Phase::Stopped => match waiter {
                UnloadWaiter::Unload(tx) => {
                    let _ = tx.send(UnloadOutcome::NotLoaded);
                }
                UnloadWaiter::Evict(tx) => {
                    let _ = tx.send(false);
                }
            },
            Phase::Crashed(_) => {
                // Forget the crash: the model is simply not loaded any more.
                self.phase = Phase::Stopped;
                self.publish();
                waiter.done();
            }
            Phase::Loading(l) => {
                if let Some(cancel) = l.cancel.take() {
                    let _ = cancel.send(());
                }
                // Loads that joined after this point start afresh once this one is gone.
                l.unload_waiters.push(waiter);
            }
            Phase::Ready(_) => self.begin_stop(Cause::Unload, vec![waiter]),
            Phase::Stopping(s) => s.unload_waiters.push(waiter),
        }
    }

    /// Ready -> stopping. An unload ends its in-flight requests at once with
    /// [`ManagerError::Unloading`] (clients learn immediately rather than after a drain that
    /// could last as long as a generation); a death ends them once the worker is reaped,
    /// with its exit status.
    fn begin_stop(&mut self, cause: Cause, unload_waiters: Vec<UnloadWaiter>) {
        let Phase::Ready(worker) = std::mem::replace(&mut self.phase, Phase::Stopped) else {
            for w in unload_waiters {
                w.done();
            }
            return;
        };
        let conn = Arc::clone(worker.conn.shared());
        if cause == Cause::Unload {
            let model = self.model.clone();
            conn.fail_all(|| ManagerError::Unloading(model.clone()));
        }
        let pid = worker.pid;
        let socket_path = worker.socket_path.clone();
        let graceful = cause == Cause::Unload;
        let grace = self.settings.cfg.stop_grace;
        let task = tokio::spawn(worker::stop_worker(*worker, graceful, grace));
        self.phase = Phase::Stopping(Stopping {
            task,
            cause,
            pid,
            socket_path,
            conn,
            unload_waiters,
            next_load: Vec::new(),
        });
    }

    /// The stop task ended: the process is reaped and its socket removed.
    fn stopped(&mut self, report: Result<ExitReport, JoinError>) {
        let Phase::Stopping(s) = std::mem::replace(&mut self.phase, Phase::Stopped) else {
            return;
        };
        let report = report.unwrap_or_else(|e| ExitReport {
            status: format!("unknown (the stop task failed: {e})"),
            stderr_tail: String::new(),
        });
        self.last_used = Some(s.conn.last_used());
        if s.cause == Cause::Died {
            tracing::error!(
                model = %self.model,
                pid = s.pid,
                "the worker crashed ({}); the next load restarts it",
                report.status
            );
            self.record_crash();
            // An unload asked for while it was dying wins: the model is simply gone.
            if s.unload_waiters.is_empty() {
                self.phase = Phase::Crashed(CrashInfo {
                    status: report.status.clone(),
                    stderr_tail: report.stderr_tail.clone(),
                    at: SystemTime::now(),
                });
            }
            self.publish();
            let model = self.model.clone();
            s.conn.fail_all(|| ManagerError::Crashed {
                model: model.clone(),
                status: report.status.clone(),
                stderr_tail: report.stderr_tail.clone(),
            });
        } else {
            metrics::global().lifecycle(&self.model, Lifecycle::Unloaded);
            self.publish();
        }
        for w in s.unload_waiters {
            w.done();
        }
        if !s.next_load.is_empty() {
            self.start_load(s.next_load);
        }
    }

    fn generate(&mut self, work: Work) -> Result<GenerationStream, ManagerError> {
        match &self.phase {
            Phase::Ready(w) => match work {
                Work::Generate(req) => w.conn.shared().start(req),
                Work::Embed(req) => w.conn.shared().start_embed(req),
            }
            .map_err(|()| ManagerError::Crashed {
                model: self.model.clone(),
                status: "its connection closed".into(),
                stderr_tail: String::new(),
            }),
            Phase::Stopping(s) if s.cause == Cause::Unload => {
                Err(ManagerError::Unloading(self.model.clone()))
            }
            Phase::Stopping(_) => Err(ManagerError::Crashed {
                model: self.model.clone(),
                status: "exited; being reaped".into(),
                stderr_tail: String::new(),
            }),
            Phase::Loading(l) if l.cancel.is_none() => {
                Err(ManagerError::Unloading(self.model.clone()))
            }
            Phase::Crashed(c) => Err(ManagerError::Crashed {
                model: self.model.clone(),
                status: c.status.clone(),
                stderr_tail: c.stderr_tail.clone(),
            }),
            Phase::Loading(_) | Phase::Stopped => Err(ManagerError::NotLoaded(self.model.clone())),
        }
    }

    fn tick(&mut self) {
        let Phase::Ready(w) = &self.phase else { return };
        let conn = Arc::clone(w.conn.shared());
        let timeout = self.settings.cfg.request_timeout;
        if conn.stalled(timeout) {
            let secs = timeout.as_secs_f64();
            let model = self.model.clone();
            let ids = conn.fail_all(|| ManagerError::Timeout {
                model: model.clone(),
                what: format!("no output from the worker for {secs} s during the request"),
            });
            tracing::warn!(
                model = %self.model,
                pid = w.pid,
                "the worker sent nothing for {secs} s; {} request(s) timed out",
                ids.len()
            );
            // Should it wake up, it stops working for clients that are gone.
            for id in ids {
                conn.send(ToWorker::Cancel { request_id: id });
            }
        }
        if let (Some(ttl), Some(idle)) = (self.ttl, conn.idle_for()) {
            if idle >= ttl {
                tracing::info!(
                    model = %self.model,
                    "unloading after {:.0} s idle (ttl)",
                    idle.as_secs_f64()
                );
                self.begin_stop(Cause::Unload, Vec::new());
            }
        }
    }

    fn publish(&self) {
        let mut p = lock(&self.published);
        p.dir = self.dir.clone();
        p.ttl = self.ttl;
        p.restarts = self.restarts;
        p.last_used = self.last_used;
        p.crash = None;
        p.conn = None;
        p.pid = None;
        p.facts = None;
        p.loaded_at = None;
        p.socket_path = None;
        p.state = match &self.phase {
            Phase::Stopped => None,
            Phase::Loading(l) if l.cancel.is_none() => Some(ModelState::Unloading),
            Phase::Loading(_) => Some(ModelState::Loading),
            Phase::Ready(w) => {
                p.pid = Some(w.pid);
                p.facts = Some(w.facts.clone());
                p.loaded_at = Some(w.loaded_at);
                p.socket_path = Some(w.socket_path.clone());
                p.conn = Some(Arc::clone(w.conn.shared()));
                Some(ModelState::Ready)
            }
            Phase::Stopping(s) => {
                p.pid = Some(s.pid);
                p.socket_path = Some(s.socket_path.clone());
                p.conn = Some(Arc::clone(&s.conn));
                Some(match s.cause {
                    Cause::Unload => ModelState::Unloading,
                    Cause::Died => ModelState::Crashed,
                })
            }
            Phase::Crashed(c) => {
                p.crash = Some(c.clone());
                Some(ModelState::Crashed)
            }
        };
    }

    /// Stops whatever runs, for a manager that is gone.
    async fn finish(mut self) {
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Ready(w) => {
                let model = self.model.clone();
                w.conn
                    .shared()
                    .fail_all(|| ManagerError::Unloading(model.clone()));
                worker::stop_worker(*w, true, self.settings.cfg.stop_grace).await;
            }
            Phase::Loading(mut l) => {
                if let Some(cancel) = l.cancel.take() {
                    let _ = cancel.send(());
                }
                if let Ok(Ok(w)) = l.task.await {
                    worker::stop_worker(*w, true, self.settings.cfg.stop_grace).await;
                }
            }
            Phase::Stopping(s) => {
                let _ = s.task.await;
            }
            Phase::Stopped | Phase::Crashed(_) => {}
        }
        self.publish();
    }
}

fn model_info(model: &str, w: &Worker) -> ModelInfo {
    ModelInfo {
        model_id: model.to_string(),
        facts: w.facts.clone(),
        pid: w.pid,
        load_seconds: w.load_seconds,
    }
}
