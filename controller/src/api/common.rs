//! What the OpenAI-shaped APIs share in their responses: finish reasons, usage, logprob
//! numbers, and the id/creation/model triple every chunk of a stream repeats.

use serde::{Deserialize, Serialize};

/// OpenAI's `logprob` for a token the model gives no probability (instead of -inf,
/// which JSON cannot carry).
pub const MIN_LOGPROB: f32 = -9999.0;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

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
    /// OpenAI's report of completion tokens spent reasoning.
    pub completion_tokens_details: CompletionTokensDetails,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: u32,
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
            completion_tokens_details: CompletionTokensDetails::default(),
        }
    }

    /// These counts, `reasoning_tokens` of the completion spent reasoning.
    pub fn with_reasoning(mut self, reasoning_tokens: u32) -> Self {
        self.completion_tokens_details.reasoning_tokens = reasoning_tokens;
        self
    }
}

/// -inf and NaN would serialize as `null`; OpenAI reports such tokens as -9999.
pub fn finite_logprob(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        MIN_LOGPROB
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
            id: crate::api::sse::chat_completion_id(),
            created: crate::api::sse::unix_now(),
            model: model.into(),
        }
    }

    /// For `/v1/completions`: a fresh `cmpl-` id.
    pub fn completion(model: impl Into<String>) -> Self {
        StreamMeta {
            id: crate::api::sse::completion_id(),
            created: crate::api::sse::unix_now(),
            model: model.into(),
        }
    }
}
