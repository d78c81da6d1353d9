//! The HTTP application: OpenAI-compatible routes, LM Studio's REST routes and the admin API.
//! `app()` builds the router so tests can drive it in-process.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use opta_lmx_shared::protocol::WorkerStats;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admission::{self, Admission};
use crate::api::types::{
    ChatCompletionRequest, CompletionRequest, ModelList, ModelObject, PromptInput,
};
use crate::api::{ApiError, ApiJson};
use crate::config::Config;
use crate::discovery::{Discovery, ModelEntry};
use crate::download::{self, Downloader};
use crate::inference::{self, Dialect, Endpoint};
use crate::manager::{ModelManager, ModelState, ModelStatus};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

pub struct AppState {
    pub config: Config,
    pub discovery: Discovery,
    /// Fetches models missing locally from the Hub (`models.allow_download`).
    pub downloader: Downloader,
    pub manager: Arc<ModelManager>,
    /// Per-model request counts (429 past running + queued) and load-time history.
    pub admission: Admission,
    pub started: Instant,
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/admin/health", get(health))
        .route("/admin/status", get(status))
        .route("/admin/memory", get(memory))
        .route("/admin/models", get(admin_models))
        .route("/admin/models/load", post(admin_load))
        .route("/admin/models/unload", post(admin_unload))
        .route("/v1/models", get(v1_models))
        .route("/v1/models/{*id}", get(v1_model))
        .route("/v1/chat/completions", post(chat_openai))
        .route("/v1/completions", post(completions_openai))
        .route("/api/v0/models", get(v0_models))
        .route("/api/v0/models/{*id}", get(v0_model))
        .route("/api/v0/chat/completions", post(chat_lmstudio))
        .route("/api/v0/completions", post(completions_lmstudio))
        .route("/api/v1/models", get(v1_lms_models))
        .route("/api/v1/models/load", post(lms_load))
        .route("/api/v1/models/unload", post(lms_unload))
        .route("/openapi.json", get(crate::openapi::serve))
        .fallback(|| async { ApiError::not_found("Unknown endpoint.") })
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                ApiError::method_not_allowed(method.as_str(), uri.path())
            },
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

// ------------------------------------------------------------------ inference

async fn chat(
    state: Arc<AppState>,
    headers: HeaderMap,
    req: ChatCompletionRequest,
    dialect: Dialect,
) -> Result<Response, ApiError> {
    req.validate()?;
    let wait = admission::prefer_wait(&headers);
    let (entry, permit) =
        inference::prepare_model(&state, req.model.as_deref(), req.ttl, wait).await?;
    let wire = inference::chat_request(&req)?;
    inference::respond(
        state,
        entry,
        permit,
        wire,
        Endpoint::Chat,
        req.include_usage(),
        dialect,
    )
    .await
}

async fn completions(
    state: Arc<AppState>,
    headers: HeaderMap,
    req: CompletionRequest,
    dialect: Dialect,
) -> Result<Response, ApiError> {
    req.validate()?;
    let wait = admission::prefer_wait(&headers);
    let (entry, permit) =
        inference::prepare_model(&state, req.model.as_deref(), req.ttl, wait).await?;
    let wire = inference::completion_request(&req)?;
    let echo = match (req.echo, req.prompt.single()) {
        (Some(true), Some(PromptInput::Text(t))) => Some(t.to_string()),
        _ => None,
    };
    let endpoint = Endpoint::Completion { echo };
    inference::respond(
        state,
        entry,
        permit,
        wire,
        endpoint,
        req.include_usage(),
        dialect,
    )
    .await
}

async fn chat_openai(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    chat(s, headers, req, Dialect::OpenAi).await
}

async fn chat_lmstudio(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    chat(s, headers, req, Dialect::LmStudio).await
}

async fn completions_openai(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    completions(s, headers, req, Dialect::OpenAi).await
}

async fn completions_lmstudio(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    completions(s, headers, req, Dialect::LmStudio).await
}

// ------------------------------------------------------------------ model listings

fn unix(t: SystemTime) -> u64 {
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

async fn v1_models(State(s): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList::new(
        listed_models(&s).iter().map(model_object).collect(),
    ))
}

async fn v1_model(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    listed_models(&s)
        .iter()
        .find(|e| e.id == id)
        .map(|e| Json(model_object(e)))
        .ok_or_else(|| ApiError::model_not_found(id))
}

fn state_name(s: Option<&ModelStatus>) -> &'static str {
    match s.map(|s| &s.state) {
        Some(ModelState::Ready) => "loaded",
        Some(ModelState::Loading) => "loading",
        Some(ModelState::Unloading) => "unloading",
        Some(ModelState::Crashed) => "crashed",
        None => "not-loaded",
    }
}

fn lms_model(e: &ModelEntry, status: Option<&ModelStatus>) -> Value {
    json!({
        "id": e.id,
        "object": "model",
        "type": "llm",
        "publisher": e.publisher(),
        "arch": e.config.model_type,
        "compatibility_type": "mlx",
        "quantization": e.config.quantization_label(),
        "state": state_name(status),
        "max_context_length": e.config.max_position_embeddings,
    })
}

async fn v0_models(State(s): State<Arc<AppState>>) -> Json<Value> {
    let statuses = s.manager.models();
    let mut entries = s.discovery.list();
    for st in &statuses {
        if !entries.iter().any(|e| e.id == st.model_id) {
            entries.extend(s.discovery.resolve(&st.model_id));
        }
    }
    let data: Vec<Value> = entries
        .iter()
        .map(|e| lms_model(e, statuses.iter().find(|st| st.model_id == e.id)))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn v0_model(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = s
        .discovery
        .resolve(&id)
        .ok_or_else(|| ApiError::model_not_found(id.as_str()))?;
    let statuses = s.manager.models();
    Ok(Json(lms_model(
        &entry,
        statuses.iter().find(|st| st.model_id == entry.id),
    )))
}

async fn v1_lms_models(State(s): State<Arc<AppState>>) -> Json<Value> {
    let statuses = s.manager.models();
    let models: Vec<Value> = s
        .discovery
        .list()
        .iter()
        .map(|e| {
            let st = statuses.iter().find(|st| st.model_id == e.id);
            json!({
                "type": "llm",
                "key": e.id,
                "publisher": e.publisher(),
                "architecture": e.config.model_type,
                "quantization": e.config.quantization_label(),
                "format": "mlx",
                "max_context_length": e.config.max_position_embeddings,
                "size_bytes": e.weights_bytes,
                "loaded_instances": match st {
                    Some(st) if matches!(st.state, ModelState::Ready) => json!([{"id": e.id}]),
                    _ => json!([]),
                },
            })
        })
        .collect();
    Json(json!({"models": models}))
}

// ------------------------------------------------------------------ load / unload

#[derive(Deserialize)]
struct AdminLoad {
    model_id: String,
    #[serde(default)]
    ttl: Option<u64>,
}

#[derive(Deserialize)]
struct AdminUnload {
    model_id: String,
}

async fn load_entry(
    s: &AppState,
    id: &str,
    ttl: Option<u64>,
) -> Result<(ModelEntry, f64), ApiError> {
    // An explicit load may download the model, when `models.allow_download` is on.
    let entry = download::find(s, id, true).await?;
    let started = Instant::now();
    s.manager
        .load(&entry.id, &entry.dir, ttl.map(Duration::from_secs))
        .await?;
    Ok((entry, started.elapsed().as_secs_f64()))
}

async fn admin_load(
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

async fn admin_unload(
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

#[derive(Deserialize)]
struct LmsLoad {
    model: String,
    #[serde(default)]
    ttl: Option<u64>,
}

#[derive(Deserialize)]
struct LmsUnload {
    instance_id: String,
}

async fn lms_load(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<LmsLoad>,
) -> Result<Json<Value>, ApiError> {
    let (entry, secs) = load_entry(&s, &req.model, req.ttl).await?;
    Ok(Json(json!({
        "type": "llm",
        "instance_id": entry.id,
        "load_time_seconds": secs,
        "status": "loaded",
    })))
}

async fn lms_unload(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<LmsUnload>,
) -> Result<Json<Value>, ApiError> {
    s.manager.unload(&req.instance_id).await?;
    Ok(Json(json!({"instance_id": req.instance_id})))
}

// ------------------------------------------------------------------ admin status

async fn health() -> Json<Value> {
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

async fn status(State(s): State<Arc<AppState>>) -> Json<Value> {
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

async fn memory(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(memory_json(&s))
}

/// Every model that could be loaded, with its state.
async fn admin_models(State(s): State<Arc<AppState>>) -> Json<Value> {
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
