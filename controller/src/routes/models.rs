//! The model listings: OpenAI's `/v1/models`, LM Studio's `/api/v0/models` (with each
//! model's state, loaded context and sampling defaults) and `/api/v1/models`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::api::models::{ModelList, ModelObject};
use crate::api::ApiError;
use crate::discovery::ModelEntry;
use crate::manager::{ModelState, ModelStatus};
use crate::state::AppState;

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Models to list: with JIT loading on, every model that could be loaded (as LM Studio
/// does); with it off, only loaded ones.
fn listed_models(state: &AppState) -> Vec<ModelEntry> {
    let loaded: Vec<ModelEntry> = state
        .manager
        .models()
        .into_iter()
        .filter(|m| matches!(m.state, ModelState::Ready))
        .filter_map(|m| state.discovery.resolve(&m.model_id))
        .collect();
    if !state.config.models.jit_loading {
        return loaded;
    }
    let mut all = state.discovery.list();
    for m in loaded {
        if !all.iter().any(|e| e.id == m.id) {
            all.push(m);
        }
    }
    all
}

fn model_object(e: &ModelEntry) -> ModelObject {
    let created = std::fs::metadata(e.dir.join("config.json"))
        .and_then(|m| m.modified())
        .map(unix)
        .unwrap_or(0);
    ModelObject::new(e.id.clone(), created, e.publisher().to_string())
}

pub async fn v1_models(State(s): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList::new(
        listed_models(&s).iter().map(model_object).collect(),
    ))
}

pub async fn v1_model(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    listed_models(&s)
        .iter()
        .find(|e| e.id == id)
        .map(|e| Json(model_object(e)))
        .ok_or_else(|| ApiError::model_not_found(id))
}

pub(crate) fn state_name(s: Option<&ModelStatus>) -> &'static str {
    match s.map(|s| &s.state) {
        Some(ModelState::Ready) => "loaded",
        Some(ModelState::Loading) => "loading",
        Some(ModelState::Unloading) => "unloading",
        Some(ModelState::Crashed) => "crashed",
        None => "not-loaded",
    }
}

/// The context a running worker loaded, for `loaded_context_length`.
fn loaded_context(status: Option<&ModelStatus>) -> Option<u32> {
    status
        .filter(|s| s.state == ModelState::Ready)
        .and_then(|s| s.facts.as_ref())
        .map(|f| f.context_length)
}

fn lms_model(s: &AppState, e: &ModelEntry, status: Option<&ModelStatus>) -> Value {
    let mut v = json!({
        "id": e.id,
        "object": "model",
        "type": e.lms_type(),
        "publisher": e.publisher(),
        "arch": e.config.model_type,
        "compatibility_type": "mlx",
        "quantization": e.config.quantization_label(),
        "state": state_name(status),
        "max_context_length": e.config.max_position_embeddings,
        // What a request that leaves a sampling field out gets, per field.
        "sampling_defaults": s.sampling_defaults(e),
    });
    if let Some(n) = loaded_context(status) {
        v["loaded_context_length"] = json!(n);
    }
    v
}

pub async fn v0_models(State(s): State<Arc<AppState>>) -> Json<Value> {
    let statuses = s.manager.models();
    // One pass over the folders: each config and weight listing is read once per request.
    let (mut entries, unloadable) = s.discovery.scan();
    for st in &statuses {
        if !entries.iter().any(|e| e.id == st.model_id) {
            entries.extend(s.discovery.resolve(&st.model_id));
        }
    }
    let data: Vec<Value> = entries
        .iter()
        .map(|e| lms_model(&s, e, statuses.iter().find(|st| st.model_id == e.id)))
        .collect();
    // Folders that look like models but cannot load, with the reason, rather than nothing.
    let unloadable: Vec<Value> = unloadable
        .into_iter()
        .map(|u| json!({"id": u.id, "path": u.dir, "reason": u.reason}))
        .collect();
    Json(json!({"object": "list", "data": data, "unloadable": unloadable}))
}

pub async fn v0_model(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = match s.discovery.lookup(&id) {
        crate::discovery::Lookup::Found(entry) => entry,
        crate::discovery::Lookup::Unloadable(u) => {
            let why = format!("The model `{id}` cannot be loaded: {}.", u.reason);
            return Err(ApiError::model_unavailable(id.as_str(), why));
        }
        crate::discovery::Lookup::Missing => return Err(ApiError::model_not_found(id.as_str())),
    };
    let statuses = s.manager.models();
    Ok(Json(lms_model(
        &s,
        &entry,
        statuses.iter().find(|st| st.model_id == entry.id),
    )))
}

pub async fn v1_lms_models(State(s): State<Arc<AppState>>) -> Json<Value> {
    let statuses = s.manager.models();
    let models: Vec<Value> = s
        .discovery
        .list()
        .iter()
        .map(|e| {
            let st = statuses.iter().find(|st| st.model_id == e.id);
            json!({
                "type": e.lms_v1_type(),
                "key": e.id,
                "publisher": e.publisher(),
                "architecture": e.config.model_type,
                "quantization": e.config.quantization_label(),
                "format": "mlx",
                "max_context_length": e.config.max_position_embeddings,
                "size_bytes": e.weights_bytes,
                "loaded_context_length": loaded_context(st),
                "loaded_instances": match loaded_context(st) {
                    Some(n) => json!([{"id": e.id, "config": {"context_length": n}}]),
                    None => json!([]),
                },
            })
        })
        .collect();
    Json(json!({"models": models}))
}
