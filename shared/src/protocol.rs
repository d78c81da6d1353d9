//! The wire protocol between the controller and one model worker, over the worker's Unix socket.
//!
//! Each frame is a 4-byte little-endian payload length followed by a bincode-2 payload
//! (`bincode::config::standard()`). The worker connects and speaks first with
//! [`FromWorker::Hello`], then [`FromWorker::Ready`] (or [`FromWorker::LoadFailed`]) once the
//! weights are loaded and one warm-up forward pass ran. After that the controller sends
//! [`ToWorker`] requests and the worker answers each `Generate` with [`FromWorker::Accepted`]
//! (the prompt was templated, tokenized and fits the context), zero or more
//! [`FromWorker::Chunk`] frames, and exactly one `Done` or `Error` carrying its `request_id`;
//! a request refused before generation gets only the `Error`.
//! The worker exits when the socket reaches EOF: that is how it notices the controller died.
//!
//! The types here are plain Rust types on purpose: bincode 2 cannot encode serde's
//! `tag`/`untagged`/`flatten`/`skip_serializing_if`, so the OpenAI JSON shapes stay in the
//! controller, which converts at the boundary.

mod framing;

#[cfg(test)]
mod tests;

pub use framing::{
    decode_payload, encode_frame, read_frame, read_frame_blocking, write_frame,
    write_frame_blocking, ProtocolError, MAX_DECODED_BYTES, MAX_FRAME_BYTES,
};

use bincode::{Decode, Encode};

/// Sent in [`FromWorker::Hello`]; the controller refuses a worker whose version differs.
/// bincode is positional (variant indexes, field order), so bump this on ANY change to the
/// message types below, even adding a variant or a field at the end.
pub const PROTOCOL_VERSION: u32 = 5;

// ---------------------------------------------------------------------------------------------
// Controller -> worker
// ---------------------------------------------------------------------------------------------

/// Everything the controller sends to a worker.
// One message per request, encoded at once: its size in memory does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum ToWorker {
    /// Start a generation; answered by `Accepted`, `Chunk`s, then one `Done` or `Error` with
    /// its id.
    Generate(GenerateRequest),
    /// Stop a generation early (client went away); the worker answers `Done` with
    /// [`FinishReason::Cancelled`], or nothing if the id already finished.
    Cancel { request_id: u64 },
    /// Ask for a [`FromWorker::Stats`] frame.
    GetStats,
    /// Embed a batch of inputs; answered by one `Embeddings` or `Error` with its id.
    Embed(EmbedRequest),
    /// Finish or cancel what is running, then exit; EOF on the socket means the same.
    Shutdown,
}

/// Inputs to embed together, in one forward pass.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct EmbedRequest {
    pub request_id: u64,
    pub inputs: Vec<EmbedInput>,
}

/// One input: text, tokenized by the model's tokenizer with its special tokens, or token
/// ids used as they are.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// One completion request, already validated and defaulted by the controller.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct GenerateRequest {
    /// Chosen by the controller, unique per worker connection; every answer carries it.
    pub request_id: u64,
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    /// `None`: until EOS or the context is full.
    pub max_tokens: Option<u32>,
    /// Stop strings; the matched stop string is not sent back.
    pub stop: Vec<String>,
    /// `Some(n)`: a [`TokenLogprob`] per generated token with `n` alternatives (0 = none);
    /// `None`: no logprobs.
    pub logprobs: Option<u32>,
    /// What shape the answer takes: free text, JSON, tool calls.
    pub output: OutputSpec,
}

/// The shape of an answer, beyond plain text: the worker turns it into a grammar for
/// constrained decoding and into the parser that reads tool calls out of the output.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode)]
pub struct OutputSpec {
    /// OpenAI's `response_format`.
    pub format: AnswerFormat,
    /// OpenAI's `tool_choice`, with the tools themselves in [`Prompt::Chat`].
    pub tool_choice: ToolChoice,
    /// `false`: at most one tool call.
    pub parallel_tool_calls: bool,
}

/// OpenAI's `response_format`.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode)]
pub enum AnswerFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema (JSON text). `strict`: a schema keyword the grammar
    /// engine cannot enforce is an error rather than ignored.
    JsonSchema { schema_json: String, strict: bool },
}

/// OpenAI's `tool_choice`. `Auto` without tools means plain text.
#[derive(Debug, Clone, Default, PartialEq, Encode, Decode)]
pub enum ToolChoice {
    /// The model may answer or call tools; calls are parsed out of its output.
    #[default]
    Auto,
    /// No tool calls: the tools are not shown to the model.
    None,
    /// At least one call, forced by a grammar in the model's own call format.
    Required,
    /// A call of this function, forced the same way.
    Function(String),
}

/// What to generate from. Chat prompts are templated in the worker, which holds the tokenizer
/// and its chat template.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Prompt {
    Chat {
        /// The `messages` array exactly as the chat template takes it (JSON text: bincode
        /// cannot carry `serde_json::Value`). The controller builds it.
        messages_json: String,
        /// The `tools` array as the template takes it, JSON text.
        tools_json: Option<String>,
        /// Append the template's assistant-turn opener (the usual case).
        add_generation_prompt: bool,
        /// Extra template variables (`chat_template_kwargs`, `reasoning_effort`), a JSON
        /// object as text.
        template_kwargs_json: Option<String>,
    },
    /// A raw completion prompt (`/v1/completions`), tokenized as is.
    Text(String),
    /// Already tokenized.
    Tokens(Vec<u32>),
}

impl Prompt {
    /// A chat of one user message, ready for the assistant's answer.
    pub fn user(content: &str) -> Self {
        Prompt::Chat {
            messages_json: serde_json::json!([{"role": "user", "content": content}]).to_string(),
            tools_json: None,
            add_generation_prompt: true,
            template_kwargs_json: None,
        }
    }
}

/// Sampling settings. Every field has a neutral value, so the controller always sends all of
/// them and the worker never guesses a default.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off.
    pub repetition_penalty: f32,
    /// How many recent tokens `repetition_penalty` looks at.
    pub repetition_context: u32,
    /// 0.0 = off (OpenAI semantics).
    pub presence_penalty: f32,
    /// 0.0 = off (OpenAI semantics).
    pub frequency_penalty: f32,
    /// `(token_id, bias)` added to the logits; a list rather than a map to keep the type plain.
    pub logit_bias: Vec<(u32, f32)>,
    /// `None`: not reproducible.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// OpenAI's defaults: temperature 1.0, top_p 1.0, no penalties or extra filters.
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            // mlx-lm's default window; only matters once a penalty is set.
            repetition_context: 20,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Deterministic argmax decoding (temperature 0), everything else neutral.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Worker -> controller
// ---------------------------------------------------------------------------------------------

/// Everything a worker sends to the controller.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum FromWorker {
    /// First frame after connecting, so a stale worker binary is caught before anything else.
    /// Keep it variant 0 with `protocol_version` first and unchanged in every version: then
    /// any controller can decode any worker's hello and report the mismatch by number.
    Hello {
        protocol_version: u32,
        worker_version: String,
        pid: u32,
    },
    /// Weights loaded and one warm-up forward pass ran: the model can serve.
    Ready(ModelFacts),
    /// Loading failed; the worker exits after sending this.
    LoadFailed { message: String },
    /// The request's prompt was templated and tokenized and fits the model's context: it
    /// will run. Sent before any prompt processing (also while the request waits for room in
    /// the batch), so the controller can answer a refused request with a plain HTTP error
    /// before it commits to a response.
    Accepted { request_id: u64, prompt_tokens: u32 },
    /// Newly generated output for one request, in order. Text holds whole UTF-8 characters
    /// only (the worker holds back partial ones), so deltas can be forwarded as they come.
    Chunk {
        request_id: u64,
        deltas: Vec<Delta>,
        /// One per generated token when the request asked for logprobs, else empty.
        logprobs: Vec<TokenLogprob>,
    },
    /// The request finished; nothing more will come for its id.
    Done {
        request_id: u64,
        finish_reason: FinishReason,
        usage: Usage,
        timings: Timings,
    },
    /// A request failed (`request_id` set; nothing more will come for it), or the worker
    /// itself hit a problem not tied to one request (`None`).
    Error {
        request_id: Option<u64>,
        kind: ErrorKind,
        message: String,
    },
    /// Answer to [`ToWorker::GetStats`].
    Stats(WorkerStats),
    /// Answer to [`ToWorker::Embed`]: one vector per input, in order, and the tokens read.
    Embeddings {
        request_id: u64,
        vectors: Vec<Vec<f32>>,
        prompt_tokens: u32,
    },
    /// A request's prompt is being read: `done` of its `total` tokens are in the cache (those
    /// reused from the prompt cache included). Sent after every prefill chunk, so a prefill
    /// of minutes shows as progress, never as a frozen worker.
    Progress {
        request_id: u64,
        done: u32,
        total: u32,
    },
}

/// What the worker learned loading the model; the controller shows it in `/v1/models` and
/// uses `context_length` to reject prompts before sending them.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct ModelFacts {
    /// `config.json`'s `model_type` (`llama`, `qwen2`, ...).
    pub model_type: String,
    pub num_layers: u32,
    pub context_length: u32,
    pub vocab_size: u32,
    /// Human-readable, e.g. `4-bit g64`, or `none`.
    pub quantization: String,
    /// Bytes of weights resident after loading.
    pub weights_bytes: u64,
    /// Wall time from the start of loading to Ready, warm-up included.
    pub load_seconds: f64,
    pub eos_token_ids: Vec<u32>,
}

/// One piece of a [`FromWorker::Chunk`]: what the model's output means, already parsed, with
/// the number of generated tokens that produced it (a delta held back for a stop string or a
/// partial character is counted when it is sent).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Delta {
    /// Answer text.
    Text { text: String, tokens: u32 },
    /// Reasoning ("thinking") text, kept apart from the answer.
    Reasoning { text: String, tokens: u32 },
    /// Part of a tool call. The first delta of call `index` carries its `id` and `name`;
    /// later ones only more `arguments` text (a JSON object, streamed).
    ToolCall {
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
        tokens: u32,
    },
}

/// The answer text of `deltas`, joined; reasoning and tool calls left out.
pub fn answer_text(deltas: &[Delta]) -> String {
    deltas
        .iter()
        .filter_map(|d| match d {
            Delta::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

impl Delta {
    /// Generated tokens behind this delta.
    pub fn tokens(&self) -> u32 {
        match self {
            Delta::Text { tokens, .. }
            | Delta::Reasoning { tokens, .. }
            | Delta::ToolCall { tokens, .. } => *tokens,
        }
    }
}

/// Log-probability of one generated token, plus its top alternatives if asked for.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct TokenLogprob {
    pub token_id: u32,
    /// The token's text, lossily decoded (a token may be part of a UTF-8 character).
    pub token: String,
    pub logprob: f32,
    /// The token's exact bytes, which OpenAI's `bytes` field needs.
    pub bytes: Vec<u8>,
    pub top: Vec<TopLogprob>,
}

/// One alternative in [`TokenLogprob::top`].
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct TopLogprob {
    pub token_id: u32,
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum FinishReason {
    /// EOS token or a stop string.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
    /// [`ToWorker::Cancel`] or shutdown.
    Cancelled,
}

/// Token counts for one request, as OpenAI's `usage` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from the prompt cache (a subset of `prompt_tokens`).
    pub cached_prompt_tokens: u32,
    /// Completion tokens spent on reasoning (a subset of `completion_tokens`).
    pub reasoning_tokens: u32,
}

/// Where one request's time went, in milliseconds, measured in the worker.
#[derive(Debug, Clone, Copy, PartialEq, Default, Encode, Decode)]
pub struct Timings {
    /// Waiting in the worker before the engine took it.
    pub queue_ms: f64,
    /// Prompt processing (prefill).
    pub prompt_ms: f64,
    /// Token generation (decode).
    pub generation_ms: f64,
    /// From receipt of the request to the first generated token.
    pub time_to_first_token_ms: f64,
}

/// Class of a failure, so the controller can map it to an HTTP status without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ErrorKind {
    /// The request cannot be served as given (400).
    InvalidRequest,
    /// Prompt plus `max_tokens` exceed the model's context (400, OpenAI's own code).
    ContextLengthExceeded,
    /// The engine (MLX) failed while running (500).
    Engine,
    /// A bug or broken invariant in the worker (500).
    Internal,
    /// The worker's own queue is full (429).
    Overloaded,
}

/// A snapshot of the worker's load and memory, for `/metrics` and admin endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct WorkerStats {
    pub active_requests: u32,
    pub queued_requests: u32,
    pub prompt_cache_hits: u64,
    /// Prompt tokens served from the cache so far.
    pub prompt_cache_tokens: u64,
    /// MLX's peak memory since the worker started.
    pub peak_memory_bytes: u64,
    /// MLX's memory in use now.
    pub active_memory_bytes: u64,
}
