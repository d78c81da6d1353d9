//! The HTTP application: every route and the handler that serves it. `app()` builds the
//! router so tests can drive it in-process; the handlers live in `routes`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::handler::Handler;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::api::ApiError;
use crate::config::Permission;
use crate::guard::{Access, Guard};
use crate::request_id;
use crate::routes::{admin, embeddings, generate, lmstudio, models};
use crate::state::AppState;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// One route: what [`operations`] reports and what the router serves come from the same row.
struct Route {
    method: Method,
    path: &'static str,
    access: Access,
    errors: ErrorShape,
    handler: MethodRouter<Arc<AppState>>,
}

/// The shape a route's errors take: each API's clients read only their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorShape {
    /// `ApiError`'s own, OpenAI's.
    OpenAi,
    /// Anthropic's, for the Messages API.
    Anthropic,
    /// LM Studio's, for its native `/api/v1`.
    LmStudio,
}

fn route(
    method: Method,
    path: &'static str,
    access: Access,
    handler: MethodRouter<Arc<AppState>>,
) -> Route {
    Route {
        method,
        path,
        access,
        errors: ErrorShape::OpenAi,
        handler,
    }
}

fn get<H: Handler<T, Arc<AppState>>, T: 'static>(
    access: Access,
    path: &'static str,
    handler: H,
) -> Route {
    route(
        Method::GET,
        path,
        access,
        on(MethodFilter::GET, handler).fallback(method_not_allowed),
    )
}

fn post<H: Handler<T, Arc<AppState>>, T: 'static>(
    access: Access,
    path: &'static str,
    handler: H,
) -> Route {
    route(
        Method::POST,
        path,
        access,
        on(MethodFilter::POST, handler).fallback(method_not_allowed),
    )
}

/// 405 for a known path and another method. Each route's own fallback, so that the route's
/// layers (the guard, Anthropic's error shape) apply to it too.
async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

fn anthropic(route: Route) -> Route {
    Route {
        errors: ErrorShape::Anthropic,
        ..route
    }
}

fn lmstudio(route: Route) -> Route {
    Route {
        errors: ErrorShape::LmStudio,
        ..route
    }
}

/// Rewrites an OpenAI-shaped error response (every handler's `ApiError`) with `rewrite`.
async fn rewrite_errors(
    response: Response,
    rewrite: fn(u16, &serde_json::Value) -> serde_json::Value,
) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let openai: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let body = rewrite(status.as_u16(), &openai);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    (parts, axum::Json(body)).into_response()
}

async fn anthropic_errors(response: Response) -> Response {
    rewrite_errors(response, crate::api::messages::error_body).await
}

async fn lmstudio_errors(response: Response) -> Response {
    rewrite_errors(response, crate::api::lmstudio::error_body).await
}

/// Every route the daemon serves.
fn table() -> Vec<Route> {
    use generate::{Chat, Completions, LmStudio, Messages, Native, Responses};
    const PUBLIC: Access = Access::Public;
    const INFER: Access = Access::Needs(Permission::Inference);
    const ADMIN: Access = Access::Needs(Permission::Admin);
    vec![
        // Clients probe the root before their first request (Claude Code sends `HEAD /`;
        // axum answers HEAD from the GET route).
        get(PUBLIC, "/", admin::health),
        get(PUBLIC, "/admin/health", admin::health),
        get(ADMIN, "/admin/status", admin::status),
        get(ADMIN, "/admin/memory", admin::memory),
        get(ADMIN, "/admin/models", admin::admin_models),
        post(ADMIN, "/admin/models/load", admin::admin_load),
        post(ADMIN, "/admin/models/unload", admin::admin_unload),
        get(INFER, "/v1/models", models::v1_models),
        get(INFER, "/v1/models/{*id}", models::v1_model),
        post(
            INFER,
            "/v1/chat/completions",
            generate::handle::<Chat, Native>,
        ),
        post(
            INFER,
            "/v1/completions",
            generate::handle::<Completions, Native>,
        ),
        post(
            INFER,
            "/v1/responses",
            generate::handle::<Responses, Native>,
        ),
        post(INFER, "/v1/embeddings", embeddings::embeddings),
        anthropic(post(
            INFER,
            "/v1/messages",
            generate::handle::<Messages, Native>,
        )),
        anthropic(post(
            INFER,
            "/v1/messages/count_tokens",
            generate::count_tokens,
        )),
        get(INFER, "/api/v0/models", models::v0_models),
        get(INFER, "/api/v0/models/{*id}", models::v0_model),
        post(
            INFER,
            "/api/v0/chat/completions",
            generate::handle::<Chat, LmStudio>,
        ),
        post(
            INFER,
            "/api/v0/completions",
            generate::handle::<Completions, LmStudio>,
        ),
        post(INFER, "/api/v0/embeddings", embeddings::embeddings),
        lmstudio(post(INFER, "/api/v1/chat", lmstudio::chat)),
        lmstudio(get(INFER, "/api/v1/models", models::v1_lms_models)),
        lmstudio(post(ADMIN, "/api/v1/models/load", admin::lms_load)),
        lmstudio(post(ADMIN, "/api/v1/models/unload", admin::lms_unload)),
        get(PUBLIC, "/openapi.json", crate::openapi::serve),
        get(ADMIN, "/metrics", crate::metrics::serve),
    ]
}

/// The (method, path) of every route, in axum's path syntax (`{*id}` is a catch-all), for
/// the test that holds the OpenAPI document to the router.
pub fn operations() -> Vec<(Method, &'static str, Access)> {
    table()
        .into_iter()
        .map(|r| (r.method, r.path, r.access))
        .collect()
}

pub fn app(state: Arc<AppState>) -> Router {
    let guard = Arc::new(Guard::new(&state.config.server));
    let cors = cors(&state.config.server.cors_origins);
    let router = table().into_iter().fold(Router::new(), |router, r| {
        let guard = Arc::clone(&guard);
        let access = r.access;
        // The guard runs inside the error rewrite, so its refusals come in the route's shape.
        let handler = r.handler.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let checked = guard.check(access, req.method(), req.headers());
                async move {
                    match checked {
                        Ok(()) => next.run(req).await,
                        Err(e) => e.into_response(),
                    }
                }
            },
        ));
        let handler = match r.errors {
            ErrorShape::OpenAi => handler,
            ErrorShape::Anthropic => {
                handler.layer(axum::middleware::map_response(anthropic_errors))
            }
            ErrorShape::LmStudio => handler.layer(axum::middleware::map_response(lmstudio_errors)),
        };
        router.route(r.path, handler)
    });
    let router = router
        .fallback(|| async { ApiError::not_found("Unknown endpoint.") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(crate::metrics::count_requests))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state);
    // Outermost, so a browser's preflight is answered before routing.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for the configured origins (`"*"`: any); `None` when there are none, so no CORS
/// header is ever sent and browsers keep other pages from reading the answers.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            // Mirrored, since `*` does not cover `Authorization`.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                axum::http::header::RETRY_AFTER,
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}
