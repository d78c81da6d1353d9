//! The OpenAPI 3.1 document of every route `server::app` serves, at `GET /openapi.json`.
//!
//! Written by hand from the handlers rather than derived with a macro crate: the shapes here
//! are the ones the code produces (response objects are closed with
//! `additionalProperties: false`), and `tests/openapi.rs` sends a real request to every
//! operation and checks the answer against this document.
//!
//! Server-sent event streams are `text/event-stream`; OpenAPI 3.1 cannot give the schema of
//! each event, so the media type carries it in the extension `x-sse-data-schema`: every
//! `data:` line is one JSON value of that schema, and the stream ends with `data: [DONE]`.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{json, Map, Value};

/// A model id the examples use.
const EXAMPLE_MODEL: &str = "opta/SmolLM2-135M-Instruct-4bit";

/// `GET /openapi.json`.
pub async fn serve() -> Json<Value> {
    Json(document().clone())
}

/// The whole document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

fn build() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Opta-LMX",
            "version": crate::VERSION,
            "description": "A local LLM server that answers as LM Studio's local server does: \
                OpenAI's API under /v1, LM Studio's REST API under /api/v0 and /api/v1, and an \
                admin API under /admin. Every error, also one inside a stream, is OpenAI-shaped \
                (the Error schema; AnthropicError on /v1/messages, LmsError on /api/v1); an unknown path answers 404 and \
                a known path with another method 405 (code `method_not_allowed`) in that shape. Validation \
                failures are 400, as OpenAI answers them; 422 is never used. Request bodies are \
                JSON: sent as application/json (or any +json type) or with no Content-Type; \
                other types answer 415. Unknown fields are ignored and null reads as absent. \
                With server.api_keys configured, every route but /, /admin/health and \
                /openapi.json needs a key (`Authorization: Bearer` or `x-api-key`; 401), with \
                the permission the route needs (inference, or admin for /admin, model \
                loading and /metrics; 403). A Host header naming anything but localhost, an \
                IP address or server.allowed_hosts, and an Origin not in server.cors_origins, \
                answer 403. Every answer carries `x-request-id`.",
            "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:1234"}],
        "tags": [
            {"name": "OpenAI", "description": "OpenAI-compatible routes."},
            {"name": "LM Studio", "description": "LM Studio's REST API (/api/v0, /api/v1)."},
            {"name": "Admin", "description": "Health, status, memory, load and unload."},
            {"name": "Anthropic", "description": "Anthropic's Messages API (/v1/messages), \
                as Claude Code speaks it; its errors are Anthropic-shaped (AnthropicError)."},
        ],
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "responses": error_responses(),
        },
    })
}

// ------------------------------------------------------------------ small builders

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// `schema` or `null`: a primitive type gains `"null"`, anything else is wrapped in `anyOf`.
fn nullable(schema: Value) -> Value {
    let mut s = schema;
    if let Some(t) = s.get("type").and_then(Value::as_str).map(str::to_string) {
        s["type"] = json!([t, "null"]);
        if let Some(values) = s.get_mut("enum").and_then(Value::as_array_mut) {
            values.push(Value::Null);
        }
        return s;
    }
    json!({"anyOf": [s, {"type": "null"}]})
}

/// A response object: exactly these properties, `required` always present.
fn closed(required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    })
}

/// A request object: unknown fields are ignored by the server.
fn open(required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": true,
    })
}

/// `base`'s schema with more properties (LM Studio's responses are OpenAI's plus fields).
fn extended(base: &Value, required: &[&str], more: Value) -> Value {
    let mut s = base.clone();
    if let (Some(props), Value::Object(more)) = (s["properties"].as_object_mut(), more) {
        props.extend(more);
    }
    if let Some(req) = s["required"].as_array_mut() {
        req.extend(required.iter().map(|r| json!(r)));
    }
    s
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": json_content(schema)})
}

/// 200 as JSON, or as an SSE stream when the request had `"stream": true`.
fn ok_json_or_stream(json_schema: Value, event_schema: Value) -> Value {
    json!({
        "description": "The completion: JSON, or with `\"stream\": true` an SSE stream whose \
            every `data:` line is one JSON chunk (x-sse-data-schema) and which ends with \
            `data: [DONE]`. A failure after the 200 is sent arrives as one Error event and the \
            stream ends without `[DONE]`.",
        "content": {
            "application/json": {"schema": json_schema},
            "text/event-stream": {
                "schema": {"type": "string"},
                "x-sse-data-schema": {"oneOf": [event_schema, schema_ref("Error")]},
            },
        },
    })
}

fn json_body(schema: Value, example: Value) -> Value {
    json!({
        "required": true,
        "content": {"application/json": {"schema": schema, "example": example}},
    })
}

/// The documented error statuses, each referring to `components.responses`.
fn with_errors(ok: Value, codes: &[u16]) -> Value {
    let mut out = Map::new();
    out.insert("200".into(), ok);
    for code in codes {
        out.insert(
            code.to_string(),
            json!({"$ref": format!("#/components/responses/E{code}")}),
        );
    }
    Value::Object(out)
}

fn operation(tag: &str, id: &str, summary: &str, responses: Value) -> Value {
    json!({"tags": [tag], "operationId": id, "summary": summary, "responses": responses})
}

fn with_body(mut op: Value, body: Value) -> Value {
    op["requestBody"] = body;
    op
}

/// RFC 7240's `Prefer: wait=N`, read by the generation routes.
fn with_prefer_header(mut op: Value) -> Value {
    op["parameters"] = json!([{
        "name": "Prefer",
        "in": "header",
        "required": false,
        "description": "`wait=N`: wait at most N seconds for the model to load. A load \
            expected to take longer goes on in the background and the request is answered 503 \
            `model_loading` with Retry-After.",
        "schema": {"type": "string"},
        "example": "wait=0",
    }]);
    op
}

fn with_model_param(mut op: Value) -> Value {
    op["parameters"] = json!([{
        "name": "id",
        "in": "path",
        "required": true,
        "description": "A model id, `publisher/name` (its `/` sent as is).",
        "schema": {"type": "string"},
        "example": EXAMPLE_MODEL,
    }]);
    op
}

// ------------------------------------------------------------------ paths

/// Statuses of a request that may load a model and generate: body errors, unknown model,
/// queue full, the load's and the worker's failures.
const GENERATION_ERRORS: &[u16] = &[400, 404, 413, 429, 500, 502, 503, 504, 507];
/// Statuses of a load: body errors, unknown model, and the load's failures.
const LOAD_ERRORS: &[u16] = &[400, 404, 413, 500, 502, 503, 504, 507];
/// Statuses of an unload: body errors and a model that is not loaded.
const UNLOAD_ERRORS: &[u16] = &[400, 404, 413];

fn paths() -> Value {
    let mut p = Map::new();
    for (path, item) in admin_paths()
        .into_iter()
        .chain(openai_paths())
        .chain(anthropic_paths())
        .chain([responses_path(), lms_chat_path()])
        .chain(lmstudio_paths())
    {
        p.insert(path.to_string(), item);
    }
    p.insert(
        "/metrics".into(),
        json!({"get": operation(
            "Admin",
            "metrics",
            "Prometheus metrics (OpenMetrics text format); the README lists each one.",
            with_errors(
                json!({"description": "The metrics.", "content": {
                    "application/openmetrics-text": {"schema": {"type": "string"}}}}),
                &[],
            ),
        )}),
    );
    p.insert(
        "/openapi.json".into(),
        json!({"get": operation(
            "Admin",
            "getOpenApi",
            "This document.",
            with_errors(ok_json("The OpenAPI 3.1 document.", json!({"type": "object"})), &[]),
        )}),
    );
    for (path, item) in p.iter_mut() {
        with_guard_errors(path, item);
    }
    Value::Object(p)
}

/// The refusals every route can answer before its handler runs (`guard`): 403 for a host or
/// origin not allowed, 401 without a key where keys are needed, 415 for a body not sent as
/// JSON.
fn with_guard_errors(path: &str, item: &mut Value) {
    let public = ["/", "/admin/health", "/openapi.json"].contains(&path);
    let anthropic = path.starts_with("/v1/messages");
    let Some(ops) = item.as_object_mut() else {
        return;
    };
    for (method, op) in ops.iter_mut() {
        let mut codes = vec![403];
        if !public {
            codes.push(401);
        }
        if method == "post" {
            codes.push(415);
        }
        let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
            continue;
        };
        for code in codes {
            let response = if anthropic {
                json!({"description": format!("As E{code}, in Anthropic's shape."),
                       "content": json_content(schema_ref("AnthropicError"))})
            } else {
                json!({"$ref": format!("#/components/responses/E{code}")})
            };
            responses.entry(code.to_string()).or_insert(response);
        }
    }
}

fn admin_paths() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/",
            json!({"get": operation("Admin", "root",
                "The server is up: what /admin/health answers, for clients that probe the \
                 root (HEAD / too).",
                with_errors(ok_json("The server is up.", schema_ref("Health")), &[]))}),
        ),
        (
            "/admin/health",
            json!({"get": operation("Admin", "adminHealth", "Liveness and version.",
                with_errors(ok_json("The server is up.", schema_ref("Health")), &[]))}),
        ),
        (
            "/admin/status",
            json!({"get": operation("Admin", "adminStatus",
                "Uptime, loaded models, every worker's state, memory.",
                with_errors(ok_json("The server's status.", schema_ref("Status")), &[]))}),
        ),
        (
            "/admin/memory",
            json!({"get": operation("Admin", "adminMemory",
                "System memory and each worker's resident memory.",
                with_errors(ok_json("Memory use.", schema_ref("Memory")), &[]))}),
        ),
        (
            "/admin/models",
            json!({"get": operation("Admin", "adminModels",
                "Every model that could be loaded, with its state and worker.",
                with_errors(ok_json("The models.", schema_ref("AdminModelList")), &[]))}),
        ),
        (
            "/admin/models/load",
            json!({"post": with_body(
                operation("Admin", "adminLoadModel",
                    "Load a model into its own worker process (no-op when it is ready).",
                    with_errors(ok_json("Loaded.", schema_ref("AdminLoadResponse")), LOAD_ERRORS)),
                json_body(schema_ref("AdminLoadRequest"), json!({"model_id": EXAMPLE_MODEL})),
            )}),
        ),
        (
            "/admin/models/unload",
            json!({"post": with_body(
                operation("Admin", "adminUnloadModel",
                    "Unload a model: its worker process ends and its memory is returned.",
                    with_errors(ok_json("Unloaded.", schema_ref("AdminUnloadResponse")),
                        UNLOAD_ERRORS)),
                json_body(schema_ref("AdminUnloadRequest"), json!({"model_id": EXAMPLE_MODEL})),
            )}),
        ),
    ]
}

fn chat_example() -> Value {
    json!({
        "model": EXAMPLE_MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 64,
    })
}

fn completion_example() -> Value {
    json!({"model": EXAMPLE_MODEL, "prompt": "Once upon a time", "max_tokens": 16})
}

fn openai_paths() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/models",
            json!({"get": operation("OpenAI", "listModels",
                "Models: with JIT loading on (the default) every model that could be loaded, \
                 otherwise only loaded ones.",
                with_errors(ok_json("The model list.", schema_ref("ModelList")), &[]))}),
        ),
        (
            "/v1/models/{id}",
            json!({"get": with_model_param(operation("OpenAI", "retrieveModel",
                "One model of the list.",
                with_errors(ok_json("The model.", schema_ref("Model")), &[404])))}),
        ),
        (
            "/v1/chat/completions",
            generation_op(
                ("OpenAI", "createChatCompletion"),
                "Chat completion; loads the model on first use when JIT loading is on.",
                ("ChatCompletion", "ChatCompletionChunk"),
                ("ChatCompletionRequest", chat_example()),
            ),
        ),
        (
            "/v1/completions",
            generation_op(
                ("OpenAI", "createCompletion"),
                "Text completion (one prompt); loads the model on first use when JIT \
                 loading is on.",
                ("Completion", "CompletionChunk"),
                ("CompletionRequest", completion_example()),
            ),
        ),
        (
            "/v1/embeddings",
            embeddings_op(
                "OpenAI",
                "createEmbedding",
                "Embeddings of one input or a batch, \
                 from an embedding model (BERT-style encoders); loads it on first use.",
            ),
        ),
    ]
}

fn embeddings_op(tag: &str, id: &str, summary: &str) -> Value {
    let op = with_prefer_header(operation(
        tag,
        id,
        summary,
        with_errors(
            ok_json(
                "One embedding per input, in order.",
                schema_ref("EmbeddingList"),
            ),
            GENERATION_ERRORS,
        ),
    ));
    let example = json!({"model": "opta/tiny-random-bert", "input": ["hello world", "hi"]});
    json!({"post": with_body(op, json_body(schema_ref("EmbeddingsRequest"), example))})
}

fn embedding_schemas() -> Value {
    let ids = json!({"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1});
    json!({
        "EmbeddingsRequest": open(&["input"], json!({
            "model": nullable(json!({"type": "string"})),
            "input": {"description": "A string, a list of strings, token ids, or lists of \
                token ids (at most 2048 inputs). Text is tokenized with the model's special \
                tokens; ids are used as they are.",
                "anyOf": [
                    {"type": "string"},
                    ids.clone(),
                    {"type": "array", "minItems": 1, "maxItems": 2048,
                     "items": {"anyOf": [{"type": "string"}, ids]}},
                ]},
            "encoding_format": nullable(json!({"type": "string", "enum": ["float", "base64"],
                "description": "base64: little-endian float32 bytes."})),
            "dimensions": nullable(json!({"type": "integer", "minimum": 1, "description":
                "Keep the first N components and re-normalise; at most the model's own."})),
            "user": nullable(json!({"type": "string"})),
            "ttl": nullable(json!({"type": "integer", "minimum": 0})),
        })),
        "EmbeddingList": closed(&["object", "data", "model", "usage"], json!({
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": closed(&["object", "index", "embedding"], json!({
                "object": {"type": "string", "enum": ["embedding"]},
                "index": {"type": "integer"},
                "embedding": {"anyOf": [
                    {"type": "array", "items": {"type": "number"}},
                    {"type": "string", "description": "base64"},
                ]},
            }))},
            "model": {"type": "string"},
            "usage": closed(&["prompt_tokens", "total_tokens"], json!({
                "prompt_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            })),
        })),
    })
}

/// A chat or text completion route: (tag, operationId), summary, the (JSON, SSE chunk)
/// response schemas and the (request schema, example).
fn generation_op(
    (tag, id): (&str, &str),
    summary: &str,
    (full, chunk): (&str, &str),
    (request, example): (&str, Value),
) -> Value {
    let responses = with_errors(
        ok_json_or_stream(schema_ref(full), schema_ref(chunk)),
        GENERATION_ERRORS,
    );
    let op = with_prefer_header(operation(tag, id, summary, responses));
    json!({"post": with_body(op, json_body(schema_ref(request), example))})
}

/// Errors in Anthropic's shape, for `codes`, inline (the shared responses are OpenAI's).
fn with_anthropic_errors(ok: Value, codes: &[u16]) -> Value {
    let mut out = Map::new();
    out.insert("200".into(), ok);
    for code in codes {
        out.insert(
            code.to_string(),
            json!({"description": format!("As E{code}, in Anthropic's shape."),
                   "content": json_content(schema_ref("AnthropicError"))}),
        );
    }
    Value::Object(out)
}

/// Errors in LM Studio's shape, for `codes`, inline (the shared responses are OpenAI's).
fn with_lms_errors(ok: Value, codes: &[u16]) -> Value {
    let mut out = Map::new();
    out.insert("200".into(), ok);
    for code in codes {
        out.insert(
            code.to_string(),
            json!({"description": format!("As E{code}, in LM Studio's shape."),
                   "content": json_content(schema_ref("LmsError"))}),
        );
    }
    Value::Object(out)
}

/// `POST /api/v1/chat`: LM Studio's native chat.
fn lms_chat_path() -> (&'static str, Value) {
    let ok = json!({
        "description": "The chat's answer: JSON, or with `\"stream\": true` LM Studio's named             SSE events from chat.start to chat.end (which carries the JSON answer):             model_load.* when the request loads its model, prompt_processing.* with the             prefill's progress, reasoning.* and message.*. A failure after the 200 is an             `error` event, then chat.end with what was generated.",
        "content": {
            "application/json": {"schema": schema_ref("LmsChatResponse")},
            "text/event-stream": {
                "schema": {"type": "string"},
                "x-sse-data-schema": schema_ref("LmsChatEvent"),
                "x-sse-last-event": "chat.end",
            },
        },
    });
    (
        "/api/v1/chat",
        json!({"post": with_body(
            with_prefer_header(operation("LM Studio", "lmsChat",
                "A chat turn (LM Studio's native API): `input` as text, stored chats continued                  by `previous_response_id` (in memory, server.response_store_size of them; an                  unknown id is a 404), `reasoning` checked against the model's template.",
                with_lms_errors(ok, GENERATION_ERRORS))),
            json_body(schema_ref("LmsChatRequest"), json!({"model": EXAMPLE_MODEL,
                "input": "What is the capital of France?", "max_output_tokens": 64})),
        )}),
    )
}

fn responses_path() -> (&'static str, Value) {
    let ok = json!({
        "description": "The response: JSON, or with `\"stream\": true` OpenAI's named SSE \
            events, each with a `sequence_number`, from response.created to exactly one of \
            response.completed, response.incomplete (max_output_tokens reached) or \
            response.failed (with the error's code).",
        "content": {
            "application/json": {"schema": schema_ref("Response")},
            "text/event-stream": {
                "schema": {"type": "string"},
                "x-sse-data-schema": schema_ref("ResponseStreamEvent"),
                "x-sse-last-event": ["response.completed", "response.incomplete", "response.failed"],
            },
        },
    });
    (
        "/v1/responses",
        json!({"post": with_body(
            with_prefer_header(operation("OpenAI", "createResponse",
                "A response (Codex, the Agents SDK): input items, function and custom tools, \
                 text.format, previous_response_id over an in-memory store \
                 (server.response_store_size; an unknown id is a 404).",
                with_errors(ok, GENERATION_ERRORS))),
            json_body(schema_ref("ResponsesRequest"), json!({"model": EXAMPLE_MODEL,
                "input": "What is the capital of France?", "max_output_tokens": 64})),
        )}),
    )
}

fn anthropic_paths() -> Vec<(&'static str, Value)> {
    let example = json!({"model": EXAMPLE_MODEL, "max_tokens": 64,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let ok = json!({
        "description": "The message: JSON, or with `\"stream\": true` Anthropic's named SSE \
            events (`event:` and `data:` lines), from message_start to message_stop; a \
            failure after the 200 is one `error` event. `ping` events keep a quiet stream \
            alive.",
        "content": {
            "application/json": {"schema": schema_ref("AnthropicMessage")},
            "text/event-stream": {
                "schema": {"type": "string"},
                "x-sse-data-schema": {"oneOf": [
                    schema_ref("AnthropicStreamEvent"), schema_ref("AnthropicError")]},
                "x-sse-last-event": "message_stop",
            },
        },
    });
    vec![
        (
            "/v1/messages",
            json!({"post": with_body(
                with_prefer_header(operation("Anthropic", "createMessage",
                    "A message; loads the model on first use. A `claude-*` model name that \
                     no model has means the default model (or the one loaded), unless \
                     models.aliases maps it.",
                    with_anthropic_errors(ok, GENERATION_ERRORS))),
                json_body(schema_ref("AnthropicMessagesRequest"), example.clone()),
            )}),
        ),
        (
            "/v1/messages/count_tokens",
            json!({"post": with_body(
                operation("Anthropic", "countMessageTokens",
                    "The prompt's length in tokens, as the model's template and tokenizer \
                     make it (loads the model on first use).",
                    with_anthropic_errors(
                        ok_json("The count.", schema_ref("AnthropicTokenCount")),
                        GENERATION_ERRORS)),
                json_body(schema_ref("AnthropicMessagesRequest"), example),
            )}),
        ),
    ]
}

fn lmstudio_paths() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/api/v0/models",
            json!({"get": operation("LM Studio", "lmsListModels",
                "Every model that could be loaded, with its state.",
                with_errors(ok_json("The models.", schema_ref("LmsModelList")), &[]))}),
        ),
        (
            "/api/v0/models/{id}",
            json!({"get": with_model_param(operation("LM Studio", "lmsGetModel",
                "One model, loaded or not.",
                with_errors(ok_json("The model.", schema_ref("LmsModel")), &[404])))}),
        ),
        (
            "/api/v0/chat/completions",
            generation_op(
                ("LM Studio", "lmsChatCompletion"),
                "As /v1/chat/completions, plus LM Studio's stats, model_info and runtime \
                 (on the finish chunk when streamed).",
                ("LmsChatCompletion", "LmsChatCompletionChunk"),
                ("ChatCompletionRequest", chat_example()),
            ),
        ),
        (
            "/api/v0/completions",
            generation_op(
                ("LM Studio", "lmsCompletion"),
                "As /v1/completions, plus LM Studio's stats, model_info and runtime \
                 (on the finish chunk when streamed).",
                ("LmsCompletion", "LmsCompletionChunk"),
                ("CompletionRequest", completion_example()),
            ),
        ),
        (
            "/api/v0/embeddings",
            embeddings_op("LM Studio", "lmsEmbedding", "As /v1/embeddings."),
        ),
        (
            "/api/v1/models",
            json!({"get": operation("LM Studio", "lmsV1ListModels",
                "Every model that could be loaded, with its loaded instances.",
                with_lms_errors(ok_json("The models.", schema_ref("LmsV1ModelList")), &[]))}),
        ),
        (
            "/api/v1/models/load",
            json!({"post": with_body(
                operation("LM Studio", "lmsLoadModel", "Load a model (LM Studio's shape).",
                    with_lms_errors(ok_json("Loaded.", schema_ref("LmsLoadResponse")),
                        LOAD_ERRORS)),
                json_body(schema_ref("LmsLoadRequest"), json!({"model": EXAMPLE_MODEL})),
            )}),
        ),
        (
            "/api/v1/models/unload",
            json!({"post": with_body(
                operation("LM Studio", "lmsUnloadModel", "Unload a model instance.",
                    with_lms_errors(ok_json("Unloaded.", schema_ref("LmsUnloadResponse")),
                        UNLOAD_ERRORS)),
                json_body(schema_ref("LmsUnloadRequest"), json!({"instance_id": EXAMPLE_MODEL})),
            )}),
        ),
    ]
}

// ------------------------------------------------------------------ error responses

fn error_responses() -> Value {
    let retry_after = json!({"Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }});
    let entries: [(u16, &str); 12] = [
        (
            401,
            "`invalid_api_key`: server.api_keys are configured and the request sent none, or \
               an unknown one.",
        ),
        (
            403,
            "`permission_denied`: the key lacks the route's permission; `host_not_allowed`: \
               the Host header names a host not allowed (DNS rebinding); \
               `origin_not_allowed`: a web page's Origin not in server.cors_origins.",
        ),
        (
            415,
            "`unsupported_media_type`: the body was sent as something other than JSON \
               (a form, text/plain).",
        ),
        (
            400,
            "The body is not valid JSON or a field is wrong or out of range; `param` names \
               the field. Also a missing `model` when none is loaded or configured, and a \
               prompt longer than the model's context.",
        ),
        (
            404,
            "`model_not_found`: no such model, here or (with models.allow_download) on the \
               Hugging Face Hub; with JIT loading off, not loaded; for unload, not loaded.",
        ),
        (413, "`request_too_large`: the body is over 8 MiB."),
        (429, "`rate_limit_exceeded`: the model's queue is full."),
        (
            500,
            "`internal_error`: the worker could not be started, could not load the model, or \
               failed while generating.",
        ),
        (
            502,
            "`worker_crashed`: the model's worker process died (`download_failed`: fetching \
               the model from the Hugging Face Hub failed).",
        ),
        (
            503,
            "`model_loading`: the model is being unloaded, or is still loading past the \
               request's `Prefer: wait=N`; retry after Retry-After.",
        ),
        (504, "`timeout`: the worker did not answer in time."),
        (
            507,
            "`insufficient_memory`: loading would pass memory.max_memory_percent.",
        ),
    ];
    let mut out = Map::new();
    for (code, description) in entries {
        let mut r =
            json!({"description": description, "content": json_content(schema_ref("Error"))});
        if matches!(code, 429 | 503) {
            r["headers"] = retry_after.clone();
        }
        out.insert(format!("E{code}"), r);
    }
    Value::Object(out)
}

// ------------------------------------------------------------------ schemas

fn schemas() -> Value {
    let mut s = Map::new();
    for part in [
        common_schemas(),
        request_schemas(),
        chat_schemas(),
        completion_schemas(),
        embedding_schemas(),
        model_schemas(),
        admin_schemas(),
    ] {
        if let Value::Object(m) = part {
            s.extend(m);
        }
    }
    Value::Object(s)
}

fn common_schemas() -> Value {
    json!({
        "Error": closed(&["error"], json!({"error": closed(
            &["message", "type", "param", "code"],
            json!({
                "message": {"type": "string"},
                "type": {"type": "string",
                         "enum": ["invalid_request_error", "server_error", "rate_limit_error"]},
                "param": nullable(json!({"type": "string"})),
                "code": nullable(json!({"type": "string", "enum": [
                    "context_length_exceeded", "method_not_allowed", "invalid_api_key",
                    "permission_denied", "host_not_allowed", "origin_not_allowed",
                    "unsupported_media_type", "model_not_found", "request_too_large",
                    "rate_limit_exceeded", "model_loading", "insufficient_memory",
                    "worker_crashed", "download_failed", "timeout", "internal_error"]})),
            }),
        )})),
        "Usage": closed(
            &[
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "prompt_tokens_details",
                "completion_tokens_details",
            ],
            json!({
                "prompt_tokens": {"type": "integer", "minimum": 0},
                "completion_tokens": {"type": "integer", "minimum": 0},
                "total_tokens": {"type": "integer", "minimum": 0},
                "prompt_tokens_details": closed(&["cached_tokens"], json!({
                    "cached_tokens": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Prompt tokens served from the prompt (prefix) cache.",
                    },
                })),
                "completion_tokens_details": closed(&["reasoning_tokens"], json!({
                    "reasoning_tokens": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Completion tokens spent inside a reasoning block.",
                    },
                })),
            }),
        ),
        "FinishReason": {"type": "string", "enum": ["stop", "length", "tool_calls"]},
        "LmsStats": closed(
            &["tokens_per_second", "time_to_first_token", "generation_time", "stop_reason"],
            json!({
                "tokens_per_second": {"type": "number"},
                "time_to_first_token": {"type": "number", "description": "Seconds."},
                "generation_time": {"type": "number", "description": "Seconds."},
                "stop_reason": {"type": "string",
                                "enum": ["eosFound", "maxPredictedTokensReached", "toolCalls"]},
            }),
        ),
        "LmsModelInfo": closed(&["arch", "quant", "format", "context_length"], json!({
            "arch": {"type": "string"},
            "quant": {"type": "string"},
            "format": {"type": "string", "enum": ["mlx"]},
            "context_length": nullable(json!({"type": "integer"})),
        })),
        "LmsRuntime": closed(&["name", "version", "supported_formats"], json!({
            "name": {"type": "string"},
            "version": {"type": "string"},
            "supported_formats": {"type": "array", "items": {"type": "string"}},
        })),
    })
}

/// `max_tokens`: -1 for no limit, else at least 1.
fn token_limit(description: &str) -> Value {
    nullable(json!({
        "description": description,
        "oneOf": [
            {"type": "integer", "enum": [-1]},
            {"type": "integer", "minimum": 1, "maximum": 4_294_967_295u64},
        ],
    }))
}

fn number_in(min: f64, max: f64) -> Value {
    nullable(json!({"type": "number", "minimum": min, "maximum": max}))
}

/// The sampling fields chat and text completions share.
fn sampling_properties() -> Map<String, Value> {
    let penalty = json!({"type": "number", "exclusiveMinimum": 0,
        "description": "Multiplicative repetition penalty; 1 disables it."});
    let props = json!({
        "model": nullable(json!({"type": "string", "description": "A model id, \
            `publisher/name`. When absent: the configured default model, else the one loaded \
            model."})),
        "temperature": number_in(0.0, 2.0),
        "top_p": number_in(0.0, 1.0),
        "top_k": nullable(json!({"type": "integer", "minimum": -1,
            "description": "0 or -1 disables it."})),
        "min_p": number_in(0.0, 1.0),
        "stream": nullable(json!({"type": "boolean"})),
        "stream_options": nullable(open(&[], json!({
            "include_usage": nullable(json!({"type": "boolean",
                "description": "End the stream with a chunk that carries `usage`."})),
        }))),
        "stop": nullable(json!({
            "description": "Stop sequences (empty strings are dropped); never part of the output.",
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 16},
            ],
        })),
        "seed": nullable(json!({"type": "integer"})),
        "presence_penalty": number_in(-2.0, 2.0),
        "frequency_penalty": number_in(-2.0, 2.0),
        "repeat_penalty": nullable(penalty.clone()),
        "repetition_penalty": nullable(penalty),
        "logit_bias": nullable(json!({
            "type": "object",
            "description": "Token id (as a string) to a bias in -100..=100.",
            "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        })),
        "n": nullable(json!({"type": "integer", "enum": [1]})),
        "ttl": nullable(json!({"type": "integer", "minimum": 1,
            "description": "Idle seconds before a model this request loads is unloaded."})),
        "user": nullable(json!({"type": "string", "description": "Accepted and ignored."})),
    });
    match props {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn chat_request_schema() -> Value {
    let mut props = sampling_properties();
    let chat = json!({
        "messages": {"type": "array", "minItems": 1, "items": schema_ref("ChatMessage")},
        "max_tokens": token_limit("-1 for no limit (the default)."),
        "max_completion_tokens": token_limit("Wins over max_tokens."),
        "logprobs": nullable(json!({"type": "boolean"})),
        "top_logprobs": nullable(json!({"type": "integer", "minimum": 0, "maximum": 20})),
        "response_format": nullable(json!({
            "description": "Constrains the answer with a grammar: any JSON object, or JSON \
                valid against `json_schema.schema` (an object that lists `properties` is closed \
                unless it sets `additionalProperties`; `strict` makes unsupported keywords an \
                error). An invalid or unsupported schema is a 400 naming response_format.",
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                "json_schema": {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "schema": {"type": "object"},
                    "strict": nullable(json!({"type": "boolean"})),
                }},
            },
        })),
        "tools": nullable(json!({"type": "array", "items": schema_ref("Tool"),
            "description": "Rendered by the model's chat template (or taught in the system \
                message when the template has none); calls in the output come back as \
                `tool_calls`."})),
        "tool_choice": nullable(json!({
            "description": "`auto` (default with tools): text or calls, parsed from the output. \
                `none`: the tools are not shown. `required` or a named function: one call, \
                forced by a grammar in the model's own call syntax.",
            "oneOf": [
                {"type": "string", "enum": ["none", "auto", "required"]},
                open(&["function"], json!({
                    "type": {"type": "string", "enum": ["function"]},
                    "function": open(&["name"], json!({"name": {"type": "string"}})),
                })),
            ],
        })),
        "parallel_tool_calls": nullable(json!({"type": "boolean",
            "description": "false: at most one tool call (the default allows several)."})),
        "chat_template_kwargs": nullable(json!({"type": "object",
            "description": "Extra chat-template variables, e.g. {\"enable_thinking\": false}."})),
        "reasoning_effort": nullable(json!({"type": "string",
            "description": "Passed to the chat template as `reasoning_effort`."})),
    });
    if let Value::Object(m) = chat {
        props.extend(m);
    }
    open(&["messages"], Value::Object(props))
}

fn completion_request_schema() -> Value {
    let mut props = sampling_properties();
    let token_ids = json!({"type": "array", "items": {"type": "integer", "minimum": 0}});
    let completion = json!({
        "prompt": {
            "description": "One prompt: a string or token ids, or a one-element list of either.",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                token_ids,
                {"type": "array", "items": token_ids, "minItems": 1, "maxItems": 1},
            ],
        },
        "max_tokens": token_limit("Default 16; -1 for no limit."),
        "logprobs": nullable(json!({"type": "integer", "minimum": 0, "maximum": 5,
            "description": "How many alternatives per token to return."})),
        "echo": nullable(json!({"type": "boolean",
            "description": "Put the (text) prompt before the completion."})),
        "best_of": nullable(json!({"type": "integer", "enum": [1]})),
    });
    if let Value::Object(m) = completion {
        props.extend(m);
    }
    open(&["prompt"], Value::Object(props))
}

fn request_schemas() -> Value {
    let arguments = json!({
        "description": "JSON-encoded arguments; an object is re-encoded to a string.",
        "type": ["string", "object", "null"],
    });
    json!({
        "ChatCompletionRequest": chat_request_schema(),
        "CompletionRequest": completion_request_schema(),
        "ChatMessage": open(&["role"], json!({
            "role": {"type": "string",
                     "enum": ["system", "developer", "user", "assistant", "tool", "function"]},
            "content": nullable(json!({"oneOf": [
                {"type": "string"},
                {"type": "array", "items": schema_ref("ContentPart")},
            ]})),
            "name": nullable(json!({"type": "string"})),
            "tool_calls": nullable(json!({"type": "array", "items": schema_ref("ToolCall")})),
            "tool_call_id": nullable(json!({"type": "string"})),
            "reasoning_content": nullable(json!({"type": "string",
                "description": "An earlier assistant turn's reasoning, for templates that keep it."})),
            "reasoning": nullable(json!({"type": "string",
                "description": "The same as reasoning_content."})),
        })),
        "ContentPart": open(&["type", "text"], json!({
            "type": {"type": "string", "enum": ["text", "input_text"],
                     "description": "Only text parts; others are a 400."},
            "text": {"type": "string"},
        })),
        "ToolCall": open(&["function"], json!({
            "id": {"type": "string"},
            "type": {"type": "string"},
            "function": open(&["name"], json!({
                "name": {"type": "string"},
                "arguments": arguments,
            })),
        })),
        "Tool": open(&["function"], json!({
            "type": {"type": "string", "enum": ["function"]},
            "function": open(&["name"], json!({
                "name": {"type": "string", "minLength": 1},
                "description": {"type": "string"},
                "parameters": {"type": "object", "description": "A JSON Schema."},
                "strict": {"type": "boolean"},
            })),
        })),
        "ResponsesRequest": open(&["input"], json!({
            "model": {"type": "string"},
            "input": {"description": "A string, or items: messages (roles user, assistant, \
                system, developer; text parts only), function_call, function_call_output, \
                custom_tool_call(_output) and reasoning (dropped).",
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
            "instructions": nullable(json!({"type": "string"})),
            "tools": nullable(json!({"type": "array", "items": {"type": "object"},
                "description": "function tools (flat), custom tools (one string input); other \
                    types are ignored."})),
            "tool_choice": nullable(json!({"oneOf": [
                {"type": "string", "enum": ["auto", "none", "required"]}, {"type": "object"}]})),
            "text": nullable(json!({"type": "object",
                "description": "format: text, json_object or json_schema (schema, strict)."})),
            "max_output_tokens": nullable(json!({"type": "integer", "minimum": 1})),
            "temperature": nullable(json!({"type": "number"})),
            "top_p": nullable(json!({"type": "number"})),
            "reasoning": nullable(json!({"type": "object"})),
            "previous_response_id": nullable(json!({"type": "string"})),
            "store": nullable(json!({"type": "boolean"})),
            "parallel_tool_calls": nullable(json!({"type": "boolean"})),
            "stream": nullable(json!({"type": "boolean"})),
            "metadata": nullable(json!({"type": "object"})),
        })),
        "Response": closed(
            &["id", "object", "created_at", "status", "model", "output", "parallel_tool_calls",
              "tool_choice", "tools"],
            json!({
                "id": {"type": "string"},
                "object": {"type": "string", "enum": ["response"]},
                "created_at": {"type": "integer"},
                "status": {"type": "string",
                    "enum": ["in_progress", "completed", "incomplete", "failed"]},
                "model": {"type": "string"},
                "output": {"type": "array", "items": schema_ref("ResponseItem")},
                "error": nullable(closed(&["code", "message"], json!({
                    "code": {"type": "string"}, "message": {"type": "string"}}))),
                "incomplete_details": nullable(closed(&["reason"], json!({
                    "reason": {"type": "string", "enum": ["max_output_tokens"]}}))),
                "usage": nullable(closed(
                    &["input_tokens", "input_tokens_details", "output_tokens",
                      "output_tokens_details", "total_tokens"],
                    json!({
                        "input_tokens": {"type": "integer", "minimum": 0},
                        "input_tokens_details": closed(&["cached_tokens"], json!({
                            "cached_tokens": {"type": "integer", "minimum": 0}})),
                        "output_tokens": {"type": "integer", "minimum": 0},
                        "output_tokens_details": closed(&["reasoning_tokens"], json!({
                            "reasoning_tokens": {"type": "integer", "minimum": 0}})),
                        "total_tokens": {"type": "integer", "minimum": 0},
                    }))),
                "instructions": nullable(json!({"type": "string"})),
                "tools": {"type": "array"},
                "tool_choice": {},
                "parallel_tool_calls": {"type": "boolean"},
                "text": {"type": "object"},
                "max_output_tokens": nullable(json!({"type": "integer"})),
                "previous_response_id": nullable(json!({"type": "string"})),
                "reasoning": {"type": "object"},
                "store": {"type": "boolean"},
                "metadata": {"type": "object"},
                "temperature": nullable(json!({"type": "number"})),
                "top_p": nullable(json!({"type": "number"})),
                "truncation": {"type": "string", "enum": ["disabled"]},
            }),
        ),
        "ResponseItem": {"oneOf": [
            closed(&["type", "id", "status", "role", "content"], json!({
                "type": {"type": "string", "enum": ["message"]},
                "id": {"type": "string"}, "status": {"type": "string"},
                "role": {"type": "string", "enum": ["assistant"]},
                "content": {"type": "array", "items": closed(&["type", "text", "annotations"], json!({
                    "type": {"type": "string", "enum": ["output_text"]},
                    "text": {"type": "string"},
                    "annotations": {"type": "array"}, "logprobs": {"type": "array"}}))},
            })),
            closed(&["type", "id", "call_id", "name", "arguments", "status"], json!({
                "type": {"type": "string", "enum": ["function_call"]},
                "id": {"type": "string"}, "call_id": {"type": "string"},
                "name": {"type": "string"}, "arguments": {"type": "string"},
                "status": {"type": "string"}})),
            closed(&["type", "id", "call_id", "name", "input", "status"], json!({
                "type": {"type": "string", "enum": ["custom_tool_call"]},
                "id": {"type": "string"}, "call_id": {"type": "string"},
                "name": {"type": "string"}, "input": {"type": "string"},
                "status": {"type": "string"}})),
            closed(&["type", "id", "summary", "content", "status"], json!({
                "type": {"type": "string", "enum": ["reasoning"]},
                "id": {"type": "string"}, "summary": {"type": "array"},
                "content": {"type": "array"}, "status": {"type": "string"}})),
        ]},
        "ResponseStreamEvent": open(&["type", "sequence_number"], json!({
            "type": {"type": "string", "enum": [
                "response.created", "response.in_progress", "response.output_item.added",
                "response.content_part.added", "response.output_text.delta",
                "response.output_text.done", "response.content_part.done",
                "response.reasoning_text.delta", "response.reasoning_text.done",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done", "response.output_item.done",
                "response.completed", "response.incomplete", "response.failed"]},
            "sequence_number": {"type": "integer", "minimum": 0},
            "response": schema_ref("Response"),
            "item": schema_ref("ResponseItem"),
            "output_index": {"type": "integer", "minimum": 0},
            "content_index": {"type": "integer", "minimum": 0},
            "item_id": {"type": "string"},
            "delta": {"type": "string"},
        })),
        "AnthropicMessagesRequest": open(&["messages"], json!({
            "model": {"type": "string"},
            "max_tokens": {"type": "integer", "minimum": 0,
                "description": "Required for /v1/messages, not for count_tokens."},
            "messages": {"type": "array", "minItems": 1, "items": open(&["role", "content"], json!({
                "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"],
                    "description": "system (or developer) messages stay where they are when \
                        the model's template takes them there, else join the system prompt."},
                "content": {"description": "A string, or text, tool_use, tool_result and \
                    thinking blocks; image and document blocks are a 400.",
                    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
            }))},
            "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}],
                "description": "A leading x-anthropic-billing-header line is removed."},
            "tools": {"type": "array", "items": {"type": "object"},
                "description": "Custom tools (`name`, `input_schema`); server tools are ignored."},
            "tool_choice": open(&["type"], json!({
                "type": {"type": "string", "enum": ["auto", "any", "tool", "none"]},
                "name": {"type": "string"},
                "disable_parallel_tool_use": {"type": "boolean"},
            })),
            "stop_sequences": {"type": "array", "items": {"type": "string"}},
            "stream": {"type": "boolean"},
            "temperature": {"type": "number"},
            "top_p": {"type": "number"},
            "top_k": {"type": "integer"},
            "thinking": {"type": "object",
                "description": "`enabled` passes enable_thinking=true to the template, \
                    `disabled` false; `adaptive` (and any other type) leaves the template's \
                    default."},
            "metadata": {"description": "Taken in any shape, not used."},
        })),
        "AnthropicMessage": closed(
            &["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"],
            json!({
                "id": {"type": "string"},
                "type": {"type": "string", "enum": ["message"]},
                "role": {"type": "string", "enum": ["assistant"]},
                "model": {"type": "string"},
                "content": {"type": "array", "items": {"oneOf": [
                    closed(&["type", "text"], json!({
                        "type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}})),
                    closed(&["type", "thinking", "signature"], json!({
                        "type": {"type": "string", "enum": ["thinking"]},
                        "thinking": {"type": "string"}, "signature": {"type": "string"}})),
                    closed(&["type", "id", "name", "input"], json!({
                        "type": {"type": "string", "enum": ["tool_use"]},
                        "id": {"type": "string"}, "name": {"type": "string"},
                        "input": {"type": "object"}})),
                ]}},
                "stop_reason": {"type": "string", "enum": ["end_turn", "max_tokens", "tool_use"]},
                "stop_sequence": {"type": "null"},
                "usage": schema_ref("AnthropicUsage"),
            }),
        ),
        "AnthropicUsage": closed(
            &["input_tokens", "output_tokens", "cache_read_input_tokens",
              "cache_creation_input_tokens"],
            json!({
                "input_tokens": {"type": "integer", "minimum": 0},
                "output_tokens": {"type": "integer", "minimum": 0},
                "cache_read_input_tokens": {"type": "integer", "minimum": 0},
                "cache_creation_input_tokens": {"type": "integer", "minimum": 0},
            }),
        ),
        "AnthropicStreamEvent": open(&["type"], json!({
            "type": {"type": "string", "enum": [
                "message_start", "ping", "content_block_start", "content_block_delta",
                "content_block_stop", "message_delta", "message_stop"]},
            "index": {"type": "integer", "minimum": 0},
            "message": {"type": "object"},
            "content_block": {"type": "object"},
            "delta": {"type": "object"},
            "usage": schema_ref("AnthropicUsage"),
        })),
        "AnthropicError": closed(&["type", "error"], json!({
            "type": {"type": "string", "enum": ["error"]},
            "error": closed(&["type", "message"], json!({
                "type": {"type": "string", "enum": [
                    "invalid_request_error", "authentication_error", "permission_error",
                    "not_found_error", "rate_limit_error", "api_error", "overloaded_error",
                    "timeout_error"]},
                "message": {"type": "string"},
            })),
        })),
        "AnthropicTokenCount": closed(&["input_tokens"], json!({
            "input_tokens": {"type": "integer", "minimum": 0},
        })),
        "AdminLoadRequest": open(&["model_id"], json!({
            "model_id": {"type": "string"},
            "ttl": nullable(json!({"type": "integer", "minimum": 0,
                "description": "Idle seconds before the model is unloaded."})),
        })),
        "AdminUnloadRequest": open(&["model_id"], json!({"model_id": {"type": "string"}})),
        "LmsLoadRequest": open(&["model"], json!({
            "model": {"type": "string"},
            "ttl": nullable(json!({"type": "integer", "minimum": 0})),
            "context_length": nullable(json!({"type": "integer", "minimum": 1, "description":
                "Accepted, not applied: the model loads at its own context (load_config \
                 says which)."})),
            "parallel": nullable(json!({"type": "integer", "minimum": 1, "description":
                "Accepted, not applied: models.max_concurrent_per_model holds for every \
                 model (load_config says it)."})),
            "echo_load_config": nullable(json!({"type": "boolean"})),
        })),
        "LmsChatRequest": open(&["input"], json!({
            "model": {"type": "string"},
            "input": {"oneOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "items": open(&["type", "content"], json!({
                    "type": {"type": "string", "enum": ["message", "text"], "description":
                        "Image items are refused (400) until vision models are served."},
                    "content": {"type": "string"},
                }))},
            ]},
            "system_prompt": nullable(json!({"type": "string"})),
            "stream": nullable(json!({"type": "boolean"})),
            "temperature": nullable(json!({"type": "number", "minimum": 0, "maximum": 2})),
            "top_p": nullable(json!({"type": "number", "minimum": 0, "maximum": 1})),
            "top_k": nullable(json!({"type": "integer", "minimum": -1})),
            "min_p": nullable(json!({"type": "number", "minimum": 0, "maximum": 1})),
            "repeat_penalty": nullable(json!({"type": "number", "exclusiveMinimum": 0})),
            "max_output_tokens": nullable(json!({"type": "integer", "minimum": -1})),
            "reasoning": nullable(json!({"type": "string",
                "enum": ["off", "low", "medium", "high", "on"], "description":
                "400 where the model's template cannot apply it (`off` is always accepted by \
                 a model that does not reason)."})),
            "context_length": nullable(json!({"type": "integer", "minimum": 1,
                "description": "Accepted, not applied."})),
            "store": nullable(json!({"type": "boolean", "description": "Default true."})),
            "previous_response_id": nullable(json!({"type": "string"})),
            "integrations": nullable(json!({"type": "array", "maxItems": 0, "description":
                "MCP integrations are not served yet: a non-empty list is a 400."})),
            "ttl": nullable(json!({"type": "integer", "minimum": 0})),
        })),
        "LmsUnloadRequest": open(&["instance_id"], json!({"instance_id": {"type": "string"}})),
    })
}

fn top_logprob() -> Value {
    closed(
        &["token", "logprob", "bytes"],
        json!({
            "token": {"type": "string"},
            "logprob": {"type": "number", "description": "-9999 for an impossible token."},
            "bytes": nullable(json!({"type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 255}})),
        }),
    )
}

fn chat_completion() -> Value {
    closed(
        &["id", "object", "created", "model", "choices", "usage"],
        json!({
            "id": {"type": "string", "description": "`chatcmpl-` and 24 characters."},
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": closed(
                &["index", "message", "finish_reason", "logprobs"],
                json!({
                    "index": {"type": "integer"},
                    "message": closed(&["role", "content"], json!({
                        "role": {"type": "string", "enum": ["assistant"]},
                        "content": nullable(json!({"type": "string",
                            "description": "null when the model only called tools."})),
                        "reasoning_content": {"type": "string",
                            "description": "The model's reasoning block, apart from the answer."},
                        "reasoning": {"type": "string",
                            "description": "The same as reasoning_content."},
                        "tool_calls": {"type": "array", "items": schema_ref("ToolCall")},
                    })),
                    "finish_reason": nullable(schema_ref("FinishReason")),
                    "logprobs": nullable(schema_ref("ChatLogprobs")),
                }),
            )},
            "usage": schema_ref("Usage"),
            "system_fingerprint": {"type": "string"},
        }),
    )
}

fn chat_completion_chunk() -> Value {
    closed(
        &["id", "object", "created", "model", "choices"],
        json!({
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion.chunk"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": {"type": "string"},
            "choices": {"type": "array", "items": closed(
                &["index", "delta", "logprobs", "finish_reason"],
                json!({
                    "index": {"type": "integer"},
                    "delta": closed(&[], json!({
                        "role": {"type": "string", "enum": ["assistant"]},
                        "content": {"type": "string"},
                        "reasoning_content": {"type": "string"},
                        "reasoning": {"type": "string"},
                        "tool_calls": {"type": "array", "items": closed(&["index"], json!({
                            "index": {"type": "integer", "minimum": 0},
                            "id": {"type": "string",
                                "description": "In the call's first delta only."},
                            "type": {"type": "string", "enum": ["function"]},
                            "function": closed(&[], json!({
                                "name": {"type": "string",
                                    "description": "In the call's first delta only."},
                                "arguments": {"type": "string",
                                    "description": "The next fragment of the arguments JSON."},
                            })),
                        }))},
                    })),
                    "logprobs": nullable(schema_ref("ChatLogprobs")),
                    "finish_reason": nullable(schema_ref("FinishReason")),
                }),
            )},
            "usage": schema_ref("Usage"),
        }),
    )
}

fn lms_extras() -> Value {
    json!({
        "stats": schema_ref("LmsStats"),
        "model_info": schema_ref("LmsModelInfo"),
        "runtime": schema_ref("LmsRuntime"),
    })
}

fn chat_schemas() -> Value {
    let chat = chat_completion();
    let chunk = chat_completion_chunk();
    let extras = ["stats", "model_info", "runtime"];
    json!({
        "LmsChatCompletion": extended(&chat, &extras, lms_extras()),
        "LmsChatCompletionChunk": extended(&chunk, &[], lms_extras()),
        "ChatCompletion": chat,
        "ChatCompletionChunk": chunk,
        "ChatLogprobs": closed(&["content"], json!({
            "content": {"type": "array", "items": schema_ref("TokenLogprob")},
        })),
        "TokenLogprob": extended(&top_logprob(), &["top_logprobs"], json!({
            "top_logprobs": {"type": "array", "items": schema_ref("TopLogprob")},
        })),
        "TopLogprob": top_logprob(),
    })
}

fn completion_schemas() -> Value {
    let chunk = closed(
        &["id", "object", "created", "model", "choices"],
        json!({
            "id": {"type": "string", "description": "`cmpl-` and 24 characters."},
            "object": {"type": "string", "enum": ["text_completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": {"type": "string"},
            "choices": {"type": "array", "items": closed(
                &["text", "index", "logprobs", "finish_reason"],
                json!({
                    "text": {"type": "string"},
                    "index": {"type": "integer"},
                    "logprobs": nullable(schema_ref("CompletionLogprobs")),
                    "finish_reason": nullable(schema_ref("FinishReason")),
                }),
            )},
            "usage": schema_ref("Usage"),
        }),
    );
    let completion = extended(&chunk, &["usage"], json!({}));
    json!({
        "LmsCompletion": extended(&completion, &["stats", "model_info", "runtime"], lms_extras()),
        "LmsCompletionChunk": extended(&chunk, &[], lms_extras()),
        "Completion": completion,
        "CompletionChunk": chunk,
        "CompletionLogprobs": closed(
            &["tokens", "token_logprobs", "top_logprobs", "text_offset"],
            json!({
                "tokens": {"type": "array", "items": {"type": "string"}},
                "token_logprobs": {"type": "array", "items": nullable(json!({"type": "number"}))},
                "top_logprobs": {"type": "array", "items": nullable(json!({
                    "type": "object", "additionalProperties": {"type": "number"},
                }))},
                "text_offset": {"type": "array", "items": {"type": "integer"}},
            }),
        ),
    })
}

fn model_state() -> Value {
    json!({"type": "string",
           "enum": ["loaded", "loading", "unloading", "crashed", "not-loaded"]})
}

fn model_schemas() -> Value {
    json!({
        "ModelList": closed(&["object", "data"], json!({
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": schema_ref("Model")},
        })),
        "Model": closed(&["id", "object", "created", "owned_by"], json!({
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer", "description": "config.json's modification time."},
            "owned_by": {"type": "string", "description": "The publisher."},
            "context_length": {"type": "integer", "description": "The loaded context, else \
                the model's maximum (absent when its config gives none). Cursor and Android \
                Studio read it."},
        })),
        "LmsModelList": closed(&["object", "data", "unloadable"], json!({
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": schema_ref("LmsModel")},
            "unloadable": {"type": "array", "description": "Folders with a config.json that \
                cannot be loaded (an unreadable config, no weights, an architecture the \
                worker does not run), each with the reason.",
                "items": closed(&["id", "path", "reason"], json!({
                    "id": {"type": "string"}, "path": {"type": "string"},
                    "reason": {"type": "string"}}))},
        })),
        "LmsModel": closed(
            &["id", "object", "type", "publisher", "arch", "compatibility_type", "quantization",
              "state", "max_context_length"],
            json!({
                "id": {"type": "string"},
                "object": {"type": "string", "enum": ["model"]},
                "type": {"type": "string", "enum": ["llm", "embeddings"]},
                "publisher": {"type": "string"},
                "arch": {"type": "string"},
                "compatibility_type": {"type": "string", "enum": ["mlx"]},
                "quantization": {"type": "string"},
                "state": model_state(),
                "max_context_length": nullable(json!({"type": "integer"})),
                "loaded_context_length": {"type": "integer", "description":
                    "The context the running worker loaded; only for loaded models."},
                "sampling_defaults": schema_ref("SamplingDefaults"),
            }),
        ),
        "SamplingDefaults": closed(
            &["temperature", "top_k", "top_p", "min_p", "repeat_penalty"],
            json!({
                "temperature": {"type": "number"},
                "top_k": {"type": "integer", "description": "0 or -1: off."},
                "top_p": {"type": "number"},
                "min_p": {"type": "number"},
                "repeat_penalty": {"type": "number", "description":
                    "Applies to sampled requests only: temperature 0 is plain greedy."},
            }),
        ),
        "LmsV1ModelList": closed(&["models"], json!({
            "models": {"type": "array", "items": closed(
                &["type", "publisher", "key", "display_name", "architecture", "quantization",
                  "size_bytes", "params_string", "loaded_instances", "loaded_context_length",
                  "max_context_length", "format"],
                json!({
                    "type": {"type": "string", "enum": ["llm", "embedding"]},
                    "publisher": {"type": "string"},
                    "key": {"type": "string"},
                    "display_name": {"type": "string"},
                    "architecture": {"type": "string"},
                    "quantization": closed(&["name", "bits_per_weight"], json!({
                        "name": {"type": "string", "description": "`4bit`, `mxfp4`, `mixed`, \
                            or the float type of a model that is not quantized."},
                        "bits_per_weight": nullable(json!({"type": "integer"})),
                    })),
                    "size_bytes": {"type": "integer"},
                    "params_string": nullable(json!({"type": "string",
                        "description": "`135M`, `1.7B`: from the weights' shapes."})),
                    "loaded_instances": {"type": "array", "items": closed(&["id", "config"],
                        json!({
                            "id": {"type": "string"},
                            "config": closed(&["context_length", "parallel"], json!({
                                "context_length": {"type": "integer"},
                                "parallel": {"type": "integer"},
                            })),
                        }))},
                    "loaded_context_length": nullable(json!({"type": "integer"})),
                    "max_context_length": nullable(json!({"type": "integer"})),
                    "format": {"type": "string", "enum": ["mlx"]},
                    "capabilities": closed(&["vision", "trained_for_tool_use"], json!({
                        "vision": {"type": "boolean"},
                        "trained_for_tool_use": {"type": "boolean"},
                        "reasoning": closed(&["allowed_options", "default"], json!({
                            "allowed_options": {"type": "array", "items": reasoning_setting()},
                            "default": reasoning_setting(),
                        })),
                    })),
                }),
            )},
        })),
        "LmsLoadResponse": closed(&["type", "instance_id", "load_time_seconds", "status"], json!({
            "type": {"type": "string", "enum": ["llm", "embedding"]},
            "instance_id": {"type": "string"},
            "load_time_seconds": {"type": "number"},
            "status": {"type": "string", "enum": ["loaded"]},
            "load_config": closed(&["context_length"], json!({
                "context_length": nullable(json!({"type": "integer"})),
                "parallel": {"type": "integer"},
            })),
        })),
        "LmsChatResponse": lms_chat_response(),
        "LmsChatEvent": lms_chat_event(),
        "LmsError": closed(&["error"], json!({"error": lms_error_detail()})),
        "LmsUnloadResponse": closed(&["instance_id"], json!({
            "instance_id": {"type": "string"},
        })),
    })
}

fn reasoning_setting() -> Value {
    json!({"type": "string", "enum": ["off", "low", "medium", "high", "on"]})
}

fn lms_error_detail() -> Value {
    closed(
        &["type", "message"],
        json!({
            "type": {"type": "string", "enum": ["invalid_request", "unknown",
                "not_implemented", "model_not_found", "internal_error"]},
            "message": {"type": "string"},
            "code": {"type": "string"},
            "param": {"type": "string"},
        }),
    )
}

fn lms_chat_response() -> Value {
    closed(
        &["model_instance_id", "output", "stats"],
        json!({
            "model_instance_id": {"type": "string"},
            "output": {"type": "array", "items": closed(&["type", "content"], json!({
                "type": {"type": "string", "enum": ["reasoning", "message"]},
                "content": {"type": "string"},
            }))},
            "stats": closed(
                &["input_tokens", "total_output_tokens", "reasoning_output_tokens",
                  "tokens_per_second", "time_to_first_token_seconds"],
                json!({
                    "input_tokens": {"type": "integer", "minimum": 0},
                    "total_output_tokens": {"type": "integer", "minimum": 0},
                    "reasoning_output_tokens": {"type": "integer", "minimum": 0},
                    "tokens_per_second": {"type": "number"},
                    "time_to_first_token_seconds": {"type": "number"},
                    "model_load_time_seconds": {"type": "number", "description":
                        "Only when this request loaded the model."},
                }),
            ),
            "response_id": {"type": "string", "description": "Unless `store: false`."},
        }),
    )
}

/// Every event of the `/api/v1/chat` stream, told apart by `type`.
fn lms_chat_event() -> Value {
    let bare = |name: &str| closed(&["type"], json!({"type": {"const": name}}));
    // An event naming the model instance, with `more` (all required).
    let model = |name: &str, more: Value| {
        let mut props = json!({"type": {"const": name}, "model_instance_id": {"type": "string"}});
        let mut required = vec!["type".to_string(), "model_instance_id".to_string()];
        if let (Some(p), Value::Object(more)) = (props.as_object_mut(), more) {
            required.extend(more.keys().cloned());
            p.extend(more);
        }
        json!({"type": "object", "required": required, "properties": props,
               "additionalProperties": false})
    };
    let progress = json!({"type": "number", "minimum": 0, "maximum": 1});
    let delta = |name: &str| {
        closed(
            &["type", "content"],
            json!({"type": {"const": name}, "content": {"type": "string"}}),
        )
    };
    json!({"oneOf": [
        model("chat.start", json!({})),
        model("model_load.start", json!({})),
        model("model_load.progress", json!({"progress": progress})),
        model("model_load.end", json!({"load_time_seconds": {"type": "number"}})),
        bare("prompt_processing.start"),
        closed(&["type", "progress"],
            json!({"type": {"const": "prompt_processing.progress"}, "progress": progress})),
        bare("prompt_processing.end"),
        bare("reasoning.start"),
        delta("reasoning.delta"),
        bare("reasoning.end"),
        bare("message.start"),
        delta("message.delta"),
        bare("message.end"),
        closed(&["type", "error"],
            json!({"type": {"const": "error"}, "error": lms_error_detail()})),
        closed(&["type", "result"],
            json!({"type": {"const": "chat.end"}, "result": lms_chat_response()})),
    ]})
}

fn worker_properties() -> Value {
    let int_or_null = || nullable(json!({"type": "integer"}));
    json!({
        "model_id": {"type": "string"},
        "state": model_state(),
        "pid": int_or_null(),
        "path": {"type": "string"},
        "resident_bytes": int_or_null(),
        "in_flight": {"type": "integer"},
        "loaded_at": int_or_null(),
        "last_used": int_or_null(),
        "ttl_seconds": int_or_null(),
        "restarts": {"type": "integer"},
        "weights_bytes": int_or_null(),
        "context_length": int_or_null(),
        "crash": nullable(closed(&["status", "stderr_tail", "at"], json!({
            "status": {"type": "string"},
            "stderr_tail": {"type": "string"},
            "at": {"type": "integer"},
        }))),
    })
}

/// What `/admin/status` adds to each worker: the controller's admission counts and the
/// worker's own stats (`null` when it does not answer within half a second).
fn status_extras() -> Value {
    let count = || json!({"type": "integer", "minimum": 0});
    json!({
        "requests": closed(&["in_flight", "queued", "max_concurrent", "max_queue"], json!({
            "in_flight": count(),
            "queued": count(),
            "max_concurrent": count(),
            "max_queue": count(),
        })),
        "worker_stats": nullable(closed(
            &["active_requests", "queued_requests", "prompt_cache_hits", "prompt_cache_tokens",
              "peak_memory_bytes", "active_memory_bytes"],
            json!({
                "active_requests": count(),
                "queued_requests": count(),
                "prompt_cache_hits": count(),
                "prompt_cache_tokens": count(),
                "peak_memory_bytes": count(),
                "active_memory_bytes": count(),
            }),
        )),
    })
}

const WORKER_FIELDS: &[&str] = &[
    "model_id",
    "state",
    "pid",
    "path",
    "resident_bytes",
    "in_flight",
    "loaded_at",
    "last_used",
    "ttl_seconds",
    "restarts",
    "weights_bytes",
    "context_length",
    "crash",
];

fn admin_schemas() -> Value {
    let worker = closed(WORKER_FIELDS, worker_properties());
    // A model without a worker lists only its id, state and folder.
    let admin_model = extended(
        &closed(&["model_id", "state", "path"], worker_properties()),
        &[],
        json!({"weights_bytes_on_disk": {"type": "integer"}}),
    );
    json!({
        "Health": closed(&["status", "version"], json!({
            "status": {"type": "string", "enum": ["ok"]},
            "version": {"type": "string"},
        })),
        "Memory": closed(
            &["total_bytes", "used_bytes", "available_bytes", "total_gb", "used_gb",
              "available_gb", "usage_percent", "threshold_percent", "models"],
            json!({
                "total_bytes": {"type": "integer"},
                "used_bytes": {"type": "integer"},
                "available_bytes": {"type": "integer"},
                "total_gb": {"type": "number"},
                "used_gb": {"type": "number"},
                "available_gb": {"type": "number"},
                "usage_percent": {"type": "number"},
                "threshold_percent": {"type": "integer",
                    "description": "memory.max_memory_percent."},
                "models": {"type": "array", "items": closed(
                    &["model_id", "pid", "resident_bytes"],
                    json!({
                        "model_id": {"type": "string"},
                        "pid": nullable(json!({"type": "integer"})),
                        "resident_bytes": nullable(json!({"type": "integer"})),
                    }),
                )},
            }),
        ),
        "StatusWorker": extended(&worker, &["requests", "worker_stats"], status_extras()),
        "WorkerStatus": worker,
        "Status": closed(
            &["version", "uptime_seconds", "loaded_models", "models", "workers", "memory"],
            json!({
                "version": {"type": "string"},
                "uptime_seconds": {"type": "integer"},
                "loaded_models": {"type": "integer"},
                "models": {"type": "array", "items": {"type": "string"},
                           "description": "Ids of the ready models."},
                "workers": {"type": "array", "items": schema_ref("StatusWorker")},
                "memory": schema_ref("Memory"),
            }),
        ),
        "AdminModelList": closed(&["models"], json!({
            "models": {"type": "array", "items": admin_model},
        })),
        "AdminLoadResponse": closed(
            &["success", "model_id", "time_to_load_ms", "pid", "memory"],
            json!({
                "success": {"type": "boolean", "enum": [true]},
                "model_id": {"type": "string"},
                "time_to_load_ms": {"type": "number"},
                "pid": nullable(json!({"type": "integer"})),
                "memory": schema_ref("Memory"),
            }),
        ),
        "AdminUnloadResponse": closed(&["success", "model_id", "memory"], json!({
            "success": {"type": "boolean", "enum": [true]},
            "model_id": {"type": "string"},
            "memory": schema_ref("Memory"),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in the document points at something that exists.
    #[test]
    fn every_ref_resolves() {
        fn walk(doc: &Value, v: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let pointer = r.strip_prefix('#').unwrap_or(r);
                        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
                    }
                    m.values().for_each(|x| walk(doc, x));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(doc, x)),
                _ => {}
            }
        }
        let doc = document();
        walk(doc, doc);
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
