//! OpenAI's text completions: `POST /v1/completions` (and LM Studio's `/api/v0` twin).

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{FinishReason, StreamMeta, Usage};
use super::error::ApiError;
use super::sampling::{check_n, token_limit};

/// OpenAI's default `max_tokens` for `/v1/completions`.
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

/// OpenAI's cap on the integer `logprobs` of `/v1/completions`.
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Here an integer: how many top alternatives to return per token (0..=5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Echo the prompt before the completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Only 1 is supported, like `n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<u32>,
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

impl super::Validate for CompletionRequest {
    fn validate(&self) -> Result<(), ApiError> {
        let batch = self.prompt.batch_len();
        if batch != 1 {
            return Err(ApiError::invalid_param(
                "prompt",
                format!("Invalid value for 'prompt': {batch} prompts given; exactly one prompt per request is supported."),
            ));
        }
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
}

impl super::Generation<CompletionRequest> {
    /// OpenAI's default cap here is 16 (absent); -1 means no limit (up to the context).
    pub fn max_new_tokens(&self) -> Option<u32> {
        match self.shared.max_tokens {
            None => Some(COMPLETIONS_DEFAULT_MAX_TOKENS),
            limit => token_limit(limit),
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

impl StreamMeta {
    fn completion_object(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<Usage>,
    ) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion".to_string(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage,
        }
    }

    /// A streamed `/v1/completions` chunk (same object as the non-streamed response).
    pub fn text_chunk(
        &self,
        text: impl Into<String>,
        logprobs: Option<CompletionLogprobs>,
        finish_reason: Option<FinishReason>,
    ) -> CompletionChunk {
        let choice = CompletionChoice {
            text: text.into(),
            index: 0,
            logprobs,
            finish_reason,
        };
        self.completion_object(vec![choice], None)
    }

    /// The usage chunk of a streamed `/v1/completions`.
    pub fn completion_usage_chunk(&self, usage: Usage) -> CompletionChunk {
        self.completion_object(Vec::new(), Some(usage))
    }
}
