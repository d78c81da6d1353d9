//! Generation: prefill, decode, stop conditions, streaming text and logprobs.
//!
//! The loop mirrors mlx-lm's `generate_step` where it affects the numbers: the prompt but its
//! last token is prefilled in chunks, the last token produces the first logits, and greedy
//! decoding takes the argmax of the log-probabilities on the device. For greedy decoding the
//! next forward pass is queued before the current token is read back, so the host never
//! waits for the device between tokens.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::transforms::{async_eval, eval};
use mlx_rs::{ops, Array, Dtype};
use opta_lmx_shared::protocol::{
    FinishReason, SamplingParams, Timings, TokenLogprob, TopLogprob, Usage,
};

use crate::cache::KvCache;
use crate::detok::Detokenizer;
use crate::model::{self, LoadOptions, Model};
use crate::sampling::{self, Sampler};
use crate::tokenizer::Tokenizer;

/// Prompt tokens per forward pass during prefill (mlx-lm's default step).
pub const PREFILL_STEP: usize = 2048;

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
        mut on_chunk: impl FnMut(Chunk) -> ControlFlow<()>,
    ) -> Result<Outcome, GenerateError> {
        let start = Instant::now();
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
        let room = context - prompt.len();
        let max_tokens = params.max_tokens.unwrap_or(room).min(room);
        let vocab = self.model.config.vocab_size as u32;
        if let Some(&bad) = prompt.iter().find(|&&t| t >= vocab) {
            return Err(GenerateError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }

        let mut seq = Sequence {
            cache: self.model.new_cache(),
            sampler: Sampler::new(params.sampling.clone(), prompt),
            detok: Detokenizer::new(params.stop.clone()),
        };
        let last = prefill(&self.model, prompt, &mut seq.cache)?;
        let mut usage = Usage {
            prompt_tokens: prompt.len() as u32,
            completion_tokens: 0,
            cached_prompt_tokens: 0,
        };
        if max_tokens == 0 {
            return Ok(Outcome {
                finish_reason: FinishReason::Length,
                usage,
                timings: timings(start, None, Instant::now()),
            });
        }

        let device_greedy = seq.sampler.is_plain_greedy();
        let mut pending = self.step(&token_array(last), &mut seq.cache, device_greedy)?;
        let mut first_token_at = None;
        let finish_reason = loop {
            // Queue the next forward pass before reading this token back (greedy only: the
            // next input is the device-side argmax, known without the host).
            let generated = usage.completion_tokens as usize + 1;
            let ahead = match (&pending.token, generated < max_tokens) {
                (Some(tok), true) => {
                    Some(self.step(&tok.reshape(&[1, 1])?, &mut seq.cache, true)?)
                }
                _ => None,
            };
            let (id, logprobs) = self.read_token(&pending, &mut seq.sampler, params.logprobs)?;
            first_token_at.get_or_insert_with(Instant::now);
            usage.completion_tokens += 1;
            seq.sampler.accept(id);

            let eos = !params.ignore_eos && self.tokenizer.eos_ids().contains(&id);
            let (text, stopped) = if eos {
                (seq.detok.finish(), false)
            } else {
                seq.detok.push(&self.tokenizer, id)?
            };
            let out_of_room = usage.completion_tokens as usize >= max_tokens;
            let mut chunk = Chunk {
                text,
                token_ids: if eos { Vec::new() } else { vec![id] },
                logprobs: if eos { Vec::new() } else { logprobs },
            };
            if out_of_room && !eos && !stopped {
                chunk.text.push_str(&seq.detok.finish());
            }
            let cancel = if !chunk.text.is_empty() || !chunk.token_ids.is_empty() {
                on_chunk(chunk).is_break()
            } else {
                false
            };
            if eos || stopped {
                break FinishReason::Stop;
            }
            if cancel {
                break FinishReason::Cancelled;
            }
            if out_of_room {
                break FinishReason::Length;
            }
            pending = match ahead {
                Some(step) => step,
                None => self.step(&token_array(id), &mut seq.cache, device_greedy)?,
            };
        };
        Ok(Outcome {
            finish_reason,
            usage,
            timings: timings(start, first_token_at, Instant::now()),
        })
    }

    /// Queues one decode step: logits for `input` ([1, 1]) and, for device-side greedy
    /// decoding, their argmax.
    fn step(
        &self,
        input: &Array,
        cache: &mut [KvCache],
        device_greedy: bool,
    ) -> Result<Pending, GenerateError> {
        let logits = self.model.forward_last(input, cache)?;
        let logits = logits.index((.., -1, ..));
        let logprobs = logits.subtract(ops::logsumexp_axis(&logits, -1, true)?)?;
        let token = if device_greedy {
            Some(ops::indexing::argmax_axis(&logprobs, -1, None)?)
        } else {
            None
        };
        let mut outputs: Vec<&Array> = vec![&logprobs];
        outputs.extend(token.as_ref());
        async_eval(outputs)?;
        Ok(Pending {
            logits,
            logprobs,
            token,
        })
    }

    /// The token of a step, and its logprobs if asked for.
    fn read_token(
        &self,
        pending: &Pending,
        sampler: &mut Sampler,
        top_n: Option<usize>,
    ) -> Result<(u32, Vec<TokenLogprob>), GenerateError> {
        let (id, dist) = match &pending.token {
            Some(tok) => {
                let id = tok
                    .try_item_exact::<u32>()
                    .map_err(|e| GenerateError::Engine(e.to_string()))?;
                let dist = match top_n {
                    Some(_) => Some(host_vector(&pending.logprobs)?),
                    None => None,
                };
                (id, dist)
            }
            None => {
                let mut logits = host_vector(&pending.logits)?;
                sampler.process(&mut logits);
                let id = sampler.choose(&logits);
                (id, top_n.map(|_| sampling::log_softmax(&logits)))
            }
        };
        let logprobs = match (dist, top_n) {
            (Some(dist), Some(n)) => vec![self.token_logprob(id, &dist, n)],
            _ => Vec::new(),
        };
        Ok((id, logprobs))
    }

    fn token_logprob(&self, id: u32, dist: &[f32], n: usize) -> TokenLogprob {
        let entry = |tid: u32| {
            let bytes = self.tokenizer.token_bytes(tid);
            TopLogprob {
                token_id: tid,
                token: String::from_utf8_lossy(&bytes).into_owned(),
                logprob: dist.get(tid as usize).copied().unwrap_or(f32::NEG_INFINITY),
                bytes,
            }
        };
        let mut order: Vec<u32> = (0..dist.len() as u32).collect();
        let n = n.min(order.len());
        if n > 0 {
            order.select_nth_unstable_by(n - 1, |&a, &b| {
                dist[b as usize].total_cmp(&dist[a as usize])
            });
        }
        order.truncate(n);
        order.sort_by(|&a, &b| dist[b as usize].total_cmp(&dist[a as usize]));
        let chosen = entry(id);
        TokenLogprob {
            token_id: id,
            token: chosen.token,
            logprob: chosen.logprob,
            bytes: chosen.bytes,
            top: order.into_iter().map(entry).collect(),
        }
    }
}

/// The per-sequence state: what continuous batching will keep for each running request.
struct Sequence {
    cache: Vec<KvCache>,
    sampler: Sampler,
    detok: Detokenizer,
}

/// A queued decode step.
struct Pending {
    /// [1, vocab] logits in the model's dtype.
    logits: Array,
    /// [1, vocab] log-probabilities (what mlx-lm takes the argmax of).
    logprobs: Array,
    /// Device-side greedy choice, [1].
    token: Option<Array>,
}

/// Runs all but the last prompt token through the model in chunks, filling `cache`, and
/// returns the last token (its logits are the first decode step's).
fn prefill(model: &Model, prompt: &[u32], cache: &mut [KvCache]) -> Result<u32, GenerateError> {
    let (head, last) = prompt.split_at(prompt.len() - 1);
    for chunk in head.chunks(PREFILL_STEP) {
        let ids: Vec<i32> = chunk.iter().map(|&t| t as i32).collect();
        let ids = Array::from_slice(&ids, &[1, ids.len() as i32]);
        // Only the cache is needed; MLX never computes the unused hidden states' logits.
        let _ = model.forward_hidden(&ids, cache)?;
        eval(cache.iter().flat_map(KvCache::state))?;
    }
    Ok(last[0])
}

fn token_array(id: u32) -> Array {
    Array::from_slice(&[id as i32], &[1, 1])
}

/// A [1, vocab] array as host f32 values.
fn host_vector(a: &Array) -> Result<Vec<f32>, GenerateError> {
    let a = if a.dtype() == Dtype::Float32 {
        a.clone()
    } else {
        a.as_dtype(Dtype::Float32)?
    };
    eval([&a])?;
    Ok(a.as_slice::<f32>().to_vec())
}

fn timings(start: Instant, first: Option<Instant>, end: Instant) -> Timings {
    let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
    let first = first.unwrap_or(end);
    Timings {
        queue_ms: 0.0,
        prompt_ms: ms(start, first),
        generation_ms: ms(first, end),
        time_to_first_token_ms: ms(start, first),
    }
}
