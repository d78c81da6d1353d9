//! The HTTP application: every route and the handler that serves it. `app()` builds the
//! router so tests can drive it in-process; the handlers live in `routes`.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use crate::api::ApiError;
use crate::routes::{admin, generate, models};
use crate::state::AppState;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// One route: what [`operations`] reports and what the router serves come from the same row.
struct Route {
    method: Method,
    path: &'static str,
    handler: MethodRouter<Arc<AppState>>,
}

fn get<H: Handler<T, Arc<AppState>>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route {
        method: Method::GET,
        path,
        handler: on(MethodFilter::GET, handler),
    }
}

fn post<H: Handler<T, Arc<AppState>>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route {
        method: Method::POST,
        path,
        handler: on(MethodFilter::POST, handler),
    }
}

/// Every route the daemon serves.
fn table() -> Vec<Route> {
    use generate::{Chat, Completions, LmStudio, OpenAi};
    vec![
        get("/admin/health", admin::health),
        get("/admin/status", admin::status),
        get("/admin/memory", admin::memory),
        get("/admin/models", admin::admin_models),
        post("/admin/models/load", admin::admin_load),
        post("/admin/models/unload", admin::admin_unload),
        get("/v1/models", models::v1_models),
        get("/v1/models/{*id}", models::v1_model),
        post("/v1/chat/completions", generate::handle::<Chat, OpenAi>),
        post("/v1/completions", generate::handle::<Completions, OpenAi>),
        get("/api/v0/models", models::v0_models),
        get("/api/v0/models/{*id}", models::v0_model),
        post(
            "/api/v0/chat/completions",
            generate::handle::<Chat, LmStudio>,
        ),
        post(
            "/api/v0/completions",
            generate::handle::<Completions, LmStudio>,
        ),
        get("/api/v1/models", models::v1_lms_models),
        post("/api/v1/models/load", admin::lms_load),
        post("/api/v1/models/unload", admin::lms_unload),
        get("/openapi.json", crate::openapi::serve),
    ]
}

/// The (method, path) of every route, in axum's path syntax (`{*id}` is a catch-all), for
/// the test that holds the OpenAPI document to the router.
pub fn operations() -> Vec<(Method, &'static str)> {
    table().into_iter().map(|r| (r.method, r.path)).collect()
}

pub fn app(state: Arc<AppState>) -> Router {
    table()
        .into_iter()
        .fold(Router::new(), |router, r| router.route(r.path, r.handler))
        .fallback(|| async { ApiError::not_found("Unknown endpoint.") })
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                ApiError::method_not_allowed(method.as_str(), uri.path())
            },
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
