//! The OpenAI-compatible HTTP surface: request/response bodies, the one error type every
//! handler returns, and SSE formatting. Handlers live with the router; this module has no
//! state so it can be tested without a server.

pub mod error;
pub mod sse;
pub mod types;

pub use error::{parse_json, ApiError, ApiJson, ErrorBody, ErrorDetail};
