//! Request admission with the real daemon: 429 past `max_concurrent_per_model + max_queue`,
//! waiting requests whose clients go away, `Prefer: wait=0` while a model loads, the worker
//! flags, and the counts in `/admin/status`. Most tests run `opta-lmx-fake-worker` (one
//! request at a time, timed chunks, a timed load) on copies of a tiny model's files, so the
//! timing is the test's, not the engine's.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opta_lmx_tests::{
    fake_worker_script, model, process_alive, signal, split_response, stream_events, Daemon,
};
use serde_json::{json, Value};

/// Model folders served by the fake worker started with `flags`. A model's id is its
/// absolute path, so the fake's bookkeeping files land in this test's own folder, which is
/// the daemon's models folder (paths elsewhere are refused).
struct Fake {
    dir: tempfile::TempDir,
    worker: PathBuf,
}

impl Fake {
    fn new(flags: &str) -> Fake {
        let dir = tempfile::tempdir().expect("temp dir");
        let worker = fake_worker_script(dir.path(), flags);
        Fake { dir, worker }
    }

    /// A model folder `name` (a tiny model's config and weights, which the fake never reads);
    /// returns its id.
    fn model(&self, name: &str) -> String {
        let dir = self.dir.path().join(name);
        std::fs::create_dir(&dir).expect("model dir");
        let tiny = model("tiny-random-llama");
        for file in ["config.json", "model.safetensors"] {
            std::os::unix::fs::symlink(tiny.join(file), dir.join(file)).expect("symlink");
        }
        dir.display().to_string()
    }

    /// The arguments of every fake worker started on model `id`, one line each.
    fn args(&self, id: &str) -> String {
        std::fs::read_to_string(Path::new(id).join("fake-worker.args")).unwrap_or_default()
    }

    fn daemon(&self, config: &str) -> Daemon {
        Daemon::spawn(
            config,
            &[("OPTA_LMX_WORKER", self.worker.as_os_str())],
            self.dir.path(),
        )
    }
}

fn chat(model: &str, max_tokens: Option<u32>, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// One request with extra headers; the status, the response head (lower-cased) and the body
/// as JSON (`Null` when it is not JSON).
fn send(port: u16, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, String, Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let body = body.to_string();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (code, head, rest) = split_response(&raw);
    let json = serde_json::from_str(rest).unwrap_or(Value::Null);
    (code, head.to_ascii_lowercase(), json)
}

fn wait_until(what: &str, max: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + max;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn retry_after(head: &str) -> Option<u64> {
    head.lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn past_running_plus_queued_a_request_gets_429_at_once_and_the_admitted_ones_finish() {
    let fake = Fake::new("--chunk-delay-ms 20");
    let m = fake.model("m");
    let d = fake.daemon("models:\n  max_concurrent_per_model: 1\n  max_queue: 1\n");
    let (code, body) = d.post("/v1/chat/completions", &chat(&m, Some(1), false));
    assert_eq!(code, 200, "{body}");

    // Two streams of 100 chunks of 20 ms: one runs, one waits in the worker's queue.
    let port = d.port;
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let body = chat(&m, Some(100), true);
            std::thread::spawn(move || {
                let mut events = Vec::new();
                let (code, ended) = stream_events(port, "/v1/chat/completions", &body, |e| {
                    events.push(e.to_string());
                    true
                })
                .expect("stream");
                (code, ended, events)
            })
        })
        .collect();
    wait_until("two requests in flight", Duration::from_secs(10), || {
        d.worker_status(&m)["requests"]["in_flight"] == 2
    });

    // Every completion route counts, and refuses at once without reaching the worker.
    let started = Instant::now();
    for (path, body) in [
        ("/v1/chat/completions", chat(&m, Some(4), false)),
        ("/api/v0/chat/completions", chat(&m, Some(4), true)),
        (
            "/v1/completions",
            json!({"model": m, "prompt": "Once", "max_tokens": 4}),
        ),
        (
            "/api/v0/completions",
            json!({"model": m, "prompt": "Once", "max_tokens": 4}),
        ),
    ] {
        let (code, head, err) = send(port, path, &body, &[]);
        assert_eq!(code, 429, "{path}: {head} {err}");
        assert_eq!(retry_after(&head), Some(1), "{path}: {head}");
        assert_eq!(err["error"]["code"], "rate_limit_exceeded", "{err}");
        assert_eq!(err["error"]["type"], "rate_limit_error", "{err}");
        let message = err["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(&m) && message.contains("max_queue 1"),
            "{message}"
        );
    }
    assert!(started.elapsed() < Duration::from_millis(1500));

    // The controller's counts and the worker's own, side by side.
    let w = d.worker_status(&m);
    assert_eq!(
        w["requests"],
        json!({"in_flight": 2, "queued": 1, "max_concurrent": 1, "max_queue": 1}),
        "{w}"
    );
    assert_eq!(w["worker_stats"]["active_requests"], 1, "{w}");
    assert_eq!(w["worker_stats"]["queued_requests"], 1, "{w}");
    for key in [
        "prompt_cache_hits",
        "prompt_cache_tokens",
        "peak_memory_bytes",
        "active_memory_bytes",
    ] {
        assert!(w["worker_stats"][key].is_u64(), "{key}: {w}");
    }

    for s in streams {
        let (code, ended, events) = s.join().expect("stream thread");
        assert_eq!((code, ended), (200, true));
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let text: String = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert!(text.ends_with("t99 "), "all 100 chunks: {text}");
    }
    wait_until("nothing in flight", Duration::from_secs(5), || {
        d.worker_status(&m)["requests"]["in_flight"] == 0
    });
    let (code, body) = d.post("/v1/chat/completions", &chat(&m, Some(2), false));
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_waiting_request_whose_client_goes_away_leaves_the_queue() {
    let fake = Fake::new("--chunk-delay-ms 20");
    let m = fake.model("m");
    let d = fake.daemon("models:\n  max_concurrent_per_model: 1\n  max_queue: 1\n");
    let (code, _) = d.post("/v1/chat/completions", &chat(&m, Some(1), false));
    assert_eq!(code, 200);
    let port = d.port;
    let counts = |d: &Daemon| {
        let w = d.worker_status(&m);
        (
            w["requests"]["in_flight"].as_u64(),
            w["worker_stats"]["queued_requests"].as_u64(),
        )
    };

    // A runs until stopped (no max_tokens: the fake streams until cancelled).
    let stop = Arc::new(AtomicBool::new(false));
    let running = {
        let stop = Arc::clone(&stop);
        let body = chat(&m, None, true);
        std::thread::spawn(move || {
            stream_events(port, "/v1/chat/completions", &body, |_| {
                !stop.load(Ordering::Relaxed)
            })
        })
    };
    wait_until("A running", Duration::from_secs(10), || {
        counts(&d) == (Some(1), Some(0))
    });

    // B, not streamed, waits behind A; then its client hangs up without reading.
    let mut b = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let body = chat(&m, Some(4), false).to_string();
    write!(
        b,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    wait_until("B queued", Duration::from_secs(10), || {
        counts(&d) == (Some(2), Some(1))
    });
    // Full: a third is refused.
    assert_eq!(
        send(port, "/v1/chat/completions", &chat(&m, Some(4), false), &[]).0,
        429
    );
    drop(b);
    wait_until("B gone from both counts", Duration::from_secs(10), || {
        counts(&d) == (Some(1), Some(0))
    });

    // C, streamed, is admitted in B's place; its client leaves after the first event.
    let (code, ended) = stream_events(
        port,
        "/v1/chat/completions",
        &chat(&m, Some(4), true),
        |_| false,
    )
    .expect("stream C");
    assert_eq!((code, ended), (200, false));
    wait_until("C gone from both counts", Duration::from_secs(10), || {
        counts(&d) == (Some(1), Some(0))
    });

    stop.store(true, Ordering::Relaxed);
    let (code, _) = running.join().expect("A's thread").expect("stream A");
    assert_eq!(code, 200);
    wait_until("nothing in flight", Duration::from_secs(10), || {
        let w = d.worker_status(&m);
        w["requests"]["in_flight"] == 0 && w["worker_stats"]["active_requests"] == 0
    });
}

#[test]
fn prefer_wait_0_gets_503_while_the_model_loads_in_the_background() {
    let fake = Fake::new("--load-delay-ms 1500");
    let [a, b, c, e] = ["a", "b", "c", "e"].map(|n| fake.model(n));
    let d = fake.daemon("");
    let port = d.port;
    let no_wait = [("Prefer", "wait=0")];

    let started = Instant::now();
    let (code, head, err) = send(
        port,
        "/v1/chat/completions",
        &chat(&a, Some(2), false),
        &no_wait,
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once"
    );
    assert_eq!(code, 503, "{head} {err}");
    assert!(
        retry_after(&head).is_some_and(|s| (1..=60).contains(&s)),
        "{head}"
    );
    assert_eq!(err["error"]["code"], "model_loading", "{err}");
    let message = err["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&a) && message.contains("Prefer: wait=0"),
        "{message}"
    );

    // The load goes on without the client (its task may take a moment to reach the
    // supervisor); asking again meanwhile is 503 too.
    let deadline = Instant::now() + Duration::from_secs(2);
    while d.worker_status(&a)["state"].is_null() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.worker_status(&a)["state"], "loading");
    let (code, head, _) = send(
        port,
        "/api/v0/chat/completions",
        &chat(&a, Some(2), true),
        &no_wait,
    );
    assert_eq!(code, 503);
    assert!(retry_after(&head).is_some());
    wait_until("a loaded", Duration::from_secs(20), || {
        d.worker_status(&a)["state"] == "loaded"
    });
    let (code, _, ok) = send(
        port,
        "/v1/chat/completions",
        &chat(&a, Some(2), false),
        &no_wait,
    );
    assert_eq!(code, 200, "{ok}");

    // Without the header a request waits for the load, as before; so does one whose wait is
    // longer than the load.
    let (code, _, ok) = send(port, "/v1/chat/completions", &chat(&b, Some(2), false), &[]);
    assert_eq!(code, 200, "{ok}");
    let (code, _, ok) = send(
        port,
        "/v1/completions",
        &json!({"model": c, "prompt": "Once", "max_tokens": 2}),
        &[("Prefer", "respond-async, wait=60")],
    );
    assert_eq!(code, 200, "{ok}");
    // Text completions honour it too.
    let (code, _, _) = send(
        port,
        "/api/v0/completions",
        &json!({"model": e, "prompt": "Once", "max_tokens": 2}),
        &no_wait,
    );
    assert_eq!(code, 503);

    // The worker got the admission settings (defaults here).
    assert!(
        fake.args(&a)
            .contains("--max-batch 8 --prompt-cache-mb 512"),
        "{}",
        fake.args(&a)
    );
}

#[test]
fn without_batching_workers_decode_one_request_at_a_time() {
    let fake = Fake::new("");
    let m = fake.model("m");
    let d = fake.daemon(
        "models:\n  use_batching: false\n  max_concurrent_per_model: 4\n  max_queue: 2\n  prompt_cache_mb: 0\n",
    );
    let (code, _) = d.post("/v1/chat/completions", &chat(&m, Some(1), false));
    assert_eq!(code, 200);
    assert!(
        fake.args(&m).contains("--max-batch 1 --prompt-cache-mb 0"),
        "{}",
        fake.args(&m)
    );
    let w = d.worker_status(&m);
    assert_eq!(
        w["requests"],
        json!({"in_flight": 0, "queued": 0, "max_concurrent": 1, "max_queue": 2}),
        "{w}"
    );
}

/// A stream its worker keeps silent longer than the keep-alive interval (a long prefill, a
/// queue) gets SSE comments, which clients skip, and still ends normally.
#[test]
fn a_silent_stream_gets_keep_alive_comments() {
    let fake = Fake::new("--chunk-delay-ms 6000");
    let m = fake.model("m");
    let d = fake.daemon("");
    let body = chat(&m, Some(1), true).to_string();
    let (code, raw) = d.request("POST", "/v1/chat/completions", Some(&body));
    assert_eq!(code, 200, "{raw}");
    let comment = raw.find(": keep-alive\n\n").expect("a keep-alive comment");
    // It came while the worker was silent: before the fake's one chunk ("t0 "), which
    // still arrives, and the stream still ends normally.
    let chunk = raw
        .find("\"content\":\"t0 \"")
        .expect("the generated chunk");
    assert!(comment < chunk, "{raw}");
    assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");
}

/// The real worker answers `GetStats`; its numbers reach `/admin/status`.
#[test]
fn status_reports_a_real_workers_stats() {
    const TINY: &str = "opta/tiny-random-llama";
    let d = Daemon::start("");
    let (code, body) = d.post("/v1/chat/completions", &chat(TINY, Some(2), false));
    assert_eq!(code, 200, "{body}");
    let w = d.worker_status(TINY);
    assert_eq!(w["requests"]["in_flight"], 0, "{w}");
    let stats = &w["worker_stats"];
    assert_eq!(stats["active_requests"], 0, "{w}");
    assert_eq!(stats["queued_requests"], 0, "{w}");
    assert!(stats["peak_memory_bytes"].is_u64(), "{w}");
}

/// The same limits with the real worker and the real 4-bit model: `Prefer: wait=0` gets 503
/// while the model loads, then 429 past running + queued while a long answer streams.
#[test]
fn prefer_wait_and_the_queue_limit_with_the_real_worker() {
    const REAL: &str = "opta/SmolLM2-135M-Instruct-4bit";
    let d = Daemon::start("models:\n  max_concurrent_per_model: 1\n  max_queue: 0\n");
    let port = d.port;
    let (code, head, err) = send(
        port,
        "/v1/chat/completions",
        &chat(REAL, Some(2), false),
        &[("Prefer", "wait=0")],
    );
    assert_eq!(code, 503, "{head} {err}");
    assert_eq!(err["error"]["code"], "model_loading", "{err}");
    assert!(retry_after(&head).is_some(), "{head}");
    wait_until("the background load", Duration::from_secs(120), || {
        d.worker_status(REAL)["state"] == "loaded"
    });

    // A long streamed answer holds the only place; the client hangs up after 5 text chunks.
    let (tx, rx) = std::sync::mpsc::channel();
    let long = std::thread::spawn(move || {
        let mut body = chat(REAL, Some(200), true);
        body["logit_bias"] = json!({"2": -100});
        let mut text_chunks = 0;
        stream_events(port, "/v1/chat/completions", &body, |data| {
            let has_text = serde_json::from_str::<Value>(data).is_ok_and(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|t| !t.is_empty())
            });
            if has_text {
                text_chunks += 1;
                if text_chunks == 1 {
                    let _ = tx.send(());
                }
            }
            text_chunks < 5
        })
        .expect("stream")
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the long answer started");
    let (code, head, err) = send(
        port,
        "/v1/chat/completions",
        &chat(REAL, Some(2), false),
        &[],
    );
    assert_eq!(code, 429, "{head} {err}");
    assert_eq!(err["error"]["code"], "rate_limit_exceeded", "{err}");
    assert!(retry_after(&head).is_some(), "{head}");
    let (code, ended) = long.join().expect("long stream thread");
    assert_eq!((code, ended), (200, false));

    // Its client gone, the place is freed and the next request is answered.
    wait_until("the place to free up", Duration::from_secs(30), || {
        d.worker_status(REAL)["requests"]["in_flight"] == 0
    });
    let (code, body) = d.post("/v1/chat/completions", &chat(REAL, Some(2), false));
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_client_that_stops_reading_does_not_stall_the_models_other_streams() {
    // Every request at once, one chunk each per round, as the real worker batches them.
    let fake = Fake::new("--batch --chunk-delay-us 100");
    let m = fake.model("m");
    let d = fake.daemon("");
    let port = d.port;
    // A asks for an endless stream and never reads it: its socket buffers fill, then the
    // controller's buffer for it.
    let mut a = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let body = chat(&m, None, true).to_string();
    write!(
        a,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    wait_until("A running", Duration::from_secs(10), || {
        d.worker_status(&m)["requests"]["in_flight"] == 1
    });
    // B streams 30,000 chunks to its end meanwhile, far past what A's buffers hold.
    let mut chunks = 0;
    let (code, ended) = stream_events(
        port,
        "/v1/chat/completions",
        &chat(&m, Some(30_000), true),
        |data| {
            chunks += usize::from(data.contains("\"content\":\"t"));
            true
        },
    )
    .expect("stream B");
    assert_eq!((code, ended), (200, true));
    assert_eq!(chunks, 30_000);
    // A was cut off alone: what it reads now ends with the error, and nothing is in flight.
    a.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut raw = Vec::new();
    a.read_to_end(&mut raw).expect("read A");
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        raw.contains("stopped reading"),
        "{}",
        &raw[raw.len().saturating_sub(500)..]
    );
    assert_eq!(d.worker_status(&m)["requests"]["in_flight"], 0);
}

/// The pids of every fake worker started on model `id`.
fn fake_pids(id: &str) -> Vec<u32> {
    std::fs::read_to_string(Path::new(id).join("fake-worker.pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// Waits for the daemon to exit; how long it took.
fn exit_time(d: &mut Daemon, max: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = d.child.try_wait() {
            assert!(status.success(), "the daemon exited with {status}");
            return started.elapsed();
        }
        assert!(started.elapsed() < max, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_lets_running_streams_finish_then_stops_every_worker() {
    let fake = Fake::new("--chunk-delay-ms 20");
    let m = fake.model("m");
    let mut d = fake.daemon("");
    let port = d.port;
    // 60 chunks of 20 ms: still running when the signal comes.
    let body = chat(&m, Some(60), true);
    let stream = std::thread::spawn(move || {
        let mut chunks = 0;
        let result = stream_events(port, "/v1/chat/completions", &body, |data| {
            chunks += usize::from(data.contains("\"content\":\"t"));
            true
        });
        (result.expect("stream"), chunks)
    });
    wait_until("the stream running", Duration::from_secs(10), || {
        d.worker_status(&m)["requests"]["in_flight"] == 1
    });
    signal(d.child.id(), "TERM");
    let ((code, ended), chunks) = stream.join().expect("stream thread");
    assert_eq!(
        (code, ended, chunks),
        (200, true, 60),
        "the stream ran to its end"
    );
    exit_time(&mut d, Duration::from_secs(15));
    assert!(
        fake_pids(&m).iter().all(|p| !process_alive(*p)),
        "a worker outlived the daemon"
    );
}

#[test]
fn past_the_shutdown_grace_running_streams_are_cut_and_workers_stopped() {
    let fake = Fake::new("--chunk-delay-ms 20");
    let m = fake.model("m");
    let mut d = fake.daemon("server:\n  shutdown_grace_sec: 1\n");
    let port = d.port;
    // Endless: only the deadline ends it.
    let body = chat(&m, None, true);
    let stream =
        std::thread::spawn(move || stream_events(port, "/v1/chat/completions", &body, |_| true));
    wait_until("the stream running", Duration::from_secs(10), || {
        d.worker_status(&m)["requests"]["in_flight"] == 1
    });
    signal(d.child.id(), "TERM");
    let took = exit_time(&mut d, Duration::from_secs(15));
    assert!(
        took >= Duration::from_millis(900),
        "the grace period was not waited out: {took:?}"
    );
    let _ = stream.join();
    assert!(
        fake_pids(&m).iter().all(|p| !process_alive(*p)),
        "a worker outlived the daemon"
    );
}
