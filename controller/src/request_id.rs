//! Request ids: every request runs in a tracing span carrying its id, and every answer names
//! it in `x-request-id`. A client's own id (a proxy's, say) is kept, so logs on both sides
//! line up.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id a client sent, when it is short printable ASCII; else a fresh `req_...`.
pub fn id_for(req: &Request) -> String {
    req.headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| crate::api::sse::new_id("req_"), str::to_string)
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = id_for(&req);
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    if let Ok(value) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(HEADER, value);
    }
    let mut response = next.run(req).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}
