//! Starting and stopping one worker process.
//!
//! Start: bind the socket, spawn `opta-lmx-worker serve --socket <path> --model <dir>
//! --max-batch <n> --prompt-cache-mb <n>` in its own process group, then wait for its Hello
//! and Ready with one deadline raced against the child's exit, so "exited before ready",
//! "load failed: <reason>" and "timed out" stay distinct. Stop: Shutdown, deadline, SIGTERM to the group, deadline, SIGKILL, always reaped.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use opta_lmx_shared::protocol::{read_frame, FromWorker, ModelFacts, ToWorker, PROTOCOL_VERSION};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::conn::Conn;
use super::ManagerError;

/// Stderr lines kept for crash reports.
const TAIL_LINES: usize = 50;
/// Longest log line forwarded whole; longer ones are split.
const MAX_LINE_BYTES: u64 = 16 * 1024;
/// After the child exits, how long its last frames and log lines get to arrive.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Everything needed to start one worker.
pub(crate) struct Launch {
    pub model: String,
    pub dir: PathBuf,
    pub worker_bin: PathBuf,
    pub socket_path: PathBuf,
    pub load_timeout: Duration,
    pub stop_grace: Duration,
    pub max_batch: u32,
    pub prompt_cache_mb: u64,
    pub prompt_cache_dir: Option<PathBuf>,
    pub prompt_cache_disk_mb: u64,
    pub prefill_step: u32,
    /// The worker's `--tool-syntax`, when configured for this model.
    pub tool_syntax: Option<String>,
    /// How the model is split over ranks, when it is.
    pub tensor_parallel: Option<super::TensorParallel>,
}

/// A running, ready worker.
pub(crate) struct Worker {
    pub pid: u32,
    pub child: Child,
    pub conn: Conn,
    pub facts: ModelFacts,
    pub socket_path: PathBuf,
    pub logs: Logs,
    /// Kept so the socket file lives exactly as long as the worker; dropping it removes
    /// the file (interprocess reclaims the name).
    pub listener: Listener,
    /// Spawn to Ready, as the controller saw it.
    pub load_seconds: f64,
    pub loaded_at: std::time::SystemTime,
}

/// How a stopped worker ended.
pub(crate) struct ExitReport {
    pub status: String,
    pub stderr_tail: String,
}

/// Starts a worker and waits until it is ready. `cancel` (sent or dropped) stops it early,
/// which ends in [`ManagerError::Unloading`].
pub(crate) async fn launch(
    l: Launch,
    cancel: &mut oneshot::Receiver<()>,
) -> Result<Worker, ManagerError> {
    let spawn_err = |what: &str, e: std::io::Error| ManagerError::Spawn(format!("{what}: {e}"));
    // A file left by a controller that was killed would make the bind fail.
    let _ = std::fs::remove_file(&l.socket_path);
    let name = l
        .socket_path
        .as_path()
        .to_fs_name::<GenericFilePath>()
        .map_err(|e| spawn_err(&format!("socket path {}", l.socket_path.display()), e))?;
    let listener = ListenerOptions::new()
        .name(name)
        .create_tokio()
        .map_err(|e| spawn_err(&format!("binding {}", l.socket_path.display()), e))?;

    let mut cmd = Command::new(&l.worker_bin);
    cmd.arg("serve")
        .arg("--socket")
        .arg(&l.socket_path)
        .arg("--model")
        .arg(&l.dir)
        .arg("--max-batch")
        .arg(l.max_batch.max(1).to_string())
        .arg("--prompt-cache-mb")
        .arg(l.prompt_cache_mb.to_string())
        .arg("--prefill-step")
        .arg(l.prefill_step.max(1).to_string())
        .args(
            l.tool_syntax
                .iter()
                .flat_map(|s| ["--tool-syntax".to_string(), s.clone()]),
        );
    if let Some(dir) = &l.prompt_cache_dir {
        cmd.arg("--prompt-cache-dir")
            .arg(dir)
            .arg("--prompt-cache-disk-mb")
            .arg(l.prompt_cache_disk_mb.to_string());
    }
    if let Some(tp) = &l.tensor_parallel {
        // Local ranks are the worker's children, in its process group: stopping it stops them.
        let (args, env) = tp.worker_args();
        cmd.args(args).envs(env);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: signals reach anything it starts, and a Ctrl-C in the controller's
        // terminal does not hit workers before the controller can stop them in order.
        .process_group(0)
        // A backstop only: every path below stops and reaps the child itself.
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| spawn_err(&l.worker_bin.display().to_string(), e))?;
    let Some(pid) = child.id() else {
        // Only a reaped child has no id, and nothing reaped it.
        return Err(ManagerError::Spawn("the worker has no pid".into()));
    };
    tracing::info!(model = %l.model, pid, dir = %l.dir.display(), "worker started");
    let mut logs = Logs::capture(&mut child, &l.model, pid);

    let hello_seen = AtomicBool::new(false);
    // Boxed so that it can be dropped (ending its borrow of the listener) on success.
    let mut handshake = Box::pin(handshake(&listener, &hello_seen));
    let deadline = tokio::time::sleep(l.load_timeout);
    tokio::pin!(deadline);

    tokio::select! {
        result = &mut handshake => match result {
            Ok((stream, facts)) => {
                drop(handshake);
                let load_seconds = started.elapsed().as_secs_f64();
                tracing::info!(model = %l.model, pid, "worker ready in {load_seconds:.2} s");
                Ok(Worker {
                    pid,
                    conn: Conn::start(stream, &l.model),
                    child,
                    facts,
                    socket_path: l.socket_path.clone(),
                    logs,
                    listener,
                    load_seconds,
                    loaded_at: std::time::SystemTime::now(),
                })
            }
            Err(Handshake::LoadFailed(message)) => {
                let err = ManagerError::LoadFailed { model: l.model.clone(), message };
                abandon(&l, child, pid, logs, err).await
            }
            Err(Handshake::Closed) => {
                // It hung up without Ready: it is exiting; report how it ended.
                let status = stop_process(&mut child, pid, l.stop_grace, true).await;
                logs.drained(DRAIN_WAIT).await;
                let _ = std::fs::remove_file(&l.socket_path);
                Err(ManagerError::ExitedBeforeReady {
                    model: l.model.clone(),
                    status,
                    stderr_tail: logs.tail(),
                })
            }
            Err(Handshake::Broken(message)) => {
                abandon(&l, child, pid, logs, ManagerError::Spawn(message)).await
            }
        },
        status = child.wait() => {
            let status = match status {
                Ok(s) => describe_exit(s),
                Err(e) => format!("unknown ({e})"),
            };
            // A worker that failed to load says so and then exits: its LoadFailed may still
            // be in the socket, and that is the better error.
            let said = tokio::time::timeout(DRAIN_WAIT, &mut handshake).await;
            logs.drained(DRAIN_WAIT).await;
            kill_group_leftovers(pid);
            let _ = std::fs::remove_file(&l.socket_path);
            if let Ok(Err(Handshake::LoadFailed(message))) = said {
                return Err(ManagerError::LoadFailed { model: l.model.clone(), message });
            }
            Err(ManagerError::ExitedBeforeReady {
                model: l.model.clone(),
                status,
                stderr_tail: logs.tail(),
            })
        }
        () = &mut deadline => {
            let secs = l.load_timeout.as_secs_f64();
            let what = if hello_seen.load(Ordering::Relaxed) {
                format!("no Ready from the worker within {secs} s of starting it")
            } else {
                format!("the worker did not connect and say Hello within {secs} s")
            };
            let err = ManagerError::Timeout { model: l.model.clone(), what };
            abandon(&l, child, pid, logs, err).await
        }
        _ = cancel => {
            abandon(&l, child, pid, logs, ManagerError::Unloading(l.model.clone())).await
        }
    }
}

/// Stops a worker that will not become ready and returns `err`.
async fn abandon(
    l: &Launch,
    mut child: Child,
    pid: u32,
    mut logs: Logs,
    err: ManagerError,
) -> Result<Worker, ManagerError> {
    // Only a worker that said LoadFailed is on its way out by itself; the others get SIGTERM
    // at once.
    let wait_first = matches!(err, ManagerError::LoadFailed { .. });
    stop_process(&mut child, pid, l.stop_grace, wait_first).await;
    logs.drained(DRAIN_WAIT).await;
    let _ = std::fs::remove_file(&l.socket_path);
    Err(err)
}

enum Handshake {
    /// The worker said LoadFailed.
    LoadFailed(String),
    /// The socket closed before Ready.
    Closed,
    /// Not our protocol, or a broken stream.
    Broken(String),
}

/// Accepts the worker's connection and reads Hello, then Ready.
async fn handshake(
    listener: &Listener,
    hello_seen: &AtomicBool,
) -> Result<(Stream, ModelFacts), Handshake> {
    let stream = listener
        .accept()
        .await
        .map_err(|e| Handshake::Broken(format!("accepting the worker's connection: {e}")))?;
    let mut r = &stream;
    match read_frame::<FromWorker, _>(&mut r).await {
        Ok(Some(FromWorker::Hello {
            protocol_version, ..
        })) if protocol_version == PROTOCOL_VERSION => hello_seen.store(true, Ordering::Relaxed),
        Ok(Some(FromWorker::Hello {
            protocol_version,
            worker_version,
            ..
        })) => {
            return Err(Handshake::Broken(format!(
                "the worker (version {worker_version}) speaks protocol {protocol_version}, \
                 this controller speaks {PROTOCOL_VERSION}: install matching binaries"
            )))
        }
        Ok(Some(other)) => {
            return Err(Handshake::Broken(format!(
                "the worker's first message was not Hello: {other:?}"
            )))
        }
        Ok(None) | Err(opta_lmx_shared::protocol::ProtocolError::TruncatedFrame) => {
            return Err(Handshake::Closed)
        }
        Err(e) => {
            return Err(Handshake::Broken(format!(
                "reading the worker's Hello: {e}"
            )))
        }
    }
    loop {
        match read_frame::<FromWorker, _>(&mut r).await {
            Ok(Some(FromWorker::Ready(facts))) => return Ok((stream, facts)),
            Ok(Some(FromWorker::LoadFailed { message })) => {
                return Err(Handshake::LoadFailed(message))
            }
            // A worker-level log-worthy message during the load: not fatal.
            Ok(Some(FromWorker::Error {
                request_id: None,
                message,
                ..
            })) => tracing::warn!("the worker reported while loading: {message}"),
            Ok(Some(other)) => {
                return Err(Handshake::Broken(format!(
                    "unexpected message from the worker while loading: {other:?}"
                )))
            }
            Ok(None) | Err(opta_lmx_shared::protocol::ProtocolError::TruncatedFrame) => {
                return Err(Handshake::Closed)
            }
            Err(e) => return Err(Handshake::Broken(format!("reading from the worker: {e}"))),
        }
    }
}

/// Stops a ready worker: Shutdown (when `graceful`), then the signal ladder; then waits for
/// its last frames and log lines and removes its socket.
pub(crate) async fn stop_worker(mut w: Worker, graceful: bool, grace: Duration) -> ExitReport {
    if graceful {
        w.conn.shared().send(ToWorker::Shutdown);
    }
    let status = stop_process(&mut w.child, w.pid, grace, true).await;
    // The reader delivers whatever the worker wrote before it died, so a request that
    // really finished gets its Done before the rest are failed.
    let _ = tokio::time::timeout(DRAIN_WAIT, w.conn.closed()).await;
    w.logs.drained(DRAIN_WAIT).await;
    drop(w.listener);
    let _ = std::fs::remove_file(&w.socket_path);
    tracing::info!(pid = w.pid, "worker stopped: {status}");
    ExitReport {
        status,
        stderr_tail: w.logs.tail(),
    }
}

/// Ends the process and reaps it; returns how it ended. With `wait_first`, it first gets
/// `grace` to exit by itself (after Shutdown or EOF), then SIGTERM (plus SIGCONT, so a
/// stopped process can act on it) and `grace` more, then SIGKILL.
pub(crate) async fn stop_process(
    child: &mut Child,
    pid: u32,
    grace: Duration,
    wait_first: bool,
) -> String {
    let status = stop_ladder(child, pid, grace, wait_first).await;
    kill_group_leftovers(pid);
    match status {
        Some(s) => describe_exit(s),
        None => "unknown (could not be reaped)".into(),
    }
}

async fn stop_ladder(
    child: &mut Child,
    pid: u32,
    grace: Duration,
    wait_first: bool,
) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    if wait_first {
        if let Ok(Ok(s)) = tokio::time::timeout(grace, child.wait()).await {
            return Some(s);
        }
    }
    signal_group(pid, Signal::SIGTERM);
    signal_group(pid, Signal::SIGCONT);
    if let Ok(Ok(s)) = tokio::time::timeout(grace, child.wait()).await {
        return Some(s);
    }
    tracing::warn!(
        pid,
        "the worker ignored SIGTERM for {grace:?}; sending SIGKILL"
    );
    signal_group(pid, Signal::SIGKILL);
    match child.wait().await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(pid, "cannot reap the worker: {e}");
            None
        }
    }
}

fn signal_group(pid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    // ESRCH: the whole group is gone already, which is what we want.
    let _ = killpg(Pid::from_raw(raw), sig);
}

/// Anything the worker started lives on in its group after the worker is reaped; the group
/// id cannot be reused while such members exist, so this reaches only them.
fn kill_group_leftovers(pid: u32) {
    signal_group(pid, Signal::SIGKILL);
}

/// `exit code 1`, `signal 9 (SIGKILL)`.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig).map_or("unknown signal", Signal::as_str);
        let core = if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        format!("signal {sig} ({name}{core})")
    } else {
        status.to_string()
    }
}

/// The worker's stdout and stderr, re-emitted as tracing events tagged with the model id;
/// the last stderr lines are kept for crash reports.
pub(crate) struct Logs {
    tail: Arc<Mutex<VecDeque<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Logs {
    fn capture(child: &mut Child, model: &str, pid: u32) -> Logs {
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let mut tasks = Vec::new();
        if let Some(out) = child.stdout.take() {
            tasks.push(tokio::spawn(forward(out, model.to_string(), pid, None)));
        }
        if let Some(err) = child.stderr.take() {
            let tail = Some(Arc::clone(&tail));
            tasks.push(tokio::spawn(forward(err, model.to_string(), pid, tail)));
        }
        Logs { tail, tasks }
    }

    /// Waits (at most `max`) for both pipes to reach EOF, so the tail is complete.
    async fn drained(&mut self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        for task in &mut self.tasks {
            if tokio::time::timeout_at(deadline, &mut *task).await.is_err() {
                // Something still holds the pipe open; the tail is as good as it gets.
                task.abort();
            }
        }
        self.tasks.clear();
    }

    pub(crate) fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for line in tail.iter() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn forward(
    pipe: impl AsyncRead + Unpin,
    model: String,
    pid: u32,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let stream = if tail.is_some() { "stderr" } else { "stdout" };
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(model = %model, pid, "reading the worker's {stream}: {e}");
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end();
        if line.is_empty() {
            continue;
        }
        tracing::info!(target: "opta_lmx::worker", model = %model, pid, stream, "{line}");
        if let Some(tail) = &tail {
            let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
    }
}

/// A socket path in `dir` that is short and unique for this manager.
pub(crate) fn socket_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("w{seq}.sock"))
}
