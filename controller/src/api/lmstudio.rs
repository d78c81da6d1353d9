//! LM Studio's native REST API (`/api/v1`): the body of `POST /api/v1/chat`, and LM Studio's
//! error shape, `{"error": {"type", "message", "code"?, "param"?}}`, which every `/api/v1`
//! route answers in (the route layer rewrites the one `ApiError` body into it).

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::sampling::{check_token_limit, token_limit};
use super::{expect_json, Validate};
use crate::capabilities::REASONING_VALUES;

/// `POST /api/v1/chat`'s own fields; `model`, `stream` and the sampling fields are the
/// shared ones ([`super::Generation`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LmsChatRequest {
    /// A string, or items `{type: "message" | "text", content}` (LM Studio documents the
    /// first and its example sends the second) and `{type: "image", data_url}`.
    pub input: Option<Value>,
    pub system_prompt: Option<String>,
    pub max_output_tokens: Option<i64>,
    /// `off`, `low`, `medium`, `high` or `on`; checked against the model once it is known.
    pub reasoning: Option<String>,
    /// Accepted and not applied: the worker loads a model at its own context length.
    pub context_length: Option<i64>,
    /// Keep the chat for `previous_response_id` (LM Studio's default: true).
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    /// MCP servers and plugins: not served yet (a 400 rather than a chat without them).
    pub integrations: Option<Value>,
}

impl Validate for LmsChatRequest {
    fn validate(&self) -> Result<(), ApiError> {
        match &self.input {
            None | Some(Value::Null) => return Err(ApiError::missing_param("input")),
            Some(Value::String(_)) => {}
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(ApiError::invalid_param(
                    "input",
                    "Invalid value for 'input': the list is empty.",
                ))
            }
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    check_item(i, item)?;
                }
            }
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "input",
                    "Invalid type for 'input': expected a string or an array of input items.",
                ))
            }
        }
        check_token_limit("max_output_tokens", self.max_output_tokens)?;
        if let Some(r) = self
            .reasoning
            .as_deref()
            .filter(|r| !REASONING_VALUES.contains(r))
        {
            return Err(ApiError::invalid_param(
                "reasoning",
                format!(
                    "Invalid value for 'reasoning': \"{r}\"; expected one of {}.",
                    REASONING_VALUES.join(", ")
                ),
            ));
        }
        if let Some(n) = self.context_length.filter(|n| *n < 1) {
            return Err(ApiError::invalid_param(
                "context_length",
                format!("Invalid value for 'context_length': {n}; it must be at least 1."),
            ));
        }
        expect_json(
            "integrations",
            self.integrations.as_ref(),
            "an array",
            |v| v.is_array(),
        )?;
        if self
            .integrations
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|l| !l.is_empty())
        {
            return Err(ApiError::invalid_param(
                "integrations",
                "MCP integrations and plugins are not supported by this server yet.",
            ));
        }
        Ok(())
    }
}

/// One input item: text, or an image this server cannot read yet.
fn check_item(i: usize, item: &Value) -> Result<(), ApiError> {
    let param = format!("input[{i}]");
    match item.get("type").and_then(Value::as_str) {
        Some("message" | "text") => match item.get("content") {
            Some(Value::String(_)) => Ok(()),
            _ => Err(ApiError::invalid_param(
                format!("{param}.content"),
                format!("Invalid type for '{param}.content': expected a string."),
            )),
        },
        // Dropping the image would answer a different question than the one asked.
        Some("image") => Err(ApiError::invalid_param(
            param,
            "Image input is not supported: this server runs text-only models.",
        )),
        Some(other) => Err(ApiError::invalid_param(
            format!("{param}.type"),
            format!(
                "Invalid value for '{param}.type': \"{other}\"; expected \"message\" or \"image\"."
            ),
        )),
        None => Err(ApiError::missing_param(format!("{param}.type"))),
    }
}

impl LmsChatRequest {
    /// The user's turn: the string, or the text items joined with "\n" (as content parts are).
    pub fn user_text(&self) -> String {
        match &self.input {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.get("content").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }

    pub fn max_new_tokens(&self) -> Option<u32> {
        token_limit(self.max_output_tokens)
    }

    pub fn stores(&self) -> bool {
        self.store.unwrap_or(true)
    }

    /// The chat to send the template: the stored one continued (its system prompt replaced
    /// when this request gives one), then this request's user turn.
    pub fn conversation(&self, history: Vec<Value>) -> Vec<Value> {
        let mut messages = history;
        if let Some(system) = &self.system_prompt {
            if messages.first().is_some_and(|m| m["role"] == "system") {
                messages.remove(0);
            }
            messages.insert(0, json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": self.user_text()}));
        messages
    }
}

/// LM Studio's error `type` for an answer of `status` with OpenAI's `code`.
fn error_type(status: u16, code: Option<&str>) -> &'static str {
    match (status, code) {
        (_, Some("model_not_found")) => "model_not_found",
        (501, _) => "not_implemented",
        (400..=499, _) => "invalid_request",
        (500..=599, _) => "internal_error",
        _ => "unknown",
    }
}

/// The `error` object of LM Studio's shape from one of `ApiError`'s (OpenAI-shaped) bodies:
/// `code` and `param` only where they apply.
pub fn error_detail(status: u16, openai: &Value) -> Value {
    let detail = &openai["error"];
    let code = detail["code"].as_str();
    let mut e = json!({
        "type": error_type(status, code),
        "message": detail["message"].as_str().unwrap_or("error"),
    });
    if let Some(code) = code {
        e["code"] = json!(code);
    }
    if let Some(param) = detail["param"].as_str() {
        e["param"] = json!(param);
    }
    e
}

/// An error response's body in LM Studio's shape.
pub fn error_body(status: u16, openai: &Value) -> Value {
    json!({"error": error_detail(status, openai)})
}

/// `err` as LM Studio's `error` object.
pub fn lms_error(err: &ApiError) -> Value {
    let openai = serde_json::to_value(err.body()).unwrap_or(Value::Null);
    error_detail(err.status().as_u16(), &openai)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> LmsChatRequest {
        serde_json::from_value(v).unwrap()
    }

    fn param(v: Value) -> Option<String> {
        req(v)
            .validate()
            .err()
            .and_then(|e| e.param().map(str::to_string))
    }

    #[test]
    fn input_is_a_string_or_text_items_and_images_are_refused() {
        assert_eq!(param(json!({"input": "Hi"})), None);
        assert_eq!(param(json!({})).as_deref(), Some("input"));
        assert_eq!(param(json!({"input": []})).as_deref(), Some("input"));
        assert_eq!(param(json!({"input": 5})).as_deref(), Some("input"));
        let items = json!({"input": [{"type": "text", "content": "a"},
            {"type": "message", "content": "b"}]});
        assert_eq!(param(items.clone()), None);
        assert_eq!(req(items).user_text(), "a\nb");
        let image = json!({"input": [{"type": "text", "content": "a"},
            {"type": "image", "data_url": "data:image/png;base64,AA"}]});
        let e = req(image).validate().unwrap_err();
        assert_eq!(e.param(), Some("input[1]"));
        assert!(e.to_string().contains("text-only"), "{e}");
        assert_eq!(
            param(json!({"input": [{"type": "text"}]})).as_deref(),
            Some("input[0].content")
        );
    }

    #[test]
    fn fields_out_of_range_are_named() {
        let p = |extra: Value| {
            let mut body = json!({"input": "Hi"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            param(body)
        };
        assert_eq!(p(json!({"reasoning": "max"})).as_deref(), Some("reasoning"));
        assert_eq!(p(json!({"reasoning": "off"})), None);
        assert_eq!(
            p(json!({"max_output_tokens": 0})).as_deref(),
            Some("max_output_tokens")
        );
        assert_eq!(
            p(json!({"context_length": 0})).as_deref(),
            Some("context_length")
        );
        assert_eq!(
            p(json!({"integrations": ["mcp/x"]})).as_deref(),
            Some("integrations")
        );
        assert_eq!(p(json!({"integrations": []})), None);
    }

    #[test]
    fn a_continuation_keeps_the_chat_and_replaces_its_system_prompt() {
        let history = vec![
            json!({"role": "system", "content": "old"}),
            json!({"role": "user", "content": "a"}),
            json!({"role": "assistant", "content": "b"}),
        ];
        let r = req(json!({"input": "c", "system_prompt": "new"}));
        let c = r.conversation(history.clone());
        assert_eq!(c.len(), 4);
        assert_eq!(c[0], json!({"role": "system", "content": "new"}));
        assert_eq!(c[3], json!({"role": "user", "content": "c"}));
        let kept = req(json!({"input": "c"})).conversation(history);
        assert_eq!(kept[0]["content"], "old");
    }

    #[test]
    fn errors_take_lm_studios_types_and_drop_absent_fields() {
        let body = |e: ApiError| {
            let openai = serde_json::to_value(e.body()).unwrap();
            error_body(e.status().as_u16(), &openai)
        };
        assert_eq!(
            body(ApiError::model_not_found("x/y"))["error"]["type"],
            "model_not_found"
        );
        let bad = body(ApiError::invalid_param("input", "no"));
        assert_eq!(
            bad,
            json!({"error": {"type": "invalid_request", "message": "no", "param": "input"}})
        );
        assert_eq!(
            lms_error(&ApiError::internal("boom"))["type"],
            "internal_error"
        );
    }
}
