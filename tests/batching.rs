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
