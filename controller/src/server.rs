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

/// `route` with its errors in Anthropic's shape (`{"type": "error", "error": {...}}`), for
/// the Messages API, whose SDKs read no other.
fn anthropic(route: Route) -> Route {
    Route {
        handler: route
            .handler
            .layer(axum::middleware::map_response(anthropic_errors)),
        ..route
    }
}

/// Rewrites an OpenAI-shaped error response (every handler's `ApiError`) as Anthropic's.
async fn anthropic_errors(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let openai: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let body = crate::api::messages::error_body(status.as_u16(), &openai);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    (parts, axum::Json(body)).into_response()
}

/// Every route the daemon serves.
fn table() -> Vec<Route> {
    use generate::{Chat, Completions, LmStudio, Messages, Native, Responses};
    vec![
        get("/admin/health", admin::health),
        get("/admin/status", admin::status),
        get("/admin/memory", admin::memory),
        get("/admin/models", admin::admin_models),
        post("/admin/models/load", admin::admin_load),
        post("/admin/models/unload", admin::admin_unload),
        get("/v1/models", models::v1_models),
        get("/v1/models/{*id}", models::v1_model),
        post("/v1/chat/completions", generate::handle::<Chat, Native>),
        post("/v1/completions", generate::handle::<Completions, Native>),
        post("/v1/responses", generate::handle::<Responses, Native>),
        anthropic(post("/v1/messages", generate::handle::<Messages, Native>)),
        anthropic(post("/v1/messages/count_tokens", generate::count_tokens)),
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
