//! The daemon end to end over HTTP: the seed plan's drop-in matrix, the OpenAI and LM Studio
//! shapes, errors, and one worker process per model. Real `opta-lmx`, real
//! `opta-lmx-worker`, real test models.

use opta_lmx_tests::{entry_where, Daemon};
use serde_json::{json, Value};

const F32: &str = "opta/SmolLM2-135M-Instruct-f32";
const TINY: &str = "opta/tiny-random-llama";
const TINY_QWEN: &str = "opta/tiny-random-qwen3";

fn ask(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 24})
}

fn model_ids(d: &Daemon) -> Vec<String> {
    let (code, body) = d.get("/v1/models");
    assert_eq!(code, 200);
    assert_eq!(body["object"], "list");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert!(m["created"].is_u64() && m["owned_by"].is_string());
            m["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The seed plan's test matrix, in its order, with JIT loading off (so the model list is
/// empty before a load and after an unload).
#[test]
fn seed_plan_drop_in_matrix() {
    let d = Daemon::start("models:\n  jit_loading: false\n");

    let (code, health) = d.get("/admin/health");
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));
    assert!(health["version"].is_string());

    let (code, status) = d.get("/admin/status");
    assert_eq!(code, 200);
    assert_eq!(status["loaded_models"], 0);
    assert!(
        status["uptime_seconds"].is_u64() && status["memory"]["total_bytes"].as_u64() > Some(0)
    );

    let (code, memory) = d.get("/admin/memory");
    assert_eq!(code, 200);
    assert!(memory["usage_percent"].as_f64().is_some());
    assert_eq!(memory["threshold_percent"], 90);

    assert!(model_ids(&d).is_empty(), "nothing listed before a load");

    let (code, loaded) = d.post("/admin/models/load", &json!({"model_id": F32}));
    assert_eq!(code, 200, "{loaded}");
    assert_eq!(loaded["success"], true);
    assert_eq!(loaded["model_id"], F32);

    assert_eq!(model_ids(&d), [F32]);

    let (code, chat) = d.post(
        "/v1/chat/completions",
        &ask(F32, "What is the capital of France?"),
    );
    assert_eq!(code, 200, "{chat}");
    assert!(chat["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], F32);
    let choice = &chat["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(
        choice["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{chat}"
    );
    assert_eq!(choice["finish_reason"], "stop");
    let u = &chat["usage"];
    assert_eq!(u["prompt_tokens"], 37, "the chat template's token count");
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );

    let mut body = ask(F32, "What is the capital of France?");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (code, events) = d.stream("/v1/chat/completions", &body);
    assert_eq!(code, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text, chat["choices"][0]["message"]["content"],
        "streamed = non-streamed"
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    // The same counts; the streamed request, the same prompt again, may reuse cached tokens.
    for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage["usage"][key], chat["usage"][key], "{key}");
    }

    let (code, unloaded) = d.post("/admin/models/unload", &json!({"model_id": F32}));
    assert_eq!(
        (code, &unloaded["success"]),
        (200, &json!(true)),
        "{unloaded}"
    );
    assert!(model_ids(&d).is_empty(), "nothing listed after the unload");

    let (code, err) = d.post("/v1/chat/completions", &ask(F32, "Hello"));
    assert_eq!(code, 404, "{err}");
    assert_eq!(err["error"]["code"], "model_not_found");

    let (code, err) = d.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert!((400..500).contains(&code), "no model: {code} {err}");
    assert_eq!(err["error"]["param"], "model");

    let (code, err) = d.post("/v1/chat/completions", &json!({"model": F32}));
    assert!((400..500).contains(&code), "no messages: {code} {err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("messages"));
}

#[test]
fn bad_requests_get_openai_shaped_errors_and_the_daemon_keeps_serving() {
    let d = Daemon::start("");
    let (code, raw) = d.request("POST", "/v1/chat/completions", Some("{\"model\": "));
    assert_eq!(code, 400, "{raw}");
    let err: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");

    let (code, err) = d.post(
        "/v1/chat/completions",
        &json!({"model": TINY, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
    );
    assert_eq!(code, 400);
    assert_eq!(err["error"]["param"], "temperature", "{err}");

    let (code, err) = d.post(
        "/v1/chat/completions",
        &json!({"model": TINY, "messages": [{"role": "user", "content": 5}]}),
    );
    assert_eq!(code, 400);
    assert_eq!(err["error"]["param"], "messages[0].content", "{err}");

    let (code, err) = d.post(
        "/v1/chat/completions",
        &json!({"model": TINY, "messages": [{"role": "user", "content": "x"}], "top_p": 3}),
    );
    assert_eq!((code, &err["error"]["param"]), (400, &json!("top_p")));

    let (code, err) = d.post("/v1/chat/completions", &ask("nobody/no-such-model", "x"));
    assert_eq!(
        (code, &err["error"]["code"]),
        (404, &json!("model_not_found"))
    );

    let huge = format!(
        "{{\"model\":\"{TINY}\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "a".repeat(9 * 1024 * 1024)
    );
    let (code, _) = d.request("POST", "/v1/chat/completions", Some(&huge));
    assert_eq!(code, 413);

    let (code, err) = d.get("/v1/no-such-endpoint");
    assert_eq!(code, 404);
    assert!(err["error"]["message"].is_string());

    // A known path with the wrong method: 405, still OpenAI-shaped.
    let (code, err) = d.get("/v1/chat/completions");
    assert_eq!(code, 405, "{err}");
    assert_eq!(err["error"]["code"], "method_not_allowed", "{err}");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    // On Anthropic's routes, in Anthropic's shape.
    let (code, err) = d.get("/v1/messages");
    assert_eq!(code, 405, "{err}");
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["error"]["type"], "invalid_request_error");

    // Unknown fields are ignored, and the daemon still answers.
    let mut body = ask(TINY, "Hello");
    body["some_future_field"] = json!({"x": 1});
    let (code, ok) = d.post("/v1/chat/completions", &body);
    assert_eq!(code, 200, "{ok}");
}

#[test]
fn jit_loading_completions_and_sampling_controls() {
    let d = Daemon::start("");
    // JIT on: every model that could be loaded is listed before any load.
    let ids = model_ids(&d);
    assert!(
        ids.contains(&F32.to_string()) && ids.contains(&TINY.to_string()),
        "{ids:?}"
    );

    let (code, c) = d.post(
        "/v1/completions",
        &json!({"model": TINY, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["object"], "text_completion");
    assert!(c["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(c["choices"][0]["finish_reason"], "length");
    assert_eq!(c["usage"]["completion_tokens"], 5);

    // Seeded sampling is reproducible.
    let sampled = |seed: u64| {
        let mut body = ask(TINY, "Tell me something.");
        body["temperature"] = json!(1.0);
        body["seed"] = json!(seed);
        body["max_tokens"] = json!(12);
        d.post("/v1/chat/completions", &body).1["choices"][0]["message"]["content"].clone()
    };
    assert_eq!(sampled(7), sampled(7));

    // Stop strings end the answer and are not part of it.
    let (_, full) = d.post(
        "/v1/chat/completions",
        &ask(F32, "What is the capital of France?"),
    );
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut body = ask(F32, "What is the capital of France?");
    body["stop"] = json!("Paris");
    let (code, stopped) = d.post("/v1/chat/completions", &body);
    assert_eq!(code, 200);
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        stopped["choices"][0]["message"]["content"]
            .as_str()
            .unwrap(),
        &text[..text.find("Paris").unwrap()]
    );

    // Logprobs with alternatives.
    let mut body = ask(F32, "Say yes.");
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    body["max_tokens"] = json!(3);
    let (_, lp) = d.post("/v1/chat/completions", &body);
    let content = lp["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);

    // LM Studio's REST API: model states and the extra response fields.
    let (code, v0) = d.get("/api/v0/models");
    assert_eq!(code, 200);
    let f32 = entry_where(&v0["data"], "id", F32);
    assert_eq!(f32["state"], "loaded");
    assert_eq!(f32["compatibility_type"], "mlx");
    assert_eq!(f32["arch"], "llama");
    assert_eq!(f32["max_context_length"], 8192);
    let (_, one) = d.get(&format!("/api/v0/models/{TINY_QWEN}"));
    assert_eq!(
        (one["state"].as_str(), one["arch"].as_str()),
        (Some("not-loaded"), Some("qwen3"))
    );
    let (code, lms) = d.post("/api/v0/chat/completions", &ask(TINY, "Hi"));
    assert_eq!(code, 200, "{lms}");
    assert!(lms["stats"]["tokens_per_second"].as_f64().is_some());
    assert!(lms["stats"]["time_to_first_token"].as_f64().is_some());
    assert_eq!(lms["model_info"]["format"], "mlx");
}

#[test]
fn each_model_has_its_own_worker_process_and_unload_ends_it() {
    let d = Daemon::start("");
    for m in [TINY, TINY_QWEN] {
        let (code, body) = d.post("/api/v1/models/load", &json!({"model": m}));
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            (body["status"].as_str(), body["instance_id"].as_str()),
            (Some("loaded"), Some(m))
        );
    }
    let (_, status) = d.get("/admin/status");
    let workers = status["workers"].as_array().unwrap();
    let pids: Vec<u64> = workers.iter().filter_map(|w| w["pid"].as_u64()).collect();
    assert_eq!(pids.len(), 2, "{status}");
    assert_ne!(pids[0], pids[1]);
    for m in [TINY, TINY_QWEN] {
        let (code, _) = d.post("/v1/chat/completions", &ask(m, "Hi"));
        assert_eq!(code, 200);
    }

    let (code, body) = d.post("/api/v1/models/unload", &json!({"instance_id": TINY}));
    assert_eq!((code, body["instance_id"].as_str()), (200, Some(TINY)));
    let gone = workers
        .iter()
        .find(|w| w["model_id"] == TINY)
        .and_then(|w| w["pid"].as_u64())
        .unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{gone}")).exists(),
        "the unloaded model's worker {gone} is gone"
    );
    let (code, _) = d.post("/v1/chat/completions", &ask(TINY_QWEN, "Still there?"));
    assert_eq!(code, 200, "the other model keeps serving");
}
