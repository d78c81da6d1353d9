//! The OpenAPI document at `/openapi.json` against the running daemon: every route of the
//! router is documented (and nothing else is), and every documented operation answers real
//! requests, valid and invalid, with a documented status and a body that fits the documented
//! schema. Real `opta-lmx`, real `opta-lmx-worker`, the tiny test model.

use std::collections::BTreeSet;

use opta_lmx_tests::{http_with_head, Daemon};
use serde_json::{json, Value};

const TINY: &str = "opta/tiny-random-llama";
/// Its template opens a `<think>` block, so its answers carry reasoning.
const TINY_QWEN3: &str = "opta/tiny-random-qwen3";
const UNKNOWN: &str = "nobody/no-such-model";
const HTTP_METHODS: &[&str] = &["get", "post", "put", "patch", "delete", "head", "options"];

// ------------------------------------------------------------------ schema checker

/// Follows `$ref` (a JSON pointer into the document) until a schema without one.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> Result<&'a Value, String> {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = doc
                .pointer(r.strip_prefix('#').unwrap_or(r))
                .ok_or_else(|| format!("dangling $ref {r}"))?;
            resolve(doc, target)
        }
        None => Ok(schema),
    }
}

/// Checks `value` against `schema` (a schema of the document: its `$ref`s point into the
/// document's `components`) with JSON Schema 2020-12, as OpenAPI 3.1 defines its schemas.
/// `at` names `value` in the error message.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let mut root = json!({"allOf": [schema]});
    root["components"] = doc["components"].clone();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .map_err(|e| format!("{at}: the document's schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{at}{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[test]
fn the_schema_checker_rejects_what_it_should() {
    let doc = json!({"components": {"schemas": {
        "Thing": {"type": "object", "required": ["id"], "additionalProperties": false,
                  "properties": {"id": {"type": "integer"},
                                 "kind": {"type": ["string", "null"], "enum": ["a", null]},
                                 "tags": {"type": "array", "maxItems": 1,
                                          "items": {"type": "string"}}}},
        "Either": {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]},
    }}});
    let thing = json!({"$ref": "#/components/schemas/Thing"});
    let either = json!({"$ref": "#/components/schemas/Either"});
    let ok = |schema: &Value, v: Value| check(&doc, schema, &v, "$").map_err(|e| e.to_string());
    assert_eq!(
        ok(&thing, json!({"id": 1, "kind": null, "tags": ["x"]})),
        Ok(())
    );
    assert!(ok(&thing, json!({"id": 1.5})).is_err(), "float for integer");
    assert!(ok(&thing, json!({})).is_err(), "missing required");
    assert!(
        ok(&thing, json!({"id": 1, "extra": 0})).is_err(),
        "undocumented"
    );
    assert!(ok(&thing, json!({"id": 1, "kind": "b"})).is_err(), "enum");
    assert!(
        ok(&thing, json!({"id": 1, "tags": ["x", "y"]})).is_err(),
        "maxItems"
    );
    assert!(
        ok(&thing, json!({"id": 1, "tags": [3]})).is_err(),
        "item type"
    );
    assert_eq!(ok(&either, json!("s")), Ok(()));
    assert!(ok(&either, json!(0)).is_err(), "minimum");
    assert!(
        ok(&json!({"$ref": "#/nowhere"}), json!(1)).is_err(),
        "dangling ref"
    );
}

// ------------------------------------------------------------------ the router's routes

/// The (method, path) pairs `server::app` registers, from the router's own table, so a route
/// added there without a document entry fails this test. Axum's catch-all `{*id}` is
/// OpenAPI's `{id}`.
fn router_operations() -> BTreeSet<(String, String)> {
    opta_lmx::server::operations()
        .into_iter()
        .map(|(method, path, _)| {
            (
                method.as_str().to_ascii_lowercase(),
                path.replace("{*", "{"),
            )
        })
        .collect()
}

fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("path item");
            item.keys()
                .filter(|k| HTTP_METHODS.contains(&k.as_str()))
                .map(|m| (m.clone(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

// ------------------------------------------------------------------ requests per operation

/// One request to send and the status it must get.
struct Call {
    url: String,
    body: Option<String>,
    expect: u16,
    /// Loads the tiny model first (for the unloads).
    load_first: bool,
}

fn call(url: impl Into<String>, body: Option<Value>, expect: u16) -> Call {
    Call {
        url: url.into(),
        body: body.map(|b| b.to_string()),
        expect,
        load_first: false,
    }
}

fn raw(url: &str, body: String, expect: u16) -> Call {
    Call {
        url: url.to_string(),
        body: Some(body),
        expect,
        load_first: false,
    }
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hi"}],
           "temperature": 0, "max_tokens": 4})
}

/// A body over the 8 MiB limit.
fn oversized() -> String {
    format!("{{\"x\": \"{}\"}}", "a".repeat(9 * 1024 * 1024))
}

/// Valid and invalid requests for each documented operation. An operation without any
/// fails the test, so a new route needs requests here.
fn calls_for(method: &str, path: &str) -> Vec<Call> {
    let post = |valid: Vec<Value>, invalid: Vec<(Value, u16)>| {
        let mut out: Vec<Call> = valid
            .into_iter()
            .map(|b| call(path, Some(b), 200))
            .collect();
        out.extend(
            invalid
                .into_iter()
                .map(|(b, code)| call(path, Some(b), code)),
        );
        out.push(raw(path, "{\"model\": ".to_string(), 400));
        out.push(raw(path, oversized(), 413));
        out
    };
    match (method, path) {
        ("get", "/v1/models/{id}" | "/api/v0/models/{id}") => vec![
            call(path.replace("{id}", TINY), None, 200),
            call(path.replace("{id}", UNKNOWN), None, 404),
        ],
        ("get", _) => vec![call(path, None, 200)],
        ("post", "/v1/chat/completions" | "/api/v0/chat/completions") => post(
            vec![
                json!({"model": TINY, "messages": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                       "temperature": 0, "max_tokens": 4, "logprobs": true, "top_logprobs": 2}),
                json!({"model": TINY, "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
                // A forced tool call, streamed and not; reasoning from an opened think block.
                json!({"model": TINY, "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 40, "temperature": 0, "tool_choice": "required",
                       "tools": [{"type": "function", "function": {"name": "f", "parameters":
                           {"type": "object", "properties": {"a": {"type": "boolean"}}}}}]}),
                json!({"model": TINY, "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 40, "temperature": 0, "stream": true,
                       "tool_choice": {"type": "function", "function": {"name": "f"}},
                       "tools": [{"type": "function", "function": {"name": "f"}}]}),
                json!({"model": TINY_QWEN3, "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 4, "temperature": 0}),
                json!({"model": TINY_QWEN3, "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 4, "temperature": 0, "stream": true}),
            ],
            vec![
                (json!({"model": TINY, "messages": []}), 400),
                (
                    json!({"model": TINY, "messages": [{"role": "user", "content": "x"}],
                        "response_format": {"type": "json_schema", "json_schema":
                            {"schema": {"$ref": "#/nowhere"}}}}),
                    400,
                ),
                (
                    json!({"model": TINY, "messages": [{"role": "user", "content": "x"}],
                        "temperature": 5}),
                    400,
                ),
                (chat(UNKNOWN), 404),
            ],
        ),
        ("post", "/v1/messages") => post(
            vec![
                json!({"model": TINY, "max_tokens": 4, "temperature": 0, "system": "Be brief.",
                       "messages": [{"role": "user", "content": "Hi"}]}),
                json!({"model": TINY, "max_tokens": 4, "stream": true,
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}),
                json!({"model": TINY, "max_tokens": 40, "temperature": 0, "stream": true,
                       "tools": [{"name": "f", "input_schema": {"type": "object",
                           "properties": {"a": {"type": "boolean"}}}}],
                       "tool_choice": {"type": "any"},
                       "messages": [{"role": "user", "content": "Hi"}]}),
                json!({"model": TINY_QWEN3, "max_tokens": 4, "temperature": 0,
                       "messages": [{"role": "user", "content": "Hi"}]}),
                json!({"model": TINY_QWEN3, "max_tokens": 4, "temperature": 0, "stream": true,
                       "messages": [{"role": "user", "content": "Hi"}]}),
            ],
            vec![
                (
                    json!({"model": TINY, "messages": [{"role": "user", "content": "x"}]}),
                    400,
                ),
                (
                    json!({"model": UNKNOWN, "max_tokens": 1,
                        "messages": [{"role": "user", "content": "x"}]}),
                    404,
                ),
            ],
        ),
        ("post", "/v1/responses") => post(
            vec![
                json!({"model": TINY, "input": "Hi", "max_output_tokens": 4, "temperature": 0}),
                json!({"model": TINY, "input": [{"role": "user", "content": "Hi"}],
                       "max_output_tokens": 4, "stream": true}),
                json!({"model": TINY, "input": "Hi", "max_output_tokens": 40, "temperature": 0,
                       "stream": true, "tool_choice": "required",
                       "tools": [{"type": "function", "name": "f", "parameters": {"type": "object",
                           "properties": {"a": {"type": "boolean"}}}},
                                 {"type": "web_search"}]}),
                json!({"model": TINY, "input": "Hi", "max_output_tokens": 40, "temperature": 0,
                       "tool_choice": {"type": "custom", "name": "patch"},
                       "tools": [{"type": "custom", "name": "patch"}]}),
                json!({"model": TINY_QWEN3, "input": "Hi", "max_output_tokens": 4,
                       "temperature": 0}),
                json!({"model": TINY_QWEN3, "input": "Hi", "max_output_tokens": 4,
                       "temperature": 0, "stream": true}),
            ],
            vec![
                (json!({"model": TINY}), 400),
                (
                    json!({"model": TINY, "input": "x", "previous_response_id": "resp_none"}),
                    404,
                ),
                (json!({"model": UNKNOWN, "input": "x"}), 404),
            ],
        ),
        ("post", "/v1/messages/count_tokens") => post(
            vec![
                json!({"model": TINY, "messages": [{"role": "user", "content": "Hi"}],
                        "tools": [{"name": "f", "input_schema": {"type": "object"}}]}),
            ],
            vec![
                (json!({"model": TINY, "messages": []}), 400),
                (
                    json!({"model": UNKNOWN, "messages": [{"role": "user", "content": "x"}]}),
                    404,
                ),
            ],
        ),
        ("post", "/v1/completions" | "/api/v0/completions") => post(
            vec![
                json!({"model": TINY, "prompt": "Once upon", "max_tokens": 4, "temperature": 0,
                       "logprobs": 2, "echo": true}),
                json!({"model": TINY, "prompt": ["Once upon"], "max_tokens": 4, "stream": true,
                       "stream_options": {"include_usage": true}}),
            ],
            vec![
                (json!({"model": TINY, "prompt": ["a", "b"]}), 400),
                (json!({"model": UNKNOWN, "prompt": "x"}), 404),
            ],
        ),
        ("post", "/v1/embeddings" | "/api/v0/embeddings") => post(
            vec![
                json!({"model": "opta/tiny-random-bert", "input": "hello world"}),
                json!({"model": "opta/tiny-random-bert", "input": ["a", [5, 6]],
                       "encoding_format": "base64", "dimensions": 8}),
            ],
            vec![
                (json!({"model": "opta/tiny-random-bert", "input": []}), 400),
                (json!({"model": TINY, "input": "x"}), 400),
                (json!({"model": UNKNOWN, "input": "x"}), 404),
            ],
        ),
        ("post", "/admin/models/load") => post(
            vec![json!({"model_id": TINY})],
            vec![(json!({}), 400), (json!({"model_id": UNKNOWN}), 404)],
        ),
        ("post", "/api/v1/models/load") => post(
            vec![
                json!({"model": TINY, "ttl": 600}),
                json!({"model": TINY, "context_length": 512, "parallel": 2,
                       "echo_load_config": true}),
            ],
            vec![(json!({"model": 5}), 400), (json!({"model": UNKNOWN}), 404)],
        ),
        ("post", "/api/v1/chat") => post(
            vec![
                json!({"model": TINY, "input": "Hi", "max_output_tokens": 4, "temperature": 0,
                       "system_prompt": "Be brief.", "store": false}),
                json!({"model": TINY, "input": [{"type": "text", "content": "Hi"}],
                       "max_output_tokens": 4, "stream": true}),
                json!({"model": TINY_QWEN3, "input": "Hi", "max_output_tokens": 4,
                       "temperature": 0, "reasoning": "on"}),
                json!({"model": TINY_QWEN3, "input": "Hi", "max_output_tokens": 4,
                       "temperature": 0, "stream": true}),
            ],
            vec![
                (json!({"model": TINY, "input": []}), 400),
                (
                    json!({"model": TINY, "input": "x", "reasoning": "high"}),
                    400,
                ),
                (json!({"model": UNKNOWN, "input": "x"}), 404),
                (
                    json!({"model": TINY, "input": "x", "previous_response_id": "resp_none"}),
                    404,
                ),
            ],
        ),
        ("post", "/admin/models/unload") => unload_calls(post(
            vec![json!({"model_id": TINY})],
            vec![
                (json!({"name": TINY}), 400),
                (json!({"model_id": UNKNOWN}), 404),
            ],
        )),
        ("post", "/api/v1/models/unload") => unload_calls(post(
            vec![json!({"instance_id": TINY})],
            vec![(json!({}), 400), (json!({"instance_id": UNKNOWN}), 404)],
        )),
        _ => panic!("no requests written for {method} {path}: add them to calls_for()"),
    }
}

/// An unload answers 200 only for a loaded model: load it before each valid call.
fn unload_calls(mut calls: Vec<Call>) -> Vec<Call> {
    for c in calls.iter_mut().filter(|c| c.expect == 200) {
        c.load_first = true;
    }
    calls
}

// ------------------------------------------------------------------ checking answers

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The operation's response object for `status`, or a failure naming what is documented.
fn documented_response<'a>(doc: &'a Value, op: &'a Value, status: u16, what: &str) -> &'a Value {
    let responses = op["responses"].as_object().expect("responses");
    let r = responses.get(&status.to_string()).unwrap_or_else(|| {
        panic!(
            "{what}: status {status} is not documented (documented: {:?})",
            responses.keys().collect::<Vec<_>>()
        )
    });
    resolve(doc, r).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Checks an answer's Content-Type and body against the documented response.
fn check_answer(doc: &Value, response: &Value, head: &str, body: &str, what: &str) {
    let media = header(head, "content-type")
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase())
        .unwrap_or_else(|| panic!("{what}: no Content-Type in {head}"));
    let content = response["content"]
        .get(&media)
        .unwrap_or_else(|| panic!("{what}: Content-Type {media} is not documented"));
    match media.as_str() {
        "application/json" => {
            let value: Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body}"));
            check(doc, &content["schema"], &value, "$")
                .unwrap_or_else(|e| panic!("{what}: {e}\nbody: {body}"));
        }
        "text/event-stream" => check_stream(doc, content, body, what),
        "application/openmetrics-text" => check_openmetrics(body, what),
        other => panic!("{what}: no checker for {other}"),
    }
}

/// OpenMetrics text: comment lines, samples `name{labels} value`, and `# EOF` last.
fn check_openmetrics(body: &str, what: &str) {
    assert!(body.ends_with("# EOF\n"), "{what}: no # EOF at the end");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("{what}: not a sample: {line}"));
        let name = series.split('{').next().unwrap_or("");
        assert!(
            name.starts_with("opta_lmx_")
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{what}: bad metric name in {line}"
        );
        assert!(value.parse::<f64>().is_ok(), "{what}: bad value in {line}");
    }
}

/// Every `data:` event fits the documented schema, and a successful stream ends `[DONE]`
/// (or, where `x-sse-last-event` names one, with an event of that `type`).
fn check_stream(doc: &Value, content: &Value, body: &str, what: &str) {
    let schema = &content["x-sse-data-schema"];
    assert!(!schema.is_null(), "{what}: no x-sse-data-schema");
    let mut events: Vec<&str> = body
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .collect();
    // One event type, or a list of them, may end the stream instead of `[DONE]`.
    let lasts: Vec<&str> = match &content["x-sse-last-event"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if lasts.is_empty() {
        assert_eq!(events.last(), Some(&"[DONE]"), "{what}: {body}");
        events.pop();
    } else {
        let end: Value = serde_json::from_str(events.last().unwrap_or(&"null")).unwrap_or_default();
        let kind = end["type"].as_str().unwrap_or_default();
        assert!(lasts.contains(&kind), "{what}: ends with {kind:?}: {body}");
    }
    assert!(!events.is_empty(), "{what}: no events");
    for (i, event) in events.iter().enumerate() {
        let value: Value = serde_json::from_str(event)
            .unwrap_or_else(|e| panic!("{what}: event {i} is not JSON ({e}): {event}"));
        check(doc, schema, &value, &format!("event[{i}]"))
            .unwrap_or_else(|e| panic!("{what}: {e}\nevent: {event}"));
    }
}

fn request_schema(op: &Value) -> Option<&Value> {
    op.pointer("/requestBody/content/application~1json/schema")
}

/// Sends one call and checks it against the operation's documentation.
fn run_call(d: &Daemon, doc: &Value, method: &str, op: &Value, c: &Call) {
    let shown = c.body.as_deref().map_or(String::new(), |b| {
        format!(" {}", b.chars().take(120).collect::<String>())
    });
    let what = format!("{} {}{shown}", method.to_uppercase(), c.url);
    if c.load_first {
        let (code, body) = d.post("/admin/models/load", &json!({"model_id": TINY}));
        assert_eq!(code, 200, "{what}: loading first: {body}");
    }
    // A valid request must also fit the documented request schema.
    if let (200, Some(schema), Some(body)) = (c.expect, request_schema(op), &c.body) {
        let value: Value = serde_json::from_str(body).expect("test body is JSON");
        check(doc, schema, &value, "request")
            .unwrap_or_else(|e| panic!("{what}: the documented request schema refuses it: {e}"));
    }
    let (code, head, body) = http_with_head(
        d.port,
        &method.to_uppercase(),
        &c.url,
        c.body.as_deref(),
        "application/json",
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let response = documented_response(doc, op, code, &what);
    assert_eq!(code, c.expect, "{what}: answered {code}: {body}");
    check_answer(doc, response, &head, &body, &what);
}

// ------------------------------------------------------------------ the document itself

/// Operation ids are unique, every operation documents 200, every `$ref` resolves, and
/// every request example fits its schema.
fn check_document_shape(doc: &Value) {
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let mut ids = BTreeSet::new();
    for (method, path) in documented_operations(doc) {
        let op = &doc["paths"][&path][&method];
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(ids.insert(id.to_string()), "duplicate operationId {id:?}");
        assert!(
            op["responses"].get("200").is_some(),
            "{method} {path}: no 200"
        );
        if let Some(media) = op.pointer("/requestBody/content/application~1json") {
            check(doc, &media["schema"], &media["example"], "example")
                .unwrap_or_else(|e| panic!("{method} {path}: example: {e}"));
        }
    }
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    for r in refs {
        assert!(
            doc.pointer(r.strip_prefix('#').unwrap_or(&r)).is_some(),
            "dangling $ref {r}"
        );
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_route_answers_as_the_openapi_document_says() {
    let d = Daemon::start("");
    let (code, head, raw) =
        http_with_head(d.port, "GET", "/openapi.json", None, "application/json")
            .expect("GET /openapi.json");
    assert_eq!(code, 200, "{raw}");
    assert_eq!(
        header(&head, "content-type"),
        Some("application/json"),
        "{head}"
    );
    let doc: Value = serde_json::from_str(&raw).expect("/openapi.json is JSON");
    check_document_shape(&doc);

    let documented = documented_operations(&doc);
    let routed = router_operations();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the document: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );

    // A loaded model first, so the listings and the status show a worker to check.
    let (code, body) = d.post("/admin/models/load", &json!({"model_id": TINY}));
    assert_eq!(code, 200, "{body}");

    let mut sent = 0;
    for (method, path) in &documented {
        let op = &doc["paths"][path][method];
        for c in calls_for(method, path) {
            run_call(&d, &doc, method, op, &c);
            sent += 1;
        }
    }
    assert!(sent >= 2 * documented.len(), "only {sent} requests sent");
}
