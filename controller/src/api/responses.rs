//! OpenAI's Responses API (`POST /v1/responses`), as Codex and the OpenAI Agents SDK speak it:
//! the request and its input items, their translation into the chat messages a template
//! takes, and the store of past responses that `previous_response_id` continues from.
//!
//! Tolerant as Codex needs: tool types other than `function` are mapped (`custom` becomes a
//! function of one string `input`) or left out, never refused; `instructions` are the system
//! message, `developer` and `system` messages stay where they stand (the worker merges them
//! into the first one for a template that does not take them there); reasoning items go back
//! with the calls after them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use opta_lmx_shared::protocol::{AnswerFormat, OutputSpec, ToolChoice as WireToolChoice};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;

/// `POST /v1/responses`. `model`, `stream`, `temperature` and `top_p` are read by the shared
/// and sampling fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub max_output_tokens: Option<i64>,
    /// `{"effort": "low" | "medium" | "high", ...}`.
    #[serde(default)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Keep this response for `previous_response_id` (OpenAI's default: true).
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

fn kind(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn text_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| {
                matches!(
                    kind(p),
                    "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text"
                )
            })
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

impl super::Validate for ResponsesRequest {
    fn validate(&self) -> Result<(), ApiError> {
        use super::{expect_json, expect_objects};
        let object = |v: &Value| v.is_object();
        expect_json("metadata", self.metadata.as_ref(), "an object", object)?;
        expect_json("text", self.text.as_ref(), "an object", object)?;
        expect_json("reasoning", self.reasoning.as_ref(), "an object", object)?;
        expect_json(
            "tool_choice",
            self.tool_choice.as_ref(),
            "\"auto\", \"none\", \"required\" or an object",
            |v| v.is_object() || matches!(v.as_str(), Some("auto" | "none" | "required")),
        )?;
        expect_objects("tools", self.tools.as_deref().unwrap_or_default())?;
        if let Some(Value::Array(items)) = &self.input {
            // Items are objects; a string stands only for the whole input.
            expect_objects("input", items)?;
        }
        let items = match &self.input {
            None | Some(Value::Null) => {
                return Err(invalid("input", "Missing required parameter: 'input'."))
            }
            Some(Value::String(_)) => Vec::new(),
            Some(Value::Array(items)) => items.clone(),
            Some(_) => {
                return Err(invalid(
                    "input",
                    "Invalid type for 'input': expected a string or an array of items.",
                ))
            }
        };
        for (i, item) in items.iter().enumerate() {
            let param = |f: &str| format!("input[{i}]{f}");
            match item_kind(item) {
                "message" => {
                    let role = item.get("role").and_then(Value::as_str).unwrap_or_default();
                    if !matches!(role, "user" | "assistant" | "system" | "developer") {
                        return Err(invalid(
                            &param(".role"),
                            format!("Invalid value for 'input[{i}].role': {role:?}."),
                        ));
                    }
                    if let Some(Value::Array(parts)) = item.get("content") {
                        if let Some(p) = parts.iter().find(|p| {
                            matches!(kind(p), "input_image" | "input_file" | "input_audio")
                        }) {
                            return Err(invalid(
                                &param(".content"),
                                format!("'input[{i}].content': {} parts are not supported: the loaded models read text only.", kind(p)),
                            ));
                        }
                    }
                }
                "function_call" | "custom_tool_call"
                    if item.get("call_id").and_then(Value::as_str).is_none()
                        || item.get("name").and_then(Value::as_str).is_none() =>
                {
                    return Err(invalid(
                        &param(""),
                        format!(
                            "'input[{i}]': a {} needs 'call_id' and 'name'.",
                            item_kind(item)
                        ),
                    ));
                }
                "function_call_output" | "custom_tool_call_output"
                    if item.get("call_id").and_then(Value::as_str).is_none() =>
                {
                    return Err(invalid(
                        &param(".call_id"),
                        format!("Missing required parameter: 'input[{i}].call_id'."),
                    ));
                }
                // Reasoning, references to stored items and tool kinds this server does not
                // run: nothing to render.
                _ => {}
            }
        }
        if let Some(format) = self.format() {
            if kind(format) == "json_schema" && !format.get("schema").is_some_and(Value::is_object)
            {
                return Err(invalid(
                    "text.format.schema",
                    "Missing required parameter: 'text.format.schema'.",
                ));
            }
        }
        if let Some(name) = self.forced_name() {
            if !self
                .function_tools()
                .iter()
                .any(|t| t["function"]["name"] == name)
            {
                return Err(invalid(
                    "tool_choice",
                    format!("Invalid value for 'tool_choice': no tool named {name:?} in 'tools'."),
                ));
            }
        }
        if let Some(n) = self.max_output_tokens {
            if n < 1 {
                return Err(invalid(
                    "max_output_tokens",
                    "Invalid 'max_output_tokens': it must be at least 1.",
                ));
            }
        }
        Ok(())
    }
}

/// An input item's type: `message` when it has a role and no type (the short form).
fn item_kind(item: &Value) -> &str {
    match item.get("type").and_then(Value::as_str) {
        Some(k) => k,
        None if item.get("role").is_some() => "message",
        None => "",
    }
}

impl ResponsesRequest {
    fn format(&self) -> Option<&Value> {
        self.text.as_ref()?.get("format")
    }

    /// The function `tool_choice` names, if it names one.
    fn forced_name(&self) -> Option<&str> {
        match &self.tool_choice {
            Some(v @ Value::Object(_)) => v.get("name").and_then(Value::as_str),
            _ => None,
        }
    }

    /// Names of the `custom` tools: their calls go back as `custom_tool_call` items.
    pub fn custom_tools(&self) -> Vec<String> {
        self.tools
            .iter()
            .flatten()
            .filter(|t| kind(t) == "custom")
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// The tools as chat-template function tools: `function` as is, `custom` as a function
    /// of one string `input`; hosted tools (web search, file search, ...) left out.
    pub fn function_tools(&self) -> Vec<Value> {
        self.tools
            .iter()
            .flatten()
            .filter_map(|t| {
                let name = t.get("name").and_then(Value::as_str)?;
                let description = t.get("description").cloned().unwrap_or(Value::Null);
                let parameters = match kind(t) {
                    "function" => t
                        .get("parameters")
                        .cloned()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({"type": "object"})),
                    "custom" => {
                        json!({"type": "object", "properties": {"input": {"type": "string"}},
                        "required": ["input"]})
                    }
                    _ => return None,
                };
                Some(json!({"type": "function", "function": {
                    "name": name, "description": description, "parameters": parameters}}))
            })
            .collect()
    }

    /// The conversation for the template: `instructions` as the system message, then
    /// [`Self::conversation`].
    pub fn template_messages(&self, history: &[Value]) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(text) = self.instructions.as_ref().filter(|s| !s.is_empty()) {
            out.push(json!({"role": "system", "content": text}));
        }
        out.extend(self.conversation(history));
        out
    }

    /// `history` (a previous response's conversation), then the input items as template
    /// messages, `developer` and `system` ones as `system` messages where they stand.
    pub fn conversation(&self, history: &[Value]) -> Vec<Value> {
        let mut turns: Vec<Value> = history.to_vec();
        let items = match &self.input {
            Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        for item in &items {
            match item_kind(item) {
                "message" => {
                    let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                    let text = text_of(item.get("content"));
                    let role = if role == "developer" { "system" } else { role };
                    turns.push(json!({"role": role, "content": text}));
                }
                "reasoning" => {
                    // A turn's reasoning, sent back: the calls that follow join its turn, so
                    // templates that keep reasoning before a call (gpt-oss) see it.
                    let mut text = text_of(item.get("content"));
                    if text.is_empty() {
                        text = text_of(item.get("summary"));
                    }
                    if !text.is_empty() {
                        turns.push(json!({"role": "assistant", "content": "",
                            "reasoning_content": text, "thinking": text}));
                    }
                }
                k @ ("function_call" | "custom_tool_call") => {
                    let arguments = if k == "custom_tool_call" {
                        json!({"input": item.get("input").and_then(Value::as_str).unwrap_or_default()})
                    } else {
                        let raw = item
                            .get("arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("{}");
                        serde_json::from_str(raw).unwrap_or_else(|_| json!(raw))
                    };
                    let call = json!({"id": item["call_id"], "type": "function",
                        "function": {"name": item["name"], "arguments": arguments}});
                    // Calls after an assistant turn (or after each other) belong to it.
                    match turns.last_mut() {
                        Some(last) if last["role"] == "assistant" => {
                            match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                                Some(calls) => calls.push(call),
                                None => last["tool_calls"] = json!([call]),
                            }
                        }
                        _ => turns.push(
                            json!({"role": "assistant", "content": "", "tool_calls": [call]}),
                        ),
                    }
                }
                "function_call_output" | "custom_tool_call_output" => {
                    let output = match item.get("output") {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => text_of(Some(other)),
                        None => String::new(),
                    };
                    turns.push(
                        json!({"role": "tool", "tool_call_id": item["call_id"], "content": output}),
                    );
                }
                _ => {}
            }
        }
        turns
    }

    /// The answer's shape for the worker.
    pub fn output_spec(&self) -> OutputSpec {
        let has_tools = !self.function_tools().is_empty();
        let tool_choice = match (&self.tool_choice, has_tools) {
            (_, false) => WireToolChoice::None,
            (Some(Value::String(s)), true) if s == "none" => WireToolChoice::None,
            (Some(Value::String(s)), true) if s == "required" => WireToolChoice::Required,
            (Some(Value::Object(_)), true) => match self.forced_name() {
                Some(name) => WireToolChoice::Function(name.to_string()),
                None => WireToolChoice::Auto,
            },
            _ => WireToolChoice::Auto,
        };
        let format = match self.format() {
            Some(f) if kind(f) == "json_object" => AnswerFormat::JsonObject,
            Some(f) if kind(f) == "json_schema" => AnswerFormat::JsonSchema {
                schema_json: f
                    .get("schema")
                    .map_or_else(|| "{}".into(), Value::to_string),
                strict: f.get("strict").and_then(Value::as_bool).unwrap_or(false),
            },
            _ => AnswerFormat::Text,
        };
        OutputSpec {
            format,
            tool_choice,
            parallel_tool_calls: self.parallel_tool_calls.unwrap_or(true),
        }
    }

    /// `reasoning.effort` for templates that read it (gpt-oss).
    pub fn template_kwargs(&self) -> Option<String> {
        let effort = self.reasoning.as_ref()?.get("effort")?.as_str()?;
        Some(json!({"reasoning_effort": effort}).to_string())
    }

    /// What the response echoes of the request's `tool_choice`.
    pub fn tool_choice_echo(&self) -> Value {
        self.tool_choice.clone().unwrap_or_else(|| json!("auto"))
    }

    /// What the response echoes of the request's `text`.
    pub fn text_echo(&self) -> Value {
        self.text
            .clone()
            .unwrap_or_else(|| json!({"format": {"type": "text"}}))
    }
}

/// Past responses, for `previous_response_id`: each one's conversation (without the system
/// message, which a continuation gives again), the oldest dropped past the capacity.
pub struct ResponseStore {
    capacity: usize,
    inner: Mutex<Stored>,
}

/// The conversations by id, and the ids from least to most recently used.
type Stored = (HashMap<String, Vec<Value>>, VecDeque<String>);

impl ResponseStore {
    pub fn new(capacity: usize) -> Self {
        ResponseStore {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// Keeps `conversation` under `id`.
    pub fn insert(&self, id: &str, conversation: Vec<Value>) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if map.insert(id.to_string(), conversation).is_none() {
            order.push_back(id.to_string());
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// The conversation of response `id`, marked recently used.
    pub fn get(&self, id: &str) -> Option<Vec<Value>> {
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *guard;
        let found = map.get(id).cloned()?;
        if let Some(pos) = order.iter().position(|k| k == id) {
            if let Some(k) = order.remove(pos) {
                order.push_back(k);
            }
        }
        Some(found)
    }
}

/// The conversation a response continues: its previous response's, or a 404 in OpenAI's
/// shape when that is unknown (never stored, or dropped from the store).
pub fn history(store: &ResponseStore, req: &ResponsesRequest) -> Result<Vec<Value>, ApiError> {
    match &req.previous_response_id {
        None => Ok(Vec::new()),
        Some(id) => store.get(id).ok_or_else(|| {
            ApiError::not_found(format!(
                "Previous response with id '{id}' not found (previous_response_id); responses \
                 are kept in memory, the most recent server.response_store_size of them."
            ))
        }),
    }
}

/// A `resp_` id.
pub fn response_id() -> String {
    super::sse::new_id("resp_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Validate;

    fn req(v: Value) -> ResponsesRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn raw_json_fields_must_have_their_documented_types() {
        let param = |extra: Value| {
            let mut body = json!({"input": "Hi"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            req(body)
                .validate()
                .err()
                .and_then(|e| e.param().map(str::to_string))
        };
        assert_eq!(
            param(json!({"metadata": [null]})).as_deref(),
            Some("metadata")
        );
        assert_eq!(param(json!({"text": 5})).as_deref(), Some("text"));
        assert_eq!(param(json!({"reasoning": 5})).as_deref(), Some("reasoning"));
        assert_eq!(
            param(json!({"tool_choice": 5})).as_deref(),
            Some("tool_choice")
        );
        assert_eq!(param(json!({"tools": [1]})).as_deref(), Some("tools[0]"));
        assert_eq!(param(json!({"input": ["x"]})).as_deref(), Some("input[0]"));
        let fine = json!({"metadata": {"a": "b"}, "text": null, "tool_choice": "auto"});
        assert_eq!(param(fine), None);
    }

    #[test]
    fn codex_style_items_become_system_messages_and_turns() {
        let r = req(json!({
            "instructions": "You are Codex.",
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: read-only."}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List files"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}]},
                {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{\"cmd\": \"ls\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
                {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
                {"type": "custom_tool_call_output", "call_id": "c2", "output": "Done"},
                {"role": "user", "content": "Thanks"},
            ],
            "tools": [
                {"type": "function", "name": "shell", "parameters": {"type": "object"}},
                {"type": "custom", "name": "apply_patch", "description": "Patch files"},
                {"type": "web_search"},
                {"type": "local_shell"},
            ],
        }));
        assert!(r.validate().is_ok());
        let all = r.template_messages(&[]);
        assert_eq!(
            all[0],
            json!({"role": "system", "content": "You are Codex."})
        );
        assert_eq!(
            all[1],
            json!({"role": "system", "content": "Sandbox: read-only."}),
            "a developer message is a system message where it stands"
        );
        let m = &all[1..];
        assert_eq!(m[1], json!({"role": "user", "content": "List files"}));
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            json!({"cmd": "ls"})
        );
        assert_eq!(
            m[2]["thinking"], "think",
            "the call's reasoning stays with it"
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "a.txt"})
        );
        assert_eq!(
            m[4]["tool_calls"][0]["function"]["arguments"],
            json!({"input": "*** Begin Patch"})
        );
        assert_eq!(m[6], json!({"role": "user", "content": "Thanks"}));
        let tools = r.function_tools();
        assert_eq!(tools.len(), 2, "hosted tools are left out");
        assert_eq!(
            tools[1]["function"]["parameters"]["required"],
            json!(["input"])
        );
        assert_eq!(r.custom_tools(), ["apply_patch"]);
    }

    #[test]
    fn formats_and_choices_map_to_the_worker() {
        let r = req(
            json!({"input": "x", "tools": [{"type": "function", "name": "f"}],
            "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": false,
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}}}),
        );
        assert!(r.validate().is_ok());
        let spec = r.output_spec();
        assert_eq!(spec.tool_choice, WireToolChoice::Function("f".into()));
        assert!(!spec.parallel_tool_calls);
        assert!(matches!(
            spec.format,
            AnswerFormat::JsonSchema { strict: true, .. }
        ));
        assert!(req(json!({})).validate().is_err(), "input is required");
        assert!(req(json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}))
            .validate()
            .is_err());
        assert!(
            req(json!({"input": "x", "tool_choice": {"type": "function", "name": "nope"}}))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn the_store_keeps_the_most_recently_used() {
        let s = ResponseStore::new(2);
        s.insert("a", vec![json!(1)]);
        s.insert("b", vec![json!(2)]);
        assert!(s.get("a").is_some());
        s.insert("c", vec![json!(3)]);
        assert!(s.get("b").is_none(), "the least recently used went");
        assert_eq!(s.get("a"), Some(vec![json!(1)]));
        let r = req(json!({"input": "x", "previous_response_id": "zzz"}));
        let e = history(&s, &r).unwrap_err();
        assert_eq!(e.status().as_u16(), 404);
    }
}
