//! `POST /v1/embeddings` and `POST /api/v0/embeddings`: one batch of inputs, one answer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use opta_lmx_shared::protocol::{Timings, Usage};

use crate::admission;
use crate::api::embeddings::{self, EmbeddingsRequest};
use crate::api::{ApiError, ApiJson};
use crate::dispatch;
use crate::metrics::{self, ServedBy};
use crate::state::AppState;

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let encoding = req.encoding()?;
    let inputs = req.inputs()?;
    let wait = admission::prefer_wait(&headers);
    let (entry, vectors, prompt_tokens) =
        dispatch::embed(&state, req.model.as_deref(), inputs, req.ttl, wait)
            .await
            .map_err(name_input)?;
    let usage = Usage {
        prompt_tokens,
        ..Usage::default()
    };
    metrics::global().generated(&entry.id, &usage, &Timings::default());
    let body = embeddings::body(&entry.id, vectors, prompt_tokens, encoding, req.dimensions)?;
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(ServedBy(entry.id));
    Ok(response)
}

/// The worker's refusals name the input (`input[3] is empty`); the 400 names the field too.
fn name_input(e: dispatch::DispatchError) -> ApiError {
    match ApiError::from(e).for_prompt_field("input") {
        ApiError::InvalidRequest {
            message,
            param: None,
        } => ApiError::invalid_param("input", message),
        other => other,
    }
}
