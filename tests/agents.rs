//! What agent clients (Claude Code, Codex) send and need, against the real binaries: the
//! root probe, `system` messages anywhere in a conversation, fields nothing here acts on, long
//! prefills that outlast the watchdog's limit, and the per-model answer-length limit.

use std::time::{Duration, Instant};

use opta_lmx_tests::{fake_worker_script, http_with_head, model, Daemon};
use serde_json::{json, Value};

const TINY: &str = "opta/tiny-random-llama";
const LONG: &str = "opta/tiny-random-llama-long";
const SMOL: &str = "opta/SmolLM2-135M-Instruct-4bit";
const GEMMA: &str = "opta/gemma-3-270m-f32";

#[test]
fn the_root_answers_get_and_head() {
    let d = Daemon::start("");
    let (code, body) = d.get("/");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ok");
    // Claude Code's connectivity probe.
    let (code, head, body) =
        http_with_head(d.port, "HEAD", "/", None, "application/json").expect("HEAD /");
    assert_eq!(code, 200, "{head}");
    assert!(body.is_empty(), "HEAD has no body: {body}");
}

/// `input_tokens` of a Messages request, counted with the model's own template.
fn count(d: &Daemon, body: &Value) -> u64 {
    let (code, v) = d.post("/v1/messages/count_tokens", body);
    assert_eq!(code, 200, "{v}");
    v["input_tokens"].as_u64().expect("input_tokens")
}

#[test]
fn system_messages_inside_the_conversation_reach_the_prompt() {
    let d = Daemon::start("");
    let agents = "Available agent types: general-purpose, statusline-setup, Explore, Plan.";
    // Claude Code's order: a user turn, then a system message.
    let in_place = |model: &str| {
        json!({"model": model, "system": "You are a coding agent.", "messages": [
            {"role": "user", "content": "List the files."},
            {"role": "system", "content": agents}]})
    };
    let merged = |model: &str| {
        json!({"model": model, "system": format!("You are a coding agent.\n\n{agents}"),
               "messages": [{"role": "user", "content": "List the files."}]})
    };
    let without = |model: &str| {
        json!({"model": model, "system": "You are a coding agent.",
               "messages": [{"role": "user", "content": "List the files."}]})
    };
    // SmolLM2's template takes a system message anywhere: it stays where it was sent.
    let smol = count(&d, &in_place(SMOL));
    assert!(
        smol > count(&d, &without(SMOL)) + 10,
        "the system message is in the prompt"
    );
    assert_ne!(smol, count(&d, &merged(SMOL)), "and not merged");
    // Gemma's template refuses roles out of turn: the system message joins the first one.
    assert_eq!(count(&d, &in_place(GEMMA)), count(&d, &merged(GEMMA)));

    // And the request Claude Code sends, with what nothing here acts on, generates.
    let mut body = in_place(SMOL);
    body["messages"][1]["content"] = json!([{"type": "text", "text": agents}]);
    for (k, v) in [
        ("thinking", json!({"type": "adaptive"})),
        (
            "metadata",
            json!({"user_id": "{\"device_id\":\"abc\",\"session_id\":\"s-1\"}"}),
        ),
        (
            "context_management",
            json!({"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}),
        ),
        ("output_config", json!({"effort": "medium"})),
        ("service_tier", json!("auto")),
        ("temperature", json!(0)),
    ] {
        body[k] = v;
    }
    body["max_tokens"] = json!(8);
    let (code, m) = d.post("/v1/messages?beta=true", &body);
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["type"], "message");
    assert!(m["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0, "{m}");

    // Responses: developer and system messages past the first place, on both templates.
    for model in [SMOL, GEMMA] {
        let (code, r) = d.post(
            "/v1/responses",
            &json!({"model": model, "instructions": "You are Codex.", "max_output_tokens": 4,
                    "temperature": 0, "input": [
                {"role": "user", "content": "Hi"},
                {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
                {"role": "system", "content": "Sandbox: read-only."}]}),
        );
        assert_eq!(code, 200, "{model}: {r}");
        assert_eq!(r["status"], "incomplete", "{model}: {r}");
    }
}

/// A daemon whose (fake) worker reads every prompt for `prefill_ms`, reporting progress every
/// `progress_ms` (0: never), under a one-second watchdog.
fn slow_prefill_daemon(dir: &std::path::Path, prefill_ms: u64, progress_ms: u64) -> Daemon {
    let worker = fake_worker_script(
        dir,
        &format!("--prefill-ms {prefill_ms} --progress-ms {progress_ms}"),
    );
    Daemon::start_with_env(
        "server:\n  timeout_sec: 1\n  load_timeout_sec: 60\n",
        &[("OPTA_LMX_WORKER", worker.as_os_str())],
    )
}

#[test]
fn a_prefill_longer_than_the_watchdog_limit_completes_while_it_reports_progress() {
    let dir = tempfile::tempdir().expect("temp dir");
    let body = json!({"model": TINY, "stream": true, "max_tokens": 3,
                      "messages": [{"role": "user", "content": "Hi"}]});
    // Six seconds of prefill: past the one-second limit, and past one keep-alive period.
    let d = slow_prefill_daemon(dir.path(), 6000, 200);
    let started = Instant::now();
    let (code, head, raw) = http_with_head(
        d.port,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        "application/json",
    )
    .expect("stream");
    assert_eq!(code, 200, "{head}");
    assert!(started.elapsed() >= Duration::from_secs(6));
    assert!(raw.contains("data: [DONE]"), "{raw}");
    assert!(!raw.contains("\"error\""), "{raw}");
    assert!(
        raw.contains(": keep-alive"),
        "progress that renders nothing must not hold back the keep-alive: {raw}"
    );
    drop(d);

    // The same worker silent while it reads: frozen, as far as anyone can tell.
    let d = slow_prefill_daemon(dir.path(), 6000, 0);
    let mut silent = body.clone();
    silent["stream"] = json!(false);
    let (code, err) = d.post("/v1/chat/completions", &silent);
    assert_eq!(code, 504, "{err}");
}

#[test]
fn a_real_long_prefill_outlasts_a_short_watchdog() {
    // Claude Code's first request is about 20k tokens; the worker reads it in 256-token
    // chunks (about 80, some 20 s here) and reports each one, so a watchdog of a few seconds
    // never fires. (Not one second: rendering and tokenizing the 20k-token prompt before the
    // first chunk can take that long when other tests load the machine's two cores.)
    model("tiny-random-llama-long");
    let d = Daemon::start(
        "server:\n  timeout_sec: 3\n  load_timeout_sec: 120\nmodels:\n  prefill_step_size: 256\n",
    );
    let (code, body) = d.post("/admin/models/load", &json!({"model_id": LONG}));
    assert_eq!(code, 200, "{body}");
    let words = "the quick brown fox jumps over the lazy dog and ".repeat(2000);
    let started = Instant::now();
    let (code, m) = d.post(
        "/v1/messages",
        &json!({"model": LONG, "max_tokens": 2, "temperature": 0,
                "messages": [{"role": "user", "content": words}]}),
    );
    let took = started.elapsed();
    assert_eq!(code, 200, "{m}");
    let prompt = m["usage"]["input_tokens"].as_u64().unwrap_or(0);
    assert!(prompt > 15_000, "{prompt} prompt tokens");
    assert!(
        took > Duration::from_secs(3),
        "the prefill took {took:?}: too quick to test the watchdog"
    );
}

#[test]
fn answer_length_limits_apply_per_model() {
    let d = Daemon::start(
        "models:\n  max_output_tokens:\n    default: 6\n    per_model:\n      \
         opta/tiny-random-qwen2: {max: 3}\n",
    );
    let tokens = |body: Value| {
        let (code, r) = d.post("/v1/chat/completions", &body);
        assert_eq!(code, 200, "{r}");
        (
            r["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            r["choices"][0]["finish_reason"].clone(),
        )
    };
    let hi = json!([{"role": "user", "content": "Hi"}]);
    // A request that sets no limit gets the default (the random model never ends its turn).
    assert_eq!(
        tokens(json!({"model": TINY, "messages": hi, "temperature": 0})),
        (6, json!("length"))
    );
    // A request's own limit wins over the default.
    assert_eq!(
        tokens(json!({"model": TINY, "messages": hi, "temperature": 0, "max_tokens": 9})).0,
        9
    );
    // A model's max caps every request, also one that asks for more (Claude Code's 32000).
    assert_eq!(
        tokens(
            json!({"model": "opta/tiny-random-qwen2", "messages": hi, "temperature": 0,
                      "max_tokens": 32000})
        ),
        (3, json!("length"))
    );
    let (code, m) = d.post(
        "/v1/messages",
        &json!({"model": "opta/tiny-random-qwen2", "max_tokens": 32000, "temperature": 0,
                "messages": hi}),
    );
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["stop_reason"], "max_tokens");
    assert_eq!(m["usage"]["output_tokens"], 3);
    // Codex sends no limit on /v1/responses: the default applies there too.
    let (code, r) = d.post(
        "/v1/responses",
        &json!({"model": TINY, "input": "Hi", "temperature": 0}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["usage"]["output_tokens"], 6);
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
}
