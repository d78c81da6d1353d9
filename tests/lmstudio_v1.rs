//! LM Studio's native REST API (`/api/v1`) end to end: chat, its event stream, stored chats,
//! reasoning settings, errors in LM Studio's shape, and the model list. Real `opta-lmx`, real
//! `opta-lmx-worker`, real test models.

use opta_lmx_tests::{entry_where, Daemon};
use serde_json::{json, Value};

const F32: &str = "opta/SmolLM2-135M-Instruct-f32";
/// Its template reasons, switched by `enable_thinking`.
const TINY_QWEN3: &str = "opta/tiny-random-qwen3";

fn chat(model: &str, input: Value) -> Value {
    json!({"model": model, "input": input, "max_output_tokens": 8, "temperature": 0})
}

/// An error body in LM Studio's shape: `type` and `message`, `code` and `param` only when set.
fn lms_error(body: &Value) -> &Value {
    let e = &body["error"];
    let obj = e.as_object().unwrap_or_else(|| panic!("no error: {body}"));
    assert!(e["type"].is_string() && e["message"].is_string(), "{body}");
    assert!(
        obj.iter().all(|(k, v)| {
            ["type", "message", "code", "param"].contains(&k.as_str()) && !v.is_null()
        }),
        "only LM Studio's fields, none null: {body}"
    );
    e
}

fn assert_sane_stats(stats: &Value, max_output: u64) {
    assert!(stats["input_tokens"].as_u64() > Some(0), "{stats}");
    let out = stats["total_output_tokens"].as_u64().unwrap_or(0);
    assert!((1..=max_output).contains(&out), "{stats}");
    assert_eq!(stats["reasoning_output_tokens"], 0, "{stats}");
    assert!(stats["tokens_per_second"].as_f64() >= Some(0.0), "{stats}");
    let ttft = stats["time_to_first_token_seconds"]
        .as_f64()
        .unwrap_or(-1.0);
    assert!((0.0..60.0).contains(&ttft), "{stats}");
}

#[test]
fn chat_answers_in_lm_studios_shape_and_continues_stored_chats() {
    let d = Daemon::start("");
    let (code, first) = d.post(
        "/api/v1/chat",
        &json!({"model": F32, "input": "My name is Ada.", "system_prompt": "Be brief.",
                "max_output_tokens": 8, "temperature": 0}),
    );
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["model_instance_id"], F32);
    let output = first["output"].as_array().expect("output");
    assert_eq!(output.len(), 1, "{first}");
    assert_eq!(output[0]["type"], "message");
    assert!(!output[0]["content"].as_str().unwrap_or("").is_empty());
    assert_sane_stats(&first["stats"], 8);
    assert!(
        first["stats"]["model_load_time_seconds"].as_f64() > Some(0.0),
        "this request loaded the model: {first}"
    );
    let id = first["response_id"].as_str().expect("stored by default");
    assert!(id.starts_with("resp_"), "{id}");

    // The continuation's prompt holds the earlier turn: the system prompt, both messages.
    let mut next = chat(F32, json!("What is my name?"));
    next["previous_response_id"] = json!(id);
    let (code, second) = d.post("/api/v1/chat", &next);
    assert_eq!(code, 200, "{second}");
    let before = first["stats"]["input_tokens"].as_u64().unwrap_or(0)
        + first["stats"]["total_output_tokens"].as_u64().unwrap_or(0);
    assert!(
        second["stats"]["input_tokens"].as_u64() > Some(before),
        "the earlier turn is in the prompt: {first} then {second}"
    );
    assert!(second["stats"].get("model_load_time_seconds").is_none());
    assert_ne!(second["response_id"], first["response_id"]);
    // Any stored response is a branch point.
    let (code, branch) = d.post("/api/v1/chat", &next);
    assert_eq!(code, 200, "{branch}");
    assert_eq!(
        branch["stats"]["input_tokens"],
        second["stats"]["input_tokens"]
    );

    let mut unstored = chat(F32, json!([{"type": "text", "content": "Hi"}]));
    unstored["store"] = json!(false);
    let (code, body) = d.post("/api/v1/chat", &unstored);
    assert_eq!(code, 200, "{body}");
    assert!(body.get("response_id").is_none(), "{body}");

    let mut unknown = chat(F32, json!("Hi"));
    unknown["previous_response_id"] = json!("resp_nothing");
    let (code, body) = d.post("/api/v1/chat", &unknown);
    assert_eq!(code, 404, "{body}");
    let e = lms_error(&body);
    assert!(
        e["message"].as_str().unwrap_or("").contains("resp_nothing"),
        "{body}"
    );

    // Reasoning: `off` is what a model without reasoning does; anything else is refused.
    let mut off = chat(F32, json!("Hi"));
    off["reasoning"] = json!("off");
    let (code, body) = d.post("/api/v1/chat", &off);
    assert_eq!(code, 200, "{body}");
    let mut high = off.clone();
    high["reasoning"] = json!("high");
    let (code, body) = d.post("/api/v1/chat", &high);
    assert_eq!(code, 400, "{body}");
    let e = lms_error(&body);
    assert_eq!(
        (&e["type"], &e["param"]),
        (&json!("invalid_request"), &json!("reasoning"))
    );
    // A toggled template takes `off` and `on`, not effort levels.
    let mut qwen = chat(TINY_QWEN3, json!("Hi"));
    qwen["max_output_tokens"] = json!(2);
    qwen["reasoning"] = json!("off");
    let (code, body) = d.post("/api/v1/chat", &qwen);
    assert_eq!(code, 200, "{body}");
    qwen["reasoning"] = json!("medium");
    let (code, body) = d.post("/api/v1/chat", &qwen);
    assert_eq!(code, 400, "{body}");
    assert!(lms_error(&body)["message"]
        .as_str()
        .unwrap_or("")
        .contains("off, on"));

    // Bad requests: LM Studio's shape, the right status.
    let (code, body) = d.post("/api/v1/chat", &chat("nobody/no-such-model", json!("Hi")));
    assert_eq!(code, 404, "{body}");
    let e = lms_error(&body);
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("model_not_found"), &json!("model_not_found"))
    );
    let (code, body) = d.post("/api/v1/chat", &chat(F32, json!([])));
    assert_eq!(code, 400, "{body}");
    assert_eq!(lms_error(&body)["param"], "input");
    let image = json!([{"type": "text", "content": "What is this?"},
                       {"type": "image", "data_url": "data:image/png;base64,iVBORw0KGgo="}]);
    let (code, body) = d.post("/api/v1/chat", &chat(F32, image));
    assert_eq!(code, 400, "{body}");
    let e = lms_error(&body);
    assert_eq!(e["param"], "input[1]");
    assert!(
        e["message"].as_str().unwrap_or("").contains("Image"),
        "{body}"
    );
    let (code, raw) = d.request("POST", "/api/v1/chat", Some("{not json"));
    assert_eq!(code, 400, "{raw}");
    lms_error(&serde_json::from_str(&raw).expect("JSON"));
}

/// `(event name, data)` of each SSE event of a raw body.
fn events(raw: &str) -> Vec<(String, Value)> {
    raw.split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            let data: Value = serde_json::from_str(data).expect("event data is JSON");
            assert_eq!(data["type"], name, "each event's data names it");
            Some((name.to_string(), data))
        })
        .collect()
}

/// Runs of the same event collapsed (deltas, progress), to compare the order.
fn order(events: &[(String, Value)]) -> Vec<&str> {
    let mut names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    names.dedup();
    names
}

#[test]
fn a_stream_sends_lm_studios_events_in_order() {
    let d = Daemon::start("");
    let mut body = chat(F32, json!("Say hello."));
    body["stream"] = json!(true);
    let (code, raw) = d.request("POST", "/api/v1/chat", Some(&body.to_string()));
    assert_eq!(code, 200, "{raw}");
    let first = events(&raw);
    // This request loads the model; the prefill reports progress before it ends.
    let names = order(&first);
    assert_eq!(
        names
            .iter()
            .filter(|n| !n.starts_with("prompt_processing.progress"))
            .copied()
            .collect::<Vec<_>>(),
        [
            "chat.start",
            "model_load.start",
            "model_load.progress",
            "model_load.end",
            "prompt_processing.start",
            "prompt_processing.end",
            "message.start",
            "message.delta",
            "message.end",
            "chat.end"
        ],
        "{raw}"
    );
    assert!(
        names.contains(&"prompt_processing.progress"),
        "real prefill progress: {raw}"
    );
    assert_eq!(first[0].1["model_instance_id"], F32);
    let loaded = first
        .iter()
        .find(|(n, _)| n == "model_load.end")
        .map(|(_, d)| d["load_time_seconds"].as_f64())
        .expect("model_load.end");
    assert!(loaded > Some(0.0));

    let check_end = |events: &[(String, Value)]| {
        let said: String = events
            .iter()
            .filter(|(n, _)| n == "message.delta")
            .filter_map(|(_, d)| d["content"].as_str())
            .collect();
        let (_, end) = events.last().expect("events");
        let result = &end["result"];
        assert_eq!(result["model_instance_id"], F32);
        assert_eq!(
            result["output"],
            json!([{"type": "message", "content": said}]),
            "the deltas join to the final message"
        );
        assert_sane_stats(&result["stats"], 8);
        assert!(result["response_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("resp_")));
        result.clone()
    };
    let result = check_end(&first);
    assert!(result["stats"]["model_load_time_seconds"].as_f64() > Some(0.0));

    // Loaded now: no load events, and the same answer (greedy).
    let (code, raw) = d.request("POST", "/api/v1/chat", Some(&body.to_string()));
    assert_eq!(code, 200, "{raw}");
    let second = events(&raw);
    assert_eq!(
        order(&second)[..2],
        ["chat.start", "prompt_processing.start"],
        "{raw}"
    );
    assert!(!raw.contains("model_load."), "{raw}");
    let again = check_end(&second);
    assert_eq!(again["output"], result["output"]);
    assert!(again["stats"].get("model_load_time_seconds").is_none());
}

#[test]
fn models_are_listed_in_lm_studios_shape() {
    let d = Daemon::start("");
    let (code, list) = d.get("/api/v1/models");
    assert_eq!(code, 200, "{list}");
    let f32 = entry_where(&list["models"], "key", F32);
    assert_eq!(f32["type"], "llm");
    assert_eq!(f32["publisher"], "opta");
    assert_eq!(f32["display_name"], "SmolLM2-135M-Instruct-f32");
    assert_eq!(f32["architecture"], "llama");
    assert_eq!(
        f32["quantization"],
        json!({"name": "float32", "bits_per_weight": 32})
    );
    assert_eq!(f32["params_string"], "135M");
    assert!(f32["size_bytes"].as_u64() > Some(500_000_000), "{f32}");
    assert_eq!(f32["max_context_length"], 8192);
    assert_eq!(f32["format"], "mlx");
    assert_eq!(f32["loaded_instances"], json!([]));
    assert_eq!(f32["capabilities"]["vision"], false);
    assert!(f32["capabilities"].get("reasoning").is_none(), "{f32}");
    let qwen = entry_where(&list["models"], "key", TINY_QWEN3);
    assert_eq!(
        qwen["capabilities"]["reasoning"],
        json!({"allowed_options": ["off", "on"], "default": "on"})
    );
    assert_eq!(qwen["capabilities"]["trained_for_tool_use"], true);

    let (code, loaded) = d.post(
        "/api/v1/models/load",
        &json!({"model": F32, "context_length": 4096, "parallel": 2, "echo_load_config": true}),
    );
    assert_eq!(code, 200, "{loaded}");
    assert_eq!(loaded["status"], "loaded");
    // What is in force, not what was asked for: the worker's context and the shared limit.
    let config = &loaded["load_config"];
    assert_eq!(config["context_length"], 8192, "{loaded}");
    assert!(config["parallel"].as_u64() >= Some(1), "{loaded}");
    let (_, list) = d.get("/api/v1/models");
    let f32 = entry_where(&list["models"], "key", F32);
    assert_eq!(
        f32["loaded_instances"],
        json!([{"id": F32, "config": {"context_length": 8192, "parallel": config["parallel"]}}])
    );
    let (code, body) = d.post("/api/v1/models/load", &json!({"model": F32, "parallel": 0}));
    assert_eq!(code, 400, "{body}");
    assert_eq!(lms_error(&body)["param"], "parallel");

    // OpenAI's list carries the context too, which Cursor and Android Studio read.
    let (_, v1) = d.get("/v1/models");
    assert_eq!(entry_where(&v1["data"], "id", F32)["context_length"], 8192);
    let (_, one) = d.get(&format!("/v1/models/{TINY_QWEN3}"));
    assert!(one["context_length"].as_u64() > Some(0), "{one}");
}

#[test]
fn with_jit_loading_off_a_stream_for_a_model_not_loaded_is_a_plain_404() {
    let d = Daemon::start("models:\n  jit_loading: false\n");
    let mut body = chat(F32, json!("Hi"));
    body["stream"] = json!(true);
    let (code, raw) = d.request("POST", "/api/v1/chat", Some(&body.to_string()));
    assert_eq!(code, 404, "{raw}");
    let body: Value = serde_json::from_str(&raw).expect("JSON, not a stream");
    assert_eq!(lms_error(&body)["type"], "model_not_found");
}
