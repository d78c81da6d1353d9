//! LM Studio's native chat, `POST /api/v1/chat`: the request becomes a dispatch job (its
//! stored chat continued, its `reasoning` setting checked against the model's template), and
//! the answer is LM Studio's body or event stream. A streamed request that loads its model
//! starts its stream before the load, so the client sees `model_load.*` events meanwhile.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::{self, BoxStream, StreamExt};
use opta_lmx_shared::protocol::{OutputSpec, Prompt};
use serde_json::Value;

use crate::admission;
use crate::api::lmstudio::LmsChatRequest;
use crate::api::{ApiError, Generation};
use crate::capabilities::Capabilities;
use crate::dispatch::{self, Job, Started};
use crate::render::{self, LmsChatRenderer, Renderer, Sse};
use crate::resolve;
use crate::state::AppState;

/// The request field a prompt too long for the context is reported against.
const PROMPT_FIELD: &str = "input";

/// A stored chat to keep with the answer: the state, and the chat up to this user turn.
type Store = Option<(Arc<AppState>, Vec<Value>)>;

pub async fn chat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Generation<LmsChatRequest>,
) -> Result<Response, ApiError> {
    let entry = resolve::model_for_request(&state, req.shared.model.as_deref()).await?;
    // Checked before any load: a setting the template cannot apply is the client's error.
    let kwargs = match &req.reasoning {
        Some(setting) => Capabilities::of_dir(&entry.dir)
            .reasoning
            .template_kwargs(setting)
            .map_err(|why| ApiError::invalid_param("reasoning", why))?,
        None => None,
    };
    let history = match &req.previous_response_id {
        Some(id) => state.lms_chats.get(id).ok_or_else(|| {
            ApiError::not_found(format!(
                "No stored response with id '{id}' (previous_response_id); chats are kept in \
                 memory, the most recent server.response_store_size of them."
            ))
        })?,
        None => Vec::new(),
    };
    let chat = req.conversation(history);
    let job = Job {
        // The model just resolved, so a default or the one loaded model cannot change under it.
        model: Some(entry.id.clone()),
        ttl: req.shared.ttl,
        prompt: Prompt::Chat {
            messages_json: Value::Array(chat.clone()).to_string(),
            tools_json: None,
            add_generation_prompt: true,
            template_kwargs_json: kwargs.map(|k| k.to_string()),
        },
        sampling: req.sampling.clone(),
        max_tokens: req.max_new_tokens(),
        stop: req.stop_sequences().to_vec(),
        logprobs: None,
        output: OutputSpec::default(),
        wait: admission::prefer_wait(&headers),
    };
    let store: Store = req.stores().then(|| (Arc::clone(&state), chat));
    let streamed = req.is_stream();
    // Only a load this request will wait for gets events; with JIT loading off or a
    // `Prefer: wait`, a refusal is still a plain HTTP error.
    let loads = state.config.models.jit_loading && job.wait.is_none();
    if streamed && loads && !state.manager.is_ready(&entry.id) {
        return Ok(stream_with_load(state, entry.id, job, store));
    }
    let started = dispatch::start(&state, job)
        .await
        .map_err(|e| ApiError::from(e).for_prompt_field(PROMPT_FIELD))?;
    let renderer = LmsChatRenderer::new(
        &started.entry.id,
        started.prompt_tokens,
        started.load_seconds,
        store,
    );
    render::respond(started, renderer, streamed).await
}

type Frames = BoxStream<'static, Result<String, Infallible>>;

fn frames(events: impl IntoIterator<Item = Sse>) -> Frames {
    let frames: Vec<_> = events.into_iter().map(|e| Ok(e.frame())).collect();
    stream::iter(frames).boxed()
}

/// The stream of a request whose model is not loaded: `chat.start` and `model_load.start` at
/// once, keep-alives while the model loads, then `model_load.end` and the generation's own
/// events. A load that fails is an `error` event and an empty `chat.end`.
fn stream_with_load(state: Arc<AppState>, model: String, job: Job, mut store: Store) -> Response {
    let span = tracing::Span::current();
    let opening = frames([
        LmsChatRenderer::chat_start(&model),
        LmsChatRenderer::load_start(&model),
    ]);
    let load = Box::pin(async move {
        dispatch::start(&state, job)
            .await
            .map_err(|e| ApiError::from(e).for_prompt_field(PROMPT_FIELD))
    });
    // `Some(result)` once the load and the prompt's acceptance are over, `None` for each
    // quiet stretch before.
    let waiting = stream::unfold(Some(load), |load| async move {
        let mut load = load?;
        match tokio::time::timeout(render::KEEP_ALIVE, &mut load).await {
            Ok(result) => Some((Some(result), None)),
            Err(_) => Some((None, Some(load))),
        }
    });
    let served_by = model.clone();
    let rest = waiting.flat_map(move |step| match step {
        None => frames([Sse::KeepAlive]),
        Some(Ok(started)) => after_load(started, store.take(), span.clone()),
        Some(Err(e)) => {
            let mut failed = LmsChatRenderer::new(&model, 0, None, None).announced();
            frames(failed.error(&e))
        }
    });
    render::sse_body(opening.chain(rest), served_by)
}

/// The load's end, then the generation streamed as any other.
fn after_load(started: Started, store: Store, span: tracing::Span) -> Frames {
    let Started {
        entry,
        permit,
        stream: events,
        prompt_tokens,
        load_seconds,
    } = started;
    let loaded = frames(LmsChatRenderer::load_end(
        &entry.id,
        load_seconds.unwrap_or(0.0),
    ));
    let renderer = LmsChatRenderer::new(&entry.id, prompt_tokens, load_seconds, store).announced();
    loaded
        .chain(render::sse_frames(events, renderer, permit, entry.id, span))
        .boxed()
}
