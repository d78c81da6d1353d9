//! What one generation request is made of, whoever runs it: its parameters, the text it
//! streams, how it ends, and why it can fail. The engine (`engine.rs`) and the scheduler
//! (`scheduler.rs`) both speak these types; this module depends on neither.

use opta_lmx_shared::protocol::{
    Delta, FinishReason, SamplingParams, Timings, TokenLogprob, Usage,
};

use crate::model;
use crate::tokenizer::TokenizerError;

/// Why a request could not run; the kinds map to the protocol's error kinds.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the prompt has {prompt} tokens, more than the model's context of {context}")]
    ContextLength { prompt: usize, context: usize },
    #[error("engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Panic(String),
}

impl From<mlx_rs::error::Exception> for GenerateError {
    fn from(e: mlx_rs::error::Exception) -> Self {
        GenerateError::Engine(e.to_string())
    }
}

impl From<model::ModelError> for GenerateError {
    fn from(e: model::ModelError) -> Self {
        GenerateError::Engine(e.to_string())
    }
}

impl From<TokenizerError> for GenerateError {
    fn from(e: TokenizerError) -> Self {
        GenerateError::InvalidRequest(e.to_string())
    }
}

/// What one generation asks for, beyond the prompt.
#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Report the chosen token's logprob and this many alternatives (`None`: no logprobs).
    pub logprobs: Option<usize>,
    /// Keep going past end-of-sequence tokens (benchmarks; vLLM's `ignore_eos`).
    pub ignore_eos: bool,
}

/// Text that became final, with the generated tokens that produced it. An end-of-sequence
/// token produces no text and is not listed (it still counts in the usage).
#[derive(Debug, Default)]
pub struct Chunk {
    /// The text as generated.
    pub text: String,
    /// What it means: answer text, reasoning, tool calls (the output parser's reading).
    pub deltas: Vec<Delta>,
    pub token_ids: Vec<u32>,
    /// One per entry of `token_ids` when the request asked for logprobs, else empty.
    pub logprobs: Vec<TokenLogprob>,
}

impl Chunk {
    /// Generated tokens behind this chunk.
    pub fn tokens(&self) -> usize {
        self.token_ids.len()
    }
}

/// How a request ended.
#[derive(Debug)]
pub struct Outcome {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}
