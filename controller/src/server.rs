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

fn route<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    // Only the standard methods below are used, and each has a filter.
    let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
    Route {
        method,
        path,
        handler: on(filter, handler),
    }
}

/// Every route the daemon serves.
fn table() -> Vec<Route> {
    use generate::{Chat, Completions, LmStudio, OpenAi};
    let (get, post) = (Method::GET, Method::POST);
    vec![
        route(get.clone(), "/admin/health", admin::health),
        route(get.clone(), "/admin/status", admin::status),
        route(get.clone(), "/admin/memory", admin::memory),
        route(get.clone(), "/admin/models", admin::admin_models),
        route(post.clone(), "/admin/models/load", admin::admin_load),
        route(post.clone(), "/admin/models/unload", admin::admin_unload),
        route(get.clone(), "/v1/models", models::v1_models),
        route(get.clone(), "/v1/models/{*id}", models::v1_model),
        route(
            post.clone(),
            "/v1/chat/completions",
            generate::handle::<Chat, OpenAi>,
        ),
        route(
            post.clone(),
            "/v1/completions",
            generate::handle::<Completions, OpenAi>,
        ),
        route(get.clone(), "/api/v0/models", models::v0_models),
        route(get.clone(), "/api/v0/models/{*id}", models::v0_model),
        route(
            post.clone(),
            "/api/v0/chat/completions",
            generate::handle::<Chat, LmStudio>,
        ),
        route(
            post.clone(),
            "/api/v0/completions",
            generate::handle::<Completions, LmStudio>,
        ),
        route(get.clone(), "/api/v1/models", models::v1_lms_models),
        route(post.clone(), "/api/v1/models/load", admin::lms_load),
        route(post, "/api/v1/models/unload", admin::lms_unload),
        route(get, "/openapi.json", crate::openapi::serve),
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
