//! Loading and unloading (the seed plan's admin API and LM Studio's `/api/v1` shapes), and
//! the admin status, memory and model reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use opta_lmx_shared::model_dir::ModelKind;
use opta_lmx_shared::protocol::WorkerStats;
use serde::Deserialize;
use serde_json::{json, Value};

use super::models::{state_name, unix};
use crate::api::{ApiError, ApiJson};
use crate::discovery::ModelEntry;
use crate::manager::{ModelState, ModelStatus};
use crate::resolve;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct AdminLoad {
    pub model_id: String,
    #[serde(default)]
    pub ttl: Option<u64>,
}

#[derive(Deserialize)]
pub struct AdminUnload {
    pub model_id: String,
}

async fn load_entry(
    s: &AppState,
    id: &str,
    ttl: Option<u64>,
) -> Result<(ModelEntry, f64), ApiError> {
    // An explicit load may download the model, when `models.allow_download` is on.
    let entry = resolve::find(s, id, true).await?;
    let started = Instant::now();
    s.manager
        .load(&entry.id, &entry.dir, ttl.map(Duration::from_secs))
        .await?;
    Ok((entry, started.elapsed().as_secs_f64()))
}

pub async fn admin_load(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<AdminLoad>,
) -> Result<Json<Value>, ApiError> {
    let (entry, secs) = load_entry(&s, &req.model_id, req.ttl).await?;
    let status = s
        .manager
        .models()
        .into_iter()
        .find(|m| m.model_id == entry.id);
    Ok(Json(json!({
        "success": true,
        "model_id": entry.id,
        "time_to_load_ms": (secs * 1e3).round(),
        "pid": status.as_ref().and_then(|m| m.pid),
        "memory": memory_json(&s),
    })))
}

pub async fn admin_unload(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<AdminUnload>,
) -> Result<Json<Value>, ApiError> {
    s.manager.unload(&req.model_id).await?;
    Ok(Json(json!({
        "success": true,
        "model_id": req.model_id,
        "memory": memory_json(&s),
    })))
}

/// LM Studio's load body. `context_length` and `parallel` are accepted and not applied: the
/// worker loads a model at its own context, and every model shares
/// `models.max_concurrent_per_model`; `load_config` says what is in force.
#[derive(Deserialize)]
pub struct LmsLoad {
    pub model: String,
    #[serde(default)]
    pub ttl: Option<u64>,
    #[serde(default)]
    pub context_length: Option<u32>,
    #[serde(default)]
    pub parallel: Option<u32>,
    #[serde(default)]
    pub echo_load_config: Option<bool>,
}

#[derive(Deserialize)]
pub struct LmsUnload {
    pub instance_id: String,
}

pub async fn lms_load(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<LmsLoad>,
) -> Result<Json<Value>, ApiError> {
    for (param, value) in [
        ("context_length", req.context_length),
        ("parallel", req.parallel),
    ] {
        if value == Some(0) {
            return Err(ApiError::invalid_param(
                param,
                format!("Invalid value for '{param}': 0; it must be at least 1."),
            ));
        }
    }
    let (entry, secs) = load_entry(&s, &req.model, req.ttl).await?;
    let mut body = json!({
        "type": entry.lms_v1_type(),
        "instance_id": entry.id,
        "load_time_seconds": secs,
        "status": "loaded",
    });
    if req.echo_load_config == Some(true) {
        let context = s
            .manager
            .context_length(&entry.id)
            .map(u64::from)
            .or(entry.config.max_position_embeddings.map(|n| n as u64));
        body["load_config"] = match entry.kind {
            ModelKind::Generation => json!({
                "context_length": context,
                "parallel": s.admission.max_concurrent(),
            }),
            // LM Studio's embedding load config has the context alone.
            ModelKind::Embedding => json!({"context_length": context}),
        };
    }
    Ok(Json(body))
}

pub async fn lms_unload(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<LmsUnload>,
) -> Result<Json<Value>, ApiError> {
    s.manager.unload(&req.instance_id).await?;
    Ok(Json(json!({"instance_id": req.instance_id})))
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": crate::VERSION}))
}

fn memory_json(s: &AppState) -> Value {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let total = sys.total_memory();
    let available = sys.available_memory();
    let used = total.saturating_sub(available);
    let gb = |b: u64| (b as f64 / 1e9 * 100.0).round() / 100.0;
    let models: Vec<Value> = s
        .manager
        .models()
        .iter()
        .map(|m| json!({"model_id": m.model_id, "pid": m.pid, "resident_bytes": m.resident_bytes}))
        .collect();
    json!({
        "total_bytes": total,
        "used_bytes": used,
        "available_bytes": available,
        "total_gb": gb(total),
        "used_gb": gb(used),
        "available_gb": gb(available),
        "usage_percent": if total > 0 { (used as f64 / total as f64 * 1000.0).round() / 10.0 } else { 0.0 },
        "threshold_percent": s.config.memory.max_memory_percent,
        "models": models,
    })
}

fn status_json(m: &ModelStatus) -> Value {
    json!({
        "model_id": m.model_id,
        "state": state_name(Some(m)),
        "pid": m.pid,
        "path": m.dir,
        "resident_bytes": m.resident_bytes,
        "in_flight": m.in_flight,
        "loaded_at": m.loaded_at.map(unix),
        "last_used": m.last_used.map(unix),
        "ttl_seconds": m.ttl.map(|t| t.as_secs()),
        "restarts": m.restarts,
        "weights_bytes": m.facts.as_ref().map(|f| f.weights_bytes),
        "context_length": m.facts.as_ref().map(|f| f.context_length),
        "crash": m.crash.as_ref().map(|c| json!({
            "status": c.status,
            "stderr_tail": c.stderr_tail,
            "at": unix(c.at),
        })),
    })
}

/// How long `/admin/status` waits for each worker's stats; a busy or frozen worker shows
/// `worker_stats: null` rather than holding up the answer.
const STATS_TIMEOUT: Duration = Duration::from_millis(500);

fn worker_stats_json(st: &WorkerStats) -> Value {
    json!({
        "active_requests": st.active_requests,
        "queued_requests": st.queued_requests,
        "prompt_cache_hits": st.prompt_cache_hits,
        "prompt_cache_tokens": st.prompt_cache_tokens,
        "peak_memory_bytes": st.peak_memory_bytes,
        "active_memory_bytes": st.active_memory_bytes,
    })
}

pub async fn status(State(s): State<Arc<AppState>>) -> Json<Value> {
    let models = s.manager.models();
    // Asked of every worker at once, so one slow worker costs STATS_TIMEOUT, not one each.
    let stats = futures_util::future::join_all(
        models
            .iter()
            .map(|m| s.manager.worker_stats(&m.model_id, STATS_TIMEOUT)),
    )
    .await;
    let workers: Vec<Value> = models
        .iter()
        .zip(stats)
        .map(|(m, stats)| {
            let mut v = status_json(m);
            // The controller's own count: requests admitted for this model and not yet
            // answered, and those of them beyond what the worker decodes at once.
            let counts = s.admission.counts(&m.model_id);
            v["requests"] = json!({
                "in_flight": counts.in_flight,
                "queued": counts.queued,
                "max_concurrent": s.admission.max_concurrent(),
                "max_queue": s.admission.max_queue(),
            });
            v["worker_stats"] = stats.as_ref().map_or(Value::Null, worker_stats_json);
            v
        })
        .collect();
    let loaded: Vec<&str> = models
        .iter()
        .filter(|m| matches!(m.state, ModelState::Ready))
        .map(|m| m.model_id.as_str())
        .collect();
    Json(json!({
        "version": crate::VERSION,
        "uptime_seconds": s.started.elapsed().as_secs(),
        "loaded_models": loaded.len(),
        "models": loaded,
        "workers": workers,
        "memory": memory_json(&s),
    }))
}

pub async fn memory(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(memory_json(&s))
}

/// Every model that could be loaded, with its state.
pub async fn admin_models(State(s): State<Arc<AppState>>) -> Json<Value> {
    let statuses = s.manager.models();
    let mut out: Vec<Value> = s
        .discovery
        .list()
        .iter()
        .map(|e| {
            let st = statuses.iter().find(|m| m.model_id == e.id);
            let mut v = st
                .map(status_json)
                .unwrap_or_else(|| json!({"model_id": e.id, "state": "not-loaded", "path": e.dir}));
            v["weights_bytes_on_disk"] = json!(e.weights_bytes);
            v
        })
        .collect();
    for st in &statuses {
        if !out.iter().any(|v| v["model_id"] == st.model_id.as_str()) {
            out.push(status_json(st));
        }
    }
    Json(json!({"models": out}))
}
