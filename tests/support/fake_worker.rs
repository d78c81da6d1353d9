//! `opta-lmx-fake-worker`: a stand-in for `opta-lmx-worker serve` that speaks the real
//! protocol but loads nothing, for fault tests. Usage (flags before or after `serve`):
//!
//!   opta-lmx-fake-worker [FLAGS] serve --socket <path> --model <dir>
//!
//! - `--exit-before-hello`: print a line to stderr and exit with code 3 before connecting
//! - `--hang-on-load`: say Hello, then never Ready
//! - `--load-fail <msg>`: say Hello, then LoadFailed(msg), exit 1
//! - `--ignore-sigterm`: ignore SIGTERM, Shutdown and EOF (only SIGKILL ends it)
//! - `--crash-after-chunks <n>`: abort (SIGABRT) right after sending its n-th chunk
//! - `--chunk-delay-ms <n>`, `--chunk-delay-us <n>`: pause between chunks (default 5 ms)
//! - `--batch`: serve every request at once, one chunk each per round, as the real worker's
//!   batching does (default: one at a time)
//! - `--load-delay-ms <n>`: pause between Hello and Ready, as a real load takes time
//! - `--prefill-ms <n>`: before a request's first chunk, stay busy this long, as a long prompt
//!   keeps the real worker busy; `--progress-ms <n>` reports `Progress` this often meanwhile
//!   (default: never, which a watchdog must take for a frozen worker)
//! - `--script <file>`: play a deterministic agent model instead of `t<i>` chunks, from a JSON
//!   file `{"calls": [{"tool": NAME, "arguments": {...}}, ...], "answer": TEXT}`: a chat
//!   request that holds no tool result yet and offers one of the NAMEs gets one call of the
//!   first such tool with its arguments; every other request gets TEXT. Both end with `Stop`,
//!   as a model's turn does
//! - `--max-batch <n>`, `--prompt-cache-mb <n>`, `--prompt-cache-dir <dir>`,
//!   `--prompt-cache-disk-mb <n>`, `--tool-syntax <s>`, `--prefill-step <n>`: accepted as the
//!   real worker's, not used
//!
//! It appends its pid to `<dir>/fake-worker.pids` and its arguments to
//! `<dir>/fake-worker.args` (one line per start), so tests can find and count processes and
//! check what they were started with. Requests are served one at a time (without `--batch`), the
//! rest wait in its queue; each chunk is `t<i> `; `max_tokens: None` streams until cancelled. `GetStats`
//! reports the running request as active and the waiting ones as queued.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::Duration;

use opta_lmx_shared::protocol::{
    read_frame_blocking, write_frame_blocking, Delta, FinishReason, FromWorker, GenerateRequest,
    ModelFacts, Prompt, Timings, ToWorker, Usage, WorkerStats, PROTOCOL_VERSION,
};

#[derive(Default)]
struct Flags {
    socket: Option<PathBuf>,
    model: Option<PathBuf>,
    exit_before_hello: bool,
    hang_on_load: bool,
    load_fail: Option<String>,
    ignore_sigterm: bool,
    crash_after_chunks: Option<u64>,
    chunk_delay: Duration,
    load_delay: Duration,
    batch: bool,
    prefill: Duration,
    progress: Option<Duration>,
    script: Option<Script>,
}

/// A scripted agent model: one tool call, then an answer.
struct Script {
    /// (tool name, arguments), the first offered one called.
    calls: Vec<(String, serde_json::Value)>,
    answer: String,
}

impl Script {
    fn load(path: &str) -> Script {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| fail(&format!("read the script {path}: {e}")));
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| fail(&format!("the script {path}: {e}")));
        let calls = v["calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let tool = c["tool"].as_str().unwrap_or_default().to_string();
                (tool, c["arguments"].clone())
            })
            .collect();
        Script {
            calls,
            answer: v["answer"].as_str().unwrap_or_default().to_string(),
        }
    }

    /// The scripted turn for `req`: a call when its conversation offers a scripted tool and
    /// has no result yet, else the answer.
    fn turn(&self, req: &GenerateRequest) -> Delta {
        let call = match &req.prompt {
            Prompt::Chat {
                messages_json,
                tools_json,
                ..
            } => {
                let messages: serde_json::Value =
                    serde_json::from_str(messages_json).unwrap_or_default();
                let tools: serde_json::Value = tools_json
                    .as_deref()
                    .and_then(|t| serde_json::from_str(t).ok())
                    .unwrap_or_default();
                let offers = |name: &str| {
                    tools
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|t| t["function"]["name"] == name || t["name"] == name)
                };
                let answered = messages
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["role"] == "tool");
                self.calls
                    .iter()
                    .find(|(tool, _)| !answered && offers(tool))
            }
            _ => None,
        };
        if let Some((tool, arguments)) = call {
            Delta::ToolCall {
                index: 0,
                id: Some(format!("call_fake_{}", req.request_id)),
                name: Some(tool.clone()),
                arguments: arguments.to_string(),
                tokens: 1,
            }
        } else {
            Delta::Text {
                text: self.answer.clone(),
                tokens: 1,
            }
        }
    }
}

fn parse() -> Flags {
    let mut f = Flags {
        chunk_delay: Duration::from_millis(5),
        ..Flags::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "serve" => {}
            "--socket" => f.socket = Some(value().into()),
            "--model" => f.model = Some(value().into()),
            "--exit-before-hello" => f.exit_before_hello = true,
            "--hang-on-load" => f.hang_on_load = true,
            "--load-fail" => f.load_fail = Some(value()),
            "--ignore-sigterm" => f.ignore_sigterm = true,
            "--crash-after-chunks" => {
                f.crash_after_chunks = Some(value().parse().unwrap_or_else(|_| fail("bad n")))
            }
            "--max-batch" | "--prompt-cache-mb" | "--prompt-cache-disk-mb" | "--prefill-step" => {
                value()
                    .parse::<u64>()
                    .unwrap_or_else(|_| fail(&format!("bad {arg}")));
            }
            "--tool-syntax" | "--prompt-cache-dir" => {
                value();
            }
            "--batch" => f.batch = true,
            "--chunk-delay-us" => {
                let us = value().parse().unwrap_or_else(|_| fail("bad us"));
                f.chunk_delay = Duration::from_micros(us);
            }
            "--chunk-delay-ms" => {
                let ms = value().parse().unwrap_or_else(|_| fail("bad ms"));
                f.chunk_delay = Duration::from_millis(ms);
            }
            "--load-delay-ms" => {
                let ms = value().parse().unwrap_or_else(|_| fail("bad ms"));
                f.load_delay = Duration::from_millis(ms);
            }
            "--prefill-ms" => {
                let ms = value().parse().unwrap_or_else(|_| fail("bad ms"));
                f.prefill = Duration::from_millis(ms);
            }
            "--progress-ms" => {
                let ms = value().parse().unwrap_or_else(|_| fail("bad ms"));
                f.progress = Some(Duration::from_millis(ms)).filter(|d| !d.is_zero());
            }
            "--script" => f.script = Some(Script::load(&value())),
            other => fail(&format!("unknown argument {other}")),
        }
    }
    f
}

fn fail(msg: &str) -> ! {
    eprintln!("fake-worker: {msg}");
    std::process::exit(2)
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let flags = parse();
    let pid = std::process::id();
    eprintln!("fake-worker[{pid}]: starting");
    if flags.ignore_sigterm {
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    let (Some(socket), Some(model)) = (flags.socket.clone(), flags.model.clone()) else {
        fail("--socket and --model are required");
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(model.join("fake-worker.pids"))
    {
        let _ = writeln!(f, "{pid}");
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(model.join("fake-worker.args"))
    {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let _ = writeln!(f, "{}", args.join(" "));
    }
    if flags.exit_before_hello {
        eprintln!("fake-worker[{pid}]: exiting before hello as asked");
        std::process::exit(3);
    }
    let stream = UnixStream::connect(&socket)
        .unwrap_or_else(|e| fail(&format!("connect {}: {e}", socket.display())));
    send(
        &stream,
        &FromWorker::Hello {
            protocol_version: PROTOCOL_VERSION,
            worker_version: "fake".into(),
            pid,
        },
    );
    if flags.hang_on_load {
        eprintln!("fake-worker[{pid}]: hanging in load as asked");
        sleep_forever();
    }
    std::thread::sleep(flags.load_delay);
    if let Some(message) = &flags.load_fail {
        send(
            &stream,
            &FromWorker::LoadFailed {
                message: message.clone(),
            },
        );
        eprintln!("fake-worker[{pid}]: load failed as asked");
        std::process::exit(1);
    }
    send(
        &stream,
        &FromWorker::Ready(ModelFacts {
            model_type: "fake".into(),
            num_layers: 1,
            context_length: 4096,
            vocab_size: 100,
            quantization: "none".into(),
            weights_bytes: 0,
            load_seconds: 0.0,
            eos_token_ids: vec![0],
        }),
    );

    let (tx, rx) = mpsc::channel();
    let reader = stream.try_clone().unwrap_or_else(|e| fail(&e.to_string()));
    let ignore = flags.ignore_sigterm;
    std::thread::spawn(move || loop {
        match read_frame_blocking::<ToWorker, _>(&mut &reader) {
            Ok(Some(msg)) => {
                if tx.send(msg).is_err() {
                    return;
                }
            }
            _ if ignore => sleep_forever(),
            _ => {
                eprintln!("fake-worker[{pid}]: socket closed; exiting");
                std::process::exit(0);
            }
        }
    });
    Server {
        stream,
        rx,
        flags,
        queue: Vec::new(),
        chunks_sent: 0,
    }
    .serve();
}

fn send(stream: &UnixStream, msg: &FromWorker) {
    if let Err(e) = write_frame_blocking(&mut &*stream, msg) {
        fail(&format!("write: {e}"));
    }
}

struct Server {
    stream: UnixStream,
    rx: Receiver<ToWorker>,
    flags: Flags,
    queue: Vec<GenerateRequest>,
    chunks_sent: u64,
}

enum Stop {
    No,
    Cancel,
}

impl Server {
    fn serve(mut self) -> ! {
        if self.flags.batch {
            self.serve_batch();
        }
        loop {
            if self.queue.is_empty() {
                match self.rx.recv() {
                    Ok(msg) => {
                        self.handle(msg, None);
                    }
                    Err(_) => sleep_forever(),
                }
                continue;
            }
            let req = self.queue.remove(0);
            self.run(&req);
        }
    }

    /// All requests at once: each round, every running request gets one chunk.
    fn serve_batch(mut self) -> ! {
        let mut running: Vec<(GenerateRequest, u32)> = Vec::new();
        loop {
            if running.is_empty() && self.queue.is_empty() {
                match self.rx.recv() {
                    Ok(msg) => self.handle(msg, None),
                    Err(_) => sleep_forever(),
                };
            }
            loop {
                match self.rx.try_recv() {
                    Ok(ToWorker::Cancel { request_id })
                        if running.iter().any(|(r, _)| r.request_id == request_id) =>
                    {
                        running.retain(|(r, n)| {
                            let keep = r.request_id != request_id;
                            if !keep {
                                self.done(request_id, FinishReason::Cancelled, *n);
                            }
                            keep
                        });
                    }
                    Ok(msg) => {
                        self.handle(msg, None);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => sleep_forever(),
                }
            }
            running.extend(self.queue.drain(..).map(|r| (r, 0)));
            std::thread::sleep(self.flags.chunk_delay);
            for (req, n) in &mut running {
                self.chunk(req.request_id, *n);
                *n += 1;
            }
            running.retain(|(r, n)| {
                let finished = r.max_tokens.is_some_and(|max| *n >= max);
                if finished {
                    self.done(r.request_id, FinishReason::Length, *n);
                }
                !finished
            });
        }
    }

    fn chunk(&self, request_id: u64, n: u32) {
        send(
            &self.stream,
            &FromWorker::Chunk {
                request_id,
                deltas: vec![Delta::Text {
                    text: format!("t{n} "),
                    tokens: 1,
                }],
                logprobs: Vec::new(),
            },
        );
    }

    fn handle(&mut self, msg: ToWorker, running: Option<u64>) -> Stop {
        match msg {
            ToWorker::Generate(req) => {
                // The real worker accepts a prompt as soon as it is tokenized, queued or not.
                send(
                    &self.stream,
                    &FromWorker::Accepted {
                        request_id: req.request_id,
                        prompt_tokens: 1,
                    },
                );
                self.queue.push(req);
            }
            ToWorker::Cancel { request_id } if running == Some(request_id) => return Stop::Cancel,
            ToWorker::Cancel { request_id } => {
                if let Some(pos) = self.queue.iter().position(|q| q.request_id == request_id) {
                    self.queue.remove(pos);
                    self.done(request_id, FinishReason::Cancelled, 0);
                }
            }
            // Each input becomes [its position, 1.0], at once.
            ToWorker::Embed(req) => send(
                &self.stream,
                &FromWorker::Embeddings {
                    request_id: req.request_id,
                    vectors: (0..req.inputs.len()).map(|i| vec![i as f32, 1.0]).collect(),
                    prompt_tokens: req.inputs.len() as u32,
                },
            ),
            ToWorker::GetStats => {
                let stats = WorkerStats {
                    active_requests: u32::from(running.is_some()),
                    queued_requests: self.queue.len() as u32,
                    ..WorkerStats::default()
                };
                send(&self.stream, &FromWorker::Stats(stats));
            }
            ToWorker::Shutdown if self.flags.ignore_sigterm => {
                eprintln!("fake-worker: ignoring Shutdown as asked");
            }
            ToWorker::Shutdown => {
                eprintln!("fake-worker: shutting down");
                std::process::exit(0);
            }
        }
        Stop::No
    }

    /// Stays busy for `--prefill-ms`, reporting progress every `--progress-ms` if set.
    fn prefill(&self, id: u64) {
        let total = self.flags.prefill.as_millis() as u32;
        let began = std::time::Instant::now();
        while began.elapsed() < self.flags.prefill {
            let left = self.flags.prefill.saturating_sub(began.elapsed());
            let nap = self.flags.progress.map_or(left, |p| p.min(left));
            std::thread::sleep(nap);
            if self.flags.progress.is_some() {
                let done = (began.elapsed().as_millis() as u32).min(total);
                send(
                    &self.stream,
                    &FromWorker::Progress {
                        request_id: id,
                        done,
                        total,
                    },
                );
            }
        }
    }

    fn run(&mut self, req: &GenerateRequest) {
        let id = req.request_id;
        self.prefill(id);
        if let Some(script) = &self.flags.script {
            let delta = script.turn(req);
            send(
                &self.stream,
                &FromWorker::Chunk {
                    request_id: id,
                    deltas: vec![delta],
                    logprobs: Vec::new(),
                },
            );
            self.done(id, FinishReason::Stop, 1);
            return;
        }
        let mut n = 0u32;
        while req.max_tokens.is_none_or(|max| n < max) {
            loop {
                match self.rx.try_recv() {
                    Ok(msg) => {
                        if let Stop::Cancel = self.handle(msg, Some(id)) {
                            eprintln!("fake-worker: request {id} cancelled after {n} chunks");
                            self.done(id, FinishReason::Cancelled, n);
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => sleep_forever(),
                }
            }
            std::thread::sleep(self.flags.chunk_delay);
            self.chunk(id, n);
            n += 1;
            self.chunks_sent += 1;
            if self.flags.crash_after_chunks == Some(self.chunks_sent) {
                eprintln!(
                    "fake-worker: crashing after {} chunks as asked",
                    self.chunks_sent
                );
                std::process::abort();
            }
        }
        self.done(id, FinishReason::Length, n);
    }

    fn done(&self, request_id: u64, finish_reason: FinishReason, completion_tokens: u32) {
        send(
            &self.stream,
            &FromWorker::Done {
                request_id,
                finish_reason,
                usage: Usage {
                    prompt_tokens: 1,
                    completion_tokens,
                    cached_prompt_tokens: 0,
                    reasoning_tokens: 0,
                },
                timings: Timings::default(),
            },
        );
    }
}
