//! Unloading returns the model's memory: the worker process ends, and the memory in use on the
//! system (anonymous pages) falls by about the model's size. (In-process servers report
//! "unloaded" and keep it.)
//! A test binary of its own, so no other test loads models while it measures.

use opta_lmx_tests::{process_alive, Daemon};
use serde_json::json;

const F32: &str = "opta/SmolLM2-135M-Instruct-f32";

/// Memory in use by processes: anonymous pages (heap, the weights MLX read), in bytes. Page
/// cache is left out on purpose: it is reclaimable, and this VM's proactive reclaim moves it
/// (and so MemAvailable) by hundreds of MB from one reading to the next.
fn used_memory() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .expect("meminfo field")
            * 1024
    };
    field("AnonPages:")
}

#[test]
fn unloading_ends_the_worker_and_returns_its_memory() {
    let d = Daemon::start("models:\n  jit_loading: false\n");
    let (code, body) = d.post("/admin/models/load", &json!({"model_id": F32}));
    assert_eq!(code, 200, "{body}");
    let (code, _) = d.post(
        "/v1/chat/completions",
        &json!({"model": F32, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}),
    );
    assert_eq!(code, 200);
    let (_, status) = d.get("/admin/status");
    let worker = &status["workers"][0];
    let pid = worker["pid"].as_u64().unwrap() as u32;
    let resident = worker["resident_bytes"].as_u64().unwrap();
    let weights = worker["weights_bytes"].as_u64().unwrap();
    assert!(
        resident >= weights,
        "the worker holds the weights: {resident} < {weights}"
    );

    let before = used_memory();
    let (code, _) = d.post("/admin/models/unload", &json!({"model_id": F32}));
    assert_eq!(code, 200);
    assert!(!process_alive(pid), "worker {pid} is gone");
    // The kernel returns a dead process's pages promptly, but give the reading a moment.
    let mut freed = 0;
    for _ in 0..50 {
        freed = before.saturating_sub(used_memory());
        if freed >= weights * 8 / 10 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!(
        "worker resident {resident} B, weights {weights} B, system used memory fell {freed} B"
    );
    assert!(
        freed >= weights * 8 / 10,
        "used memory fell by {freed} bytes; the model's weights are {weights} bytes"
    );
}
