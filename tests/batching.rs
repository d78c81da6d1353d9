//! Concurrency through the daemon with the real worker and the real 4-bit test model: a second
//! request is answered while a first is still streaming, and a resent conversation is served
//! from the prompt cache with the same answer.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use opta_lmx_tests::{stream_events, Daemon};
use serde_json::{json, Value};

const MODEL: &str = "opta/SmolLM2-135M-Instruct-4bit";

/// Whether an SSE payload carries generated text (not the opening role chunk, the closing
/// chunk or `[DONE]`).
fn has_text(data: &str) -> bool {
    serde_json::from_str::<Value>(data).is_ok_and(|v| {
        v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    })
}

fn chat(messages: Value, max_tokens: u32) -> Value {
    json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": max_tokens})
}

#[test]
fn a_second_request_streams_while_the_first_is_still_streaming() {
    let d = Daemon::start("");
    let (s, _) = d.post("/admin/models/load", &json!({"model_id": MODEL}));
    assert_eq!(s, 200);

    // A long answer (end-of-sequence banned), streamed on its own thread; every event is
    // forwarded with the moment it arrived.
    let (tx, rx) = mpsc::channel::<(&str, Instant)>();
    let port = d.port;
    let long = {
        let tx = tx.clone();
        let mut body = chat(
            json!([{"role": "user", "content": "Tell me a story."}]),
            120,
        );
        body["stream"] = json!(true);
        body["logit_bias"] = json!({"2": -100});
        std::thread::spawn(move || {
            let mut tokens = 0;
            let (code, ended) = stream_events(port, "/v1/chat/completions", &body, |data| {
                if has_text(data) {
                    tokens += 1;
                    let _ = tx.send(("long", Instant::now()));
                }
                true
            })
            .unwrap();
            let _ = tx.send(("long-done", Instant::now()));
            (code, ended, tokens)
        })
    };
    // Start the short request once the long one is producing tokens.
    let mut long_tokens_before = 0;
    while long_tokens_before < 5 {
        let (who, _) = rx.recv_timeout(Duration::from_secs(120)).unwrap();
        assert_eq!(who, "long");
        long_tokens_before += 1;
    }
    let short = {
        let mut body = chat(json!([{"role": "user", "content": "Say hi."}]), 8);
        body["stream"] = json!(true);
        std::thread::spawn(move || {
            let mut first = true;
            stream_events(port, "/v1/chat/completions", &body, |data| {
                if first && has_text(data) {
                    first = false;
                    let _ = tx.send(("short-first", Instant::now()));
                }
                true
            })
            .unwrap()
        })
    };
    let mut order = Vec::new();
    while let Ok((who, _)) = rx.recv_timeout(Duration::from_secs(120)) {
        order.push(who);
        if who == "long-done" {
            break;
        }
    }
    let (code, ended) = short.join().unwrap();
    assert_eq!((code, ended), (200, true));
    let (code, ended, tokens) = long.join().unwrap();
    assert_eq!((code, ended), (200, true));

    let short_at = order
        .iter()
        .position(|w| *w == "short-first")
        .expect("the short request produced a token");
    let long_after_short = order[short_at..].iter().filter(|w| **w == "long").count();
    // The short request's first token came while the long one was mid-stream, and the long
    // one kept going afterwards, to its full length.
    assert!(long_after_short >= 10, "order: {order:?}");
    assert!(tokens >= 100, "{tokens} text events from the long stream");
}

#[test]
fn a_resent_conversation_is_served_from_the_prompt_cache_with_the_same_answer() {
    let first_turn = json!([
        {"role": "system", "content": "You are a helpful assistant who answers briefly."},
        {"role": "user", "content": "What is the capital of France?"}
    ]);
    let d = Daemon::start("");
    let (s, r1) = d.post("/v1/chat/completions", &chat(first_turn.clone(), 16));
    assert_eq!(s, 200, "{r1}");
    assert_eq!(r1["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let answer = r1["choices"][0]["message"]["content"].as_str().unwrap();

    let mut turns = first_turn.as_array().unwrap().clone();
    turns.push(json!({"role": "assistant", "content": answer}));
    turns.push(json!({"role": "user", "content": "And of Germany?"}));
    let second = chat(Value::Array(turns), 16);
    let (s, r2) = d.post("/v1/chat/completions", &second);
    assert_eq!(s, 200, "{r2}");
    let cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = r2["usage"]["prompt_tokens"].as_u64().unwrap();
    let first_prompt = r1["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached >= first_prompt && cached < prompt,
        "cached {cached} of {prompt} (first turn: {first_prompt})"
    );

    let (_, status) = d.get("/admin/status");
    let stats = &status["workers"][0]["worker_stats"];
    assert_eq!(stats["prompt_cache_hits"], 1, "{status}");
    assert_eq!(stats["prompt_cache_tokens"], cached, "{status}");

    // The same conversation on a daemon without the cache: every prompt token computed,
    // the same answer.
    let cold = Daemon::start("models:\n  prompt_cache_mb: 0\n");
    let (s, r3) = cold.post("/v1/chat/completions", &second);
    assert_eq!(s, 200, "{r3}");
    assert_eq!(r3["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(r3["usage"]["prompt_tokens"], prompt);
    assert_eq!(
        r3["choices"][0]["message"]["content"],
        r2["choices"][0]["message"]["content"]
    );
}

/// The prompt cache's disk tier: a long system prompt's states, written after the first
/// request, serve the same conversation after an unload, after the worker is killed (a crash
/// restart) and on a new daemon; an entry corrupted on disk is skipped and removed.
#[test]
fn the_prompt_cache_on_disk_survives_unload_crash_and_daemon_restart() {
    let cache = tempfile::tempdir().expect("temp dir");
    let config = format!("models:\n  prompt_cache_dir: {}\n", cache.path().display());
    let system = "You are a careful assistant. Follow the house style: short sentences, plain \
                  words, no lists. "
        .repeat(20);
    let body = chat(
        json!([{"role": "system", "content": system},
               {"role": "user", "content": "What is the capital of France?"}]),
        8,
    );
    let ask = |d: &Daemon| {
        let (s, r) = d.post("/v1/chat/completions", &body);
        assert_eq!(s, 200, "{r}");
        let cached = r["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0);
        (cached, r["choices"][0]["message"]["content"].clone())
    };
    // The entry's files appear once the worker's writer thread is done.
    let entries = |ext: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|model| std::fs::read_dir(model.path()).ok())
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect()
    };
    let written = || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while entries("json").is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(entries("json").len(), 1, "one entry on disk");
    };

    let d = Daemon::start(&config);
    let (cached, answer) = ask(&d);
    assert_eq!(cached, 0);
    written();
    let prompt_tokens = {
        let (_, r) = d.post("/v1/chat/completions", &body);
        r["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    assert!(prompt_tokens > 256, "{prompt_tokens} prompt tokens");

    // Unloaded: the next worker reads the prefix from disk.
    let (s, r) = d.post("/admin/models/unload", &json!({"model_id": MODEL}));
    assert_eq!(s, 200, "{r}");
    let (cached, again) = ask(&d);
    assert!(cached > 256, "{cached} tokens from disk after an unload");
    assert_eq!(again, answer);

    // Killed: the restarted worker reads it too.
    let (_, status) = d.get("/admin/status");
    let pid = status["workers"][0]["pid"].as_u64().expect("worker pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let (cached, again) = loop {
        let (s, r) = d.post("/v1/chat/completions", &body);
        if s == 200 {
            let cached = r["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
            break (cached, r["choices"][0]["message"]["content"].clone());
        }
        assert!(
            Instant::now() < deadline,
            "no answer after the crash: {s} {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        cached > 256,
        "{cached} tokens from disk after a crash restart"
    );
    assert_eq!(again, answer);
    drop(d);

    // A new daemon with the same folder.
    let d = Daemon::start(&config);
    let (cached, again) = ask(&d);
    assert!(cached > 256, "{cached} tokens from disk on a new daemon");
    assert_eq!(again, answer);
    drop(d);

    // A corrupted entry is not served, and goes.
    for f in entries("safetensors") {
        std::fs::write(&f, b"not a safetensors file").expect("corrupt");
    }
    let d = Daemon::start(&config);
    let (cached, again) = ask(&d);
    assert_eq!(cached, 0, "a corrupt entry served");
    assert_eq!(again, answer);
}
