//! `opta-lmx-worker serve` driven as the controller drives it: bind a Unix socket, spawn the
//! real binary, accept its connection, and speak the framed protocol.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use opta_lmx_shared::model_dir::read_config;
use opta_lmx_shared::protocol::{
    read_frame_blocking, write_frame_blocking, Delta, ErrorKind, FinishReason, FromWorker,
    GenerateRequest, ModelFacts, OutputSpec, Prompt, SamplingParams, Timings, ToWorker, Usage,
    WorkerStats, PROTOCOL_VERSION,
};
use opta_lmx_worker::tokenizer::Tokenizer;
use serde_json::json;

/// Longest wait for any one frame; only reached when something is broken.
const FRAME_TIMEOUT: Duration = Duration::from_secs(120);

fn models_dir() -> PathBuf {
    std::env::var_os("OPTA_LMX_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.deps/models/opta"))
        })
}

fn smollm() -> PathBuf {
    models_dir().join("SmolLM2-135M-Instruct-f32")
}

fn tiny() -> PathBuf {
    models_dir().join("tiny-random-llama")
}

/// Kills and reaps the worker however the test ends, so no test leaves a process behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The controller's end of one worker.
struct Worker {
    child: ChildGuard,
    stream: Option<UnixStream>,
    /// Prefill progress frames as they came, (request, done, total): `recv` sets them aside,
    /// since they may come between any two other frames.
    progress: Vec<(u64, u32, u32)>,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// Binds a socket, spawns `serve` on `model`, and accepts its connection.
    fn start(model: &Path) -> Worker {
        Worker::start_with(model, &[])
    }

    /// As `start`, with extra `serve` arguments.
    fn start_with(model: &Path, args: &[&str]) -> Worker {
        // Short path: Unix socket paths are limited to about 104 bytes on macOS.
        let dir = tempfile::Builder::new()
            .prefix("lmx")
            .tempdir_in("/tmp")
            .unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_opta-lmx-worker"))
            .arg("serve")
            .arg("--socket")
            .arg(&path)
            .arg("--model")
            .arg(model)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut child = ChildGuard(child);

        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(status) = child.0.try_wait().unwrap() {
                        panic!("worker exited before connecting: {status}");
                    }
                    assert!(Instant::now() < deadline, "worker did not connect");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        // Accepted sockets inherit O_NONBLOCK on macOS.
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
        Worker {
            child,
            stream: Some(stream),
            progress: Vec::new(),
            _dir: dir,
        }
    }

    fn stream(&mut self) -> &mut UnixStream {
        self.stream.as_mut().expect("socket still open")
    }

    fn send(&mut self, msg: ToWorker) {
        write_frame_blocking(self.stream(), &msg).unwrap();
    }

    /// The next frame but prefill progress, which goes to `progress`.
    fn recv(&mut self) -> FromWorker {
        loop {
            let frame = read_frame_blocking(self.stream())
                .expect("read a frame")
                .expect("worker closed the socket");
            match frame {
                FromWorker::Progress {
                    request_id,
                    done,
                    total,
                } => self.progress.push((request_id, done, total)),
                other => return other,
            }
        }
    }

    /// Expects `Hello` then `Ready`.
    fn handshake(&mut self) -> ModelFacts {
        match self.recv() {
            FromWorker::Hello {
                protocol_version,
                worker_version,
                pid,
            } => {
                assert_eq!(protocol_version, PROTOCOL_VERSION);
                assert_eq!(worker_version, env!("CARGO_PKG_VERSION"));
                assert_eq!(pid, self.child.0.id());
            }
            other => panic!("expected Hello, got {other:?}"),
        }
        match self.recv() {
            FromWorker::Ready(facts) => facts,
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    /// Frames up to and including the `Done` or `Error` for `id`.
    fn until_end_of(&mut self, id: u64) -> Vec<FromWorker> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv();
            let end = matches!(
                &frame,
                FromWorker::Done { request_id, .. } if *request_id == id
            ) || matches!(
                &frame,
                FromWorker::Error { request_id: Some(r), .. } if *r == id
            );
            frames.push(frame);
            if end {
                return frames;
            }
        }
    }

    /// Runs a request alone and sums up its answer.
    fn complete(&mut self, req: GenerateRequest) -> Answer {
        let id = req.request_id;
        self.send(ToWorker::Generate(req));
        Answer::of(id, &self.until_end_of(id))
    }

    fn stats(&mut self) -> WorkerStats {
        self.send(ToWorker::GetStats);
        match self.recv() {
            FromWorker::Stats(s) => s,
            other => panic!("expected Stats, got {other:?}"),
        }
    }

    /// Polls for the worker's exit for up to `within`.
    fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One request's frames, summed up.
#[derive(Debug)]
struct Answer {
    /// `Accepted`'s prompt tokens, if it came, and how many of the request's frames came
    /// before it (it must be the first).
    accepted: Option<(u32, usize)>,
    text: String,
    /// Generated tokens behind the deltas.
    tokens: usize,
    chunks: usize,
    logprobs: Vec<opta_lmx_shared::protocol::TokenLogprob>,
    end: End,
}

#[derive(Debug)]
enum End {
    Done(FinishReason, Usage, Timings),
    Error(ErrorKind, String),
}

impl Answer {
    /// Sums the frames of request `id`, ignoring other requests' frames.
    fn of(id: u64, frames: &[FromWorker]) -> Answer {
        let mut a = Answer {
            accepted: None,
            text: String::new(),
            tokens: 0,
            chunks: 0,
            logprobs: Vec::new(),
            end: End::Error(ErrorKind::Internal, "no end frame".into()),
        };
        let mut seen = 0;
        for frame in frames {
            match frame {
                FromWorker::Accepted {
                    request_id,
                    prompt_tokens,
                } if *request_id == id => {
                    assert!(a.accepted.is_none(), "{id} accepted twice");
                    a.accepted = Some((*prompt_tokens, seen));
                }
                FromWorker::Chunk {
                    request_id,
                    deltas,
                    logprobs,
                } if *request_id == id => {
                    // None while a token's text is held back (half a character).
                    assert!(deltas.len() <= 1, "at most one text delta: {deltas:?}");
                    for delta in deltas {
                        match delta {
                            Delta::Text { text, tokens } => {
                                a.text.push_str(text);
                                a.tokens += *tokens as usize;
                            }
                            other => panic!("only text deltas so far, got {other:?}"),
                        }
                    }
                    a.logprobs.extend(logprobs.iter().cloned());
                    a.chunks += 1;
                }
                FromWorker::Done {
                    request_id,
                    finish_reason,
                    usage,
                    timings,
                } if *request_id == id => a.end = End::Done(*finish_reason, *usage, *timings),
                FromWorker::Error {
                    request_id: Some(r),
                    kind,
                    message,
                } if *r == id => a.end = End::Error(*kind, message.clone()),
                _ => continue,
            }
            seen += 1;
        }
        a
    }

    /// The prompt tokens `Accepted` reported; it must be the request's first frame.
    fn accepted(&self) -> u32 {
        match self.accepted {
            Some((prompt_tokens, 0)) => prompt_tokens,
            Some((_, before)) => panic!("{before} frames came before Accepted: {self:?}"),
            None => panic!("never accepted: {self:?}"),
        }
    }

    /// The generated token ids, from the logprobs (the request must ask for them).
    fn ids(&self) -> Vec<u32> {
        assert_eq!(self.logprobs.len(), self.tokens, "a logprob per token");
        self.logprobs.iter().map(|l| l.token_id).collect()
    }

    fn done(&self) -> (FinishReason, Usage, Timings) {
        match &self.end {
            End::Done(f, u, t) => (*f, *u, *t),
            End::Error(kind, message) => panic!("expected Done, got {kind:?}: {message}"),
        }
    }

    fn error(&self) -> (ErrorKind, &str) {
        match &self.end {
            End::Error(kind, message) => (*kind, message),
            End::Done(f, ..) => panic!("expected Error, got Done({f:?})"),
        }
    }
}

fn request(id: u64, prompt: Prompt, max_tokens: Option<u32>) -> GenerateRequest {
    GenerateRequest {
        request_id: id,
        prompt,
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop: Vec::new(),
        logprobs: None,
        output: OutputSpec::default(),
    }
}

/// A request that runs until the context is full: EOS is biased away, so only Cancel,
/// Shutdown or a lost socket end it early (the tiny model's 2048 tokens take seconds).
fn endless(id: u64, facts: &ModelFacts) -> GenerateRequest {
    let mut req = request(id, Prompt::Text("Once upon a time".into()), None);
    req.sampling.logit_bias = facts.eos_token_ids.iter().map(|&t| (t, -1e4)).collect();
    req
}

/// Waits for the first chunk of `id`, so the request is surely running.
fn first_chunk(w: &mut Worker, id: u64) {
    loop {
        match w.recv() {
            FromWorker::Chunk { request_id, .. } if request_id == id => return,
            FromWorker::Chunk { .. } | FromWorker::Accepted { .. } => {}
            other => panic!("expected a chunk of {id}, got {other:?}"),
        }
    }
}

#[test]
fn hello_then_ready_reports_model_facts() {
    let mut w = Worker::start(&smollm());
    let facts = w.handshake();
    assert_eq!(facts.model_type, "llama");
    assert_eq!(facts.num_layers, 30);
    assert_eq!(facts.context_length, 8192);
    assert_eq!(facts.vocab_size, 49152);
    assert_eq!(facts.quantization, "none");
    // ~135M f32 parameters.
    assert!(
        (400_000_000..700_000_000).contains(&facts.weights_bytes),
        "{}",
        facts.weights_bytes
    );
    assert!(facts.load_seconds > 0.0);
    assert!(facts.eos_token_ids.contains(&2), "<|im_end|>");

    let stats = w.stats();
    assert_eq!((stats.active_requests, stats.queued_requests), (0, 0));
    assert!(
        stats.active_memory_bytes >= facts.weights_bytes,
        "{stats:?}"
    );
    assert!(
        stats.peak_memory_bytes >= stats.active_memory_bytes,
        "{stats:?}"
    );
}

#[test]
fn greedy_chat_streams_chunks_and_answers_paris() {
    let mut w = Worker::start(&smollm());
    w.handshake();
    let question = "What is the capital of France?";
    // Token ids travel only in the logprobs.
    let mut req = request(1, Prompt::user(question), Some(32));
    req.logprobs = Some(0);
    let a = w.complete(req);
    let (finish, usage, timings) = a.done();
    assert!(a.text.contains("Paris"), "{}", a.text);
    assert_eq!(finish, FinishReason::Stop, "ends with EOS: {}", a.text);
    assert!(a.chunks > 1, "streamed in several chunks");

    // The prompt the worker built is the chat template's, token for token.
    let dir = smollm();
    let tokenizer = Tokenizer::load(&dir, &read_config(&dir).unwrap()).unwrap();
    let rendered = tokenizer
        .render_chat(&json!([{"role": "user", "content": question}]), None, true)
        .unwrap();
    let prompt_tokens = tokenizer.encode(&rendered).unwrap().len() as u32;
    assert_eq!(usage.prompt_tokens, prompt_tokens);
    assert_eq!(a.accepted(), prompt_tokens);
    // The prompt fits one prefill chunk: one report, of the whole prompt.
    assert_eq!(w.progress, [(1, prompt_tokens, prompt_tokens)]);
    assert_eq!(
        usage.completion_tokens as usize,
        a.tokens + 1,
        "EOS counted, not sent"
    );
    assert_eq!(usage.cached_prompt_tokens, 0);
    assert_eq!(usage.reasoning_tokens, 0);
    assert_eq!(tokenizer.decode(&a.ids()).unwrap(), a.text);
    assert!(timings.time_to_first_token_ms > 0.0 && timings.queue_ms >= 0.0);
    assert!(timings.time_to_first_token_ms >= timings.prompt_ms);
}

#[test]
fn requests_in_flight_together_share_the_batch_each_with_its_own_limits() {
    let mut w = Worker::start(&tiny());
    w.handshake();
    let mut second = request(2, Prompt::user("And you?"), Some(6));
    second.logprobs = Some(3);
    w.send(ToWorker::Generate(request(
        1,
        Prompt::Tokens(vec![1, 2, 3, 4]),
        Some(24),
    )));
    w.send(ToWorker::Generate(second));
    let mut frames = w.until_end_of(2);
    if !frames
        .iter()
        .any(|f| matches!(f, FromWorker::Done { request_id: 1, .. }))
    {
        frames.extend(w.until_end_of(1));
    }

    let ids: Vec<u64> = frames
        .iter()
        .map(|f| match f {
            FromWorker::Accepted { request_id, .. }
            | FromWorker::Chunk { request_id, .. }
            | FromWorker::Done { request_id, .. } => *request_id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    // Request 2 started before request 1 finished: they ran together, not one after another.
    let first_of_2 = frames
        .iter()
        .position(|f| matches!(f, FromWorker::Chunk { request_id: 2, .. }))
        .unwrap();
    let done_of_1 = frames
        .iter()
        .position(|f| matches!(f, FromWorker::Done { request_id: 1, .. }))
        .unwrap();
    assert!(first_of_2 < done_of_1, "{ids:?}");

    for (id, max) in [(1, 24), (2, 6)] {
        let a = Answer::of(id, &frames);
        let (finish, usage, _) = a.done();
        assert!(usage.completion_tokens <= max, "{id}: {usage:?}");
        match finish {
            FinishReason::Length => assert_eq!(usage.completion_tokens, max),
            FinishReason::Stop => {}
            FinishReason::Cancelled => panic!("{id} was cancelled"),
        }
    }
    assert_eq!(Answer::of(1, &frames).done().1.prompt_tokens, 4);
    assert_eq!(Answer::of(1, &frames).accepted(), 4);
    let a2 = Answer::of(2, &frames);
    assert_eq!(a2.accepted(), a2.done().1.prompt_tokens);
    // Request 2 asked for logprobs; request 1 did not.
    assert!(a2.done().2.queue_ms >= 0.0);
    assert!(Answer::of(1, &frames).logprobs.is_empty());
    assert_eq!(a2.logprobs.len(), a2.tokens);
    assert!(a2.logprobs.iter().all(|l| l.top.len() == 3));

    let stats = w.stats();
    assert_eq!((stats.active_requests, stats.queued_requests), (0, 0));
}

#[test]
fn cancel_ends_running_and_queued_requests_and_the_next_one_still_runs() {
    // One request at a time, so the second one waits in the queue.
    let mut w = Worker::start_with(&tiny(), &["--max-batch", "1"]);
    let facts = w.handshake();
    w.send(ToWorker::Generate(endless(1, &facts)));
    first_chunk(&mut w, 1);
    w.send(ToWorker::Generate(request(
        2,
        Prompt::user("queued"),
        Some(4),
    )));
    w.send(ToWorker::GetStats);
    let mut accepted = false;
    let stats = loop {
        match w.recv() {
            FromWorker::Stats(s) => break s,
            FromWorker::Chunk { request_id: 1, .. } => {}
            // The queued request is accepted on arrival, before the stats asked after it.
            FromWorker::Accepted { request_id: 2, .. } => accepted = true,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(accepted, "request 2 accepted while it waits");
    assert_eq!((stats.active_requests, stats.queued_requests), (1, 1));

    // Cancelling the queued one answers at once, while 1 keeps running.
    w.send(ToWorker::Cancel { request_id: 2 });
    let frames = w.until_end_of(2);
    let (finish, usage, _) = Answer::of(2, &frames).done();
    assert_eq!(finish, FinishReason::Cancelled);
    assert_eq!(usage, Usage::default());
    assert_eq!(Answer::of(2, &frames).chunks, 0);

    let sent = Instant::now();
    w.send(ToWorker::Cancel { request_id: 1 });
    let frames = w.until_end_of(1);
    let (finish, usage, _) = Answer::of(1, &frames).done();
    assert_eq!(finish, FinishReason::Cancelled);
    assert!(usage.completion_tokens < 2000, "{usage:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );

    // A Cancel for a finished request is ignored; the worker serves the next one.
    w.send(ToWorker::Cancel { request_id: 1 });
    let a = w.complete(request(3, Prompt::user("next"), Some(4)));
    assert_ne!(a.done().0, FinishReason::Cancelled);
    assert!(a.done().1.completion_tokens <= 4);
}

#[test]
fn request_errors_are_reported_and_the_worker_keeps_serving() {
    let mut w = Worker::start(&tiny());
    w.handshake();

    let a = w.complete(request(1, Prompt::Tokens(Vec::new()), Some(4)));
    assert_eq!(a.error().0, ErrorKind::InvalidRequest, "{a:?}");
    assert_eq!(a.chunks, 0);
    assert!(a.accepted.is_none(), "{a:?}");

    let a = w.complete(request(2, Prompt::Tokens(vec![1, 49152]), Some(4)));
    assert_eq!(a.error().0, ErrorKind::InvalidRequest, "{a:?}");
    assert!(a.accepted.is_none(), "{a:?}");

    let a = w.complete(request(
        6,
        Prompt::Chat {
            messages_json: r#"[{"role":"user","content":"hi"}"#.into(),
            tools_json: None,
            add_generation_prompt: true,
            template_kwargs_json: None,
        },
        Some(4),
    ));
    let (kind, message) = a.error();
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert!(message.contains("messages_json"), "{message}");
    assert!(a.accepted.is_none(), "{a:?}");

    let mut bad_tools = request(3, Prompt::user("hi"), Some(4));
    if let Prompt::Chat { tools_json, .. } = &mut bad_tools.prompt {
        *tools_json = Some("[{".into());
    }
    let a = w.complete(bad_tools);
    let (kind, message) = a.error();
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert!(message.contains("tools_json"), "{message}");

    let a = w.complete(request(4, Prompt::Tokens(vec![1; 2048]), Some(4)));
    assert_eq!(a.error().0, ErrorKind::ContextLengthExceeded, "{a:?}");
    assert!(a.accepted.is_none(), "{a:?}");

    let a = w.complete(request(5, Prompt::Text("hello".into()), Some(3)));
    let (_, usage, _) = a.done();
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens <= 3);
    assert_eq!(a.accepted(), usage.prompt_tokens);
}

#[test]
fn prompts_are_accepted_or_refused_on_arrival_even_while_the_batch_is_full() {
    // One request at a time: request 1 keeps the batch full for the whole test.
    let mut w = Worker::start_with(&tiny(), &["--max-batch", "1"]);
    let facts = w.handshake();
    assert_eq!(facts.context_length, 2048);
    w.send(ToWorker::Generate(endless(1, &facts)));
    first_chunk(&mut w, 1);

    // A chat prompt far longer than the context: refused by its only frame, while request 1
    // is still running (no waiting for room first).
    let long = "the quick brown fox jumps over the lazy dog ".repeat(400);
    w.send(ToWorker::Generate(request(2, Prompt::user(&long), Some(4))));
    // A prompt that fits: accepted at once with its templated length, then it waits.
    let question = "What is the capital of France?";
    w.send(ToWorker::Generate(request(
        3,
        Prompt::user(question),
        Some(4),
    )));
    let mut frames = Vec::new();
    while !frames
        .iter()
        .any(|f| matches!(f, FromWorker::Accepted { request_id: 3, .. }))
    {
        match w.recv() {
            FromWorker::Chunk { request_id: 1, .. } => {}
            frame => frames.push(frame),
        }
    }
    assert!(
        matches!(
            frames[..],
            [
                FromWorker::Error {
                    request_id: Some(2),
                    kind: ErrorKind::ContextLengthExceeded,
                    ..
                },
                FromWorker::Accepted { request_id: 3, .. }
            ]
        ),
        "{frames:?}"
    );
    let FromWorker::Error { message, .. } = &frames[0] else {
        unreachable!()
    };
    assert!(message.contains("2048"), "{message}");

    let dir = tiny();
    let tokenizer = Tokenizer::load(&dir, &read_config(&dir).unwrap()).unwrap();
    let rendered = tokenizer
        .render_chat(&json!([{"role": "user", "content": question}]), None, true)
        .unwrap();
    let prompt_tokens = tokenizer.encode(&rendered).unwrap().len() as u32;
    let FromWorker::Accepted {
        prompt_tokens: accepted,
        ..
    } = frames[1]
    else {
        unreachable!()
    };
    assert_eq!(accepted, prompt_tokens);

    // Request 3 runs once request 1 is gone, and reports the length it was accepted with.
    w.send(ToWorker::Cancel { request_id: 1 });
    let frames = w.until_end_of(3);
    assert_eq!(Answer::of(1, &frames).done().0, FinishReason::Cancelled);
    let a = Answer::of(3, &frames);
    assert_eq!(a.done().1.prompt_tokens, prompt_tokens);
    assert!(a.done().1.completion_tokens <= 4);
    assert!(a.accepted.is_none(), "no second Accepted");

    // A token prompt filling the whole context is refused too; one token less fits.
    let a = w.complete(request(4, Prompt::Tokens(vec![1; 2048]), Some(4)));
    assert_eq!(a.error().0, ErrorKind::ContextLengthExceeded, "{a:?}");
    assert!(a.accepted.is_none(), "{a:?}");
    let mut fits = request(5, Prompt::Tokens(vec![1; 2047]), Some(4));
    fits.sampling.logit_bias = facts.eos_token_ids.iter().map(|&t| (t, -1e4)).collect();
    let a = w.complete(fits);
    assert_eq!(a.accepted(), 2047);
    let (finish, usage, _) = a.done();
    assert_eq!((finish, usage.completion_tokens), (FinishReason::Length, 1));
}

#[test]
fn a_bad_model_dir_gives_load_failed_and_a_nonzero_exit() {
    let empty = tempfile::tempdir().unwrap();
    let mut w = Worker::start(empty.path());
    assert!(matches!(w.recv(), FromWorker::Hello { .. }));
    match w.recv() {
        FromWorker::LoadFailed { message } => {
            assert!(message.contains("config.json"), "{message}")
        }
        other => panic!("expected LoadFailed, got {other:?}"),
    }
    let status = w
        .exit_within(Duration::from_secs(10))
        .expect("worker exits");
    assert!(!status.success(), "{status}");
}

#[test]
fn the_worker_exits_when_the_controller_drops_the_socket_mid_generation() {
    let mut w = Worker::start(&tiny());
    let facts = w.handshake();
    w.send(ToWorker::Generate(endless(1, &facts)));
    first_chunk(&mut w, 1);
    w.stream = None;
    let status = w
        .exit_within(Duration::from_secs(2))
        .expect("worker exits within 2 s of EOF");
    assert!(status.success(), "EOF is a normal stop: {status}");
}

#[test]
fn shutdown_cancels_the_running_request_and_exits_zero() {
    let mut w = Worker::start(&tiny());
    let facts = w.handshake();
    w.send(ToWorker::Generate(endless(1, &facts)));
    first_chunk(&mut w, 1);
    w.send(ToWorker::Generate(request(
        2,
        Prompt::user("queued"),
        Some(4),
    )));
    w.send(ToWorker::Shutdown);
    let frames = w.until_end_of(1);
    assert_eq!(Answer::of(1, &frames).done().0, FinishReason::Cancelled);
    let frames = w.until_end_of(2);
    assert_eq!(Answer::of(2, &frames).done().0, FinishReason::Cancelled);

    let status = w.exit_within(Duration::from_secs(5)).expect("worker exits");
    assert!(status.success(), "{status}");
    // Protocol data never goes to stdout (nor anything else).
    let mut out = String::new();
    std::io::Read::read_to_string(w.child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert_eq!(out, "");
}

/// The ids mlx-lm generated for `variant`'s reference cases, with their prompt ids.
fn reference_cases(variant: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/reference_ids.json");
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> { serde_json::from_value(v.clone()).unwrap() };
    all["models"][variant]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (ids(&c["prompt_ids"]), ids(&c["ids"])))
        .collect()
}

/// A tensor-parallel model served as any other: rank 0 starts the other rank over loopback
/// and hands it every request, so requests batched together answer with mlx-lm's greedy ids
/// (one process), twice (the second time from the prompt cache); a rank that dies ends rank
/// 0, which the controller then restarts as a crashed worker.
#[test]
fn tensor_parallel_ranks_serve_in_step_and_a_dead_rank_ends_the_worker() {
    let variant = "tiny-random-glm4-moe";
    let mut w = Worker::start_with(
        &models_dir().join(variant),
        &["--tensor-parallel", "ring", "--local-ranks", "2"],
    );
    let facts = w.handshake();
    let cases = reference_cases(variant);
    for round in 0..2 {
        for (i, (prompt, _)) in cases.iter().enumerate() {
            let mut req = request(
                (round * 10 + i) as u64,
                Prompt::Tokens(prompt.clone()),
                Some(16),
            );
            req.logprobs = Some(0);
            w.send(ToWorker::Generate(req));
        }
        let mut frames = Vec::new();
        for i in 0..cases.len() {
            frames.extend(w.until_end_of((round * 10 + i) as u64));
        }
        for (i, (_, want)) in cases.iter().enumerate() {
            let a = Answer::of((round * 10 + i) as u64, &frames);
            a.done();
            assert_eq!(&a.ids(), want, "round {round}, case {i}");
        }
    }
    // A request with no seed is sampled alike on both ranks (rank 0 gives it one): it runs to
    // its end rather than hanging the group.
    let mut sampled = request(30, Prompt::Text("Once upon a time".into()), Some(24));
    sampled.sampling = SamplingParams {
        temperature: 1.0,
        ..SamplingParams::default()
    };
    w.complete(sampled).done();

    w.send(ToWorker::Generate(endless(40, &facts)));
    first_chunk(&mut w, 40);
    let pid = w.child.0.id();
    // Children are listed per thread; rank 1 was started by the engine thread.
    let children: String = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the worker's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .collect::<Vec<_>>()
        .join(" ");
    let follower: i32 = children
        .split_whitespace()
        .next()
        .expect("rank 1 is the worker's child")
        .parse()
        .unwrap();
    // SAFETY: a plain kill(2) of a process this test's worker started.
    assert_eq!(unsafe { libc::kill(follower, libc::SIGKILL) }, 0);
    let status = w
        .exit_within(Duration::from_secs(30))
        .expect("rank 0 exits");
    assert!(!status.success(), "{status}");
}
