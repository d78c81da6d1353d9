//! Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`), as
//! Claude Code and the `anthropic` SDKs speak it: the request, its translation into the chat
//! messages a template takes, and the response and stream shapes.
//!
//! Lenient where clients differ (unknown fields and tool types ignored, `system` messages
//! taken anywhere in `messages`, any `thinking` type), strict where a silent misreading would
//! surprise: `max_tokens` is required, images are a 400 until vision lands.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use opta_lmx_shared::protocol::{OutputSpec, ToolChoice as WireToolChoice};

use super::error::ApiError;

/// `POST /v1/messages`. `model`, `stream`, `temperature`, `top_p` and `top_k` are read by the
/// shared and sampling fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct MessagesRequest {
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Required by Anthropic; read here to say so (the shared fields read its value).
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub system: Option<Content>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    /// `{"type": "enabled", "budget_tokens": N}`, `{"type": "disabled"}` or
    /// `{"type": "adaptive"}` (the model decides, as its template does by default).
    #[serde(default)]
    pub thinking: Option<Value>,
    // Not acted on, and taken in any shape: `metadata` (Claude Code's `user_id` is a JSON
    // string), `context_management`, `output_config`, `service_tier`, `cache_control`.
}

/// The body of `POST /v1/messages/count_tokens`: a request, without `max_tokens`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct CountTokensRequest(pub MessagesRequest);

impl super::Validate for CountTokensRequest {
    fn validate(&self) -> Result<(), ApiError> {
        self.0.check(false)
    }
}

/// A message's role. Anthropic's API has two; Claude Code also puts `system` messages in
/// the conversation (after the first user turn), and `developer` means the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    #[serde(alias = "developer")]
    System,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Content,
}

/// Content: a plain string, or a list of blocks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

impl Content {
    fn blocks(&self) -> Vec<Value> {
        match self {
            Content::Text(t) => vec![json!({"type": "text", "text": t})],
            Content::Blocks(b) => b.clone(),
        }
    }

    /// The text of every text block, joined.
    fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Blocks(blocks) => blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// `tool_choice`: `{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name": ...}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub disable_parallel_tool_use: Option<bool>,
}

/// Claude Code starts `system` with a per-request billing line; removed, so the rest of the
/// prompt is the same from request to request and the prompt cache hits.
const BILLING_PREFIX: &str = "x-anthropic-billing-header";

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

impl super::Validate for MessagesRequest {
    fn validate(&self) -> Result<(), ApiError> {
        self.check(true)
    }
}

impl MessagesRequest {
    /// The checks of a generation (`max_tokens` required) or of a token count.
    pub fn check(&self, generation: bool) -> Result<(), ApiError> {
        super::expect_json(
            "thinking",
            self.thinking.as_ref(),
            "an object",
            Value::is_object,
        )?;
        if let Some(Content::Blocks(blocks)) = &self.system {
            super::expect_objects("system", blocks)?;
        }
        super::expect_objects("tools", self.tools.as_deref().unwrap_or_default())?;
        if self.max_tokens.is_some_and(|n| n < 0) {
            return Err(invalid("max_tokens", "max_tokens: must not be negative"));
        }
        if self.messages.is_empty() {
            return Err(invalid(
                "messages",
                "messages: at least one message is required",
            ));
        }
        match self.max_tokens {
            None if generation => {
                return Err(invalid("max_tokens", "max_tokens: Field required"));
            }
            Some(n) if generation && n < 1 => {
                return Err(invalid("max_tokens", "max_tokens: must be at least 1"));
            }
            _ => {}
        }
        for (i, m) in self.messages.iter().enumerate() {
            for (j, b) in m.content.blocks().iter().enumerate() {
                let kind = b.get("type").and_then(Value::as_str).unwrap_or_default();
                match kind {
                    "text" | "tool_use" | "tool_result" | "thinking" | "redacted_thinking" => {}
                    "image" | "document" => {
                        return Err(invalid(
                            &format!("messages.{i}.content.{j}"),
                            format!(
                                "messages.{i}.content.{j}: {kind} blocks are not supported: \
                                 the loaded models read text only"
                            ),
                        ))
                    }
                    other => {
                        return Err(invalid(
                            &format!("messages.{i}.content.{j}.type"),
                            format!("messages.{i}.content.{j}.type: unknown block type {other:?}"),
                        ))
                    }
                }
            }
        }
        if let Some(choice) = &self.tool_choice {
            match (choice.kind.as_str(), &choice.name) {
                ("auto" | "any" | "none", _) => {}
                ("tool", Some(name))
                    if self
                        .function_tools()
                        .iter()
                        .any(|t| t["function"]["name"] == *name) => {}
                ("tool", _) => {
                    return Err(invalid(
                        "tool_choice.name",
                        "tool_choice.name: must name one of the tools",
                    ))
                }
                (other, _) => {
                    return Err(invalid(
                        "tool_choice.type",
                        format!("tool_choice.type: unknown value {other:?}"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The tools as OpenAI-style function tools, which templates take. Anthropic's own
    /// server tools (`web_search_*`, `bash_*`, ...) have no schema to render and are left
    /// out.
    pub fn function_tools(&self) -> Vec<Value> {
        self.tools
            .iter()
            .flatten()
            .filter(|t| {
                t.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(|k| k == "custom")
                    && t.get("name").and_then(Value::as_str).is_some()
            })
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t["name"],
                    "description": t.get("description").cloned().unwrap_or(Value::Null),
                    "parameters": t.get("input_schema").cloned()
                        .unwrap_or_else(|| json!({"type": "object"})),
                }})
            })
            .collect()
    }

    /// The conversation as the chat template takes it: the system prompt first, `system`
    /// messages where they stand (the worker merges them into the first one for a template
    /// that does not take them there), tool results as `tool` messages, assistant tool uses
    /// as `tool_calls`.
    pub fn template_messages(&self) -> Value {
        let mut out = Vec::new();
        if let Some(system) = &self.system {
            let text = strip_billing_line(&system.text());
            if !text.is_empty() {
                out.push(json!({"role": "system", "content": text}));
            }
        }
        for m in &self.messages {
            let blocks = m.content.blocks();
            let mut text = Vec::new();
            let mut calls = Vec::new();
            let mut thinking = Vec::new();
            for b in &blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => text.push(
                        b.get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ),
                    Some("tool_use") => calls.push(json!({
                        "id": b.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {
                            "name": b.get("name").cloned().unwrap_or(Value::Null),
                            "arguments": b.get("input").cloned().unwrap_or_else(|| json!({})),
                        },
                    })),
                    Some("tool_result") => {
                        let content = match b.get("content") {
                            Some(Value::String(s)) => s.clone(),
                            Some(v @ Value::Array(_)) => {
                                serde_json::from_value::<Content>(v.clone())
                                    .map(|c| c.text())
                                    .unwrap_or_default()
                            }
                            _ => String::new(),
                        };
                        let is_error = b.get("is_error").and_then(Value::as_bool) == Some(true);
                        out.push(json!({
                            "role": "tool",
                            "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null),
                            "content": if is_error { format!("Error: {content}") } else { content },
                        }));
                    }
                    // Earlier thinking goes back to the template, which keeps what the model
                    // needs (gpt-oss: the reasoning before a tool call) and drops the rest.
                    Some("thinking") => thinking.push(
                        b.get("thinking")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ),
                    _ => {}
                }
            }
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::System => "system",
            };
            if !text.is_empty() || !calls.is_empty() {
                let mut msg = json!({"role": role, "content": text.join("\n")});
                if !calls.is_empty() {
                    msg["tool_calls"] = Value::Array(calls);
                }
                if !thinking.is_empty() {
                    let t = thinking.join("\n");
                    msg["reasoning_content"] = json!(t);
                    msg["thinking"] = json!(t);
                }
                out.push(msg);
            }
        }
        Value::Array(out)
    }

    /// The answer's shape for the worker.
    pub fn output_spec(&self) -> OutputSpec {
        let has_tools = !self.function_tools().is_empty();
        let choice = self.tool_choice.as_ref();
        let tool_choice = match (choice.map(|c| c.kind.as_str()), has_tools) {
            (_, false) | (Some("none"), _) => WireToolChoice::None,
            (Some("any"), true) => WireToolChoice::Required,
            (Some("tool"), true) => {
                WireToolChoice::Function(choice.and_then(|c| c.name.clone()).unwrap_or_default())
            }
            _ => WireToolChoice::Auto,
        };
        OutputSpec {
            tool_choice,
            parallel_tool_calls: !choice
                .and_then(|c| c.disable_parallel_tool_use)
                .unwrap_or(false),
            ..OutputSpec::default()
        }
    }

    /// Template variables: thinking on or off, as Qwen3-style templates read it. `adaptive`
    /// (and any type not known yet) leaves it to the template's default.
    pub fn template_kwargs(&self) -> Option<String> {
        let enable = match self.thinking.as_ref()?.get("type")?.as_str()? {
            "enabled" => true,
            "disabled" => false,
            _ => return None,
        };
        Some(json!({"enable_thinking": enable}).to_string())
    }
}

fn strip_billing_line(system: &str) -> String {
    let trimmed = system.trim_start();
    if trimmed.starts_with(BILLING_PREFIX) {
        match trimmed.split_once('\n') {
            Some((_, rest)) => rest.trim_start().to_string(),
            None => String::new(),
        }
    } else {
        system.to_string()
    }
}

/// A `msg_` id, like Anthropic's.
pub fn message_id() -> String {
    super::sse::new_id("msg_")
}

/// A `toolu_` id for a tool use.
pub fn tool_use_id() -> String {
    super::sse::new_id("toolu_")
}

/// Anthropic's `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cache_read_input_tokens: u32,
    pub cache_creation_input_tokens: u32,
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 413 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// An OpenAI-shaped error body in Anthropic's shape.
pub fn error_body(status: u16, openai: &Value) -> Value {
    let message = openai
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("error");
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Validate;

    fn req(v: Value) -> MessagesRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn raw_json_fields_must_have_their_documented_types() {
        let msg = json!([{"role": "user", "content": "Hi"}]);
        let param = |extra: Value| {
            let mut body = json!({"max_tokens": 2, "messages": msg});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            req(body)
                .validate()
                .err()
                .and_then(|e| e.param().map(str::to_string))
        };
        assert_eq!(param(json!({"thinking": 5})).as_deref(), Some("thinking"));
        assert_eq!(param(json!({"system": [1]})).as_deref(), Some("system[0]"));
        assert_eq!(param(json!({"tools": [1]})).as_deref(), Some("tools[0]"));
        // What Claude Code sends and nothing here acts on: taken in any shape.
        for extra in [
            json!({"metadata": {"user_id": "{\"device_id\":\"d\",\"session_id\":\"s\"}"}}),
            json!({"metadata": "x"}),
            json!({"context_management": {"edits": [{"type": "clear_thinking_20251015"}]}}),
            json!({"output_config": {"effort": "high"}}),
            json!({"service_tier": "auto"}),
            json!({"thinking": {"type": "adaptive"}}),
            json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}),
            json!({"thinking": {"type": "something_new"}}),
        ] {
            assert_eq!(param(extra.clone()), None, "{extra}");
        }
        let count: CountTokensRequest =
            serde_json::from_value(json!({"max_tokens": -1, "messages": msg})).unwrap();
        assert_eq!(count.validate().unwrap_err().param(), Some("max_tokens"));
    }

    #[test]
    fn a_conversation_with_tools_becomes_template_messages() {
        let r = req(json!({
            "max_tokens": 10,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=abc\nYou are Claude Code."}],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": true},
                    {"type": "text", "text": "Thanks"}]},
            ],
        }));
        assert!(r.validate().is_ok());
        let m = r.template_messages();
        assert_eq!(
            m[0],
            json!({"role": "system", "content": "You are Claude Code."})
        );
        assert_eq!(m[1], json!({"role": "user", "content": "Weather?"}));
        assert_eq!(m[2]["content"], "Checking.");
        assert_eq!(
            m[2]["thinking"], "hmm",
            "thinking goes back to the template"
        );
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            json!({"city": "Paris"})
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "21C"})
        );
        assert_eq!(m[4]["content"], "Error: boom");
        assert_eq!(m[5], json!({"role": "user", "content": "Thanks"}));
    }

    #[test]
    fn system_messages_stay_where_the_client_put_them() {
        // Claude Code's first request: a user turn, then a system message listing agents.
        let r = req(json!({
            "max_tokens": 32000,
            "system": [
                {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.d03; cc_entrypoint=sdk-cli;"},
                {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"},
                                             {"type": "text", "text": "Say hi", "cache_control": {"type": "ephemeral"}}]},
                {"role": "system", "content": "Available agent types: general-purpose"},
                {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            ],
            "thinking": {"type": "adaptive"},
        }));
        assert!(r.validate().is_ok());
        let m = r.template_messages();
        let roles: Vec<&str> = m
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "system", "system"]);
        assert_eq!(
            m[0]["content"], "You are Claude Code.",
            "billing line removed"
        );
        assert_eq!(m[2]["content"], "Available agent types: general-purpose");
        assert_eq!(m[3]["content"], "Be brief.");
        assert_eq!(
            r.template_kwargs(),
            None,
            "adaptive: the template's default"
        );
        let off = req(
            json!({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "thinking": {"type": "disabled"}}),
        );
        assert_eq!(
            off.template_kwargs().as_deref(),
            Some(r#"{"enable_thinking":false}"#)
        );
    }

    #[test]
    fn tools_and_choices_map_to_functions() {
        let r = req(
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "w", "input_schema": {"type": "object"}},
                      {"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "tool", "name": "w", "disable_parallel_tool_use": true}}),
        );
        assert!(r.validate().is_ok());
        assert_eq!(r.function_tools().len(), 1, "server tools are left out");
        let spec = r.output_spec();
        assert_eq!(spec.tool_choice, WireToolChoice::Function("w".into()));
        assert!(!spec.parallel_tool_calls);
        let any = req(
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "w"}], "tool_choice": {"type": "any"}}),
        );
        assert_eq!(any.output_spec().tool_choice, WireToolChoice::Required);
    }

    #[test]
    fn refusals_name_the_field() {
        let no_max = req(json!({"messages": [{"role": "user", "content": "x"}]}));
        assert!(no_max
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_tokens"));
        assert!(
            no_max.check(false).is_ok(),
            "count_tokens needs no max_tokens"
        );
        let zero = req(json!({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}));
        assert!(zero.validate().is_err(), "0 is not a limit");
        let image = req(
            json!({"max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}]}]}),
        );
        assert!(image.validate().unwrap_err().to_string().contains("image"));
        let bad_tool = req(
            json!({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "tool_choice": {"type": "tool", "name": "nope"}}),
        );
        assert!(bad_tool.validate().is_err());
    }

    #[test]
    fn errors_take_anthropics_shape() {
        let e = error_body(404, &json!({"error": {"message": "no such model"}}));
        assert_eq!(
            e,
            json!({"type": "error", "error": {"type": "not_found_error", "message": "no such model"}})
        );
    }
}
