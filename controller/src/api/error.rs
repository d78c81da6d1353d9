//! The one error type at the HTTP edge. Every failure a client sees, in a JSON response or in
//! the middle of an SSE stream, has OpenAI's shape `{"error":{"message","type","param","code"}}`
//! because the OpenAI SDKs parse that body to build their exception.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// OpenAI's `type` for anything the client got wrong.
pub const INVALID_REQUEST_ERROR: &str = "invalid_request_error";
/// OpenAI's `type` for failures on the server's side.
pub const SERVER_ERROR: &str = "server_error";
/// OpenAI's `type` for 429s.
pub const RATE_LIMIT_ERROR: &str = "rate_limit_error";

/// Every error the HTTP API returns.
///
/// Validation failures are 400, not 422: that is what OpenAI answers, and some clients only
/// special-case 400 when showing the message to a user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is malformed or a parameter is out of range. `param` names the field
    /// (`temperature`, `messages[0].content`) when one is to blame.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// 400 with OpenAI's code `context_length_exceeded`: the prompt does not fit the loaded
    /// context. Answered before any generation.
    #[error("{message}")]
    ContextLengthExceeded { message: String, param: String },
    /// 401: a missing or unknown API key (only when `server.api_keys` are configured).
    #[error("{message}")]
    Unauthorized { message: String },
    /// 403: the request may not do this: its key lacks the permission (`permission_denied`),
    /// or it names a host or comes from a web page origin that is not allowed
    /// (`host_not_allowed`, `origin_not_allowed`).
    #[error("{message}")]
    Forbidden { message: String, code: &'static str },
    /// 415: a body sent as something other than JSON (a form or `text/plain`, which browsers
    /// send cross-site without asking).
    #[error("{message}")]
    UnsupportedMediaType { message: String },
    /// 404 with code `model_not_found`: the SDKs raise `NotFoundError` from this.
    #[error("The model `{model}` does not exist or cannot be loaded.")]
    ModelNotFound { model: String },
    /// 404 with code `model_not_found`, saying why (downloading is off, the Hub has no such
    /// repository).
    #[error("{message}")]
    ModelUnavailable { model: String, message: String },
    /// 404 for an unknown route or resource other than a model.
    #[error("{message}")]
    NotFound { message: String },
    /// 405: a known path with a method it does not serve.
    #[error("{message}")]
    MethodNotAllowed { message: String },
    /// 413: the body is over the configured limit.
    #[error("{message}")]
    PayloadTooLarge { message: String },
    /// 429: the queue in front of a model is full. Clients retry after `Retry-After`.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// 503 with code `model_loading`: the model is being loaded and cannot answer yet.
    #[error("{message}")]
    ModelLoading {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// 507 with code `insufficient_memory`: loading would pass the memory cap.
    #[error("{message}")]
    InsufficientMemory { message: String },
    /// 502 with code `worker_crashed`: the model's worker process died. 502 rather than 500
    /// because the failure is in the process behind the controller, and the SDKs retry both.
    #[error("{message}")]
    WorkerCrashed { message: String },
    /// 502 with code `download_failed`: fetching the model from the Hugging Face Hub failed
    /// (network, server or disk); the message carries the cause.
    #[error("{message}")]
    DownloadFailed { message: String },
    /// 504: the worker did not answer in time.
    #[error("{message}")]
    Timeout { message: String },
    /// 500: anything else.
    #[error("{message}")]
    Internal { message: String },
}

/// The JSON body of every error: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// OpenAI keeps `param` and `code` present as `null` when they do not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    /// 400 naming the parameter at fault.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// 400 not tied to one parameter (unparseable body, for instance).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    /// 400 for a required parameter that is absent.
    pub fn missing_param(param: impl Into<String>) -> Self {
        let param = param.into();
        ApiError::InvalidRequest {
            message: format!("Missing required parameter: '{param}'."),
            param: Some(param),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::Unauthorized {
            message: message.into(),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Forbidden {
            message: message.into(),
            code,
        }
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        ApiError::UnsupportedMediaType {
            message: message.into(),
        }
    }

    pub fn model_not_found(model: impl Into<String>) -> Self {
        ApiError::ModelNotFound {
            model: model.into(),
        }
    }

    pub fn model_unavailable(model: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::ModelUnavailable {
            model: model.into(),
            message: message.into(),
        }
    }

    pub fn download_failed(message: impl Into<String>) -> Self {
        ApiError::DownloadFailed {
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound {
            message: message.into(),
        }
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ApiError::MethodNotAllowed {
            message: format!("{path} does not accept {method} (see /openapi.json)."),
        }
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        ApiError::PayloadTooLarge {
            message: message.into(),
        }
    }

    pub fn overloaded(message: impl Into<String>, retry_after_secs: Option<u64>) -> Self {
        ApiError::Overloaded {
            message: message.into(),
            retry_after_secs,
        }
    }

    pub fn model_loading(model: impl Into<String>, retry_after_secs: Option<u64>) -> Self {
        ApiError::ModelLoading {
            message: format!("The model `{}` is loading; retry shortly.", model.into()),
            retry_after_secs,
        }
    }

    /// 503 for a request that sent `Prefer: wait=N` (RFC 7240) with N shorter than the load
    /// of its model, which goes on in the background.
    pub fn model_loading_no_wait(model: &str, wait_secs: u64, retry_after_secs: u64) -> Self {
        ApiError::ModelLoading {
            message: format!(
                "The model `{model}` is loading and the request asked not to wait for it \
                 (`Prefer: wait={wait_secs}`); retry in about {retry_after_secs} s \
                 (Retry-After), or send the request without `Prefer: wait` to wait for the load."
            ),
            retry_after_secs: Some(retry_after_secs),
        }
    }

    pub fn insufficient_memory(message: impl Into<String>) -> Self {
        ApiError::InsufficientMemory {
            message: message.into(),
        }
    }

    pub fn worker_crashed(message: impl Into<String>) -> Self {
        ApiError::WorkerCrashed {
            message: message.into(),
        }
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError::Timeout {
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::Internal {
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::ContextLengthExceeded { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::ModelNotFound { .. }
            | ApiError::ModelUnavailable { .. }
            | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ModelLoading { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientMemory { .. } => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::WorkerCrashed { .. } | ApiError::DownloadFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` field.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::ContextLengthExceeded { .. }
            | ApiError::Unauthorized { .. }
            | ApiError::Forbidden { .. }
            | ApiError::UnsupportedMediaType { .. }
            | ApiError::ModelNotFound { .. }
            | ApiError::ModelUnavailable { .. }
            | ApiError::NotFound { .. }
            | ApiError::MethodNotAllowed { .. }
            | ApiError::PayloadTooLarge { .. } => INVALID_REQUEST_ERROR,
            ApiError::Overloaded { .. } => RATE_LIMIT_ERROR,
            ApiError::ModelLoading { .. }
            | ApiError::InsufficientMemory { .. }
            | ApiError::WorkerCrashed { .. }
            | ApiError::DownloadFailed { .. }
            | ApiError::Timeout { .. }
            | ApiError::Internal { .. } => SERVER_ERROR,
        }
    }

    /// OpenAI's machine-readable `code` field; `None` serializes as `null`.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::NotFound { .. } => None,
            ApiError::ContextLengthExceeded { .. } => Some("context_length_exceeded"),
            ApiError::MethodNotAllowed { .. } => Some("method_not_allowed"),
            ApiError::Unauthorized { .. } => Some("invalid_api_key"),
            ApiError::Forbidden { code, .. } => Some(code),
            ApiError::UnsupportedMediaType { .. } => Some("unsupported_media_type"),
            ApiError::ModelNotFound { .. } | ApiError::ModelUnavailable { .. } => {
                Some("model_not_found")
            }
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::Overloaded { .. } => Some("rate_limit_exceeded"),
            ApiError::ModelLoading { .. } => Some("model_loading"),
            ApiError::InsufficientMemory { .. } => Some("insufficient_memory"),
            ApiError::WorkerCrashed { .. } => Some("worker_crashed"),
            ApiError::DownloadFailed { .. } => Some("download_failed"),
            ApiError::Timeout { .. } => Some("timeout"),
            ApiError::Internal { .. } => Some("internal_error"),
        }
    }

    /// OpenAI's `param` field.
    pub fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidRequest { param, .. } => param.as_deref(),
            ApiError::ContextLengthExceeded { param, .. } => Some(param),
            ApiError::ModelNotFound { .. } | ApiError::ModelUnavailable { .. } => Some("model"),
            _ => None,
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::Overloaded {
                retry_after_secs, ..
            }
            | ApiError::ModelLoading {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: self.error_type().to_string(),
                param: self.param().map(str::to_string),
                code: self.code().map(str::to_string),
            },
        }
    }

    /// A context-length error naming `field` (the prompt's field in the API at hand) instead
    /// of chat's `messages`; other errors unchanged.
    pub fn for_prompt_field(self, field: &str) -> Self {
        match self {
            ApiError::ContextLengthExceeded { message, .. } => ApiError::ContextLengthExceeded {
                message,
                param: field.to_string(),
            },
            other => other,
        }
    }

    /// The error as one SSE event, for failures after the stream's 200 has been sent:
    /// clients parse every `data:` line as JSON, so it must not be a bare string.
    pub fn to_sse_event(&self) -> String {
        super::sse::event(&self.body())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after_secs();
        let mut response = (status, axum::Json(self.body())).into_response();
        // The OpenAI SDKs wait for `Retry-After` before their automatic retry.
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

// ---------------------------------------------------------------------------------------------
// The controller's own errors, each mapped to its HTTP answer here and nowhere else
// ---------------------------------------------------------------------------------------------

impl From<crate::resolve::ResolveError> for ApiError {
    fn from(e: crate::resolve::ResolveError) -> Self {
        use crate::resolve::ResolveError as R;
        let message = e.to_string();
        match e {
            R::NotFound(model) => ApiError::model_not_found(model),
            R::NoModel => ApiError::missing_param("model"),
            R::DownloadOff { model, .. } | R::NotOnHub { model, .. } | R::PathRefused(model) => {
                ApiError::model_unavailable(model, message)
            }
            R::DownloadFailed { .. } | R::NotAModel(_) => ApiError::download_failed(message),
            // The request's problem, not the server's: what it names cannot run here.
            R::Unloadable { .. } => ApiError::invalid_param("model", message),
        }
    }
}

impl From<crate::admission::Busy> for ApiError {
    fn from(e: crate::admission::Busy) -> Self {
        ApiError::overloaded(e.to_string(), Some(crate::admission::RETRY_AFTER_FULL_SECS))
    }
}

impl From<crate::manager::ManagerError> for ApiError {
    fn from(e: crate::manager::ManagerError) -> Self {
        use crate::manager::ManagerError as M;
        use opta_lmx_shared::protocol::ErrorKind;
        let msg = e.to_string();
        match e {
            M::NotLoaded(model) => ApiError::model_not_found(model),
            M::LoadFailed { .. } | M::Spawn(_) => ApiError::internal(msg),
            M::ExitedBeforeReady { .. } | M::Crashed { .. } => ApiError::worker_crashed(msg),
            M::Timeout { .. } | M::ClientTooSlow { .. } => ApiError::timeout(msg),
            M::InsufficientMemory { .. } => ApiError::insufficient_memory(msg),
            M::Unloading(model) => ApiError::model_loading(model, Some(1)),
            M::Request { kind, message } => match kind {
                ErrorKind::InvalidRequest => ApiError::invalid_request(message),
                ErrorKind::ContextLengthExceeded => ApiError::ContextLengthExceeded {
                    message: format!("{message}. Shorten the prompt or load a longer context."),
                    param: "messages".to_string(),
                },
                ErrorKind::Overloaded => ApiError::overloaded(message, Some(1)),
                ErrorKind::Engine | ErrorKind::Internal => ApiError::internal(message),
            },
        }
    }
}

impl From<crate::dispatch::DispatchError> for ApiError {
    fn from(e: crate::dispatch::DispatchError) -> Self {
        use crate::dispatch::DispatchError as D;
        match e {
            D::Resolve(e) => e.into(),
            D::Busy(e) => e.into(),
            D::Manager(e) => e.into(),
            D::NotLoaded(model) => ApiError::model_not_found(model),
            D::WouldWait {
                model,
                wait_secs,
                retry_after_secs,
            } => ApiError::model_loading_no_wait(&model, wait_secs, retry_after_secs),
            D::LoadTask(why) => ApiError::internal(format!("the load task failed: {why}")),
            D::WrongKind(message) => ApiError::invalid_param("model", message),
        }
    }
}

/// A JSON body extractor whose every rejection is an [`ApiError`] in OpenAI's shape, where
/// axum's `Json` answers plain text. It reads a body without `Content-Type` as JSON: many
/// scripts post JSON without it. Other media types are refused before it by `guard`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A request's body, up to the router's `DefaultBodyLimit` (413 beyond).
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        // `DefaultBodyLimit` is the only source of 413 here.
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(format!(
                "Request body is too large: {}",
                rejection.body_text()
            ))
        } else {
            ApiError::invalid_request(format!(
                "Could not read the request body: {}",
                rejection.body_text()
            ))
        }
    })
}

/// Parses a request body, naming the field at fault (`messages[0].content`) in the 400.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_request(
            "The request body is empty; expected a JSON object.",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    // Trailing garbage after the object is malformed JSON too.
    de.end().map_err(|e| {
        ApiError::invalid_request(format!(
            "The request body is not valid JSON: trailing characters at line {} column {}.",
            e.line(),
            e.column()
        ))
    })?;
    Ok(value)
}

fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    match inner.classify() {
        serde_json::error::Category::Data => {
            // serde_json appends the position; the field path is more useful to a client.
            let full = inner.to_string();
            let suffix = format!(" at line {} column {}", inner.line(), inner.column());
            let detail = full.strip_suffix(&suffix).unwrap_or(&full);
            // For a missing field, serde's path is the enclosing object: append the field.
            let param = match missing_field_name(detail) {
                Some(field) if path == "." => field.to_string(),
                Some(field) => format!("{path}.{field}"),
                None if path == "." => String::new(),
                None => path,
            };
            if param.is_empty() {
                ApiError::invalid_request(format!("Invalid request body: {detail}."))
            } else if missing_field_name(detail).is_some() {
                ApiError::missing_param(param)
            } else {
                ApiError::InvalidRequest {
                    message: format!("Invalid value for '{param}': {detail}."),
                    param: Some(param),
                }
            }
        }
        serde_json::error::Category::Eof => ApiError::invalid_request(format!(
            "The request body is not valid JSON: unexpected end of input at line {} column {}.",
            inner.line(),
            inner.column()
        )),
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
            ApiError::invalid_request(format!("The request body is not valid JSON: {inner}."))
        }
    }
}

/// serde's fixed wording for a missing field is "missing field `name`".
fn missing_field_name(detail: &str) -> Option<&str> {
    detail
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::ChatCompletionRequest;
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;
    use axum::Router;
    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    fn all_variants() -> Vec<(ApiError, u16, &'static str, Option<&'static str>)> {
        vec![
            (
                ApiError::invalid_param("temperature", "bad"),
                400,
                INVALID_REQUEST_ERROR,
                None,
            ),
            (
                ApiError::unauthorized("no token"),
                401,
                INVALID_REQUEST_ERROR,
                Some("invalid_api_key"),
            ),
            (
                ApiError::model_not_found("qwen"),
                404,
                INVALID_REQUEST_ERROR,
                Some("model_not_found"),
            ),
            (
                ApiError::model_unavailable("a/b", "downloading is off"),
                404,
                INVALID_REQUEST_ERROR,
                Some("model_not_found"),
            ),
            (
                ApiError::method_not_allowed("GET", "/v1/chat/completions"),
                405,
                INVALID_REQUEST_ERROR,
                Some("method_not_allowed"),
            ),
            (
                ApiError::download_failed("connection refused"),
                502,
                SERVER_ERROR,
                Some("download_failed"),
            ),
            (
                ApiError::not_found("no such route"),
                404,
                INVALID_REQUEST_ERROR,
                None,
            ),
            (
                ApiError::payload_too_large("big"),
                413,
                INVALID_REQUEST_ERROR,
                Some("request_too_large"),
            ),
            (
                ApiError::overloaded("queue full", None),
                429,
                RATE_LIMIT_ERROR,
                Some("rate_limit_exceeded"),
            ),
            (
                ApiError::model_loading("qwen", None),
                503,
                SERVER_ERROR,
                Some("model_loading"),
            ),
            (
                ApiError::insufficient_memory("no room"),
                507,
                SERVER_ERROR,
                Some("insufficient_memory"),
            ),
            (
                ApiError::worker_crashed("died"),
                502,
                SERVER_ERROR,
                Some("worker_crashed"),
            ),
            (
                ApiError::timeout("slow"),
                504,
                SERVER_ERROR,
                Some("timeout"),
            ),
            (
                ApiError::internal("oops"),
                500,
                SERVER_ERROR,
                Some("internal_error"),
            ),
        ]
    }

    #[test]
    fn status_type_and_code_of_every_variant() {
        for (err, status, kind, code) in all_variants() {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.error_type(), kind, "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
        }
    }

    #[test]
    fn body_has_openai_shape_with_null_keys() {
        let v = serde_json::to_value(ApiError::internal("boom").body()).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "boom", "type": "server_error", "param": null,
                             "code": "internal_error"}})
        );
        let v = serde_json::to_value(ApiError::invalid_request("bad").body()).unwrap();
        assert_eq!(v["error"]["param"], Value::Null);
        assert_eq!(v["error"]["code"], Value::Null);
        assert!(v["error"].as_object().unwrap().contains_key("code"));
    }

    #[test]
    fn model_not_found_names_model_param() {
        let body = ApiError::model_not_found("llama-9").body();
        assert_eq!(body.error.param.as_deref(), Some("model"));
        assert_eq!(body.error.code.as_deref(), Some("model_not_found"));
        assert!(body.error.message.contains("llama-9"));
    }

    async fn body_json(response: Response) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn into_response_sets_status_json_and_retry_after() {
        let response = ApiError::model_loading("qwen", Some(5)).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let v = body_json(response).await;
        assert_eq!(v["error"]["code"], "model_loading");
        assert_eq!(v["error"]["type"], "server_error");

        let response = ApiError::invalid_param("n", "only 1").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let v = body_json(response).await;
        assert_eq!(
            v,
            json!({"error": {"message": "only 1", "type": "invalid_request_error",
                             "param": "n", "code": null}})
        );
    }

    #[test]
    fn sse_error_event_is_json_data_line() {
        let event = ApiError::worker_crashed("worker exited").to_sse_event();
        let json_text = event
            .strip_prefix("data: ")
            .and_then(|s| s.strip_suffix("\n\n"))
            .unwrap();
        let v: Value = serde_json::from_str(json_text).unwrap();
        assert_eq!(v["error"]["code"], "worker_crashed");
        assert_eq!(v["error"]["message"], "worker exited");
    }

    fn router() -> Router {
        // The extractor generation routes use; it reads the body as `ApiJson` does.
        async fn handler(req: crate::api::Generation<ChatCompletionRequest>) -> String {
            req.shared.model.unwrap_or_default()
        }
        Router::new()
            .route("/t", post(handler))
            .layer(DefaultBodyLimit::max(256))
    }

    async fn send(body: &str, content_type: Option<&str>) -> (StatusCode, Vec<u8>) {
        let mut builder = axum::http::Request::post("/t");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let response = router()
            .oneshot(builder.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, bytes.to_vec())
    }

    fn error_of(bytes: &[u8]) -> ErrorDetail {
        serde_json::from_slice::<ErrorBody>(bytes).unwrap().error
    }

    const OK_BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

    #[tokio::test]
    async fn extractor_accepts_json_with_and_without_content_type() {
        for ct in [Some("application/json"), None] {
            let (status, body) = send(OK_BODY, ct).await;
            assert_eq!(status, StatusCode::OK, "{ct:?}");
            assert_eq!(body, b"m");
        }
    }

    #[tokio::test]
    async fn extractor_malformed_json_is_400_with_position() {
        let (status, body) = send(r#"{"model": "m", "messages": [}"#, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let err = error_of(&body);
        assert_eq!(err.kind, "invalid_request_error");
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        assert!(err.message.contains("line 1 column"), "{}", err.message);
        assert_eq!(err.param, None);

        let (status, body) = send(r#"{"model": "m""#, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&body).message.contains("end of input"));

        let (status, body) = send("", Some("application/json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&body).message.contains("empty"));

        let (status, body) = send(&format!("{OK_BODY} x"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&body).message.contains("trailing"));
    }

    #[tokio::test]
    async fn extractor_wrong_type_names_field_path() {
        let (status, body) = send(
            r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let err = error_of(&body);
        assert_eq!(err.param.as_deref(), Some("messages[0].content"));
        assert!(
            err.message.contains("messages[0].content"),
            "{}",
            err.message
        );
        assert!(!err.message.contains(" at line "), "{}", err.message);

        let (_, body) = send(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
            None,
        )
        .await;
        assert_eq!(error_of(&body).param.as_deref(), Some("temperature"));
    }

    #[tokio::test]
    async fn extractor_missing_field_names_it() {
        let (status, body) = send(r#"{"model":"m"}"#, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let err = error_of(&body);
        assert_eq!(err.param.as_deref(), Some("messages"));
        assert!(err.message.contains("'messages'"), "{}", err.message);

        let (_, body) = send(r#"{"model":"m","messages":[{"content":"x"}]}"#, None).await;
        assert_eq!(error_of(&body).param.as_deref(), Some("messages[0].role"));
    }

    #[tokio::test]
    async fn extractor_unknown_role_and_image_part_name_field() {
        let (_, body) = send(
            r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
            None,
        )
        .await;
        let err = error_of(&body);
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
        assert!(err.message.contains("robot"), "{}", err.message);

        let (status, body) = send(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let err = error_of(&body);
        assert_eq!(err.param.as_deref(), Some("messages[0].content[0]"));
        assert!(err.message.contains("image_url"), "{}", err.message);
    }

    #[tokio::test]
    async fn extractor_body_over_limit_is_413() {
        let big = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(1000)
        );
        let (status, body) = send(&big, Some("application/json")).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let err = error_of(&body);
        assert_eq!(err.code.as_deref(), Some("request_too_large"));
        assert_eq!(err.kind, "invalid_request_error");
    }
}
