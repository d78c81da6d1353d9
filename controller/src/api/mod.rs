//! The HTTP surface's types: each API's request and response bodies (one module per API),
//! the sampling fields they share, the one error type every handler returns, and SSE
//! formatting. Nothing here holds state, so it is all testable without a server.

pub mod chat;
pub mod common;
pub mod completion;
pub mod embeddings;
pub mod error;
pub mod lmstudio;
pub mod messages;
pub mod models;
pub mod responses;
pub mod sampling;
pub mod sse;

#[cfg(test)]
mod tests;

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

pub use error::{parse_json, ApiError, ApiJson, ErrorBody, ErrorDetail};
pub use sampling::{SamplingFields, SharedFields};

/// A generation request's body: the API's own fields (`T`), and the sampling and other
/// fields every API shares, all read from the same JSON object and checked, naming the
/// field at fault.
#[derive(Debug, Clone)]
pub struct Generation<T> {
    pub body: T,
    pub sampling: SamplingFields,
    pub shared: SharedFields,
}

/// An API's own request body, with the checks serde cannot make.
/// A field kept as raw JSON must still have its documented type: `Err` names it. `null`
/// reads as absent.
pub(crate) fn expect_json(
    param: &str,
    value: Option<&serde_json::Value>,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), ApiError> {
    match value {
        Some(v) if !v.is_null() && !ok(v) => Err(ApiError::invalid_param(
            param,
            format!("Invalid type for '{param}': expected {what}."),
        )),
        _ => Ok(()),
    }
}

/// Every item of a list kept as raw JSON must be an object (a null item too is refused).
pub(crate) fn expect_objects(param: &str, items: &[serde_json::Value]) -> Result<(), ApiError> {
    match items.iter().position(|item| !item.is_object()) {
        Some(i) => Err(ApiError::invalid_param(
            format!("{param}[{i}]"),
            format!("Invalid type for '{param}[{i}]': expected an object."),
        )),
        None => Ok(()),
    }
}

pub trait Validate {
    /// Checks every range and rule serde cannot, naming the field at fault.
    fn validate(&self) -> Result<(), ApiError>;
}

impl<T: DeserializeOwned + Validate> Generation<T> {
    /// Parses a body without checking ranges.
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let body = parse_json::<T>(bytes)?;
        let sampling = parse_json::<SamplingFields>(bytes)?;
        let shared = parse_json::<SharedFields>(bytes)?;
        Ok(Generation {
            body,
            sampling,
            shared,
        })
    }

    /// Checks the shared and sampling fields, then the API's own.
    pub fn validate(&self) -> Result<(), ApiError> {
        self.shared.validate()?;
        self.sampling.validate()?;
        self.body.validate()
    }
}

impl<T> Generation<T> {
    pub fn is_stream(&self) -> bool {
        self.shared.is_stream()
    }

    /// Whether a streamed response ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.shared.include_usage()
    }

    pub fn stop_sequences(&self) -> &[String] {
        self.shared.stop_sequences()
    }
}

impl<T> std::ops::Deref for Generation<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.body
    }
}

impl<T, S> FromRequest<S> for Generation<T>
where
    T: DeserializeOwned + Validate,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = error::body_bytes(req, state).await?;
        let generation = Generation::<T>::parse(&bytes)?;
        generation.validate()?;
        Ok(generation)
    }
}
