//! The worker supervisor driven directly: real workers on the tiny test models, and
//! `opta-lmx-fake-worker` (tests/support/fake_worker.rs) for faults a real worker will not
//! produce on demand. Build the binaries first (scripts/test.sh builds the whole workspace).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use opta_lmx::manager::{
    GenerationStream, ManagerConfig, ManagerError, ModelManager, ModelState, StreamEvent,
};
use opta_lmx_shared::protocol::{
    answer_text, FinishReason, GenerateRequest, OutputSpec, Prompt, SamplingParams,
};
use opta_lmx_tests::{binary, fake_worker_script, model};

fn config(worker_bin: PathBuf) -> ManagerConfig {
    ManagerConfig {
        worker_bin,
        socket_dir: None,
        // Generous: a debug build on a busy 2-core machine loads slowly.
        load_timeout: Duration::from_secs(120),
        request_timeout: Duration::from_secs(60),
        stop_grace: Duration::from_millis(500),
        max_memory_percent: 100,
        auto_evict_lru: false,
        max_batch: 8,
        prompt_cache_mb: 512,
        prompt_cache_dir: None,
        prompt_cache_disk_mb: 0,
        prefill_step: 2048,
        tool_syntax: Default::default(),
        tensor_parallel: Default::default(),
    }
}

fn real_manager() -> Arc<ModelManager> {
    ModelManager::new(config(binary("opta-lmx-worker")))
}

/// A fake worker with `flags`: a script that execs it (so the pid is the fake's own) with the
/// flags before the manager's arguments, plus an empty model folder for it.
struct Fake {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Fake {
    fn new(flags: &str) -> Fake {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = fake_worker_script(dir.path(), flags);
        std::fs::create_dir(dir.path().join("model")).expect("model dir");
        Fake { dir, bin }
    }

    fn model_dir(&self) -> PathBuf {
        self.dir.path().join("model")
    }

    /// Pids of every fake worker started on this folder, in order.
    fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.model_dir().join("fake-worker.pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn manager(&self, tweak: impl FnOnce(&mut ManagerConfig)) -> Arc<ModelManager> {
        let mut cfg = config(self.bin.clone());
        cfg.load_timeout = Duration::from_secs(30);
        tweak(&mut cfg);
        ModelManager::new(cfg)
    }
}

fn request(prompt: Prompt, max_tokens: Option<u32>) -> GenerateRequest {
    GenerateRequest {
        request_id: 0,
        prompt,
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop: Vec::new(),
        logprobs: None,
        output: OutputSpec::default(),
    }
}

fn text(max_tokens: u32) -> GenerateRequest {
    request(Prompt::Text("Once upon a time".into()), Some(max_tokens))
}

fn chat(content: &str, max_tokens: u32) -> GenerateRequest {
    request(Prompt::user(content), Some(max_tokens))
}

/// Reads a stream to its end: the text and the terminal event.
async fn collect(mut stream: GenerationStream) -> (String, StreamEvent) {
    let mut out = String::new();
    let deadline = Duration::from_secs(120);
    loop {
        let event = tokio::time::timeout(deadline, stream.next())
            .await
            .expect("the stream stalled")
            .expect("the stream ended without a terminal event");
        match event {
            StreamEvent::Accepted { .. } | StreamEvent::Progress { .. } => {}
            StreamEvent::Chunk { deltas, .. } => out.push_str(&answer_text(&deltas)),
            terminal => {
                assert!(
                    stream.next().await.is_none(),
                    "events after the terminal one"
                );
                return (out, terminal);
            }
        }
    }
}

/// The next chunk's text, past the worker's acceptance of the prompt.
async fn next_chunk(stream: &mut GenerationStream) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Ok(Some(StreamEvent::Accepted { .. } | StreamEvent::Progress { .. })) => continue,
            Ok(Some(StreamEvent::Chunk { deltas, .. })) => return answer_text(&deltas),
            other => panic!("expected a chunk, got {other:?}"),
        }
    }
}

fn assert_done(event: &StreamEvent) {
    assert!(
        matches!(event, StreamEvent::Done { .. }),
        "expected Done, got {event:?}"
    );
}

fn alive(pid: u32) -> bool {
    match kill(Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => panic!("kill({pid}, 0): {e}"),
    }
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("signal the worker");
}

fn status(m: &ModelManager, id: &str) -> opta_lmx::manager::ModelStatus {
    m.models()
        .into_iter()
        .find(|s| s.model_id == id)
        .unwrap_or_else(|| panic!("{id} is not listed"))
}

/// Waits until `cond` holds (polling), or panics after `max`.
async fn wait_until(what: &str, max: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < max, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_run_in_their_own_workers_and_both_generate() {
    let m = real_manager();
    let tiny = model("tiny-random-llama");
    let smol = model("SmolLM2-135M-Instruct-f32");
    let (a, b) = tokio::join!(m.load("tiny", &tiny, None), m.load("smol", &smol, None));
    let (a, b) = (a.expect("load tiny"), b.expect("load smol"));
    assert_ne!(a.pid, b.pid);
    assert!(alive(a.pid) && alive(b.pid));
    assert_eq!(a.facts.model_type, "llama");

    let (sa, sb) = tokio::join!(
        m.generate("tiny", text(8)),
        m.generate("smol", chat("Say hello.", 6))
    );
    let ((_, ea), (answer, eb)) = tokio::join!(collect(sa.unwrap()), collect(sb.unwrap()));
    assert_done(&ea);
    assert_done(&eb);
    assert!(
        answer.to_lowercase().contains("hello"),
        "SmolLM2 answered {answer:?}"
    );

    let models = m.models();
    assert_eq!(models.len(), 2);
    for s in &models {
        assert_eq!(s.state, ModelState::Ready, "{s:?}");
        assert_eq!(s.in_flight, 0);
        assert!(s.resident_bytes.unwrap_or(0) > 0, "{s:?}");
        assert!(s.socket_path.as_ref().is_some_and(|p| p.exists()), "{s:?}");
    }
    let smol_status = status(&m, "smol");
    // The f32 weights are about 540 MB; the OS must see them resident in that worker.
    assert!(
        smol_status.resident_bytes.unwrap_or(0) > 400 << 20,
        "{smol_status:?}"
    );

    let sockets: Vec<PathBuf> = models
        .iter()
        .filter_map(|s| s.socket_path.clone())
        .collect();
    m.shutdown().await;
    assert!(!alive(a.pid) && !alive(b.pid));
    for s in &sockets {
        assert!(!s.exists(), "{} is left behind", s.display());
        // The private socket directory goes with the manager's shutdown.
        assert!(!s.parent().unwrap().exists());
    }
    assert!(m.models().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_ends_that_stream_with_crashed_and_the_model_restarts() {
    let m = real_manager();
    let tiny = model("tiny-random-llama");
    let (a, b) = tokio::join!(
        m.load("victim", &tiny, None),
        m.load("bystander", &tiny, None)
    );
    let (victim, bystander) = (a.unwrap(), b.unwrap());

    let mut stream = m.generate("victim", text(1000)).await.unwrap();
    next_chunk(&mut stream).await;
    next_chunk(&mut stream).await;
    signal(victim.pid, Signal::SIGKILL);
    let (_, end) = collect(stream).await;
    match &end {
        StreamEvent::Error(ManagerError::Crashed { status, .. }) => {
            assert_eq!(status, "signal 9 (SIGKILL)")
        }
        other => panic!("expected Crashed, got {other:?}"),
    }

    let (_, end) = collect(m.generate("bystander", text(4)).await.unwrap()).await;
    assert_done(&end);
    assert_eq!(status(&m, "bystander").pid, Some(bystander.pid));

    let crashed = status(&m, "victim");
    assert_eq!(crashed.state, ModelState::Crashed);
    let crash = crashed.crash.expect("crash info");
    assert_eq!(crash.status, "signal 9 (SIGKILL)");
    assert!(!m.is_ready("victim"));
    let err = m.generate("victim", text(4)).await.unwrap_err();
    assert!(matches!(err, ManagerError::Crashed { .. }), "{err:?}");

    let again = m.load("victim", &tiny, None).await.expect("restart");
    assert_ne!(again.pid, victim.pid);
    let (_, end) = collect(m.generate("victim", text(4)).await.unwrap()).await;
    assert_done(&end);
    let restarted = status(&m, "victim");
    assert_eq!(restarted.state, ModelState::Ready);
    assert_eq!(restarted.restarts, 1);
    m.shutdown().await;
    assert!(!alive(again.pid) && !alive(bystander.pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_times_out_the_request_and_unload_still_removes_the_worker() {
    let mut cfg = config(binary("opta-lmx-worker"));
    cfg.request_timeout = Duration::from_secs(2);
    let m = ModelManager::new(cfg);
    let tiny = model("tiny-random-llama");
    let (a, b) = tokio::join!(m.load("frozen", &tiny, None), m.load("fine", &tiny, None));
    let (frozen, _) = (a.unwrap(), b.unwrap());
    let socket = status(&m, "frozen").socket_path.unwrap();

    signal(frozen.pid, Signal::SIGSTOP);
    let started = Instant::now();
    let stream = m.generate("frozen", text(4)).await.unwrap();
    assert_eq!(status(&m, "frozen").in_flight, 1);
    let waiting = tokio::spawn(collect(stream));

    // Meanwhile the controller answers, and the other model serves.
    let (_, end) = collect(m.generate("fine", text(4)).await.unwrap()).await;
    assert_done(&end);

    let (_, end) = waiting.await.unwrap();
    let waited = started.elapsed();
    match &end {
        StreamEvent::Error(e @ ManagerError::Timeout { .. }) => {
            assert!(e.to_string().contains("no output"), "{e}")
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "timed out after {waited:?}"
    );
    assert_eq!(status(&m, "frozen").in_flight, 0);

    m.unload("frozen").await.expect("unload a stopped worker");
    assert!(!alive(frozen.pid));
    assert!(!socket.exists());
    assert!(m.models().iter().all(|s| s.model_id != "frozen"));
    assert!(matches!(
        m.unload("frozen").await,
        Err(ManagerError::NotLoaded(_))
    ));
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_loads_start_exactly_one_worker() {
    let m = real_manager();
    let tiny = model("tiny-random-llama");
    let mut loads = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (m, tiny) = (Arc::clone(&m), tiny.clone());
        loads.spawn(async move { m.load("tiny", &tiny, None).await });
    }
    let mut pids = Vec::new();
    while let Some(r) = loads.join_next().await {
        pids.push(r.unwrap().expect("load").pid);
    }
    assert_eq!(pids.len(), 20);
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    assert_eq!(m.models().len(), 1);
    m.shutdown().await;
    assert!(!alive(pids[0]));
}

#[tokio::test]
async fn a_bad_model_folder_is_load_failed_naming_the_missing_file() {
    let m = real_manager();
    let empty = tempfile::tempdir().unwrap();
    let err = m.load("empty", empty.path(), None).await.unwrap_err();
    match &err {
        ManagerError::LoadFailed { model, message } => {
            assert_eq!(model, "empty");
            assert!(message.contains("config.json"), "{message}");
        }
        other => panic!("expected LoadFailed, got {other:?}"),
    }
    assert!(m.models().is_empty(), "{:?}", m.models());
    m.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_exits_before_hello_is_exited_before_ready_with_its_stderr() {
    let fake = Fake::new("--exit-before-hello");
    let m = fake.manager(|_| {});
    let err = m.load("early", &fake.model_dir(), None).await.unwrap_err();
    match &err {
        ManagerError::ExitedBeforeReady {
            status,
            stderr_tail,
            ..
        } => {
            assert_eq!(status, "exit code 3");
            assert!(
                stderr_tail.contains("exiting before hello"),
                "{stderr_tail}"
            );
        }
        other => panic!("expected ExitedBeforeReady, got {other:?}"),
    }
    assert!(err.to_string().contains("exiting before hello"), "{err}");
    assert_eq!(status(&m, "early").state, ModelState::Crashed);
    m.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_reports_load_failed_gives_its_reason() {
    let fake = Fake::new("--load-fail 'unsupported architecture: mamba'");
    let m = fake.manager(|_| {});
    let err = m.load("mamba", &fake.model_dir(), None).await.unwrap_err();
    match &err {
        ManagerError::LoadFailed { message, .. } => {
            assert_eq!(message, "unsupported architecture: mamba")
        }
        other => panic!("expected LoadFailed, got {other:?}"),
    }
    assert!(fake.pids().iter().all(|p| !alive(*p)));
    m.shutdown().await;
}

#[tokio::test]
async fn a_worker_hanging_in_load_times_out_and_is_killed() {
    let fake = Fake::new("--hang-on-load");
    let m = fake.manager(|c| c.load_timeout = Duration::from_secs(1));
    let err = m.load("hang", &fake.model_dir(), None).await.unwrap_err();
    match &err {
        ManagerError::Timeout { what, .. } => assert!(what.contains("Ready"), "{what}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let pids = fake.pids();
    assert_eq!(pids.len(), 1);
    assert!(!alive(pids[0]));
    assert!(m.models().is_empty());
    m.shutdown().await;
}

#[tokio::test]
async fn unload_kills_a_worker_that_ignores_shutdown_and_sigterm() {
    let fake = Fake::new("--ignore-sigterm");
    let grace = Duration::from_millis(300);
    let m = fake.manager(|c| c.stop_grace = grace);
    let info = m.load("stubborn", &fake.model_dir(), None).await.unwrap();
    let socket = status(&m, "stubborn").socket_path.unwrap();
    assert!(socket.exists());
    let started = Instant::now();
    m.unload("stubborn").await.unwrap();
    // Shutdown, then SIGTERM: each waited out in full before SIGKILL.
    assert!(started.elapsed() >= grace * 2, "{:?}", started.elapsed());
    assert!(!alive(info.pid));
    assert!(!socket.exists());
    m.shutdown().await;
}

#[tokio::test]
async fn a_worker_crashing_mid_stream_fails_the_stream_and_keeps_crashing_with_backoff() {
    let fake = Fake::new("--crash-after-chunks 2");
    let m = fake.manager(|_| {});
    let dir = fake.model_dir();

    for round in 0..2 {
        let started = Instant::now();
        m.load("flaky", &dir, None).await.unwrap();
        // The first crash restarts at once; the second within a minute waits 1 s.
        if round == 1 {
            assert!(started.elapsed() < Duration::from_millis(900));
        }
        let (text, end) = collect(m.generate("flaky", text(10)).await.unwrap()).await;
        assert_eq!(text, "t0 t1 ");
        match &end {
            StreamEvent::Error(ManagerError::Crashed {
                status,
                stderr_tail,
                ..
            }) => {
                assert!(status.starts_with("signal 6 (SIGABRT"), "{status}");
                assert!(
                    stderr_tail.contains("crashing after 2 chunks"),
                    "{stderr_tail}"
                );
            }
            other => panic!("expected Crashed, got {other:?}"),
        }
        let s = status(&m, "flaky");
        assert_eq!(s.state, ModelState::Crashed);
        assert_eq!(s.restarts, round);
    }
    let started = Instant::now();
    m.load("flaky", &dir, None).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "restarted after {:?}",
        started.elapsed()
    );
    assert_eq!(fake.pids().len(), 3);
    m.shutdown().await;
    assert!(fake.pids().iter().all(|p| !alive(*p)));
}

#[tokio::test]
async fn worker_stats_come_back_and_a_frozen_worker_costs_only_the_timeout() {
    let fake = Fake::new("--chunk-delay-ms 20");
    let m = fake.manager(|_| {});
    let wait = Duration::from_millis(500);
    assert!(m.worker_stats("slow", wait).await.is_none(), "not loaded");
    let info = m.load("slow", &fake.model_dir(), None).await.unwrap();
    let idle = m.worker_stats("slow", wait).await.expect("stats");
    assert_eq!((idle.active_requests, idle.queued_requests), (0, 0));
    // One running, one waiting in the worker's queue (the fake serves one at a time).
    let mut running = m
        .generate("slow", request(Prompt::Text("x".into()), None))
        .await
        .unwrap();
    next_chunk(&mut running).await;
    let waiting = m.generate("slow", text(3)).await.unwrap();
    // Concurrent askers each get an answer (Stats frames carry no request id).
    let (a, b) = tokio::join!(m.worker_stats("slow", wait), m.worker_stats("slow", wait));
    for busy in [a, b] {
        let busy = busy.expect("stats while busy");
        assert_eq!((busy.active_requests, busy.queued_requests), (1, 1));
    }
    drop(waiting);
    drop(running);

    signal(info.pid, Signal::SIGSTOP);
    let asked = Instant::now();
    assert!(m.worker_stats("slow", wait).await.is_none(), "frozen");
    assert!(asked.elapsed() < Duration::from_secs(2));
    signal(info.pid, Signal::SIGCONT);
    let after = m
        .worker_stats("slow", wait)
        .await
        .expect("stats after SIGCONT");
    assert_eq!(after.queued_requests, 0);
    m.shutdown().await;
}

#[tokio::test]
async fn dropping_a_stream_cancels_its_request_in_the_worker() {
    let fake = Fake::new("--chunk-delay-ms 20");
    let m = fake.manager(|_| {});
    m.load("slow", &fake.model_dir(), None).await.unwrap();
    // No max_tokens: the fake streams until cancelled, and serves one request at a time.
    let mut endless = m
        .generate("slow", request(Prompt::Text("x".into()), None))
        .await
        .unwrap();
    next_chunk(&mut endless).await;
    assert_eq!(status(&m, "slow").in_flight, 1);
    drop(endless);
    assert_eq!(status(&m, "slow").in_flight, 0);
    // Only a cancelled first request lets the second one run.
    let second = m.generate("slow", text(3)).await.unwrap();
    let (text, end) = tokio::time::timeout(Duration::from_secs(10), collect(second))
        .await
        .expect("the first request was not cancelled");
    assert_eq!(text, "t0 t1 t2 ");
    match end {
        StreamEvent::Done { finish_reason, .. } => assert_eq!(finish_reason, FinishReason::Length),
        other => panic!("{other:?}"),
    }
    m.shutdown().await;
}

#[tokio::test]
async fn unloading_ends_requests_in_flight_with_unloading() {
    let fake = Fake::new("--chunk-delay-ms 20");
    let m = fake.manager(|_| {});
    let info = m.load("busy", &fake.model_dir(), None).await.unwrap();
    let mut stream = m
        .generate("busy", request(Prompt::Text("x".into()), None))
        .await
        .unwrap();
    next_chunk(&mut stream).await;
    let unload = {
        let m = Arc::clone(&m);
        tokio::spawn(async move { m.unload("busy").await })
    };
    let (_, end) = collect(stream).await;
    assert!(
        matches!(end, StreamEvent::Error(ManagerError::Unloading(_))),
        "{end:?}"
    );
    unload.await.unwrap().unwrap();
    assert!(!alive(info.pid));
    assert!(matches!(
        m.generate("busy", text(1)).await,
        Err(ManagerError::NotLoaded(_))
    ));
    m.shutdown().await;
}

#[tokio::test]
async fn an_idle_model_is_unloaded_after_its_ttl() {
    let fake = Fake::new("");
    let m = fake.manager(|_| {});
    let info = m
        .load("brief", &fake.model_dir(), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(status(&m, "brief").ttl, Some(Duration::from_secs(1)));
    let (_, end) = collect(m.generate("brief", text(2)).await.unwrap()).await;
    assert_done(&end);
    wait_until("the model is unloaded", Duration::from_secs(5), || {
        m.models().is_empty()
    })
    .await;
    wait_until("the worker is gone", Duration::from_secs(5), || {
        !alive(info.pid)
    })
    .await;
    m.shutdown().await;
}

#[tokio::test]
async fn the_memory_guard_refuses_a_model_that_cannot_fit_and_evicts_nothing_for_it() {
    let fake = Fake::new("");
    let m = fake.manager(|c| c.auto_evict_lru = true);
    let idle = m.load("idle", &fake.model_dir(), None).await.unwrap();

    // A sparse 1 TiB weights file: no test machine has the room.
    let huge = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(huge.path().join("model.safetensors")).unwrap();
    f.set_len(1 << 40).unwrap();
    let err = m.load("huge", huge.path(), None).await.unwrap_err();
    match &err {
        ManagerError::InsufficientMemory { needed_bytes, .. } => {
            assert!(*needed_bytes > 1 << 40)
        }
        other => panic!("expected InsufficientMemory, got {other:?}"),
    }
    assert!(err.to_string().contains("max_memory_percent"), "{err}");
    // Evicting the idle model could not have made room, so it stays.
    assert!(m.is_ready("idle"));
    assert!(alive(idle.pid));
    m.shutdown().await;
}

#[tokio::test]
async fn generate_on_a_model_that_is_not_loaded_is_not_loaded() {
    let fake = Fake::new("");
    let m = fake.manager(|_| {});
    assert!(matches!(
        m.generate("nothing", text(1)).await,
        Err(ManagerError::NotLoaded(_))
    ));
    assert!(matches!(
        m.unload("nothing").await,
        Err(ManagerError::NotLoaded(_))
    ));
    m.shutdown().await;
}

#[tokio::test]
async fn unloading_a_model_while_it_loads_stops_the_load() {
    let fake = Fake::new("--hang-on-load");
    let m = fake.manager(|_| {});
    let load = {
        let (m, dir) = (Arc::clone(&m), fake.model_dir());
        tokio::spawn(async move { m.load("slow", &dir, None).await })
    };
    wait_until("the worker starts", Duration::from_secs(10), || {
        !fake.pids().is_empty()
    })
    .await;
    assert_eq!(status(&m, "slow").state, ModelState::Loading);
    m.unload("slow").await.expect("unload while loading");
    let err = load.await.unwrap().unwrap_err();
    assert!(matches!(err, ManagerError::Unloading(_)), "{err:?}");
    assert!(!alive(fake.pids()[0]));
    assert!(m.models().is_empty());
    m.shutdown().await;
}

#[tokio::test]
async fn a_load_that_arrives_during_an_unload_starts_a_fresh_worker_after_it() {
    let fake = Fake::new("--ignore-sigterm");
    let m = fake.manager(|c| c.stop_grace = Duration::from_millis(300));
    let dir = fake.model_dir();
    let first = m.load("m", &dir, None).await.unwrap();
    let unload = {
        let m = Arc::clone(&m);
        tokio::spawn(async move { m.unload("m").await })
    };
    wait_until("the unload starts", Duration::from_secs(5), || {
        status(&m, "m").state == ModelState::Unloading
    })
    .await;
    assert!(matches!(
        m.generate("m", text(1)).await,
        Err(ManagerError::Unloading(_))
    ));
    let second = m
        .load("m", &dir, None)
        .await
        .expect("load after the unload");
    unload.await.unwrap().unwrap();
    assert_ne!(first.pid, second.pid);
    assert!(!alive(first.pid));
    assert!(m.is_ready("m"));
    m.shutdown().await;
}

/// A worker must not inherit the listener or another worker's connection: a controller that
/// dies would then not close every worker's socket, and that EOF is how workers notice.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn workers_inherit_no_other_sockets() {
    let fake = Fake::new("");
    let m = fake.manager(|_| {});
    let dir = fake.model_dir();
    let a = m.load("a", &dir, None).await.unwrap();
    let b = m.load("b", &dir, None).await.unwrap();
    for pid in [a.pid, b.pid] {
        // Distinct sockets: the fake holds its own connection twice (a reader thread's clone).
        let sockets: std::collections::BTreeSet<PathBuf> =
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .collect();
        assert_eq!(sockets.len(), 1, "worker {pid} holds {sockets:?}");
    }
    m.shutdown().await;
}

#[tokio::test]
async fn a_consumer_that_stops_reading_is_failed_alone_and_never_stalls_the_others() {
    // Every request at once, as the real worker batches them.
    let fake = Fake::new("--batch --chunk-delay-us 50");
    let m = fake.manager(|_| {});
    m.load("slow", &fake.model_dir(), None).await.unwrap();
    // Endless, and never read while the other streams.
    let mut stuck = m
        .generate("slow", request(Prompt::Text("x".into()), None))
        .await
        .unwrap();
    let reader = m.generate("slow", text(20_000)).await.unwrap();
    let (text, end) = collect(reader).await;
    assert_done(&end);
    assert_eq!(text.split_whitespace().count(), 20_000);
    // The stuck one kept what its buffer holds (Accepted, then chunks), then its error.
    let mut chunks = 0;
    let last = loop {
        match tokio::time::timeout(Duration::from_secs(10), stuck.next())
            .await
            .expect("the stuck stream's end")
            .expect("a terminal event")
        {
            StreamEvent::Accepted { .. } => {}
            StreamEvent::Chunk { .. } => chunks += 1,
            terminal => break terminal,
        }
    };
    assert_eq!(chunks, 4095);
    match last {
        StreamEvent::Error(e) => assert!(e.to_string().contains("stopped reading"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&m, "slow").in_flight, 0);
    m.shutdown().await;
}
