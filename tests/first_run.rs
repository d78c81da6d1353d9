//! A newcomer's first requests, end to end with the real worker: sampling defaults for the
//! fields a request leaves out (the request, then the model's `generation_config.json`, then
//! `models.defaults`, then LM Studio's), prompts too long for the loaded context refused with
//! OpenAI's 400 `context_length_exceeded` before any generation on every route, and the
//! loaded context in LM Studio's model lists.

use std::path::Path;

use opta_lmx_tests::{entry_where, model, Daemon};
use serde_json::{json, Value};

const TINY: &str = "opta/tiny-random-llama";

/// A models folder with `test/advised`: the tiny model's files, but a `generation_config.json`
/// that recommends a temperature and a top-k, and `test/plain`: the tiny model as it is.
fn models_with_advice(root: &Path) {
    let tiny = model("tiny-random-llama");
    let advised = root.join("test/advised");
    std::fs::create_dir_all(&advised).unwrap();
    for f in std::fs::read_dir(&tiny).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap();
        if name != "generation_config.json" {
            std::os::unix::fs::symlink(&f, advised.join(name)).unwrap();
        }
    }
    std::fs::write(
        advised.join("generation_config.json"),
        r#"{"do_sample": true, "temperature": 0.3, "top_k": 7, "top_p": "not a number"}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink(&tiny, root.join("test/plain")).unwrap();
}

fn defaults_of(d: &Daemon, id: &str) -> Value {
    let (code, m) = d.get(&format!("/api/v0/models/{id}"));
    assert_eq!(code, 200, "{m}");
    m["sampling_defaults"].clone()
}

#[test]
fn sampling_defaults_follow_the_model_then_the_config_then_lm_studio() {
    let root = tempfile::tempdir().unwrap();
    models_with_advice(root.path());
    let d = Daemon::start_with_models("models:\n  defaults:\n    top_p: 0.5\n", root.path());
    assert_eq!(
        defaults_of(&d, "test/advised"),
        json!({"temperature": 0.3, "top_k": 7, "top_p": 0.5, "min_p": 0.05, "repeat_penalty": 1.1}),
        "generation_config.json over models.defaults over LM Studio's"
    );
    let plain = defaults_of(&d, "test/plain");
    assert_eq!(plain["temperature"], 0.8, "{plain}");
    assert_eq!(plain["top_p"], 0.5, "{plain}");
    // The list (what `opta-lmx ls --json` prints) shows the same.
    let (_, list) = d.get("/api/v0/models");
    let listed = entry_where(&list["data"], "id", "test/advised");
    assert_eq!(listed["sampling_defaults"]["top_k"], 7);

    // A request with no sampling fields runs on those defaults: seeded, it repeats itself,
    // and sending the model's defaults explicitly gives the very same tokens.
    let ask = |extra: Value| {
        let mut body = json!({"model": "test/advised", "prompt": "Once upon a time",
                              "max_tokens": 12, "seed": 11});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (code, c) = d.post("/v1/completions", &body);
        assert_eq!(code, 200, "{c}");
        c["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let implicit = ask(json!({}));
    assert_eq!(implicit, ask(json!({})));
    let explicit = ask(
        json!({"temperature": 0.3, "top_k": 7, "top_p": 0.5, "min_p": 0.05,
                              "repeat_penalty": 1.1}),
    );
    assert_eq!(implicit, explicit);
}

fn assert_context_error(code: u16, body: &Value, param: &str) {
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["param"], param, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("2048"),
        "the message names the context: {body}"
    );
}

#[test]
fn prompts_longer_than_the_context_get_400_before_any_generation_on_every_route() {
    let d = Daemon::start("");
    // 2048 tokens of the tiny model's context: one token id per position.
    let tokens: Vec<u32> = (0..2048).map(|i| 10 + (i % 100)).collect();
    let long_text = "word ".repeat(3000);
    for route in ["/v1/completions", "/api/v0/completions"] {
        for stream in [false, true] {
            let body = json!({"model": TINY, "prompt": tokens, "max_tokens": 4, "stream": stream});
            let (code, text) = d.request("POST", route, Some(&body.to_string()));
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{route} stream={stream}: not a JSON error: {text}"));
            assert_context_error(code, &v, "prompt");
        }
    }
    for route in ["/v1/chat/completions", "/api/v0/chat/completions"] {
        for stream in [false, true] {
            let body = json!({"model": TINY, "stream": stream,
                              "messages": [{"role": "user", "content": long_text}]});
            let (code, text) = d.request("POST", route, Some(&body.to_string()));
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{route} stream={stream}: not a JSON error: {text}"));
            assert_context_error(code, &v, "messages");
        }
    }
    // Nothing was generated, and the model still serves a prompt that fits.
    let (code, ok) = d.post(
        "/v1/completions",
        &json!({"model": TINY, "prompt": &tokens[..2000], "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(code, 200, "{ok}");
    assert_eq!(ok["usage"]["prompt_tokens"], 2000);

    // The loaded context, as LM Studio reports it (Zed reads it).
    let (_, v0) = d.get(&format!("/api/v0/models/{TINY}"));
    assert_eq!(v0["loaded_context_length"], 2048, "{v0}");
    assert_eq!(v0["max_context_length"], 2048, "{v0}");
    let (_, v1) = d.get("/api/v1/models");
    let entry = entry_where(&v1["models"], "key", TINY);
    assert_eq!(entry["loaded_context_length"], 2048, "{entry}");
    assert_eq!(
        entry["loaded_instances"][0]["config"]["context_length"],
        2048
    );
    // A model that is not loaded has no loaded context.
    let (_, other) = d.get("/api/v0/models/opta/tiny-random-qwen2");
    assert!(other.get("loaded_context_length").is_none(), "{other}");
}
