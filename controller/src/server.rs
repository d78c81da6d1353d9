//! The HTTP application. `app()` builds the router so tests can drive it in-process.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::config::Config;

pub struct AppState {
    pub config: Config,
    pub started: Instant,
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/admin/health", get(health))
        .with_state(state)
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": crate::VERSION,
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
}
