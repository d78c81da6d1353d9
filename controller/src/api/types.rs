//! OpenAI-compatible request and response bodies for `/v1/chat/completions`,
//! `/v1/completions` and `/v1/models`.
//!
//! Requests are lenient where OpenAI clients differ (unknown fields ignored, `null` treated as
//! absent, `repetition_penalty` accepted for `repeat_penalty`, `max_tokens: -1` as LM Studio's
//! "no limit") and strict where a silent misreading would surprise (`n` other than 1,
//! non-text content parts, out-of-range values): those are 400s naming the field.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::error::ApiError;

/// OpenAI allows 4 stop sequences; local clients send more (chat templates' end markers).
pub const MAX_STOP_SEQUENCES: usize = 16;
/// OpenAI's cap on `top_logprobs` in chat.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// OpenAI's cap on the integer `logprobs` of `/v1/completions`.
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;
/// OpenAI's `logprob` for a token the model gives no probability (instead of -inf,
/// which JSON cannot carry).
pub const MIN_LOGPROB: f32 = -9999.0;

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    /// Absent is allowed here: LM Studio answers with the loaded model; the router decides
    /// and answers `ApiError::missing_param("model")` if it cannot pick one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// 0 or -1 disables top-k, as in llama.cpp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// -1 means no limit (LM Studio's examples send it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    /// OpenAI's newer name; wins over `max_tokens` when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// A string or a list of strings; empty strings are dropped.
    #[serde(
        default,
        deserialize_with = "deserialize_stop",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// llama.cpp/LM Studio's multiplicative penalty; 1.0 disables it.
    #[serde(
        default,
        alias = "repetition_penalty",
        skip_serializing_if = "Option::is_none"
    )]
    pub repeat_penalty: Option<f32>,
    /// Token id (as a string, JSON keys are strings) to a bias in -100..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Only takes effect with `logprobs: true` (OpenAI refuses it otherwise; we ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// Only 1 is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// LM Studio: idle seconds before a JIT-loaded model is unloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
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
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: Some(MessageContent::Text(content.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
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

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// OpenAI's default here is 16; the router picks the default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(
        default,
        deserialize_with = "deserialize_stop",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(
        default,
        alias = "repetition_penalty",
        skip_serializing_if = "Option::is_none"
    )]
    pub repeat_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Here an integer: how many top alternatives to return per token (0..=5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Echo the prompt before the completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Only 1 is supported, like `n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
/// LangChain sends a one-element list of strings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// The one prompt of a request, after [`CompletionRequest::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptInput<'a> {
    Text(&'a str),
    Tokens(&'a [u32]),
}

impl Prompt {
    /// The single prompt, or `None` for a batch (refused by `validate`).
    pub fn single(&self) -> Option<PromptInput<'_>> {
        match self {
            Prompt::Text(s) => Some(PromptInput::Text(s)),
            Prompt::Texts(v) => match v.as_slice() {
                [one] => Some(PromptInput::Text(one)),
                _ => None,
            },
            Prompt::Tokens(t) => Some(PromptInput::Tokens(t)),
            Prompt::TokenLists(v) => match v.as_slice() {
                [one] => Some(PromptInput::Tokens(one)),
                _ => None,
            },
        }
    }

    fn batch_len(&self) -> usize {
        match self {
            Prompt::Text(_) | Prompt::Tokens(_) => 1,
            Prompt::Texts(v) => v.len(),
            Prompt::TokenLists(v) => v.len(),
        }
    }
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected a string, an array of strings, or an array of token ids";
        fn token(v: &Value) -> Option<u32> {
            v.as_u64().and_then(|t| u32::try_from(t).ok())
        }
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Prompt::Text(s)),
            Value::Array(items) => {
                // An empty list reads as a batch of none; `validate` answers for it.
                if items.iter().all(Value::is_string) {
                    return Ok(Prompt::Texts(
                        items
                            .into_iter()
                            .filter_map(|v| match v {
                                Value::String(s) => Some(s),
                                _ => None,
                            })
                            .collect(),
                    ));
                }
                if let Some(tokens) = items.iter().map(token).collect::<Option<Vec<_>>>() {
                    return Ok(Prompt::Tokens(tokens));
                }
                let lists = items
                    .iter()
                    .map(|v| v.as_array()?.iter().map(token).collect::<Option<Vec<_>>>())
                    .collect::<Option<Vec<_>>>();
                lists
                    .map(Prompt::TokenLists)
                    .ok_or_else(|| de::Error::custom(EXPECTED))
            }
            _ => Err(de::Error::custom(EXPECTED)),
        }
    }
}

/// `stop`: a string or a list of strings; `null` is absent, empty strings are dropped
/// (an empty stop sequence would match everywhere).
fn deserialize_stop<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct StopVisitor;
    impl<'de> Visitor<'de> for StopVisitor {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an array of strings")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(if v.is_empty() {
                Vec::new()
            } else {
                vec![v.to_string()]
            }))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                if !s.is_empty() {
                    out.push(s);
                }
            }
            Ok(Some(out))
        }
    }
    d.deserialize_any(StopVisitor)
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// The sampling fields both endpoints share, borrowed for one validation routine.
struct Sampling<'a> {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    min_p: Option<f32>,
    max_tokens: &'a [(&'static str, Option<i64>)],
    stop: &'a Option<Vec<String>>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repeat_penalty: Option<f32>,
    logit_bias: &'a Option<BTreeMap<String, f32>>,
    n: Option<u32>,
    ttl: Option<u64>,
}

fn check_range(param: &str, value: Option<f32>, min: f32, max: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(ApiError::invalid_param(
            param,
            format!("Invalid value for '{param}': {v} is not between {min} and {max}."),
        )),
        _ => Ok(()),
    }
}

impl Sampling<'_> {
    fn validate(&self) -> Result<(), ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("min_p", self.min_p, 0.0, 1.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if let Some(k) = self.top_k {
            if k < -1 {
                return Err(ApiError::invalid_param(
                    "top_k",
                    format!("Invalid value for 'top_k': {k}; use a positive number, or 0 or -1 to disable it."),
                ));
            }
        }
        for (param, value) in self.max_tokens {
            match value {
                Some(v) if (*v != -1 && *v < 1) || *v > i64::from(u32::MAX) => {
                    return Err(ApiError::invalid_param(
                        *param,
                        format!("Invalid value for '{param}': {v}; it must be at least 1 (or -1 for no limit)."),
                    ));
                }
                _ => {}
            }
        }
        if let Some(stop) = self.stop {
            if stop.len() > MAX_STOP_SEQUENCES {
                return Err(ApiError::invalid_param(
                    "stop",
                    format!(
                        "Invalid value for 'stop': {} sequences given, at most {MAX_STOP_SEQUENCES} are allowed.",
                        stop.len()
                    ),
                ));
            }
        }
        if let Some(p) = self.repeat_penalty {
            if p <= 0.0 {
                return Err(ApiError::invalid_param(
                    "repeat_penalty",
                    format!("Invalid value for 'repeat_penalty': {p}; it must be greater than 0 (1 disables it)."),
                ));
            }
        }
        if let Some(bias) = self.logit_bias {
            for (key, value) in bias {
                if key.parse::<u32>().is_err() {
                    return Err(ApiError::invalid_param(
                        "logit_bias",
                        format!("Invalid key in 'logit_bias': \"{key}\" is not a token id."),
                    ));
                }
                if !(-100.0..=100.0).contains(value) {
                    return Err(ApiError::invalid_param(
                        "logit_bias",
                        format!("Invalid value in 'logit_bias' for token {key}: {value} is not between -100 and 100."),
                    ));
                }
            }
        }
        check_n("n", self.n)?;
        if self.ttl == Some(0) {
            return Err(ApiError::invalid_param(
                "ttl",
                "Invalid value for 'ttl': it must be at least 1 second.",
            ));
        }
        Ok(())
    }
}

fn check_n(param: &str, n: Option<u32>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(v) => Err(ApiError::invalid_param(
            param,
            format!("Invalid value for '{param}': {v}; only {param}=1 is supported."),
        )),
    }
}

/// -1 or absent means no limit; `validate` has refused other values below 1.
fn token_limit(value: Option<i64>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0)
}

fn logit_bias_ids(bias: &Option<BTreeMap<String, f32>>) -> Vec<(u32, f32)> {
    bias.iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.parse().ok()?, *v)))
        .collect()
}

impl ChatCompletionRequest {
    fn sampling(&self) -> Sampling<'_> {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            max_tokens: &[],
            stop: &self.stop,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repeat_penalty: self.repeat_penalty,
            logit_bias: &self.logit_bias,
            n: self.n,
            ttl: self.ttl,
        }
    }

    /// Checks every range and rule serde cannot, naming the field at fault.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "Invalid value for 'messages': at least one message is required.",
            ));
        }
        let max_tokens = [
            ("max_tokens", self.max_tokens),
            ("max_completion_tokens", self.max_completion_tokens),
        ];
        Sampling {
            max_tokens: &max_tokens,
            ..self.sampling()
        }
        .validate()?;
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
        Ok(())
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether a streamed response ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The generation cap: `max_completion_tokens`, else `max_tokens`; `None` for no limit.
    pub fn max_new_tokens(&self) -> Option<u32> {
        match self.max_completion_tokens {
            Some(_) => token_limit(self.max_completion_tokens),
            None => token_limit(self.max_tokens),
        }
    }

    pub fn stop_sequences(&self) -> &[String] {
        self.stop.as_deref().unwrap_or_default()
    }

    /// `logit_bias` with parsed token ids (after `validate`, none is dropped).
    pub fn logit_bias_ids(&self) -> Vec<(u32, f32)> {
        logit_bias_ids(&self.logit_bias)
    }

    /// How many alternatives per token to report, or `None` when logprobs are off.
    pub fn logprobs_top_n(&self) -> Option<u32> {
        self.logprobs
            .unwrap_or(false)
            .then(|| self.top_logprobs.unwrap_or(0))
    }
}

impl CompletionRequest {
    /// Checks every range and rule serde cannot, naming the field at fault.
    pub fn validate(&self) -> Result<(), ApiError> {
        let batch = self.prompt.batch_len();
        if batch != 1 {
            return Err(ApiError::invalid_param(
                "prompt",
                format!("Invalid value for 'prompt': {batch} prompts given; exactly one prompt per request is supported."),
            ));
        }
        let max_tokens = [("max_tokens", self.max_tokens)];
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            max_tokens: &max_tokens,
            stop: &self.stop,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repeat_penalty: self.repeat_penalty,
            logit_bias: &self.logit_bias,
            n: self.n,
            ttl: self.ttl,
        }
        .validate()?;
        check_n("best_of", self.best_of)?;
        if let Some(k) = self.logprobs {
            if k > MAX_COMPLETION_LOGPROBS {
                return Err(ApiError::invalid_param(
                    "logprobs",
                    format!("Invalid value for 'logprobs': {k} is not between 0 and {MAX_COMPLETION_LOGPROBS}."),
                ));
            }
        }
        Ok(())
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// `None` for no limit or absent (the router applies its default).
    pub fn max_new_tokens(&self) -> Option<u32> {
        token_limit(self.max_tokens)
    }

    pub fn stop_sequences(&self) -> &[String] {
        self.stop.as_deref().unwrap_or_default()
    }

    pub fn logit_bias_ids(&self) -> Vec<(u32, f32)> {
        logit_bias_ids(&self.logit_bias)
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// OpenAI's report of prompt tokens served from the prompt cache.
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Usage::with_cached(prompt_tokens, completion_tokens, 0)
    }

    /// Counts where `cached_tokens` of the prompt came from the prompt cache.
    pub fn with_cached(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
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
            id: super::sse::chat_completion_id(),
            object: "chat.completion".to_string(),
            created: super::sse::unix_now(),
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

impl AssistantMessage {
    pub fn text(content: impl Into<String>) -> Self {
        AssistantMessage {
            role: Role::Assistant,
            content: Some(content.into()),
            tool_calls: None,
        }
    }

    pub fn tool_calls(content: Option<String>, calls: Vec<ToolCall>) -> Self {
        AssistantMessage {
            role: Role::Assistant,
            content,
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

/// -inf and NaN would serialize as `null`; OpenAI reports such tokens as -9999.
pub fn finite_logprob(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        MIN_LOGPROB
    }
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

/// What every chunk of one stream repeats: id, creation time, model. Its methods build the
/// chunks in OpenAI's order (role, content..., finish, optional usage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl StreamMeta {
    /// For `/v1/chat/completions`: a fresh `chatcmpl-` id.
    pub fn chat(model: impl Into<String>) -> Self {
        StreamMeta {
            id: super::sse::chat_completion_id(),
            created: super::sse::unix_now(),
            model: model.into(),
        }
    }

    /// For `/v1/completions`: a fresh `cmpl-` id.
    pub fn completion(model: impl Into<String>) -> Self {
        StreamMeta {
            id: super::sse::completion_id(),
            created: super::sse::unix_now(),
            model: model.into(),
        }
    }

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
                tool_calls: None,
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

    /// A streamed `/v1/completions` chunk (same object as the non-streamed response).
    pub fn text_chunk(
        &self,
        text: impl Into<String>,
        logprobs: Option<CompletionLogprobs>,
        finish_reason: Option<FinishReason>,
    ) -> CompletionChunk {
        Completion {
            id: self.id.clone(),
            object: "text_completion".to_string(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices: vec![CompletionChoice {
                text: text.into(),
                index: 0,
                logprobs,
                finish_reason,
            }],
            usage: None,
        }
    }

    /// The usage chunk of a streamed `/v1/completions`.
    pub fn completion_usage_chunk(&self, usage: Usage) -> CompletionChunk {
        Completion {
            id: self.id.clone(),
            object: "text_completion".to_string(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices: Vec::new(),
            usage: Some(usage),
        }
    }
}

/// `/v1/completions` response, streamed or not (OpenAI uses `text_completion` for both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<CompletionChoice>,
    /// Always set on the non-streamed response; only on the usage chunk of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A streamed `/v1/completions` event has the same shape as the full response.
pub type CompletionChunk = Completion;

impl Completion {
    /// A one-choice response with a fresh `cmpl-` id.
    pub fn new(
        model: impl Into<String>,
        text: impl Into<String>,
        finish_reason: FinishReason,
        logprobs: Option<CompletionLogprobs>,
        usage: Usage,
    ) -> Self {
        let meta = StreamMeta::completion(model);
        Completion {
            usage: Some(usage),
            ..meta.text_chunk(text, logprobs, Some(finish_reason))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub text: String,
    pub index: u32,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

/// The legacy logprobs shape of `/v1/completions`: parallel lists, one entry per token.
/// `token_logprobs`/`top_logprobs` entries are `null` for the first echoed prompt token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    /// Character offset of each token in the returned text.
    pub text_offset: Vec<u32>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

impl ModelList {
    pub fn new(data: Vec<ModelObject>) -> Self {
        ModelList {
            object: "list".to_string(),
            data,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

impl ModelObject {
    pub fn new(id: impl Into<String>, created: u64, owned_by: impl Into<String>) -> Self {
        ModelObject {
            id: id.into(),
            object: "model".to_string(),
            created,
            owned_by: owned_by.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::parse_json;
    use serde_json::json;

    fn chat(v: Value) -> ChatCompletionRequest {
        parse_json(v.to_string().as_bytes()).unwrap()
    }

    fn base() -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut v = base();
        v[field] = value;
        v
    }

    fn param_of(err: ApiError) -> String {
        err.param().unwrap_or("<none>").to_string()
    }

    #[test]
    fn parses_typical_openai_sdk_request_ignoring_unknown_fields() {
        let req = chat(json!({
            "model": "qwen2.5-7b-instruct",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello", "name": "alice"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
            ],
            "temperature": 0.7, "top_p": 0.9, "max_tokens": 256, "stream": true,
            "stream_options": {"include_usage": true, "future_option": 1},
            "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "logit_bias": {"50256": -100}, "logprobs": true, "top_logprobs": 3, "n": 1,
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "get_weather",
                       "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "auto", "parallel_tool_calls": false, "user": "u1",
            "reasoning_effort": "low", "metadata": {"a": "b"}, "store": false,
            "extra_body_thing": [1, 2, 3]
        }));
        req.validate().unwrap();
        assert_eq!(req.model.as_deref(), Some("qwen2.5-7b-instruct"));
        assert_eq!(req.messages.len(), 4);
        assert_eq!(req.messages[0].role, Role::System);
        assert_eq!(req.messages[1].name.as_deref(), Some("alice"));
        assert_eq!(req.messages[2].content, None);
        let call = &req.messages[2].tool_calls.as_ref().unwrap()[0];
        assert_eq!(call.function.name, "get_weather");
        assert_eq!(call.function.arguments, "{\"city\":\"Oslo\"}");
        assert_eq!(req.messages[3].tool_call_id.as_deref(), Some("call_1"));
        assert!(req.is_stream());
        assert!(req.include_usage());
        assert_eq!(req.max_new_tokens(), Some(256));
        assert_eq!(req.logit_bias_ids(), vec![(50256, -100.0)]);
        assert_eq!(req.logprobs_top_n(), Some(3));
        assert_eq!(req.response_format, Some(ResponseFormat::JsonObject));
        assert_eq!(req.tool_choice, Some(ToolChoice::Auto));
    }

    #[test]
    fn minimal_request_and_nulls_are_absent() {
        let req = chat(json!({"messages": [{"role": "user", "content": "x"}],
                              "temperature": null, "stop": null, "stream": null}));
        req.validate().unwrap();
        assert_eq!(req.model, None);
        assert!(!req.is_stream());
        assert!(!req.include_usage());
        assert_eq!(req.max_new_tokens(), None);
        assert!(req.stop_sequences().is_empty());
        assert_eq!(req.logprobs_top_n(), None);
    }

    #[test]
    fn content_parts_are_joined() {
        let req = chat(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "first"},
            {"type": "text", "text": "second", "cache_control": {"type": "ephemeral"}}
        ]}]}));
        assert_eq!(req.messages[0].text(), "first\nsecond");
        let req = chat(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "only"}]}]}));
        assert_eq!(req.messages[0].text(), "only");
        let req = chat(json!({"messages": [{"role": "user", "content": "plain"}]}));
        assert_eq!(req.messages[0].text(), "plain");
    }

    #[test]
    fn non_text_content_part_is_refused_with_clear_message() {
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:..."}}]}]});
        let err = parse_json::<ChatCompletionRequest>(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.status().as_u16(), 400);
        assert_eq!(param_of(err.clone()), "messages[0].content[1]");
        assert!(
            err.to_string().contains("\"image_url\" is not supported"),
            "{err}"
        );
    }

    #[test]
    fn stop_as_string_and_list() {
        assert_eq!(
            chat(with("stop", json!("\n\n"))).stop_sequences(),
            ["\n\n".to_string()]
        );
        assert_eq!(
            chat(with("stop", json!(["a", "", "b"]))).stop_sequences(),
            ["a".to_string(), "b".to_string()]
        );
        assert!(chat(with("stop", json!(""))).stop_sequences().is_empty());
        let err =
            parse_json::<ChatCompletionRequest>(with("stop", json!(3)).to_string().as_bytes())
                .unwrap_err();
        assert_eq!(param_of(err), "stop");
        let too_many: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
        assert_eq!(
            param_of(chat(with("stop", json!(too_many))).validate().unwrap_err()),
            "stop"
        );
    }

    #[test]
    fn repetition_penalty_alias_and_max_tokens_rules() {
        let req = chat(with("repetition_penalty", json!(1.1)));
        assert_eq!(req.repeat_penalty, Some(1.1));
        let req = chat(with("max_tokens", json!(-1)));
        req.validate().unwrap();
        assert_eq!(req.max_new_tokens(), None);
        let mut v = with("max_tokens", json!(10));
        v["max_completion_tokens"] = json!(20);
        assert_eq!(chat(v).max_new_tokens(), Some(20));
    }

    #[test]
    fn each_validation_failure_names_its_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("temperature", json!(2.5), "temperature"),
            ("temperature", json!(-0.1), "temperature"),
            ("top_p", json!(1.5), "top_p"),
            ("min_p", json!(-1), "min_p"),
            ("top_k", json!(-5), "top_k"),
            ("presence_penalty", json!(3), "presence_penalty"),
            ("frequency_penalty", json!(-2.5), "frequency_penalty"),
            ("repeat_penalty", json!(0), "repeat_penalty"),
            ("max_tokens", json!(0), "max_tokens"),
            ("max_tokens", json!(-7), "max_tokens"),
            ("max_completion_tokens", json!(0), "max_completion_tokens"),
            ("logit_bias", json!({"abc": 1}), "logit_bias"),
            ("logit_bias", json!({"12": 101}), "logit_bias"),
            ("top_logprobs", json!(21), "top_logprobs"),
            ("n", json!(2), "n"),
            ("n", json!(0), "n"),
            ("ttl", json!(0), "ttl"),
            ("messages", json!([]), "messages"),
            ("tool_choice", json!("required"), "tool_choice"),
            (
                "tool_choice",
                json!({"type": "function", "function": {"name": "nope"}}),
                "tool_choice",
            ),
            (
                "tools",
                json!([{"type": "retrieval", "function": {"name": "x"}}]),
                "tools[0].type",
            ),
            (
                "tools",
                json!([{"type": "function", "function": {"name": ""}}]),
                "tools[0].function.name",
            ),
        ];
        for (field, value, param) in cases {
            let req = chat(with(field, value.clone()));
            let err = req
                .validate()
                .expect_err(&format!("{field}={value} should fail"));
            assert_eq!(err.status().as_u16(), 400, "{field}={value}");
            assert_eq!(err.error_type(), "invalid_request_error");
            assert_eq!(param_of(err.clone()), param, "{field}={value}: {err}");
            assert!(err.to_string().contains(param), "{err}");
        }
    }

    #[test]
    fn type_errors_name_their_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("temperature", json!("hot"), "temperature"),
            ("n", json!(-1), "n"),
            ("tool_choice", json!("sometimes"), "tool_choice"),
            (
                "response_format",
                json!({"type": "xml"}),
                "response_format.type",
            ),
            ("logprobs", json!(5), "logprobs"),
        ];
        for (field, value, param) in cases {
            let err =
                parse_json::<ChatCompletionRequest>(with(field, value).to_string().as_bytes())
                    .unwrap_err();
            assert_eq!(param_of(err), param, "{field}");
        }
    }

    #[test]
    fn tool_choice_and_response_format_round_trip() {
        let named = json!({"type": "function", "function": {"name": "f"}});
        let tc: ToolChoice = serde_json::from_value(named.clone()).unwrap();
        assert_eq!(tc, ToolChoice::Function { name: "f".into() });
        assert_eq!(serde_json::to_value(&tc).unwrap(), named);
        assert_eq!(
            serde_json::to_value(ToolChoice::Required).unwrap(),
            json!("required")
        );
        let rf: ResponseFormat = serde_json::from_value(json!({"type": "json_schema",
            "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": true}}))
        .unwrap();
        match rf {
            ResponseFormat::JsonSchema { json_schema } => {
                assert_eq!(json_schema.schema, Some(json!({"type": "object"})));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tool_call_arguments_object_is_reencoded() {
        let call: ToolCall = serde_json::from_value(json!(
            {"function": {"name": "f", "arguments": {"a": 1}}}))
        .unwrap();
        assert_eq!(call.function.arguments, "{\"a\":1}");
        assert_eq!(call.kind, "function");
    }

    fn completion(v: Value) -> CompletionRequest {
        parse_json(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn completion_prompt_shapes() {
        let req = completion(json!({"model": "m", "prompt": "Once", "logprobs": 2, "echo": true}));
        req.validate().unwrap();
        assert_eq!(req.prompt.single(), Some(PromptInput::Text("Once")));
        let req = completion(json!({"prompt": ["Once"]}));
        req.validate().unwrap();
        assert_eq!(req.prompt.single(), Some(PromptInput::Text("Once")));
        let req = completion(json!({"prompt": [1, 2, 3]}));
        assert_eq!(req.prompt.single(), Some(PromptInput::Tokens(&[1, 2, 3])));
        let req = completion(json!({"prompt": [[4, 5]]}));
        assert_eq!(req.prompt.single(), Some(PromptInput::Tokens(&[4, 5])));
        let req = completion(json!({"prompt": ["a", "b"]}));
        assert_eq!(param_of(req.validate().unwrap_err()), "prompt");
        let req = completion(json!({"prompt": []}));
        assert_eq!(param_of(req.validate().unwrap_err()), "prompt");
        let err = parse_json::<CompletionRequest>(br#"{"prompt": [1, "a"]}"#).unwrap_err();
        assert_eq!(param_of(err), "prompt");
        let err = parse_json::<CompletionRequest>(br#"{"model": "m"}"#).unwrap_err();
        assert_eq!(param_of(err), "prompt");
    }

    #[test]
    fn completion_validation_names_fields() {
        let cases: Vec<(&str, Value)> = vec![
            ("logprobs", json!(6)),
            ("best_of", json!(3)),
            ("n", json!(4)),
            ("temperature", json!(9)),
            ("max_tokens", json!(0)),
        ];
        for (field, value) in cases {
            let mut v = json!({"prompt": "p"});
            v[field] = value;
            let err = completion(v).validate().unwrap_err();
            assert_eq!(param_of(err), field);
        }
        let req = completion(json!({"prompt": "p", "max_tokens": 5, "stop": "x",
                                    "repetition_penalty": 1.2, "stream": true,
                                    "stream_options": {"include_usage": true}}));
        req.validate().unwrap();
        assert_eq!(req.max_new_tokens(), Some(5));
        assert_eq!(req.stop_sequences(), ["x".to_string()]);
        assert!(req.is_stream() && req.include_usage());
    }

    #[test]
    fn chat_completion_serializes_openai_shape() {
        let resp = ChatCompletion::new(
            "m",
            AssistantMessage::text("Hello!"),
            FinishReason::Stop,
            None,
            Usage::new(5, 2),
        );
        let v = serde_json::to_value(&resp).unwrap();
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                    "finish_reason": "stop", "logprobs": null}])
        );
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                   "prompt_tokens_details": {"cached_tokens": 0}})
        );
        assert!(v.get("system_fingerprint").is_none());

        let calls = vec![ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "f".into(),
                arguments: "{}".into(),
            },
        }];
        let resp = ChatCompletion::new(
            "m",
            AssistantMessage::tool_calls(None, calls),
            FinishReason::ToolCalls,
            None,
            Usage::new(1, 1),
        );
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0],
            json!({"id": "call_1", "type": "function",
                   "function": {"name": "f", "arguments": "{}"}})
        );
    }

    #[test]
    fn chunks_keep_null_finish_reason_and_omit_usage() {
        let meta = StreamMeta::chat("m");
        let v = serde_json::to_value(meta.role_chunk()).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        let choice = v["choices"][0].as_object().unwrap();
        assert_eq!(choice["finish_reason"], Value::Null);
        assert!(choice.contains_key("finish_reason"));
        assert!(choice.contains_key("logprobs"));
        assert_eq!(choice["delta"]["role"], "assistant");
        assert!(v.get("usage").is_none());

        let v = serde_json::to_value(meta.content_chunk("Hi", None)).unwrap();
        assert_eq!(v["choices"][0]["delta"], json!({"content": "Hi"}));
        assert!(v["choices"][0]
            .as_object()
            .unwrap()
            .contains_key("finish_reason"));

        let v = serde_json::to_value(meta.finish_chunk(FinishReason::Length)).unwrap();
        assert_eq!(v["choices"][0]["delta"], json!({}));
        assert_eq!(v["choices"][0]["finish_reason"], "length");

        let v = serde_json::to_value(meta.usage_chunk(Usage::new(3, 4))).unwrap();
        assert_eq!(v["choices"], json!([]));
        assert_eq!(v["usage"]["total_tokens"], 7);
        assert_eq!(v["id"], meta.id.as_str());
    }

    #[test]
    fn tool_call_deltas_follow_openai_stream_shape() {
        let meta = StreamMeta::chat("m");
        let v = serde_json::to_value(
            meta.tool_call_chunk(vec![ToolCallDelta::start(0, "call_9", "get")]),
        )
        .unwrap();
        assert_eq!(
            v["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                   "function": {"name": "get", "arguments": ""}}]})
        );
        let v =
            serde_json::to_value(meta.tool_call_chunk(vec![ToolCallDelta::arguments(0, "{\"a\"")]))
                .unwrap();
        assert_eq!(
            v["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]})
        );
    }

    #[test]
    fn completion_response_and_chunk_shapes() {
        let mut top = BTreeMap::new();
        top.insert(" world".to_string(), -0.5);
        let lp = CompletionLogprobs {
            tokens: vec![" world".into()],
            token_logprobs: vec![Some(-0.5)],
            top_logprobs: vec![Some(top)],
            text_offset: vec![5],
        };
        let resp = Completion::new(
            "m",
            " world",
            FinishReason::Stop,
            Some(lp),
            Usage::new(1, 1),
        );
        let v = serde_json::to_value(&resp).unwrap();
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(v["object"], "text_completion");
        assert_eq!(
            v["choices"][0],
            json!({"text": " world", "index": 0, "finish_reason": "stop",
                   "logprobs": {"tokens": [" world"], "token_logprobs": [-0.5],
                                "top_logprobs": [{" world": -0.5}], "text_offset": [5]}})
        );
        assert_eq!(v["usage"]["total_tokens"], 2);

        let meta = StreamMeta::completion("m");
        let v = serde_json::to_value(meta.text_chunk("x", None, None)).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        assert!(v.get("usage").is_none());
    }

    #[test]
    fn chat_logprobs_shape_and_infinite_logprob() {
        let lp = ChatLogprobs {
            content: vec![TokenLogprob::new(
                "Hi",
                b"Hi".to_vec(),
                f32::NEG_INFINITY,
                vec![TopLogprob::new("Hi", b"Hi".to_vec(), -0.25)],
            )],
        };
        let v = serde_json::to_value(&lp).unwrap();
        assert_eq!(
            v,
            json!({"content": [{"token": "Hi", "logprob": -9999.0, "bytes": [72, 105],
                   "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}]}]})
        );
    }

    #[test]
    fn model_list_shape() {
        let list = ModelList::new(vec![ModelObject::new("qwen", 1_700_000_000, "opta-lmx")]);
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            json!({"object": "list", "data": [{"id": "qwen", "object": "model",
                   "created": 1_700_000_000u64, "owned_by": "opta-lmx"}]})
        );
    }
}
