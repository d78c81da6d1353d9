//! One path for every generation request, whatever its API: resolve the model, admit the
//! request (429 past the model's limit), load the model when it is not loaded (JIT, or a
//! crashed one again), start the generation, and wait until the worker has accepted the
//! prompt, so that a refused prompt (too long for the context) is a plain HTTP error before
//! any response has begun. Each API's request adapter builds a [`Job`]; its renderer turns
//! the [`Started`] generation into a response.

use std::sync::Arc;
use std::time::Duration;

use opta_lmx_shared::model_dir::ModelKind;
use opta_lmx_shared::protocol::{EmbedInput, EmbedRequest, GenerateRequest, OutputSpec, Prompt};

use crate::admission::{Busy, Permit};
use crate::api::SamplingFields;
use crate::discovery::ModelEntry;
use crate::manager::{GenerationStream, ManagerError, ModelState, StreamEvent};
use crate::resolve::{self, ResolveError};
use crate::state::AppState;

/// What an API asks to generate, before the model is known.
#[derive(Debug, Clone)]
pub struct Job {
    /// The model the client named (`None`: the default, or the one loaded model).
    pub model: Option<String>,
    /// LM Studio's per-request idle TTL for a model this request loads.
    pub ttl: Option<u64>,
    pub prompt: Prompt,
    /// Defaulted per model once it is known.
    pub sampling: SamplingFields,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub logprobs: Option<u32>,
    /// The answer's shape: JSON, tool calls.
    pub output: OutputSpec,
    /// The client's `Prefer: wait=N`: answer 503 rather than wait longer for a load.
    pub wait: Option<Duration>,
}

/// A generation the worker accepted.
pub struct Started {
    pub entry: ModelEntry,
    /// The request's place in the model's admission count; dropped with the response.
    pub permit: Permit,
    pub stream: GenerationStream,
    pub prompt_tokens: u32,
    /// Seconds this request waited for its model to load (`None`: it was loaded already).
    pub load_seconds: Option<f64>,
}

/// Why a request did not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// JIT loading is off and the model is not loaded.
    #[error("model {0} is not loaded")]
    NotLoaded(String),
    /// The load would take longer than the client's `Prefer: wait`; it goes on meanwhile.
    #[error("model {model} is still loading")]
    WouldWait {
        model: String,
        wait_secs: u64,
        retry_after_secs: u64,
    },
    #[error("the load task failed: {0}")]
    LoadTask(String),
    /// A chat or text completion for an embedding model, or the other way round.
    #[error("{0}")]
    WrongKind(String),
}

/// Refuses a model that does not serve `wanted`.
fn check_kind(entry: &ModelEntry, wanted: ModelKind) -> Result<(), DispatchError> {
    if entry.kind == wanted {
        return Ok(());
    }
    Err(DispatchError::WrongKind(match entry.kind {
        ModelKind::Embedding => format!(
            "The model `{}` is an embedding model: it answers /v1/embeddings, not chat or \
             text completions.",
            entry.id
        ),
        ModelKind::Generation => format!(
            "The model `{}` is a text generation model: it does not answer /v1/embeddings.",
            entry.id
        ),
    }))
}

/// Embeds `inputs` with the model `model` names (loading it as a generation would be);
/// returns the model, one vector per input and the tokens read.
pub async fn embed(
    state: &Arc<AppState>,
    model: Option<&str>,
    inputs: Vec<EmbedInput>,
    ttl: Option<u64>,
    wait: Option<Duration>,
) -> Result<(ModelEntry, Vec<Vec<f32>>, u32), DispatchError> {
    let entry = resolve::model_for_request(state, model).await?;
    check_kind(&entry, ModelKind::Embedding)?;
    let (_permit, _) = admit_and_load(state, &entry, ttl, wait).await?;
    let req = EmbedRequest {
        request_id: 0,
        inputs,
    };
    let mut stream = state.manager.embed(&entry.id, req).await?;
    match stream.next().await {
        Some(StreamEvent::Embeddings {
            vectors,
            prompt_tokens,
        }) => Ok((entry, vectors, prompt_tokens)),
        Some(StreamEvent::Error(e)) => Err(e.into()),
        _ => Err(ManagerError::Crashed {
            model: entry.id.clone(),
            status: "the worker answered an embedding request with something else".into(),
            stderr_tail: String::new(),
        }
        .into()),
    }
}

/// Runs `job` up to the worker's acceptance of its prompt.
pub async fn start(state: &Arc<AppState>, job: Job) -> Result<Started, DispatchError> {
    let entry = resolve::model_for_request(state, job.model.as_deref()).await?;
    check_kind(&entry, ModelKind::Generation)?;
    let (permit, load_seconds) = admit_and_load(state, &entry, job.ttl, job.wait).await?;
    let defaults = state.sampling_defaults(&entry);
    let req = GenerateRequest {
        request_id: 0,
        prompt: job.prompt,
        sampling: job.sampling.to_params(&defaults),
        // LM Studio's "limit response length": a default and a cap per model.
        max_tokens: state
            .config
            .models
            .max_output_tokens
            .apply(&entry.id, job.max_tokens),
        stop: job.stop,
        logprobs: job.logprobs,
        output: job.output,
    };
    let mut stream = state.manager.generate(&entry.id, req).await?;
    let prompt_tokens = match stream.next().await {
        Some(StreamEvent::Accepted { prompt_tokens }) => prompt_tokens,
        Some(StreamEvent::Error(e)) => return Err(e.into()),
        Some(other) => {
            // Output before acceptance breaks the protocol; serve it rather than lose it.
            stream.push_front(other);
            0
        }
        None => {
            return Err(ManagerError::Crashed {
                model: entry.id.clone(),
                status: "the worker's stream ended before the prompt was accepted".into(),
                stderr_tail: String::new(),
            }
            .into())
        }
    };
    Ok(Started {
        entry,
        permit,
        stream,
        prompt_tokens,
        load_seconds,
    })
}

/// Admits the request and, when its model is not ready, loads it (JIT, or a crashed model
/// again) within the client's `Prefer: wait`; with the load's seconds when there was one.
async fn admit_and_load(
    state: &Arc<AppState>,
    entry: &ModelEntry,
    ttl: Option<u64>,
    wait: Option<Duration>,
) -> Result<(Permit, Option<f64>), DispatchError> {
    let ready = state.manager.is_ready(&entry.id);
    if !ready {
        // A model that crashed is started again on its next request, JIT loading or not.
        let crashed = state
            .manager
            .models()
            .iter()
            .any(|m| m.model_id == entry.id && m.state == ModelState::Crashed);
        if !state.config.models.jit_loading && !crashed {
            return Err(DispatchError::NotLoaded(entry.id.clone()));
        }
    }
    // Requests waiting for the load count too: they will all reach the worker at once.
    let permit = state.admission.admit(&entry.id)?;
    let mut load_seconds = None;
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
                load_seconds = secs;
            }
            Some(wait) => load_seconds = Some(load_within(state, entry, ttl, wait).await?),
        }
    }
    Ok((permit, load_seconds))
}

/// Loads `entry` for a client that waits at most `wait` (`Prefer: wait=N`): the load runs in
/// its own task, so it goes on when the client is answered 503 (at once when the load is
/// expected to take longer than `wait`, else when `wait` runs out) and a retry finds the
/// model loaded. Returns the load's seconds.
async fn load_within(
    state: &Arc<AppState>,
    entry: &ModelEntry,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<f64, DispatchError> {
    // A background load failed since the last such request: say why, once, rather than
    // sending the client around again.
    if let Some(err) = state.admission.take_failure(&entry.id) {
        return Err(err.into());
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
                    state.admission.background_load_failed(&entry.id, e.clone());
                }
            }
            result
        })
    };
    let not_yet = || DispatchError::WouldWait {
        model: entry.id.clone(),
        wait_secs: wait.as_secs(),
        retry_after_secs: state
            .admission
            .retry_after_secs(&entry.id, entry.weights_bytes),
    };
    if wait < expected {
        return Err(not_yet());
    }
    match tokio::time::timeout(wait, task).await {
        Ok(Ok(Ok(info))) => Ok(info.load_seconds),
        Ok(Ok(Err(e))) => {
            // This client hears the failure itself; the next one starts afresh.
            state.admission.take_failure(&entry.id);
            Err(e.into())
        }
        Ok(Err(e)) => Err(DispatchError::LoadTask(e.to_string())),
        Err(_) => Err(not_yet()),
    }
}
