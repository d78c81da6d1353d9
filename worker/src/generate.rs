//! The engine: a loaded model and tokenizer, and one-request generation. The generation
//! loop itself lives in `batch.rs`, which serves one request exactly as it serves many.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use mlx_rs::transforms::eval;
use mlx_rs::Array;
use opta_lmx_shared::protocol::{FinishReason, SamplingParams, Timings, TokenLogprob, Usage};

use crate::model::{self, LoadOptions, Model};
use crate::tokenizer::Tokenizer;

/// A model and its tokenizer, loaded and warmed up.
pub struct Engine {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub load_seconds: f64,
}

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

impl From<crate::tokenizer::TokenizerError> for GenerateError {
    fn from(e: crate::tokenizer::TokenizerError) -> Self {
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

/// Text that became final, with the tokens that produced it.
#[derive(Debug, Default)]
pub struct Chunk {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
}

#[derive(Debug)]
pub struct Outcome {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

impl Engine {
    /// Loads a model folder with this machine's default options (see
    /// [`LoadOptions::for_this_machine`]).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::load_with(dir, LoadOptions::for_this_machine())
    }

    /// Loads a model folder, reads every weight and runs one forward pass, so that "loaded"
    /// means ready to answer.
    pub fn load_with(dir: &Path, options: LoadOptions) -> anyhow::Result<Self> {
        let start = Instant::now();
        let model = model::load(dir, options)?;
        let tokenizer = Tokenizer::load(dir, &model.config)?;
        eval(model.arrays()).context("reading the weights")?;
        let mut cache = model.new_cache();
        let warm = model.forward_last(&Array::from_slice(&[0i32], &[1, 1]), &mut cache)?;
        eval([&warm]).context("warm-up forward pass")?;
        Ok(Engine {
            model,
            tokenizer,
            load_seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The model's context length (`max_position_embeddings`), if the config gives one.
    pub fn context_length(&self) -> Option<usize> {
        self.model.config.max_position_embeddings
    }

    /// Prompt tokens for chat messages (OpenAI-style JSON), through the chat template.
    pub fn chat_prompt(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, GenerateError> {
        let text = self
            .tokenizer
            .render_chat(messages, tools, add_generation_prompt)?;
        Ok(self.tokenizer.encode(&text)?)
    }

    /// Runs one generation. `on_chunk` receives text as it becomes final; returning
    /// `ControlFlow::Break` cancels (finish reason `Cancelled`).
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        on_chunk: impl FnMut(Chunk) -> ControlFlow<()>,
    ) -> Result<Outcome, GenerateError> {
        crate::batch::run_alone(self, prompt, params, on_chunk)
    }
}
