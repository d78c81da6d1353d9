//! From a started generation to a response: one loop serves every API, streamed (SSE) or
//! whole, and each API dialect supplies a [`Renderer`] that says what its events and its body
//! look like. Adding an API means one renderer here and one request adapter in `routes`.

mod anthropic;
mod lmstudio;
mod lmstudio_chat;
mod openai;
mod responses;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use opta_lmx_shared::protocol::{Delta, FinishReason, Timings, TokenLogprob, Usage};
use serde_json::Value;
use tracing::Instrument;

pub use anthropic::MessagesRenderer;
pub use lmstudio::LmStudio;
pub use lmstudio_chat::LmsChatRenderer;
pub use openai::{ChatRenderer, CompletionRenderer};
pub use responses::ResponsesRenderer;

use crate::admission::Permit;
use crate::api::{sse, ApiError};
use crate::dispatch::Started;
use crate::manager::{GenerationStream, StreamEvent};
use crate::metrics::ServedBy;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub enum Sse {
    /// `data: <json>`.
    Data(Value),
    /// `event: <name>` then `data: <json>`.
    Named(&'static str, Value),
    /// OpenAI's terminator, `data: [DONE]`.
    Done,
    /// A comment line, which clients skip: a keep-alive.
    KeepAlive,
}

impl Sse {
    /// `value` as a `data:` event.
    pub fn data<T: serde::Serialize>(value: &T) -> Sse {
        Sse::Data(serde_json::to_value(value).unwrap_or(Value::Null))
    }

    /// The event as it is written on the wire.
    pub fn frame(&self) -> String {
        match self {
            Sse::Data(v) => sse::event(v),
            Sse::Named(name, v) => sse::named_event(name, v),
            Sse::Done => sse::DONE.to_string(),
            Sse::KeepAlive => sse::KEEP_ALIVE.to_string(),
        }
    }
}

/// How a generation ended.
#[derive(Debug, Clone, Copy)]
pub struct End {
    pub finish: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    /// Whether the model called a tool (OpenAI's `finish_reason: "tool_calls"`).
    pub called_tools: bool,
}

/// One tool call of a whole response, assembled from its deltas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectedCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Everything a whole response says, gathered from the worker's deltas.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub text: String,
    pub reasoning: String,
    pub tool_calls: Vec<CollectedCall>,
    pub logprobs: Vec<TokenLogprob>,
}

impl Collected {
    fn add(&mut self, deltas: Vec<Delta>, logprobs: Vec<TokenLogprob>) {
        for d in deltas {
            match d {
                Delta::Text { text, .. } => self.text.push_str(&text),
                Delta::Reasoning { text, .. } => self.reasoning.push_str(&text),
                Delta::ToolCall {
                    index,
                    id,
                    name,
                    arguments,
                    ..
                } => {
                    let i = index as usize;
                    if self.tool_calls.len() <= i {
                        self.tool_calls.resize_with(i + 1, CollectedCall::default);
                    }
                    let call = &mut self.tool_calls[i];
                    if let Some(id) = id {
                        call.id = id;
                    }
                    if let Some(name) = name {
                        call.name = name;
                    }
                    call.arguments.push_str(&arguments);
                }
            }
        }
        self.logprobs.extend(logprobs);
    }
}

/// What an API dialect's responses look like. The loop calls `start`, then `chunk` for each
/// piece of output, then `done` (or `error` when the generation fails after the stream began)
/// when streaming; `body` once when not.
pub trait Renderer: Send + 'static {
    /// Events that open a stream.
    fn start(&mut self) -> Vec<Sse>;
    /// Events for one chunk of output (`logprobs`: one per token, when asked for).
    fn chunk(&mut self, deltas: &[Delta], logprobs: &[TokenLogprob]) -> Vec<Sse>;
    /// Events that close a stream that finished.
    fn done(&mut self, end: &End) -> Vec<Sse>;
    /// Events for a failure after the stream began; nothing follows them.
    fn error(&mut self, err: &ApiError) -> Vec<Sse> {
        vec![Sse::data(&err.body())]
    }
    /// What a stream sends while nothing else is ready (a long prefill, a queue).
    fn keep_alive(&mut self) -> Sse {
        Sse::KeepAlive
    }
    /// Events for prefill progress (`done` of `total` prompt tokens read); most dialects
    /// have none, and their keep-alives cover the wait.
    fn progress(&mut self, _done: u32, _total: u32) -> Vec<Sse> {
        Vec::new()
    }
    /// The whole (non-streamed) response.
    fn body(&mut self, out: Collected, end: &End) -> Value;
}

/// Answers `started` with `renderer`'s shapes: an SSE stream, or one JSON body.
pub async fn respond<R: Renderer>(
    started: Started,
    mut renderer: R,
    stream: bool,
) -> Result<Response, ApiError> {
    let Started {
        entry,
        permit,
        stream: events,
        ..
    } = started;
    if stream {
        return Ok(sse_response(events, renderer, permit, entry.id));
    }
    let (out, end) = collect(events).await?;
    drop(permit);
    finished(&entry.id, &end);
    let mut response = axum::Json(renderer.body(out, &end)).into_response();
    response.extensions_mut().insert(ServedBy(entry.id));
    Ok(response)
}

async fn collect(mut events: GenerationStream) -> Result<(Collected, End), ApiError> {
    let mut out = Collected::default();
    while let Some(event) = events.next().await {
        match event {
            StreamEvent::Accepted { .. } | StreamEvent::Progress { .. } => {}
            StreamEvent::Chunk { deltas, logprobs } => out.add(deltas, logprobs),
            StreamEvent::Done {
                finish_reason,
                usage,
                timings,
            } => {
                let end = End {
                    finish: finish_reason,
                    usage,
                    timings,
                    called_tools: !out.tool_calls.is_empty(),
                };
                return Ok((out, end));
            }
            StreamEvent::Error(e) => return Err(e.into()),
            StreamEvent::Embeddings { .. } => break,
        }
    }
    Err(ApiError::worker_crashed(
        "the worker's stream ended without a result",
    ))
}

/// A generation's end: logged and counted.
fn finished(model: &str, end: &End) {
    crate::metrics::global().generated(model, &end.usage, &end.timings);
    tracing::info!(
        model,
        prompt_tokens = end.usage.prompt_tokens,
        completion_tokens = end.usage.completion_tokens,
        ttft_ms = format!("{:.0}", end.timings.time_to_first_token_ms),
        tokens_per_s = format!("{:.1}", tokens_per_second(&end.usage, &end.timings)),
        "completion"
    );
}

/// Decode speed: tokens after the first over the time spent generating them.
pub fn tokens_per_second(usage: &Usage, timings: &Timings) -> f64 {
    let secs = timings.generation_ms / 1e3;
    if secs > 0.0 {
        f64::from(usage.completion_tokens.saturating_sub(1)) / secs
    } else {
        0.0
    }
}

/// How long a stream may stay silent before it gets a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// One SSE response while it streams.
struct Streaming<R> {
    events: GenerationStream,
    renderer: R,
    /// Frames to send before reading more from the worker.
    queue: VecDeque<String>,
    started: bool,
    done: bool,
    called_tools: bool,
    model: String,
    began: Instant,
    /// When a frame was last queued: worker events that send nothing (prefill progress) do
    /// not hold back the keep-alive.
    last_frame: Instant,
    /// The request's span (its id), entered whenever the body is polled after the handler
    /// returned.
    span: tracing::Span,
    /// Dropped with the body: when the stream ends or its client goes away.
    _permit: Permit,
}

fn sse_response<R: Renderer>(
    events: GenerationStream,
    renderer: R,
    permit: Permit,
    model: String,
) -> Response {
    let served_by = model.clone();
    let frames = sse_frames(events, renderer, permit, model, tracing::Span::current());
    sse_body(frames, served_by)
}

/// The SSE frames of a started generation in `renderer`'s shapes, keep-alives included;
/// `span` is entered whenever the stream is polled. For a route that sends events of its
/// own before the generation starts (LM Studio's model-load events).
pub fn sse_frames<R: Renderer>(
    events: GenerationStream,
    renderer: R,
    permit: Permit,
    model: String,
    span: tracing::Span,
) -> impl futures_util::Stream<Item = Result<String, Infallible>> + Send + 'static {
    let state = Streaming {
        events,
        renderer,
        queue: VecDeque::new(),
        started: false,
        done: false,
        called_tools: false,
        model,
        began: Instant::now(),
        last_frame: Instant::now(),
        span,
        _permit: permit,
    };
    // Dropping this stream (the client went away) drops the GenerationStream, which
    // cancels the request in the worker.
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(frame) = st.queue.pop_front() {
                return Some((Ok::<_, Infallible>(frame), st));
            }
            if st.done {
                return None;
            }
            let span = st.span.clone();
            st.fill().instrument(span).await;
        }
    })
}

/// An SSE response of `frames`, counted for `served_by` in the metrics.
pub fn sse_body<S>(frames: S, served_by: String) -> Response
where
    S: futures_util::Stream<Item = Result<String, Infallible>> + Send + 'static,
{
    Response::builder()
        .header(header::CONTENT_TYPE, sse::CONTENT_TYPE)
        .header(header::CACHE_CONTROL, "no-cache")
        .extension(ServedBy(served_by))
        .body(Body::from_stream(frames))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

impl<R: Renderer> Streaming<R> {
    fn push(&mut self, events: Vec<Sse>) {
        if !events.is_empty() {
            self.last_frame = Instant::now();
        }
        self.queue.extend(events.iter().map(Sse::frame));
    }

    /// Reads one worker event and queues the frames it becomes.
    async fn fill(&mut self) {
        if !self.started {
            self.started = true;
            let events = self.renderer.start();
            self.push(events);
            return;
        }
        // A long prefill (or a queue) can keep the worker quiet for a while; an SSE comment
        // keeps clients with short read timeouts and idle-closing proxies from giving up.
        let quiet = KEEP_ALIVE.saturating_sub(self.last_frame.elapsed());
        let next = match tokio::time::timeout(quiet, self.events.next()).await {
            Ok(next) => next,
            Err(_) => {
                let keep_alive = self.renderer.keep_alive();
                self.push(vec![keep_alive]);
                return;
            }
        };
        let events = match next {
            Some(StreamEvent::Accepted { .. }) => Vec::new(),
            Some(StreamEvent::Progress { done, total }) => self.renderer.progress(done, total),
            Some(StreamEvent::Chunk { deltas, logprobs }) => {
                self.called_tools |= deltas.iter().any(|d| matches!(d, Delta::ToolCall { .. }));
                self.renderer.chunk(&deltas, &logprobs)
            }
            Some(StreamEvent::Done {
                finish_reason,
                usage,
                timings,
            }) => {
                let end = End {
                    finish: finish_reason,
                    usage,
                    timings,
                    called_tools: self.called_tools,
                };
                finished(&self.model, &end);
                self.done = true;
                self.renderer.done(&end)
            }
            Some(StreamEvent::Error(e)) => {
                // An error mid-stream: the dialect's error event, and no normal end.
                tracing::warn!(model = %self.model, error = %e, elapsed_ms = self.began.elapsed().as_millis() as u64, "stream failed");
                self.done = true;
                self.renderer.error(&ApiError::from(e))
            }
            // The worker broke the protocol (vectors for a generation); as if it hung up.
            Some(StreamEvent::Embeddings { .. }) | None => {
                self.done = true;
                self.renderer.error(&ApiError::worker_crashed(
                    "the worker's stream ended without a result",
                ))
            }
        };
        self.push(events);
    }
}
