//! Every tool-call syntax end to end, with the real worker: `models.tool_call_format` sets a
//! syntax per model, a required call is forced by that syntax's grammar, and the parser reads
//! the generated text back into an OpenAI tool call whose arguments fit the schema. The
//! models' weights differ (SmolLM2 f32, bf16, 4-bit, tiny random Llama, DeepSeek V3, GLM-4 MoE
//! and Gemma 3); what is checked is the round trip through each syntax, not what the models
//! know.

use opta_lmx_tests::Daemon;
use serde_json::{json, Value};

const CASES: &[(&str, &str)] = &[
    ("opta/SmolLM2-135M-Instruct-f32", "llama3"),
    ("opta/SmolLM2-135M-Instruct-bf16", "mistral"),
    ("opta/SmolLM2-135M-Instruct-4bit", "qwen3_coder"),
    ("opta/tiny-random-llama", "deepseek"),
    ("opta/tiny-random-deepseek-v3", "kimi_k2"),
    ("opta/tiny-random-glm4-moe", "glm47"),
    ("opta/tiny-random-gemma4", "gemma4"),
];

fn body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}},
            "required": ["city"]}}}],
        "tool_choice": "required",
        "temperature": 0,
        // DeepSeek's and Kimi's markers are spelled out in bytes by a vocabulary that lacks
        // them.
        "max_tokens": 200,
        "stream": stream,
    })
}

fn check_arguments(model: &str, syntax: &str, name: &str, arguments: &str) {
    assert_eq!(name, "get_weather", "{model} ({syntax})");
    let args: Value = serde_json::from_str(arguments)
        .unwrap_or_else(|e| panic!("{model} ({syntax}): arguments {arguments:?}: {e}"));
    let city = args["city"].as_str();
    assert!(
        city.is_some_and(|c| c.chars().count() <= 24),
        "{model} ({syntax}): {args}"
    );
}

#[test]
fn every_syntax_forces_and_reads_back_a_call() {
    let mut config = String::from("models:\n  tool_call_format:\n");
    for (model, syntax) in CASES {
        config.push_str(&format!("    {model}: {syntax}\n"));
    }
    let d = Daemon::start(&config);
    for (model, syntax) in CASES {
        forced_call_round_trip(&d, model, syntax);
    }
}

/// gpt-oss's harmony format, known from the model's template alone: a forced call is written
/// in the commentary channel and read back, a constrained answer goes in the final channel,
/// and no header or marker reaches the client.
#[test]
fn harmony_models_call_tools_and_answer_in_their_channels() {
    let d = Daemon::start("");
    let model = "opta/tiny-random-gpt-oss-mxfp4";
    forced_call_round_trip(&d, model, "harmony");
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}},
        "required": ["answer"], "additionalProperties": false});
    let (code, r) = d.post(
        "/v1/chat/completions",
        &json!({"model": model, "temperature": 0, "max_tokens": 40,
            "messages": [{"role": "user", "content": "What is 6 times 7?"}],
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "a", "schema": schema, "strict": true}}}),
    );
    assert_eq!(code, 200, "{r}");
    let content = r["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    let answer: Value =
        serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
    assert!(answer["answer"].is_i64(), "{answer}");
    // Unconstrained, the random model writes no harmony: its text is the answer, unchanged.
    let (code, r) = d.post(
        "/v1/chat/completions",
        &json!({"model": model, "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(code, 200, "{r}");
    let content = r["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(!content.is_empty() && !content.contains("<|"), "{r}");
}

/// An agent loop's history on a harmony model: the reasoning sent back with a tool call reaches
/// the template, and a turn the template refuses with it (content and reasoning together) is
/// rendered without it rather than failed.
#[test]
fn harmony_history_keeps_the_reasoning_behind_a_call() {
    let d = Daemon::start("");
    let history = |content: Value, reasoning: Option<&str>| {
        let mut call = json!({"role": "assistant", "content": content, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]});
        if let Some(r) = reasoning {
            call["reasoning_content"] = json!(r);
        }
        json!({"model": "opta/tiny-random-gpt-oss", "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": "Weather in Paris?"}, call,
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]})
    };
    let prompt_tokens = |body: &Value| {
        let (code, r) = d.post("/v1/chat/completions", body);
        assert_eq!(code, 200, "{r}");
        r["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens")
    };
    let plain = prompt_tokens(&history(Value::Null, None));
    let reasoned = prompt_tokens(&history(Value::Null, Some("The user wants the weather.")));
    assert!(reasoned > plain + 5, "{reasoned} vs {plain}");
    let both = prompt_tokens(&history(
        json!("Checking."),
        Some("The user wants the weather."),
    ));
    assert_eq!(both, prompt_tokens(&history(json!("Checking."), None)));
}

/// A call forced by `syntax`'s grammar comes back as one OpenAI tool call, whole and streamed.
fn forced_call_round_trip(d: &Daemon, model: &str, syntax: &str) {
    let (code, r) = d.post("/v1/chat/completions", &body(model, false));
    assert_eq!(code, 200, "{model} ({syntax}): {r}");
    let choice = &r["choices"][0];
    assert_eq!(
        choice["finish_reason"], "tool_calls",
        "{model} ({syntax}): {r}"
    );
    let calls = choice["message"]["tool_calls"]
        .as_array()
        .expect("tool_calls");
    assert_eq!(calls.len(), 1, "{model} ({syntax}): {r}");
    let f = &calls[0]["function"];
    check_arguments(
        model,
        syntax,
        f["name"].as_str().unwrap_or_default(),
        f["arguments"].as_str().unwrap_or_default(),
    );
    assert_eq!(
        choice["message"]["content"],
        Value::Null,
        "{model} ({syntax}): {r}"
    );

    // Streamed: the same call, its arguments in fragments.
    let (code, events) = d.stream("/v1/chat/completions", &body(model, true));
    assert_eq!(code, 200);
    let mut name = String::new();
    let mut arguments = String::new();
    let mut fragments = 0;
    for e in &events {
        let Ok(v) = serde_json::from_str::<Value>(e) else {
            continue;
        };
        for tc in v["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            name.push_str(tc["function"]["name"].as_str().unwrap_or_default());
            arguments.push_str(tc["function"]["arguments"].as_str().unwrap_or_default());
            fragments += 1;
        }
    }
    check_arguments(model, syntax, &name, &arguments);
    assert!(fragments > 1, "{model} ({syntax}): {events:?}");
}

#[test]
fn an_unknown_tool_call_format_is_refused_at_startup() {
    let err = opta_lmx_tests::refused_config("models:\n  tool_call_format:\n    m: xml\n");
    assert!(
        err.contains("tool_call_format") && err.contains("hermes"),
        "{err}"
    );
}
