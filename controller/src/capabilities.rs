//! What a model can do, read from its folder before any worker runs: whether its chat template
//! reasons and how that is switched (LM Studio's `reasoning` setting and its
//! `capabilities.reasoning`), and whether it was trained for tools. The markers are those the
//! worker's reasoning split reads (`worker/src/output.rs`, `worker/src/harmony.rs`).

use std::path::Path;

use serde_json::{json, Value};

/// How a model's reasoning is switched, as its template shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningStyle {
    /// The template writes no reasoning block.
    None,
    /// On or off through `enable_thinking` (Qwen3, SmolLM3).
    Toggle,
    /// An effort level through `reasoning_effort` (gpt-oss's harmony format).
    Effort,
    /// Reasoning the template cannot switch off (DeepSeek-R1 style).
    Always,
}

/// LM Studio's `reasoning` values.
pub const REASONING_VALUES: &[&str] = &["off", "low", "medium", "high", "on"];

impl ReasoningStyle {
    /// From the chat template's text (`None`: the model has no template).
    pub fn of_template(template: Option<&str>) -> Self {
        let Some(t) = template else {
            return ReasoningStyle::None;
        };
        let harmony = t.contains("<|channel|>") && t.contains("<|message|>");
        let reasons = harmony || t.contains("</think>") || t.contains("<channel|>");
        if !reasons {
            ReasoningStyle::None
        } else if harmony || t.contains("reasoning_effort") {
            ReasoningStyle::Effort
        } else if t.contains("enable_thinking") {
            ReasoningStyle::Toggle
        } else {
            ReasoningStyle::Always
        }
    }

    /// The settings a request may name, and the one in force when it names none.
    pub fn options(self) -> (&'static [&'static str], &'static str) {
        match self {
            ReasoningStyle::None => (&["off"], "off"),
            ReasoningStyle::Toggle => (&["off", "on"], "on"),
            ReasoningStyle::Effort => (&["low", "medium", "high"], "medium"),
            ReasoningStyle::Always => (&["on"], "on"),
        }
    }

    /// The template variables that apply `setting`, or `Err` naming what the model takes.
    /// `on` asks for the model's default where it has effort levels.
    pub fn template_kwargs(self, setting: &str) -> Result<Option<Value>, String> {
        let (allowed, default) = self.options();
        let setting = match (self, setting) {
            (ReasoningStyle::Effort, "on") => default,
            _ => setting,
        };
        if !allowed.contains(&setting) {
            let why = match self {
                ReasoningStyle::None => "the model does not reason".to_string(),
                _ => format!("the model takes {}", allowed.join(", ")),
            };
            return Err(format!(
                "Invalid value for 'reasoning': \"{setting}\" is not supported by this model \
                 ({why})."
            ));
        }
        Ok(match self {
            ReasoningStyle::Toggle => Some(json!({"enable_thinking": setting == "on"})),
            ReasoningStyle::Effort => Some(json!({"reasoning_effort": setting})),
            ReasoningStyle::None | ReasoningStyle::Always => None,
        })
    }

    /// LM Studio's `capabilities.reasoning`; absent for a model that does not reason.
    pub fn capability(self) -> Option<Value> {
        let (allowed, default) = self.options();
        (self != ReasoningStyle::None)
            .then(|| json!({"allowed_options": allowed, "default": default}))
    }
}

/// What a model folder's template says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub reasoning: ReasoningStyle,
    /// The template renders a `tools` list.
    pub tool_use: bool,
}

impl Capabilities {
    pub fn of_dir(dir: &Path) -> Self {
        let template = chat_template(dir);
        Capabilities {
            reasoning: ReasoningStyle::of_template(template.as_deref()),
            tool_use: template.is_some_and(|t| t.contains("tools")),
        }
    }

    /// LM Studio's `capabilities` object. Vision is false: the worker runs text models only.
    pub fn json(&self) -> Value {
        let mut v = json!({"vision": false, "trained_for_tool_use": self.tool_use});
        if let Some(r) = self.reasoning.capability() {
            v["reasoning"] = r;
        }
        v
    }
}

/// The chat template as the worker's tokenizer reads it: `chat_template.jinja`, else
/// `tokenizer_config.json`'s `chat_template` (a string, or the list entry named "default").
pub fn chat_template(dir: &Path) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    let raw = std::fs::read(dir.join("tokenizer_config.json")).ok()?;
    let config: Value = serde_json::from_slice(&raw).ok()?;
    match config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_says_how_reasoning_is_switched() {
        let of = |t: &str| ReasoningStyle::of_template(Some(t));
        assert_eq!(ReasoningStyle::of_template(None), ReasoningStyle::None);
        assert_eq!(of("{{ messages }}"), ReasoningStyle::None);
        assert_eq!(
            of("{% if enable_thinking %}<think>{% endif %}</think>"),
            ReasoningStyle::Toggle
        );
        assert_eq!(
            of("<|channel|>analysis<|message|>{{ reasoning_effort }}"),
            ReasoningStyle::Effort
        );
        assert_eq!(of("<think>\n</think>"), ReasoningStyle::Always);
    }

    #[test]
    fn settings_become_template_variables_or_name_what_the_model_takes() {
        let toggle = ReasoningStyle::Toggle;
        assert_eq!(
            toggle.template_kwargs("off"),
            Ok(Some(json!({"enable_thinking": false})))
        );
        assert!(toggle
            .template_kwargs("high")
            .unwrap_err()
            .contains("off, on"));
        assert_eq!(
            ReasoningStyle::Effort.template_kwargs("on"),
            Ok(Some(json!({"reasoning_effort": "medium"})))
        );
        assert_eq!(ReasoningStyle::None.template_kwargs("off"), Ok(None));
        let refused = ReasoningStyle::None.template_kwargs("high").unwrap_err();
        assert!(refused.contains("does not reason"), "{refused}");
        assert_eq!(ReasoningStyle::None.capability(), None);
        assert_eq!(
            ReasoningStyle::Toggle.capability(),
            Some(json!({"allowed_options": ["off", "on"], "default": "on"}))
        );
    }
}
