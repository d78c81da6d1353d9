//! From an OpenAI request to a worker's tokens and back: choosing and (JIT-)loading the
//! model, translating the request, and turning the worker's events into a response body,
//! streamed (SSE) or whole.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use opta_lmx_shared::protocol::{
    self as proto, ErrorKind, FinishReason as WireFinish, GenerateRequest, Prompt, SamplingParams,
    Timings, Usage as WireUsage,
};
use serde_json::{json, Value};

use crate::admission::Permit;
use crate::api::sse;
use crate::api::types::{
    AssistantMessage, ChatCompletion, ChatCompletionRequest, ChatLogprobs, Completion,
    CompletionLogprobs, CompletionRequest, FinishReason, PromptInput, StreamMeta, TokenLogprob,
    TopLogprob, Usage,
};
use crate::api::ApiError;
use crate::discovery::ModelEntry;
use crate::manager::{GenerationStream, ManagerError, StreamEvent};
use crate::server::AppState;

/// OpenAI's default `max_tokens` for `/v1/completions`.
const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

/// Which response dialect to speak: OpenAI's, or LM Studio's `/api/v0` (OpenAI's plus
/// `stats`, `model_info` and `runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    LmStudio,
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let msg = e.to_string();
        match e {
            ManagerError::NotLoaded(model) => ApiError::model_not_found(model),
            ManagerError::LoadFailed { .. } | ManagerError::Spawn(_) => ApiError::internal(msg),
            ManagerError::ExitedBeforeReady { .. } | ManagerError::Crashed { .. } => {
                ApiError::worker_crashed(msg)
            }
            ManagerError::Timeout { .. } => ApiError::timeout(msg),
            ManagerError::InsufficientMemory { .. } => ApiError::insufficient_memory(msg),
            ManagerError::Unloading(model) => ApiError::model_loading(model, Some(1)),
            ManagerError::Request { kind, message } => match kind {
                ErrorKind::InvalidRequest => ApiError::invalid_request(message),
                ErrorKind::ContextLengthExceeded => ApiError::invalid_param("messages", message),
                ErrorKind::Overloaded => ApiError::overloaded(message, Some(1)),
                ErrorKind::Engine | ErrorKind::Internal => ApiError::internal(message),
            },
        }
    }
}

/// Picks the model a request names (or the configured default), admits the request (429 past
/// the model's running + queued limit) and loads the model on demand when JIT loading is on.
/// `wait` is the client's `Prefer: wait=N`: a load that would take longer is started in the
/// background and answered with 503 and `Retry-After` instead of awaited.
pub async fn prepare_model(
    state: &Arc<AppState>,
    requested: Option<&str>,
    ttl: Option<u64>,
    wait: Option<Duration>,
) -> Result<(ModelEntry, Permit), ApiError> {
    let requested = requested.map(str::trim).filter(|m| !m.is_empty());
    let default = state.config.models.default_model.as_deref();
    let jit = state.config.models.jit_loading;
    let entry = match requested {
        // With JIT loading a model missing locally may be downloaded (`models.allow_download`);
        // one that exists nowhere still falls back to the default model.
        Some(name) => match crate::download::find(state, name, jit).await {
            Ok(e) => e,
            Err(e @ (ApiError::ModelNotFound { .. } | ApiError::ModelUnavailable { .. })) => {
                match default.and_then(|d| state.discovery.resolve(d)) {
                    Some(d) => d,
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        },
        None => match default {
            Some(d) => crate::download::find(state, d, jit).await?,
            // LM Studio answers with the model that is loaded when there is exactly one.
            None => {
                let ready: Vec<String> = state
                    .manager
                    .models()
                    .into_iter()
                    .filter(|m| state.manager.is_ready(&m.model_id))
                    .map(|m| m.model_id)
                    .collect();
                match ready.as_slice() {
                    [one] => state
                        .discovery
                        .resolve(one)
                        .ok_or_else(|| ApiError::model_not_found(one.as_str()))?,
                    _ => return Err(ApiError::missing_param("model")),
                }
            }
        },
    };
    let ready = state.manager.is_ready(&entry.id);
    if !ready {
        // A model that crashed is started again on its next request, JIT loading or not.
        let crashed = state
            .manager
            .models()
            .iter()
            .any(|m| m.model_id == entry.id && m.state == crate::manager::ModelState::Crashed);
        if !state.config.models.jit_loading && !crashed {
            return Err(ApiError::model_not_found(entry.id.as_str()));
        }
    }
    // Requests waiting for the load count too: they will all reach the worker at once.
    let permit = state.admission.admit(&entry.id)?;
    if !ready {
        let ttl = ttl
            .or(state.config.models.idle_ttl_sec)
            .map(Duration::from_secs);
        match wait {
            None => {
                // No load_started here: this future is dropped if its client goes away, and
                // a start never finished would skew later estimates.
                let result = state.manager.load(&entry.id, &entry.dir, ttl).await;
                let secs = result.as_ref().ok().map(|info| info.load_seconds);
                state.admission.load_finished(&entry.id, secs);
                result?;
            }
            Some(wait) => load_within(state, &entry, ttl, wait).await?,
        }
    }
    Ok((entry, permit))
}

/// Loads `entry` for a client that waits at most `wait` (`Prefer: wait=N`): the load runs in
/// its own task, so it goes on when the client is answered 503 (at once when the load is
/// expected to take longer than `wait`, else when `wait` runs out) and a retry finds the
/// model loaded.
async fn load_within(
    state: &Arc<AppState>,
    entry: &ModelEntry,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<(), ApiError> {
    // A background load failed since the last such request: say why, once, rather than
    // sending the client around again.
    if let Some(err) = state.admission.take_failure(&entry.id) {
        return Err(err);
    }
    let expected = state
        .admission
        .load_estimate(&entry.id, entry.weights_bytes);
    state.admission.load_started(&entry.id);
    let task = {
        let state = Arc::clone(state);
        let entry = entry.clone();
        tokio::spawn(async move {
            let result = state.manager.load(&entry.id, &entry.dir, ttl).await;
            match &result {
                Ok(info) => state
                    .admission
                    .load_finished(&entry.id, Some(info.load_seconds)),
                Err(e) => {
                    tracing::warn!(model = %entry.id, error = %e, "background load failed");
                    state
                        .admission
                        .background_load_failed(&entry.id, e.clone().into());
                }
            }
            result
        })
    };
    let not_yet = || {
        let retry = state
            .admission
            .retry_after_secs(&entry.id, entry.weights_bytes);
        ApiError::model_loading_no_wait(&entry.id, wait.as_secs(), retry)
    };
    if wait < expected {
        return Err(not_yet());
    }
    match tokio::time::timeout(wait, task).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(e))) => {
            // This client hears the failure itself; the next one starts afresh.
            state.admission.take_failure(&entry.id);
            Err(e.into())
        }
        Ok(Err(e)) => Err(ApiError::internal(format!("the load task failed: {e}"))),
        Err(_) => Err(not_yet()),
    }
}

/// The sampling fields chat and text completions share.
struct Knobs {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    presence: Option<f32>,
    frequency: Option<f32>,
    logit_bias: Vec<(u32, f32)>,
    seed: Option<i64>,
}

/// The `Knobs` of a chat or completion request: both types name these fields alike.
macro_rules! knobs {
    ($req:expr) => {
        Knobs {
            temperature: $req.temperature,
            top_p: $req.top_p,
            top_k: $req.top_k,
            min_p: $req.min_p,
            repeat_penalty: $req.repeat_penalty,
            presence: $req.presence_penalty,
            frequency: $req.frequency_penalty,
            logit_bias: $req.logit_bias_ids(),
            seed: $req.seed,
        }
    };
}

impl Knobs {
    /// OpenAI's defaults where a field is absent (temperature 1, no other filters).
    fn params(self) -> SamplingParams {
        let d = SamplingParams::default();
        SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.map_or(d.top_k, |k| k.max(0) as u32),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repeat_penalty.unwrap_or(d.repetition_penalty),
            repetition_context: d.repetition_context,
            presence_penalty: self.presence.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency.unwrap_or(d.frequency_penalty),
            logit_bias: self.logit_bias,
            seed: self.seed.map(|s| s as u64),
        }
    }
}

/// The worker request for a chat completion.
pub fn chat_request(req: &ChatCompletionRequest) -> Result<GenerateRequest, ApiError> {
    let messages = req
        .messages
        .iter()
        .map(|m| {
            let role = serde_json::to_value(m.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "user".into());
            Ok(proto::ChatMessage {
                role,
                content: m.text().into_owned(),
                name: m.name.clone(),
                tool_call_id: m.tool_call_id.clone(),
                tool_calls_json: match &m.tool_calls {
                    Some(calls) => Some(
                        serde_json::to_string(calls)
                            .map_err(|e| ApiError::internal(e.to_string()))?,
                    ),
                    None => None,
                },
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let tools_json = match &req.tools {
        Some(tools) if !tools.is_empty() => {
            Some(serde_json::to_string(tools).map_err(|e| ApiError::internal(e.to_string()))?)
        }
        _ => None,
    };
    Ok(GenerateRequest {
        request_id: 0,
        prompt: Prompt::Chat {
            messages,
            tools_json,
            add_generation_prompt: true,
        },
        sampling: knobs!(req).params(),
        max_tokens: req.max_new_tokens(),
        stop: req.stop_sequences().to_vec(),
        logprobs: req.logprobs_top_n().is_some(),
        top_logprobs: req.logprobs_top_n().unwrap_or(0),
        stream: req.is_stream(),
    })
}

/// The worker request for a text completion.
pub fn completion_request(req: &CompletionRequest) -> Result<GenerateRequest, ApiError> {
    let prompt = match req.prompt.single() {
        Some(PromptInput::Text(t)) => Prompt::Text(t.to_string()),
        Some(PromptInput::Tokens(t)) => Prompt::Tokens(t.to_vec()),
        None => {
            return Err(ApiError::invalid_param(
                "prompt",
                "exactly one prompt is supported",
            ))
        }
    };
    Ok(GenerateRequest {
        request_id: 0,
        prompt,
        sampling: knobs!(req).params(),
        // Absent means OpenAI's 16; -1 (no limit) means up to the context length.
        max_tokens: match req.max_tokens {
            None => Some(COMPLETIONS_DEFAULT_MAX_TOKENS),
            Some(_) => req.max_new_tokens(),
        },
        stop: req.stop_sequences().to_vec(),
        logprobs: req.logprobs.is_some(),
        top_logprobs: req.logprobs.unwrap_or(0),
        stream: req.is_stream(),
    })
}

fn finish(reason: WireFinish) -> FinishReason {
    match reason {
        WireFinish::Length => FinishReason::Length,
        // A cancelled request has no client left to read this.
        WireFinish::Stop | WireFinish::Cancelled => FinishReason::Stop,
    }
}

fn chat_logprobs(lps: &[proto::TokenLogprob]) -> ChatLogprobs {
    ChatLogprobs {
        content: lps
            .iter()
            .map(|lp| {
                TokenLogprob::new(
                    lp.token.clone(),
                    lp.bytes.clone(),
                    lp.logprob,
                    lp.top
                        .iter()
                        .map(|t| TopLogprob::new(t.token.clone(), t.bytes.clone(), t.logprob))
                        .collect(),
                )
            })
            .collect(),
    }
}

fn completion_logprobs(lps: &[proto::TokenLogprob], start_offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = start_offset as u32;
    for lp in lps {
        out.tokens.push(lp.token.clone());
        out.token_logprobs
            .push(Some(crate::api::types::finite_logprob(lp.logprob)));
        out.top_logprobs.push(Some(
            lp.top
                .iter()
                .map(|t| {
                    (
                        t.token.clone(),
                        crate::api::types::finite_logprob(t.logprob),
                    )
                })
                .collect(),
        ));
        out.text_offset.push(offset);
        offset += lp.token.len() as u32;
    }
    out
}

/// Everything a non-streamed response needs.
struct Collected {
    text: String,
    logprobs: Vec<proto::TokenLogprob>,
    finish: WireFinish,
    usage: WireUsage,
    timings: Timings,
}

async fn collect(mut stream: GenerationStream) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            StreamEvent::Chunk {
                text: t,
                logprobs: l,
                ..
            } => {
                text.push_str(&t);
                logprobs.extend(l);
            }
            StreamEvent::Done {
                finish_reason,
                usage,
                timings,
            } => {
                return Ok(Collected {
                    text,
                    logprobs,
                    finish: finish_reason,
                    usage,
                    timings,
                })
            }
            StreamEvent::Error(e) => return Err(e.into()),
        }
    }
    Err(ApiError::worker_crashed(
        "the worker's stream ended without a result",
    ))
}

fn log_request(model: &str, usage: &WireUsage, timings: &Timings) {
    let gen_secs = timings.generation_ms / 1e3;
    let tps = if gen_secs > 0.0 {
        f64::from(usage.completion_tokens.saturating_sub(1)) / gen_secs
    } else {
        0.0
    };
    tracing::info!(
        model,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        ttft_ms = format!("{:.0}", timings.time_to_first_token_ms),
        tokens_per_s = format!("{tps:.1}"),
        "completion"
    );
}

fn lmstudio_extras(
    entry: &ModelEntry,
    usage: &WireUsage,
    timings: &Timings,
    finish: WireFinish,
) -> Value {
    let gen_secs = timings.generation_ms / 1e3;
    json!({
        "stats": {
            "tokens_per_second": if gen_secs > 0.0 { f64::from(usage.completion_tokens.saturating_sub(1)) / gen_secs } else { 0.0 },
            "time_to_first_token": timings.time_to_first_token_ms / 1e3,
            "generation_time": gen_secs,
            "stop_reason": match finish { WireFinish::Length => "maxPredictedTokensReached", _ => "eosFound" },
        },
        "model_info": {
            "arch": entry.config.model_type,
            "quant": entry.config.quantization_label(),
            "format": "mlx",
            "context_length": entry.config.max_position_embeddings,
        },
        "runtime": {
            "name": "opta-lmx-mlx",
            "version": crate::VERSION,
            "supported_formats": ["safetensors"],
        },
    })
}

/// `body` as JSON with the fields of `extra` added.
fn merged<T: serde::Serialize>(body: &T, extra: Value) -> Value {
    let mut value = serde_json::to_value(body).unwrap_or(Value::Null);
    if let (Value::Object(extra), Value::Object(obj)) = (extra, &mut value) {
        obj.extend(extra);
    }
    value
}

fn with_extras<T: serde::Serialize>(body: &T, extras: Option<Value>) -> Response {
    match extras {
        Some(extra) => axum::Json(merged(body, extra)).into_response(),
        None => axum::Json(body).into_response(),
    }
}

/// What kind of response to build from the worker's events.
pub enum Endpoint {
    Chat,
    /// Text completion; `echo` is the prompt to put before the completion.
    Completion {
        echo: Option<String>,
    },
}

/// Runs `req` on `entry`'s worker and answers in the endpoint's shape. `permit` is the
/// request's place in the model's admission count, held until the response ends.
pub async fn respond(
    state: Arc<AppState>,
    entry: ModelEntry,
    permit: Permit,
    req: GenerateRequest,
    endpoint: Endpoint,
    include_usage: bool,
    dialect: Dialect,
) -> Result<Response, ApiError> {
    let streaming = req.stream;
    let want_logprobs = req.logprobs;
    let stream = state.manager.generate(&entry.id, req).await?;
    if streaming {
        let stats = dialect == Dialect::LmStudio;
        return Ok(sse_response(
            stream,
            entry,
            permit,
            endpoint,
            include_usage,
            want_logprobs,
            stats,
        ));
    }
    let c = collect(stream).await?;
    drop(permit);
    log_request(&entry.id, &c.usage, &c.timings);
    let usage = Usage::with_cached(
        c.usage.prompt_tokens,
        c.usage.completion_tokens,
        c.usage.cached_prompt_tokens,
    );
    let extras = (dialect == Dialect::LmStudio)
        .then(|| lmstudio_extras(&entry, &c.usage, &c.timings, c.finish));
    Ok(match endpoint {
        Endpoint::Chat => {
            let body = ChatCompletion::new(
                entry.id.clone(),
                AssistantMessage::text(c.text),
                finish(c.finish),
                want_logprobs.then(|| chat_logprobs(&c.logprobs)),
                usage,
            );
            with_extras(&body, extras)
        }
        Endpoint::Completion { echo } => {
            let prefix = echo.unwrap_or_default();
            let logprobs = want_logprobs.then(|| completion_logprobs(&c.logprobs, prefix.len()));
            let body = Completion::new(
                entry.id.clone(),
                format!("{prefix}{}", c.text),
                finish(c.finish),
                logprobs,
                usage,
            );
            with_extras(&body, extras)
        }
    })
}

/// State of one SSE response while it streams.
struct SseState {
    stream: GenerationStream,
    meta: StreamMeta,
    endpoint: Endpoint,
    include_usage: bool,
    want_logprobs: bool,
    started: bool,
    /// Events queued to send before reading more from the worker.
    queue: std::collections::VecDeque<String>,
    done: bool,
    model: String,
    text_offset: usize,
    began: Instant,
    /// LM Studio dialect: the final chunk carries `stats` and `model_info`.
    stats: Option<ModelEntry>,
    /// Dropped with the body: when the stream ends or its client goes away.
    _permit: Permit,
}

fn sse_response(
    stream: GenerationStream,
    entry: ModelEntry,
    permit: Permit,
    endpoint: Endpoint,
    include_usage: bool,
    want_logprobs: bool,
    stats: bool,
) -> Response {
    let meta = match endpoint {
        Endpoint::Chat => StreamMeta::chat(entry.id.clone()),
        Endpoint::Completion { .. } => StreamMeta::completion(entry.id.clone()),
    };
    let state = SseState {
        stream,
        meta,
        endpoint,
        include_usage,
        want_logprobs,
        started: false,
        queue: Default::default(),
        done: false,
        model: entry.id.clone(),
        text_offset: 0,
        began: Instant::now(),
        stats: stats.then_some(entry),
        _permit: permit,
    };
    // Dropping this stream (the client went away) drops the GenerationStream, which
    // cancels the request in the worker.
    let body = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.queue.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(ev), st));
            }
            if st.done {
                return None;
            }
            st.fill().await;
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, sse::CONTENT_TYPE)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

impl SseState {
    /// Reads one worker event and queues the SSE events it becomes.
    async fn fill(&mut self) {
        if !self.started {
            self.started = true;
            if let Endpoint::Chat = self.endpoint {
                self.queue.push_back(sse::event(&self.meta.role_chunk()));
            }
            if let Endpoint::Completion { echo: Some(p) } = &self.endpoint {
                let chunk = self.meta.text_chunk(p.clone(), None, None);
                self.text_offset = p.len();
                self.queue.push_back(sse::event(&chunk));
            }
            return;
        }
        match self.stream.next().await {
            Some(StreamEvent::Chunk { text, logprobs, .. }) => {
                let event =
                    match self.endpoint {
                        Endpoint::Chat => sse::event(&self.meta.content_chunk(
                            text,
                            self.want_logprobs.then(|| chat_logprobs(&logprobs)),
                        )),
                        Endpoint::Completion { .. } => {
                            let lp = self
                                .want_logprobs
                                .then(|| completion_logprobs(&logprobs, self.text_offset));
                            self.text_offset += text.len();
                            sse::event(&self.meta.text_chunk(text, lp, None))
                        }
                    };
                self.queue.push_back(event);
            }
            Some(StreamEvent::Done {
                finish_reason,
                usage,
                timings,
            }) => {
                log_request(&self.model, &usage, &timings);
                let extras = self
                    .stats
                    .as_ref()
                    .map(|e| lmstudio_extras(e, &usage, &timings, finish_reason));
                let reason = finish(finish_reason);
                let usage = Usage::with_cached(
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cached_prompt_tokens,
                );
                match self.endpoint {
                    Endpoint::Chat => {
                        let chunk = self.meta.finish_chunk(reason);
                        self.queue.push_back(match extras {
                            Some(extra) => sse::event(&merged(&chunk, extra)),
                            None => sse::event(&chunk),
                        });
                        if self.include_usage {
                            self.queue
                                .push_back(sse::event(&self.meta.usage_chunk(usage)));
                        }
                    }
                    Endpoint::Completion { .. } => {
                        self.queue.push_back(sse::event(&self.meta.text_chunk(
                            String::new(),
                            None,
                            Some(reason),
                        )));
                        if self.include_usage {
                            self.queue
                                .push_back(sse::event(&self.meta.completion_usage_chunk(usage)));
                        }
                    }
                }
                self.queue.push_back(sse::DONE.to_string());
                self.done = true;
            }
            Some(StreamEvent::Error(e)) => {
                // An error mid-stream: one OpenAI-shaped error event, and no [DONE].
                tracing::warn!(model = %self.model, error = %e, elapsed_ms = self.began.elapsed().as_millis() as u64, "stream failed");
                self.queue.push_back(ApiError::from(e).to_sse_event());
                self.done = true;
            }
            None => {
                self.queue.push_back(
                    ApiError::worker_crashed("the worker's stream ended without a result")
                        .to_sse_event(),
                );
                self.done = true;
            }
        }
    }
}
