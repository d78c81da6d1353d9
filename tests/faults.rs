//! Crash isolation with the real daemon and real workers: a worker killed or frozen
//! mid-stream, the controller killed, a burst of JIT requests for one model.

use std::time::{Duration, Instant};

use opta_lmx_tests::{process_alive, signal, stream_events, Daemon};
use serde_json::{json, Value};

const TINY: &str = "opta/tiny-random-llama";
const TINY_QWEN: &str = "opta/tiny-random-qwen3";

/// A request that streams until it is stopped: EOS is banned and the limit is far away.
fn endless(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Go on forever."}],
        "stream": true,
        "max_tokens": 100000,
        "logit_bias": {"2": -100},
    })
}

fn chat_ok(d: &Daemon, model: &str) {
    let (code, body) = d.post(
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    );
    assert_eq!(code, 200, "{model}: {body}");
}

#[test]
fn a_worker_killed_mid_stream_ends_only_its_own_stream_and_comes_back() {
    let d = Daemon::start("");
    chat_ok(&d, TINY);
    chat_ok(&d, TINY_QWEN);
    let pid = d.worker_pid(TINY).expect("tiny's worker");

    let mut events = Vec::new();
    let mut killed = false;
    let (code, _) = stream_events(d.port, "/v1/chat/completions", &endless(TINY), |e| {
        events.push(e.to_string());
        if events.len() == 5 && !killed {
            signal(pid, "KILL");
            killed = true;
        }
        events.len() < 100_000
    })
    .expect("stream");
    assert_eq!(code, 200);
    assert!(killed);
    let last: Value = serde_json::from_str(events.last().unwrap()).expect("last event is JSON");
    assert!(
        last["error"]["message"].is_string(),
        "ends with an error event: {last}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"), "[DONE] is not faked");

    let state = d.worker_status(TINY);
    assert_eq!(state["state"], "crashed", "{state}");
    assert!(
        state["crash"]["status"]
            .as_str()
            .unwrap_or("")
            .contains("9")
            || state["crash"]["status"]
                .as_str()
                .unwrap_or("")
                .contains("KILL"),
        "{state}"
    );
    chat_ok(&d, TINY_QWEN);
    // The next request for the killed model starts it again.
    chat_ok(&d, TINY);
    assert_ne!(d.worker_pid(TINY), Some(pid));
}

#[test]
fn a_frozen_worker_times_out_and_can_still_be_unloaded() {
    let d = Daemon::start("server:\n  timeout_sec: 3\n");
    chat_ok(&d, TINY);
    let pid = d.worker_pid(TINY).unwrap();
    signal(pid, "STOP");
    let started = Instant::now();
    let (code, err) = d.post(
        "/v1/chat/completions",
        &json!({"model": TINY, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    );
    assert_eq!(code, 504, "{err}");
    assert!(err["error"]["message"].is_string());
    assert!(started.elapsed() < Duration::from_secs(20));
    // The controller stays responsive meanwhile.
    assert_eq!(d.get("/admin/health").0, 200);
    let (code, body) = d.post("/admin/models/unload", &json!({"model_id": TINY}));
    assert_eq!(code, 200, "{body}");
    assert!(!process_alive(pid), "the frozen worker is gone");
}

#[test]
fn killing_the_controller_leaves_no_worker_behind() {
    let mut d = Daemon::start("");
    chat_ok(&d, TINY);
    chat_ok(&d, TINY_QWEN);
    let pids = [
        d.worker_pid(TINY).unwrap(),
        d.worker_pid(TINY_QWEN).unwrap(),
    ];
    d.child.kill().expect("SIGKILL the controller");
    let _ = d.child.wait();
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| process_alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in pids {
        assert!(!process_alive(p), "worker {p} outlived the controller");
    }
}

#[test]
fn twenty_concurrent_jit_requests_start_one_worker() {
    let d = Daemon::start("");
    let port = d.port;
    let threads: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                opta_lmx_tests::http(
                    port,
                    "POST",
                    "/v1/chat/completions",
                    Some(
                        &json!({"model": TINY_QWEN, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
                            .to_string(),
                    ),
                    "application/json",
                )
                .map(|(code, _)| code)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), 200);
    }
    let (_, status) = d.get("/admin/status");
    let workers: Vec<&Value> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["model_id"] == TINY_QWEN)
        .collect();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["restarts"], 0, "one load, no restarts");
    // And this daemon has exactly one child process.
    let parent = d.child.id().to_string();
    let children = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                == Some(parent.as_str())
        })
        .count();
    assert_eq!(children, 1);
}

#[test]
fn with_jit_off_a_crashed_model_still_restarts_on_its_next_request() {
    let d = Daemon::start("models:\n  jit_loading: false\n");
    let (code, _) = d.post("/admin/models/load", &json!({"model_id": TINY}));
    assert_eq!(code, 200);
    let pid = d.worker_pid(TINY).unwrap();
    signal(pid, "KILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.worker_status(TINY)["state"] != "crashed" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.worker_status(TINY)["state"], "crashed");
    chat_ok(&d, TINY);
    assert_ne!(d.worker_pid(TINY), Some(pid));
    // A model never loaded is still refused with JIT loading off.
    let (code, _) = d.post(
        "/v1/chat/completions",
        &json!({"model": TINY_QWEN, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(code, 404);
}

#[test]
fn workers_that_come_and_go_leave_no_file_descriptors_in_the_controller() {
    let d = Daemon::start("");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.child.id()))
            .expect("the daemon's fds")
            .count()
    };
    let cycle = || {
        let (code, body) = d.post("/admin/models/load", &json!({"model_id": TINY}));
        assert_eq!(code, 200, "{body}");
        // Status reads each worker's memory, as the memory guard and /metrics do.
        let (code, _) = d.get("/admin/status");
        assert_eq!(code, 200);
        let (code, body) = d.post("/admin/models/unload", &json!({"model_id": TINY}));
        assert_eq!(code, 200, "{body}");
        let (code, _) = d.get("/admin/status");
        assert_eq!(code, 200);
    };
    // One cycle first, so that whatever the first load opens for good is open.
    cycle();
    let before = fds();
    for _ in 0..10 {
        cycle();
    }
    let after = fds();
    assert!(
        after <= before + 1,
        "fds went {before} -> {after} over 10 load/unload cycles"
    );
}
