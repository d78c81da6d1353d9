//! The model listings: OpenAI's `/v1/models`, LM Studio's `/api/v0/models` (with each
//! model's state, loaded context and sampling defaults) and `/api/v1/models`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use opta_lmx_shared::model_dir::{self, ModelConfig, ModelKind};

use crate::api::models::{ModelList, ModelObject};
use crate::api::ApiError;
use crate::capabilities::Capabilities;
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

fn model_object(s: &AppState, e: &ModelEntry) -> ModelObject {
    let created = std::fs::metadata(e.dir.join("config.json"))
        .and_then(|m| m.modified())
        .map(unix)
        .unwrap_or(0);
    let mut m = ModelObject::new(e.id.clone(), created, e.publisher().to_string());
    m.context_length = s
        .manager
        .context_length(&e.id)
        .map(u64::from)
        .or(e.config.max_position_embeddings.map(|n| n as u64));
    m
}

pub async fn v1_models(State(s): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList::new(
        listed_models(&s)
            .iter()
            .map(|e| model_object(&s, e))
            .collect(),
    ))
}

pub async fn v1_model(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    listed_models(&s)
        .iter()
        .find(|e| e.id == id)
        .map(|e| Json(model_object(&s, e)))
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

/// LM Studio's `/api/v1/models` entry. `loaded_context_length` is ours (older clients of
/// this server read it); the rest is LM Studio's shape.
fn lms_v1_model(s: &AppState, e: &ModelEntry, status: Option<&ModelStatus>) -> Value {
    let instances = match loaded_context(status) {
        // One instance per model, its id the model's, as `/api/v1/models/load` answers.
        Some(n) => json!([{"id": e.id, "config": {
            "context_length": n,
            "parallel": s.admission.max_concurrent(),
        }}]),
        None => json!([]),
    };
    let mut v = json!({
        "type": e.lms_v1_type(),
        "publisher": e.publisher(),
        "key": e.id,
        "display_name": e.id.rsplit('/').next().unwrap_or(&e.id),
        "architecture": e.config.model_type,
        "quantization": {
            "name": e.config.quantization_label(),
            "bits_per_weight": bits_per_weight(&e.config),
        },
        "size_bytes": e.weights_bytes,
        "params_string": params_string(model_dir::parameter_count(&e.dir, &e.config)),
        "loaded_instances": instances,
        "loaded_context_length": loaded_context(status),
        "max_context_length": e.config.max_position_embeddings,
        "format": "mlx",
    });
    // LM Studio leaves capabilities out for embedding models.
    if e.kind == ModelKind::Generation {
        v["capabilities"] = Capabilities::of_dir(&e.dir).json();
    }
    v
}

/// The weights' nominal bits: the quantization's, else the float type's (`null` unknown).
fn bits_per_weight(config: &ModelConfig) -> Option<u32> {
    let q = &config.quantization;
    if let Some(q) = q.default.as_ref().or(q.overrides.values().flatten().next()) {
        return Some(q.bits);
    }
    match config.torch_dtype.as_deref()? {
        "float32" => Some(32),
        "bfloat16" | "float16" => Some(16),
        _ => None,
    }
}

/// A parameter count as LM Studio writes it: `135M`, `1.7B`, `7B` (`null` when unknown).
fn params_string(count: u64) -> Option<String> {
    let n = count as f64;
    match count {
        0 => None,
        c if c >= 1_000_000_000 => Some(format!("{}B", round_one(n / 1e9))),
        c if c >= 1_000_000 => Some(format!("{}M", (n / 1e6).round())),
        _ => Some(format!("{}K", (n / 1e3).round().max(1.0))),
    }
}

/// One decimal, without a trailing `.0`.
fn round_one(x: f64) -> String {
    let s = format!("{:.1}", x);
    s.strip_suffix(".0").map_or(s.clone(), str::to_string)
}

pub async fn v1_lms_models(State(s): State<Arc<AppState>>) -> Json<Value> {
    let statuses = s.manager.models();
    let models: Vec<Value> = s
        .discovery
        .list()
        .iter()
        .map(|e| lms_v1_model(&s, e, statuses.iter().find(|st| st.model_id == e.id)))
        .collect();
    Json(json!({"models": models}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_read_as_lm_studio_writes_them() {
        assert_eq!(params_string(134_515_008).as_deref(), Some("135M"));
        assert_eq!(params_string(1_711_376_384).as_deref(), Some("1.7B"));
        assert_eq!(params_string(7_000_000_000).as_deref(), Some("7B"));
        assert_eq!(params_string(30_000).as_deref(), Some("30K"));
        assert_eq!(params_string(0), None);
    }
}
