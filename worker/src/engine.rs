//! The engine: a loaded model and its tokenizer, and what a prompt must be to run on them.
//! Generation itself is the scheduler's (`scheduler.rs`), which serves one request exactly as
//! it serves many; this module knows nothing of it.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context;
use mlx_rs::transforms::eval;
use mlx_rs::Array;

use crate::grammar::TokenSpace;
use crate::model::{self, LoadOptions, Model};
use crate::request::GenerateError;
use crate::tokenizer::Tokenizer;
use crate::tool_syntax::ToolSyntax;

/// A model and its tokenizer, loaded and warmed up.
pub struct Engine {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub load_seconds: f64,
    /// The tool-call syntax, when set by configuration; `None`: inferred from the template.
    pub tool_syntax: Option<ToolSyntax>,
    /// The grammar engine's view of the vocabulary, built by the first constrained request.
    token_space: OnceLock<Result<TokenSpace, String>>,
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
        Self::load_sharded(dir, options, None)
    }

    /// Loads this rank's share of a model split over `group` (tensor parallel; `None`: the
    /// whole model). Every rank must then run the same requests in the same order.
    pub fn load_sharded(
        dir: &Path,
        options: LoadOptions,
        group: Option<std::sync::Arc<crate::distributed::Group>>,
    ) -> anyhow::Result<Self> {
        let start = Instant::now();
        let mut model = model::load(dir, options)?;
        if let Some(group) = group {
            model.shard(group)?;
        }
        let tokenizer = Tokenizer::load(dir, &model.config)?;
        eval(model.arrays()).context("reading the weights")?;
        let mut cache = model.new_cache();
        let warm = model.forward_last(&Array::from_slice(&[0i32], &[1, 1]), &mut cache)?;
        eval([&warm]).context("warm-up forward pass")?;
        Ok(Engine {
            model,
            tokenizer,
            load_seconds: start.elapsed().as_secs_f64(),
            tool_syntax: None,
            token_space: OnceLock::new(),
        })
    }

    /// The token space for constrained decoding, built on first use.
    pub fn token_space(&self) -> Result<&TokenSpace, GenerateError> {
        self.token_space
            .get_or_init(|| self.tokenizer.token_space())
            .as_ref()
            .map_err(|e| GenerateError::Engine(e.clone()))
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

    /// Whether `prompt` can run on this model: not empty, shorter than the context (at least
    /// one token must fit after it), and every id in the vocabulary.
    pub fn check_prompt(&self, prompt: &[u32]) -> Result<(), GenerateError> {
        if prompt.is_empty() {
            return Err(GenerateError::InvalidRequest("the prompt is empty".into()));
        }
        let context = self.context_length().unwrap_or(usize::MAX);
        if prompt.len() >= context {
            return Err(GenerateError::ContextLength {
                prompt: prompt.len(),
                context,
            });
        }
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(GenerateError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        Ok(())
    }
}
