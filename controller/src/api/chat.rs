//! OpenAI's chat completions: `POST /v1/chat/completions` (and LM Studio's `/api/v0` twin),
//! the request, the response, and the streamed chunks.
//!
//! Requests are lenient where OpenAI clients differ (unknown fields ignored, `null` treated as
//! absent, `max_tokens: -1` as LM Studio's "no limit") and strict where a silent misreading
//! would surprise (`n` other than 1, non-text content parts, out-of-range values): those are
//! 400s naming the field. The sampling fields are [`super::sampling::SamplingFields`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use opta_lmx_shared::protocol::{AnswerFormat, OutputSpec, ToolChoice as WireToolChoice};

use super::common::{finite_logprob, FinishReason, StreamMeta, Usage};
use super::error::ApiError;
use super::sampling::{check_token_limit, token_limit};

/// OpenAI's cap on `top_logprobs` in chat.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessage>,
    /// OpenAI's newer name for `max_tokens`; wins over it when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Only takes effect with `logprobs: true` (OpenAI refuses it otherwise; we ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Extra chat-template variables (vLLM's and LM Studio's field), e.g.
    /// `{"enable_thinking": false}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    /// OpenAI's reasoning effort; templates that know it (gpt-oss) read `reasoning_effort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    /// OpenAI's newer name for `system` (o1 and later); templates treat it as system.
    Developer,
    User,
    Assistant,
    Tool,
    /// Deprecated OpenAI function-result role; still sent by old clients.
    Function,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    /// `null` or absent for an assistant turn that only calls tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An earlier assistant turn's reasoning, sent back (as this server answers it, in either
    /// field): templates that keep it (gpt-oss before a tool call, Qwen3) read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: Some(MessageContent::Text(content.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            reasoning_content: None,
            reasoning: None,
        }
    }

    /// The message's text: a string as is, text parts joined with "\n" (as vLLM does),
    /// an absent content as "".
    pub fn text(&self) -> Cow<'_, str> {
        match &self.content {
            None => Cow::Borrowed(""),
            Some(content) => content.text(),
        }
    }
}

/// `content` as a plain string or as an array of parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            MessageContent::Text(s) => Cow::Borrowed(s),
            MessageContent::Parts(parts) => match parts.as_slice() {
                [one] => Cow::Borrowed(&one.text),
                _ => Cow::Owned(
                    parts
                        .iter()
                        .map(|p| p.text.as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
            },
        }
    }
}

// Hand-written so a wrong type reads "expected a string or an array of content parts"
// instead of serde's "did not match any variant of untagged enum".
impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = MessageContent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(part) = seq.next_element::<ContentPart>()? {
                    parts.push(part);
                }
                Ok(MessageContent::Parts(parts))
            }
        }
        deserializer.deserialize_any(ContentVisitor)
    }
}

/// One content part. Only text is accepted: this server runs text-only models, and
/// dropping an image silently would answer a different question than the one asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawContentPart")]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

#[derive(Deserialize)]
struct RawContentPart {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
}

impl TryFrom<RawContentPart> for ContentPart {
    type Error = String;
    fn try_from(raw: RawContentPart) -> Result<Self, String> {
        match (raw.kind.as_deref(), raw.text) {
            // `input_text` is the Responses API's name for the same thing.
            (Some("text") | Some("input_text"), Some(text)) => Ok(ContentPart {
                kind: "text".to_string(),
                text,
            }),
            (Some("text") | Some("input_text"), None) => {
                Err("a content part of type \"text\" needs a \"text\" string".to_string())
            }
            (Some(other), _) => Err(format!(
                "content part type \"{other}\" is not supported; this server accepts only \
                 \"text\" parts"
            )),
            (None, _) => Err("a content part needs a \"type\"".to_string()),
        }
    }
}

/// A tool call: in an assistant message of the request, or in a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Some clients omit the id when replaying history.
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON-encoded string as OpenAI sends it; an object (Ollama-style clients) is
    /// re-encoded to a string.
    #[serde(default, deserialize_with = "deserialize_arguments")]
    pub arguments: String,
}

fn function_type() -> String {
    "function".to_string()
}

fn deserialize_arguments<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionDefinition,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema object, passed to the chat template as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`: `"none" | "auto" | "required"` or `{"type":"function","function":{"name"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function { name: String },
}

impl Serialize for ToolChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ToolChoice::None => s.serialize_str("none"),
            ToolChoice::Auto => s.serialize_str("auto"),
            ToolChoice::Required => s.serialize_str("required"),
            ToolChoice::Function { name } => serde_json::json!({
                "type": "function", "function": {"name": name}
            })
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected \"none\", \"auto\", \"required\" or \
                                {\"type\":\"function\",\"function\":{\"name\":...}}";
        match Value::deserialize(d)? {
            Value::String(s) => match s.as_str() {
                "none" => Ok(ToolChoice::None),
                "auto" => Ok(ToolChoice::Auto),
                "required" => Ok(ToolChoice::Required),
                other => Err(de::Error::custom(format!(
                    "unknown tool_choice \"{other}\", {EXPECTED}"
                ))),
            },
            Value::Object(obj) => {
                let kind = obj
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("function");
                let name = obj
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str);
                match (kind, name) {
                    ("function", Some(name)) => Ok(ToolChoice::Function {
                        name: name.to_string(),
                    }),
                    _ => Err(de::Error::custom(EXPECTED)),
                }
            }
            _ => Err(de::Error::custom(EXPECTED)),
        }
    }
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    /// OpenAI requires a name; local clients often leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl super::Validate for ChatCompletionRequest {
    fn validate(&self) -> Result<(), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "Invalid value for 'messages': at least one message is required.",
            ));
        }
        check_token_limit("max_completion_tokens", self.max_completion_tokens)?;
        if let Some(k) = self.top_logprobs {
            if k > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    format!("Invalid value for 'top_logprobs': {k} is not between 0 and {MAX_TOP_LOGPROBS}."),
                ));
            }
        }
        let tools = self.tools.as_deref().unwrap_or_default();
        for (i, tool) in tools.iter().enumerate() {
            if tool.kind != "function" {
                return Err(ApiError::invalid_param(
                    format!("tools[{i}].type"),
                    format!("Invalid value for 'tools[{i}].type': \"{}\"; only \"function\" tools are supported.", tool.kind),
                ));
            }
            if tool.function.name.is_empty() {
                return Err(ApiError::invalid_param(
                    format!("tools[{i}].function.name"),
                    format!("Invalid value for 'tools[{i}].function.name': the name is empty."),
                ));
            }
        }
        match &self.tool_choice {
            Some(ToolChoice::Required) if tools.is_empty() => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "Invalid value for 'tool_choice': \"required\" needs at least one tool in 'tools'.",
                ));
            }
            Some(ToolChoice::Function { name })
                if !tools.iter().any(|t| &t.function.name == name) =>
            {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!(
                        "Invalid value for 'tool_choice': no tool named \"{name}\" in 'tools'."
                    ),
                ));
            }
            _ => {}
        }
        if let Some(ResponseFormat::JsonSchema { json_schema }) = &self.response_format {
            match &json_schema.schema {
                Some(Value::Object(_)) | Some(Value::Bool(true)) => {}
                _ => {
                    return Err(ApiError::invalid_param(
                        "response_format.json_schema.schema",
                        "Invalid value for 'response_format.json_schema.schema': a JSON Schema object is required.",
                    ))
                }
            }
        }
        Ok(())
    }
}

impl ChatCompletionRequest {
    /// The answer's shape for the worker: format, tool choice and call limit.
    pub fn output_spec(&self) -> OutputSpec {
        let has_tools = self.tools.as_ref().is_some_and(|t| !t.is_empty());
        let format = match &self.response_format {
            None | Some(ResponseFormat::Text) => AnswerFormat::Text,
            Some(ResponseFormat::JsonObject) => AnswerFormat::JsonObject,
            Some(ResponseFormat::JsonSchema { json_schema }) => AnswerFormat::JsonSchema {
                schema_json: json_schema
                    .schema
                    .as_ref()
                    .map_or_else(|| "{}".to_string(), Value::to_string),
                strict: json_schema.strict.unwrap_or(false),
            },
        };
        let tool_choice = match (&self.tool_choice, has_tools) {
            (_, false) | (Some(ToolChoice::None), _) => WireToolChoice::None,
            (None | Some(ToolChoice::Auto), true) => WireToolChoice::Auto,
            (Some(ToolChoice::Required), true) => WireToolChoice::Required,
            (Some(ToolChoice::Function { name }), true) => WireToolChoice::Function(name.clone()),
        };
        OutputSpec {
            format,
            tool_choice,
            parallel_tool_calls: self.parallel_tool_calls.unwrap_or(true),
        }
    }

    /// Variables for the chat template beyond messages and tools, as JSON text.
    pub fn template_kwargs(&self) -> Option<String> {
        let mut kwargs = self.chat_template_kwargs.clone().unwrap_or_default();
        if let Some(effort) = &self.reasoning_effort {
            kwargs
                .entry("reasoning_effort")
                .or_insert_with(|| Value::String(effort.clone()));
        }
        (!kwargs.is_empty()).then(|| Value::Object(kwargs).to_string())
    }
    /// How many alternatives per token to report, or `None` when logprobs are off.
    pub fn logprobs_top_n(&self) -> Option<u32> {
        self.logprobs
            .unwrap_or(false)
            .then(|| self.top_logprobs.unwrap_or(0))
    }
}

impl super::Generation<ChatCompletionRequest> {
    /// The generation cap: `max_completion_tokens`, else `max_tokens`; `None` for no limit.
    pub fn max_new_tokens(&self) -> Option<u32> {
        match self.body.max_completion_tokens {
            Some(_) => token_limit(self.body.max_completion_tokens),
            None => token_limit(self.shared.max_tokens),
        }
    }
}

/// Non-streamed `/v1/chat/completions` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

impl ChatCompletion {
    /// A one-choice response with a fresh `chatcmpl-` id.
    pub fn new(
        model: impl Into<String>,
        message: AssistantMessage,
        finish_reason: FinishReason,
        logprobs: Option<ChatLogprobs>,
        usage: Usage,
    ) -> Self {
        ChatCompletion {
            id: crate::api::sse::chat_completion_id(),
            object: "chat.completion".to_string(),
            created: crate::api::sse::unix_now(),
            model: model.into(),
            choices: vec![ChatChoice {
                index: 0,
                message,
                finish_reason: Some(finish_reason),
                logprobs,
            }],
            usage,
            system_fingerprint: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    /// OpenAI sends the key even when null.
    pub finish_reason: Option<FinishReason>,
    pub logprobs: Option<ChatLogprobs>,
}

/// The `message` of a chat choice. `content` stays present as `null` when the model only
/// called tools, as OpenAI does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: Role,
    pub content: Option<String>,
    /// The model's reasoning, apart from the answer (DeepSeek's and LM Studio's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The same text under the name OpenRouter, Ollama and Open WebUI read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

impl AssistantMessage {
    pub fn text(content: impl Into<String>) -> Self {
        AssistantMessage {
            role: Role::Assistant,
            content: Some(content.into()),
            reasoning_content: None,
            reasoning: None,
            tool_calls: None,
        }
    }

    pub fn tool_calls(content: Option<String>, calls: Vec<ToolCall>) -> Self {
        AssistantMessage {
            role: Role::Assistant,
            content,
            reasoning_content: None,
            reasoning: None,
            tool_calls: Some(calls),
        }
    }
}

/// Chat logprobs: `{"content": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes: lets clients rebuild characters split across tokens.
    pub bytes: Option<Vec<u8>>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

impl TopLogprob {
    /// `bytes` from `token_bytes` (the raw token, which may be a partial UTF-8 sequence).
    pub fn new(token: impl Into<String>, token_bytes: Vec<u8>, logprob: f32) -> Self {
        TopLogprob {
            token: token.into(),
            logprob: finite_logprob(logprob),
            bytes: Some(token_bytes),
        }
    }
}

impl TokenLogprob {
    pub fn new(
        token: impl Into<String>,
        token_bytes: Vec<u8>,
        logprob: f32,
        top_logprobs: Vec<TopLogprob>,
    ) -> Self {
        TokenLogprob {
            token: token.into(),
            logprob: finite_logprob(logprob),
            bytes: Some(token_bytes),
            top_logprobs,
        }
    }
}

/// Streamed chat response, one per SSE event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChunkChoice>,
    /// Only on the final usage chunk (`stream_options.include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    /// Serialized as `null` until the last chunk: the OpenAI SDK expects the key.
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

/// What a chunk adds. Absent fields are omitted; the final chunk's delta is `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Reasoning text, streamed apart from the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The same text under its other common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A streamed tool call: the first delta for a call carries `id`, `type` and
/// `function.name` with empty `arguments`; later ones carry only `index` and argument text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl ToolCallDelta {
    /// The first delta of call `index`.
    pub fn start(index: u32, id: impl Into<String>, name: impl Into<String>) -> Self {
        ToolCallDelta {
            index,
            id: Some(id.into()),
            kind: Some("function".to_string()),
            function: Some(FunctionCallDelta {
                name: Some(name.into()),
                arguments: Some(String::new()),
            }),
        }
    }

    /// A fragment of call `index`'s arguments.
    pub fn arguments(index: u32, fragment: impl Into<String>) -> Self {
        ToolCallDelta {
            index,
            id: None,
            kind: None,
            function: Some(FunctionCallDelta {
                name: None,
                arguments: Some(fragment.into()),
            }),
        }
    }
}

impl StreamMeta {
    fn chat_chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_string(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        }
    }

    fn chat_delta(
        &self,
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<FinishReason>,
    ) -> ChatCompletionChunk {
        self.chat_chunk(
            vec![ChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason,
            }],
            None,
        )
    }

    /// First chunk: `delta: {"role":"assistant"}`.
    pub fn role_chunk(&self) -> ChatCompletionChunk {
        self.chat_delta(
            Delta {
                role: Some(Role::Assistant),
                content: Some(String::new()),
                ..Delta::default()
            },
            None,
            None,
        )
    }

    pub fn content_chunk(
        &self,
        text: impl Into<String>,
        logprobs: Option<ChatLogprobs>,
    ) -> ChatCompletionChunk {
        self.chat_delta(
            Delta {
                content: Some(text.into()),
                ..Delta::default()
            },
            logprobs,
            None,
        )
    }

    pub fn reasoning_chunk(&self, text: impl Into<String>) -> ChatCompletionChunk {
        let text = text.into();
        self.chat_delta(
            Delta {
                reasoning_content: Some(text.clone()),
                reasoning: Some(text),
                ..Delta::default()
            },
            None,
            None,
        )
    }

    pub fn tool_call_chunk(&self, calls: Vec<ToolCallDelta>) -> ChatCompletionChunk {
        self.chat_delta(
            Delta {
                tool_calls: Some(calls),
                ..Delta::default()
            },
            None,
            None,
        )
    }

    /// Empty delta with the finish reason.
    pub fn finish_chunk(&self, reason: FinishReason) -> ChatCompletionChunk {
        self.chat_delta(Delta::default(), None, Some(reason))
    }

    /// The extra chunk before `[DONE]` with `stream_options.include_usage`: no choices.
    pub fn usage_chunk(&self, usage: Usage) -> ChatCompletionChunk {
        self.chat_chunk(Vec::new(), Some(usage))
    }
}
