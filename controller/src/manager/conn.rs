//! One worker connection, shared by many requests.
//!
//! A reader task owns the receiving side: it decodes [`FromWorker`] frames and routes each to
//! its request's bounded channel by `request_id`. The reader never waits for a consumer: a
//! client that stops reading fills its own channel and that request alone is failed, so it
//! cannot stall the worker's other streams. A writer task owns the sending side and
//! writes the frames queued on an mpsc channel, so a caller that gives up (a dropped future)
//! can never leave half a frame on the stream. Both tasks share the socket through an `Arc`:
//! `&Stream` implements tokio's `AsyncRead` and `AsyncWrite`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use interprocess::local_socket::tokio::Stream;
use opta_lmx_shared::protocol::{
    read_frame, write_frame, EmbedRequest, FromWorker, GenerateRequest, ToWorker, WorkerStats,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{ManagerError, StreamEvent};

/// Events buffered per request for a consumer that does not keep up (a client that stopped
/// reading). Past it the request is failed and cancelled. An event is about one token, so
/// this is minutes of reading at any real speed, and a few hundred KB.
pub(crate) const STREAM_BUFFER: usize = 4096;

/// Locks ignoring poison: every critical section here leaves the state consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connection to one worker: its two tasks and the routing table.
pub(crate) struct Conn {
    shared: Arc<ConnShared>,
    closed: watch::Receiver<bool>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// What the tasks, the supervisor and every [`GenerationStream`] share.
pub(crate) struct ConnShared {
    model: String,
    out: mpsc::UnboundedSender<ToWorker>,
    next_id: AtomicU64,
    state: Mutex<ConnState>,
}

struct ConnState {
    routes: HashMap<u64, Route>,
    /// When the worker last sent a frame (or the reader last finished handing one over).
    last_frame: Instant,
    /// When the current busy period (at least one request in flight) began.
    busy_since: Option<Instant>,
    /// When a request last started or ended (idle TTL and LRU eviction).
    last_used: Instant,
    last_used_wall: SystemTime,
    /// Callers waiting for a `Stats` frame, each with the number of its own `GetStats`.
    /// Stats carry no request id but come back in order, so the n-th frame answers every
    /// waiter that asked n-th or earlier; a late answer to an earlier ask (a worker that was
    /// frozen) never passes for a fresh one.
    stats_waiters: Vec<(u64, oneshot::Sender<WorkerStats>)>,
    stats_asked: u64,
    stats_answered: u64,
}

/// Where a request's events go. `end` holds the terminal event when it cannot go through
/// the channel: an error for a request ended from outside the stream (crash, timeout,
/// unload, a consumer too slow), or a `Done` that found the channel full. The consumer
/// first drains what is buffered, then sees the channel close and takes it.
#[derive(Clone)]
struct Route {
    tx: mpsc::Sender<StreamEvent>,
    end: Arc<Mutex<Option<StreamEvent>>>,
}

impl Conn {
    /// Starts the reader and writer tasks on a connected, handshaken stream.
    pub(crate) fn start(stream: Stream, model: &str) -> Conn {
        let stream = Arc::new(stream);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let shared = Arc::new(ConnShared {
            model: model.to_string(),
            out: out_tx,
            next_id: AtomicU64::new(1),
            state: Mutex::new(ConnState {
                routes: HashMap::new(),
                last_frame: now,
                busy_since: None,
                last_used: now,
                last_used_wall: SystemTime::now(),
                stats_waiters: Vec::new(),
                stats_asked: 0,
                stats_answered: 0,
            }),
        });
        let (closed_tx, closed_rx) = watch::channel(false);
        let reader = tokio::spawn(read_loop(
            Arc::clone(&stream),
            Arc::clone(&shared),
            closed_tx,
        ));
        let writer = tokio::spawn(write_loop(stream, out_rx, model.to_string()));
        Conn {
            shared,
            closed: closed_rx,
            reader,
            writer,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// Resolves once the reader has stopped (EOF or a broken stream); callable repeatedly.
    pub(crate) async fn closed(&mut self) {
        // An error means the reader is gone without saying so, which is the same thing.
        let _ = self.closed.wait_for(|closed| *closed).await;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Nothing must outlive the worker's supervision; a finished task ignores the abort.
        self.reader.abort();
        self.writer.abort();
    }
}

impl ConnShared {
    fn state(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    /// Queues a frame for the writer. `false`: the writer is gone (the worker is dying).
    pub(crate) fn send(&self, msg: ToWorker) -> bool {
        self.out.send(msg).is_ok()
    }

    /// Registers a generation and sends it. `Err` means the writer is gone.
    pub(crate) fn start(
        self: &Arc<Self>,
        mut req: GenerateRequest,
    ) -> Result<GenerationStream, ()> {
        self.start_with(|id| {
            req.request_id = id;
            ToWorker::Generate(req)
        })
    }

    /// Registers an embedding request and sends it; its stream ends with one `Embeddings`.
    pub(crate) fn start_embed(
        self: &Arc<Self>,
        mut req: EmbedRequest,
    ) -> Result<GenerationStream, ()> {
        self.start_with(|id| {
            req.request_id = id;
            ToWorker::Embed(req)
        })
    }

    /// Registers a route under a fresh id, then sends the frame `make` builds for that id.
    fn start_with(
        self: &Arc<Self>,
        make: impl FnOnce(u64) -> ToWorker,
    ) -> Result<GenerationStream, ()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let end = Arc::new(Mutex::new(None));
        {
            let mut st = self.state();
            let now = Instant::now();
            if st.routes.is_empty() {
                st.busy_since = Some(now);
            }
            st.routes.insert(
                id,
                Route {
                    tx,
                    end: Arc::clone(&end),
                },
            );
            st.touch(now);
        }
        // The route exists before the frame leaves, so no answer can miss it.
        if !self.send(make(id)) {
            self.remove(id);
            return Err(());
        }
        Ok(GenerationStream {
            rx,
            end,
            conn: Arc::clone(self),
            id,
            finished: false,
            pending: None,
        })
    }

    /// The route of a running request, noting that the worker spoke.
    fn route_of(&self, id: u64) -> Option<Route> {
        let mut st = self.state();
        st.last_frame = Instant::now();
        st.routes.get(&id).cloned()
    }

    fn remove(&self, id: u64) -> Option<Route> {
        let mut st = self.state();
        let route = st.routes.remove(&id);
        if route.is_some() {
            st.touch(Instant::now());
            if st.routes.is_empty() {
                st.busy_since = None;
            }
        }
        route
    }

    /// Ends every request in flight with `err(id)`; returns their ids.
    pub(crate) fn fail_all(&self, err: impl Fn() -> ManagerError) -> Vec<u64> {
        let routes: Vec<(u64, Route)> = {
            let mut st = self.state();
            if !st.routes.is_empty() {
                st.touch(Instant::now());
            }
            st.busy_since = None;
            st.routes.drain().collect()
        };
        let mut ids = Vec::with_capacity(routes.len());
        for (id, route) in routes {
            *lock(&route.end) = Some(StreamEvent::Error(err()));
            // Dropping the sender closes the channel once the reader lets go of its clone.
            drop(route.tx);
            ids.push(id);
        }
        ids
    }

    /// Asks the worker for its stats; the receiver gets the next `Stats` frame. `None`: the
    /// writer is gone.
    pub(crate) fn request_stats(&self) -> Option<oneshot::Receiver<WorkerStats>> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state();
        // Callers that timed out are gone; a worker that never answers must not make
        // this list grow.
        st.stats_waiters.retain(|(_, w)| !w.is_closed());
        st.stats_asked += 1;
        let ask = st.stats_asked;
        st.stats_waiters.push((ask, tx));
        // Sent under the lock, so asks reach the writer in the order they are numbered.
        self.send(ToWorker::GetStats).then_some(rx)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.state().routes.len()
    }

    pub(crate) fn last_used(&self) -> SystemTime {
        self.state().last_used_wall
    }

    /// How long no request has been in flight (`None` while busy).
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        let st = self.state();
        st.routes.is_empty().then(|| st.last_used.elapsed())
    }

    /// Counts a load or other explicit use as activity, for the idle TTL.
    pub(crate) fn touch(&self) {
        self.state().touch(Instant::now());
    }

    /// True when requests are in flight and the worker has sent nothing for `timeout`.
    pub(crate) fn stalled(&self, timeout: Duration) -> bool {
        let st = self.state();
        match st.busy_since {
            Some(busy) => busy.max(st.last_frame).elapsed() >= timeout,
            None => false,
        }
    }
}

impl ConnState {
    fn touch(&mut self, now: Instant) {
        self.last_used = now;
        self.last_used_wall = SystemTime::now();
    }
}

async fn read_loop(stream: Arc<Stream>, conn: Arc<ConnShared>, closed: watch::Sender<bool>) {
    let mut r = &*stream;
    loop {
        match read_frame::<FromWorker, _>(&mut r).await {
            Ok(Some(msg)) => route(&conn, msg),
            Ok(None) => {
                tracing::debug!(model = %conn.model, "the worker closed its socket");
                break;
            }
            Err(e) => {
                tracing::warn!(model = %conn.model, "reading from the worker failed: {e}");
                break;
            }
        }
    }
    // The supervisor sees this and reaps the worker; open requests end there, with the
    // exit status, never with a made-up Done.
    let _ = closed.send(true);
}

/// Hands one frame to its request, never waiting: see [`STREAM_BUFFER`].
fn route(conn: &ConnShared, msg: FromWorker) {
    let (id, route, event) = match msg {
        FromWorker::Accepted {
            request_id,
            prompt_tokens,
        } => (
            request_id,
            conn.route_of(request_id),
            StreamEvent::Accepted { prompt_tokens },
        ),
        FromWorker::Progress {
            request_id,
            done,
            total,
        } => {
            tracing::debug!(model = %conn.model, request = request_id, done, total, "prefill");
            (
                request_id,
                conn.route_of(request_id),
                StreamEvent::Progress { done, total },
            )
        }
        FromWorker::Chunk {
            request_id,
            deltas,
            logprobs,
        } => (
            request_id,
            conn.route_of(request_id),
            StreamEvent::Chunk { deltas, logprobs },
        ),
        FromWorker::Done {
            request_id,
            finish_reason,
            usage,
            timings,
        } => {
            conn.state().last_frame = Instant::now();
            let event = StreamEvent::Done {
                finish_reason,
                usage,
                timings,
            };
            (request_id, conn.remove(request_id), event)
        }
        FromWorker::Embeddings {
            request_id,
            vectors,
            prompt_tokens,
        } => {
            conn.state().last_frame = Instant::now();
            let event = StreamEvent::Embeddings {
                vectors,
                prompt_tokens,
            };
            (request_id, conn.remove(request_id), event)
        }
        FromWorker::Error {
            request_id: Some(request_id),
            kind,
            message,
        } => {
            conn.state().last_frame = Instant::now();
            (
                request_id,
                conn.remove(request_id),
                StreamEvent::Error(ManagerError::Request { kind, message }),
            )
        }
        FromWorker::Error {
            request_id: None,
            kind,
            message,
        } => {
            conn.state().last_frame = Instant::now();
            tracing::warn!(model = %conn.model, ?kind, "the worker reported: {message}");
            return;
        }
        FromWorker::Stats(stats) => {
            // Not progress on any request: a worker that answers stats but generates nothing
            // must still time out.
            let mut st = conn.state();
            st.stats_answered += 1;
            let answered = st.stats_answered;
            let (ready, waiting) = std::mem::take(&mut st.stats_waiters)
                .into_iter()
                .partition::<Vec<_>, _>(|(ask, _)| *ask <= answered);
            st.stats_waiters = waiting;
            drop(st);
            for (_, w) in ready {
                // A waiter that gave up does not need the answer.
                let _ = w.send(stats);
            }
            return;
        }
        other => {
            conn.state().last_frame = Instant::now();
            tracing::debug!(model = %conn.model, "ignoring an unexpected frame: {other:?}");
            return;
        }
    };
    // No route: the request was cancelled or failed already; its late frames are dropped.
    let Some(route) = route else { return };
    let event = match route.tx.try_send(event) {
        // Closed: the consumer went away, and its Drop already sent Cancel.
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
        Err(mpsc::error::TrySendError::Full(event)) => event,
    };
    if event.is_terminal() {
        // Already unrouted: the consumer takes it after what is buffered.
        *lock(&route.end) = Some(event);
        return;
    }
    if conn.remove(id).is_some() {
        tracing::warn!(model = %conn.model, request = id, buffered = STREAM_BUFFER, "the client stopped reading; its request is cancelled");
        *lock(&route.end) = Some(StreamEvent::Error(ManagerError::ClientTooSlow {
            model: conn.model.clone(),
        }));
        conn.send(ToWorker::Cancel { request_id: id });
    }
}

async fn write_loop(stream: Arc<Stream>, mut rx: mpsc::UnboundedReceiver<ToWorker>, model: String) {
    let mut w = &*stream;
    while let Some(msg) = rx.recv().await {
        if let Err(e) = write_frame(&mut w, &msg).await {
            // The reader or the child's exit tells the supervisor; nothing to retry here.
            tracing::warn!(model = %model, "writing to the worker failed: {e}");
            break;
        }
    }
}

/// The events of one generation, in order, ending with exactly one `Done` or `Error`.
///
/// Dropping it before the end cancels the request in the worker (the client went away).
pub struct GenerationStream {
    rx: mpsc::Receiver<StreamEvent>,
    end: Arc<Mutex<Option<StreamEvent>>>,
    conn: Arc<ConnShared>,
    id: u64,
    finished: bool,
    /// An event read and handed back (`push_front`), served before the channel.
    pending: Option<StreamEvent>,
}

impl GenerationStream {
    /// The next event; `None` after the terminal `Done` or `Error`.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        if let Some(event) = self.pending.take() {
            self.finished = event.is_terminal();
            return Some(event);
        }
        if self.finished {
            return None;
        }
        let event = match self.rx.recv().await {
            Some(event) => event,
            None => lock(&self.end).take().unwrap_or_else(|| {
                StreamEvent::Error(ManagerError::Crashed {
                    model: self.conn.model.clone(),
                    status: "the connection to the worker closed".into(),
                    stderr_tail: String::new(),
                })
            }),
        };
        if event.is_terminal() {
            self.finished = true;
        }
        Some(event)
    }

    /// Hands `event` back, to be the next one `next` returns.
    pub fn push_front(&mut self, event: StreamEvent) {
        self.pending = Some(event);
    }

    /// The id the manager gave this request on its worker's connection.
    pub fn request_id(&self) -> u64 {
        self.id
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Still routed: the worker is generating for nobody, so stop it. Not routed: it
        // already finished or failed, and there is nothing to cancel.
        if self.conn.remove(self.id).is_some() {
            self.conn.send(ToWorker::Cancel {
                request_id: self.id,
            });
        }
    }
}

impl std::fmt::Debug for GenerationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationStream")
            .field("model", &self.conn.model)
            .field("request_id", &self.id)
            .field("finished", &self.finished)
            .finish()
    }
}
