//! A model split over two ranks (`models.tensor_parallel`) through the real daemon: it answers
//! as mlx-lm does in one process, its second rank lives and dies with it, a rank killed
//! mid-stream fails that stream with an error and the model restarts on its next request,
//! and an entry that cannot work is refused at startup naming the key.

use std::time::{Duration, Instant};

use opta_lmx_tests::{process_alive, signal, stream_events, workspace_root, Daemon};
use serde_json::{json, Value};

const VARIANT: &str = "tiny-random-glm4-moe";
const MODEL: &str = "opta/tiny-random-glm4-moe";
const CONFIG: &str = "models:\n  tensor_parallel:\n    opta/tiny-random-glm4-moe: {ranks: 2}\n";

/// The worker's child processes: its other rank.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
                .flat_map(|s| {
                    s.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect::<Vec<u32>>()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn first_reference_case() -> Value {
    let path = workspace_root().join("tests/data/reference_ids.json");
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reference")).expect("JSON");
    all["models"][VARIANT]["cases"][0].clone()
}

#[test]
fn a_split_model_answers_as_one_process_and_restarts_when_a_rank_dies() {
    let d = Daemon::start(CONFIG);
    let case = first_reference_case();
    let greedy = json!({"model": MODEL, "messages": case["messages"], "temperature": 0,
        "max_tokens": 16});
    let (code, r) = d.post("/v1/chat/completions", &greedy);
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], case["text"], "{r}");
    let pid = d.worker_pid(MODEL).expect("the model's worker");
    let ranks = children(pid);
    assert_eq!(ranks.len(), 1, "rank 0 started one other rank: {ranks:?}");

    // Rank 1 killed mid-stream: the stream ends in an error event, the worker is gone.
    let endless = json!({"model": MODEL, "stream": true, "max_tokens": 100000,
        "messages": [{"role": "user", "content": "Go on forever."}]});
    let mut events = Vec::new();
    let mut killed = false;
    let (code, _) = stream_events(d.port, "/v1/chat/completions", &endless, |e| {
        events.push(e.to_string());
        if events.len() == 5 && !killed {
            signal(ranks[0], "KILL");
            killed = true;
        }
        events.len() < 100_000
    })
    .expect("stream");
    assert_eq!(code, 200);
    assert!(killed);
    let last: Value = serde_json::from_str(events.last().unwrap()).expect("last event is JSON");
    assert!(last["error"]["message"].is_string(), "{last}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!process_alive(pid), "rank 0 ended with its group");

    // The next request starts both ranks again and answers as before.
    let (code, again) = d.post("/v1/chat/completions", &greedy);
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["choices"][0]["message"]["content"], case["text"]);
    let new_pid = d.worker_pid(MODEL).expect("restarted");
    assert_ne!(new_pid, pid);
    let new_ranks = children(new_pid);
    assert_eq!(new_ranks.len(), 1);

    // Unloading stops every rank.
    let (code, r) = d.post("/admin/models/unload", &json!({"model_id": MODEL}));
    assert_eq!(code, 200, "{r}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while (process_alive(new_pid) || process_alive(new_ranks[0])) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !process_alive(new_ranks[0]),
        "rank 1 stopped with the model"
    );
}

#[test]
fn an_entry_that_cannot_work_is_refused_at_startup() {
    for (entry, says) in [
        ("{ranks: 1}", "ranks must be at least 2"),
        ("{ranks: 2, backend: jaccl}", "ring backend only"),
        ("{backend: smoke}", "backend must be one of"),
        ("{}", "either ranks"),
    ] {
        let err = opta_lmx_tests::refused_config(&format!(
            "models:\n  tensor_parallel:\n    m: {entry}\n"
        ));
        assert!(
            err.contains("models.tensor_parallel.m") && err.contains(says),
            "{entry}: {err}"
        );
    }
}
